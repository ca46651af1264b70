"""The contract is the only door between the stages: no code outside storage_schemas opens a shard.

Shards are read through `Dataset` (rows, columns, arrays by shard) and written through
`write_shard`; a stage that opened `shard-*.parquet` or `shard-*.zarr` itself would skip
the version, commit and checksum guarantees. The check reads the source (AST), so it
also sees function-local imports. Allowed: `dllm/prompt_files.py`, which reads the
user's prompt files (Parquet, Arrow), not shards; and polars itself, which the stages use
on the frames `Dataset.scan` and `Dataset.rows` hand out.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STAGE_FOLDERS = ("dllm", "pipeline", "trainer", "tools", "scheduler", "benchmarks")
NOT_SHARDS = {"dllm/prompt_files.py"}  # the user's prompt files, read with pyarrow
SHARD_MODULES = ("zarr", "pyarrow.parquet", "pyarrow.dataset")
OPENERS = {  # calls that open a Parquet file or a Zarr store, whatever the module is called here
    "scan_parquet", "read_parquet", "read_parquet_schema", "read_parquet_metadata", "scan_pyarrow_dataset",
    "ParquetFile", "ParquetDataset", "open_group", "open_array", "open_consolidated",
}  # fmt: skip
SHARD_PATHS = {"parquet_path", "zarr_path"}  # where a shard's parts lie: the contract's business


def door_violations(source: str) -> list[str]:
    """`line: what` for every shard-opening import or call in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [f"{node.lineno}: import {a.name}" for a in node.names if _shard_module(a.name)]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [a.name for a in node.names]
            if _shard_module(node.module) or any(_shard_module(f"{node.module}.{n}") for n in names):
                found.append(f"{node.lineno}: from {node.module} import {', '.join(names)}")
            elif node.module.startswith("t3d.storage_schemas") and SHARD_PATHS & set(names):
                found.append(f"{node.lineno}: {', '.join(sorted(SHARD_PATHS & set(names)))} from the contract")
        elif isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", None)
            if name in OPENERS:
                found.append(f"{node.lineno}: calls {name}")
    return found


def _shard_module(name: str) -> bool:
    return any(name == m or name.startswith(m + ".") for m in SHARD_MODULES)


def stage_files() -> list[Path]:
    files = [p for folder in STAGE_FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))]
    return [p for p in files if p.relative_to(ROOT).as_posix() not in NOT_SHARDS]


def test_no_stage_opens_a_shard_itself():
    files = stage_files()
    assert any(p.relative_to(ROOT).as_posix() == "trainer/data.py" for p in files)
    problems = {p.relative_to(ROOT).as_posix(): v for p in files if (v := door_violations(p.read_text()))}
    assert not problems, f"open shards through t3d.storage_schemas (Dataset, write_shard), not directly: {problems}"


@pytest.mark.parametrize(
    "source",
    [
        # what trainer/data.py did before Dataset.rows
        "import polars as pl\nfrom t3d.storage_schemas import Dataset, parquet_path\n"
        "def f(d, s):\n    return pl.scan_parquet(parquet_path(d.path, s)).collect()\n",
        "def f(path):\n    import zarr\n    return zarr.open_group(path)\n",
        "from pyarrow import parquet as pq\n",
        "import pyarrow.parquet\n",
        "from zarr.codecs import ZstdCodec\n",
    ],
)
def test_the_check_sees_each_way_of_opening_a_shard(source):
    assert door_violations(source)


def test_the_check_leaves_frames_from_the_contract_alone():
    source = "import polars as pl\nimport pyarrow as pa\ndef f(ds):\n    return ds.scan().filter(pl.col('correct')).collect()\n"
    assert door_violations(source) == []
