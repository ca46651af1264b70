"""A tiny teacher with a word-level tokenizer and chat template, prompt files, and helpers.

Helpers are handed out as fixtures (pytest's importlib mode does not let test modules
import this file).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from t3d.dllm.tiny import build_checkpoint
from t3d.dllm.tokenizer import build_tokenizer
from t3d.pipeline.config import build_config
from t3d.storage_schemas import Dataset, Manifest

WORDS = ["user:", "assistant:"] + [f"w{i}" for i in range(26)]
CHAT_TEMPLATE = (
    "{% for m in messages %}user: {{ m['content'] }} {% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)
MAX_POSITIONS = 32  # with 16 new tokens, prompts of up to 16 tokens fit
NUM_PROMPTS = 24
SHARD_SIZE = 3  # 8 units: enough for a kill to land mid-run


LONG_PROMPT = 5  # this prompt is longer than the model allows: skipped and counted


def prompt_text(i: int) -> str:
    words = 20 if i == LONG_PROMPT else 1 + i % 5
    return " ".join(f"w{(7 * i + j) % 26}" for j in range(words))


@pytest.fixture(scope="session")
def teacher_dir(tmp_path_factory) -> Path:
    """A random tiny bidirectional DLLM whose tokenizer has a chat template."""
    tokenizer = build_tokenizer(WORDS, model_max_length=MAX_POSITIONS)
    tokenizer.chat_template = CHAT_TEMPLATE
    return build_checkpoint(
        tmp_path_factory.mktemp("teacher") / "tiny",
        "bidirectional",
        vocab_size=len(WORDS) + 4,
        pad_id=0,
        mask_id=2,
        eos_id=3,
        max_position_embeddings=MAX_POSITIONS,
        tokenizer=tokenizer,
    )


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("prompts") / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": prompt_text(i), "answer": str(i)}) + "\n" for i in range(NUM_PROMPTS)))
    return path


def collect_args(teacher_dir: Path, prompts_file: Path, out: Path, **extra) -> list[str]:
    """The command line every identical-dataset test uses (extra flags: cluster settings only)."""
    args = [
        "--model", str(teacher_dir), "--prompts", str(prompts_file), "--out", str(out),
        "--shard-size", str(SHARD_SIZE), "--rollouts-per-prompt", "2", "--seed", "7", "--no-progress",
    ]
    for name, value in extra.items():
        args += [f"--{name.replace('_', '-')}", str(value)]
    return args


def config_from_args(args: list[str]):
    """The CollectConfig that `t3d-collect ARGS` would run, parsed by the CLI's own command."""
    import typer

    from t3d.dllm.cli import load_config_file
    from t3d.pipeline.collect import build_app

    context = typer.main.get_command(build_app()).make_context("t3d-collect", list(args))
    params = dict(context.params)
    path = params.pop("config")
    return build_config(load_config_file(path), params)


def cli(name: str, args: list[str], timeout: float = 180, **kwargs) -> subprocess.CompletedProcess:
    """Run an installed console script (`t3d-collect`, `t3d-inspect`) in a subprocess."""
    script = Path(sys.executable).parent / name
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=timeout, env=os.environ.copy(), **kwargs)


def popen(name: str, args: list[str]) -> subprocess.Popen:
    script = Path(sys.executable).parent / name
    return subprocess.Popen([str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())


def dataset_contents(path: Path) -> tuple[pl.DataFrame, dict[str, np.ndarray]]:
    """All rows (sorted) and all arrays (in row order) of a dataset, for exact comparison."""
    dataset = Dataset.open(path, verify=True)
    rows = dataset.scan().sort("shard", "zarr_index").collect()
    arrays: dict[str, list[np.ndarray]] = {}
    for shard in dataset.shards:
        index = rows.filter(pl.col("shard") == shard)["zarr_index"].to_numpy()
        for name, values in dataset.arrays(shard, index, upcast=False).items():
            arrays.setdefault(name, []).append(values)
    return rows, {name: np.concatenate(parts) for name, parts in arrays.items()}


def assert_same_dataset(actual: Path, expected: Path) -> None:
    """Same rows, same arrays, same bytes on disk (shard checksums), no duplicate rows."""
    rows, arrays = dataset_contents(actual)
    ref_rows, ref_arrays = dataset_contents(expected)
    assert rows["sample_id"].n_unique() == rows.height, "duplicate rows"
    assert rows.equals(ref_rows)
    assert arrays.keys() == ref_arrays.keys()
    for name in arrays:
        np.testing.assert_array_equal(arrays[name], ref_arrays[name], err_msg=name)
    ours, theirs = Manifest.load(actual).shards, Manifest.load(expected).shards
    assert {k: (v.rows, v.parquet_sha256, v.zarr_sha256) for k, v in ours.items()} == {
        k: (v.rows, v.parquet_sha256, v.zarr_sha256) for k, v in theirs.items()
    }


def visible_shards(path: Path) -> list[str]:
    """Shard files a plain `polars.scan_parquet(dir/*.parquet)` would read."""
    return sorted(p.name for p in Path(path).glob("*.parquet")) if Path(path).is_dir() else []


@pytest.fixture(scope="session")
def collect_cmd(teacher_dir, prompts_file):
    """`collect_cmd(out, **cluster_flags)` -> the shared command line for an output dir."""
    return lambda out, **extra: collect_args(teacher_dir, prompts_file, out, **extra)


@pytest.fixture(scope="session")
def tools():
    """Helpers: cli, popen, config_from_args, dataset_contents, assert_same_dataset, visible_shards."""
    from types import SimpleNamespace

    return SimpleNamespace(
        cli=cli,
        popen=popen,
        config_from_args=config_from_args,
        dataset_contents=dataset_contents,
        assert_same_dataset=assert_same_dataset,
        visible_shards=visible_shards,
        num_prompts=NUM_PROMPTS,
        long_prompt=LONG_PROMPT,
        shard_size=SHARD_SIZE,
        prompt_text=prompt_text,
    )
