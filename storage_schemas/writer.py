"""Write one shard atomically; repair a dataset directory after a crash.

A shard is written by exactly one process (zarr-python#3682: two writers of one Zarr
store lose data). Each attempt writes into its own hidden temporaries, so even a retried
work unit that races a slow original never shares a store. Commit order: Zarr renamed
first, Parquet last; the Parquet file's presence is what makes a shard visible.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr
from zarr.codecs import ZstdCodec

from t3d.storage_schemas.errors import DatasetError, first_line
from t3d.storage_schemas.files import (
    fsync_dir,
    fsync_file,
    fsync_tree,
    is_temporary,
    remove_path,
    sha256_file,
    sha256_tree,
    temp_path,
    tree_bytes,
)
from t3d.storage_schemas.manifest import Manifest, ShardInfo
from t3d.storage_schemas.schema import (
    ARRAYS,
    VERSION_KEY,
    ZSTD_LEVEL,
    build_table,
    check_version,
    chunk_shape,
    coerce_arrays,
    group_attributes,
    parquet_path,
    response_width,
    shard_name,
    validate_arrays,
    validate_table,
    zarr_path,
)


def write_shard(
    dataset_dir: str | Path,
    shard_index: int,
    table_or_columns: pa.Table | Mapping[str, Any],
    arrays: Mapping[str, np.ndarray | None] | None = None,
) -> ShardInfo:
    """Validate, write and atomically commit shard `shard_index`; return its manifest entry.

    `arrays` maps names of `schema.ARRAYS` to (N, ...) arrays indexed by `zarr_index`;
    they are cast to the contract dtypes (float16 / int32). Re-writing a finished shard
    is safe: identical content keeps the existing files, different content replaces them.
    """
    dataset_dir = Path(dataset_dir)
    dataset_dir.mkdir(parents=True, exist_ok=True)
    name = shard_name(shard_index)
    where = f"shard {name} in {dataset_dir}"
    if isinstance(table_or_columns, pa.Table):
        table = validate_table(table_or_columns, where)
    else:
        table = build_table(table_or_columns, where)
    stored = coerce_arrays(arrays or {}, where)
    validate_arrays(stored, table.num_rows, response_width(table, where), where)
    tmp_zarr = temp_path(zarr_path(dataset_dir, name))
    tmp_parquet = temp_path(parquet_path(dataset_dir, name))
    try:
        _write_zarr(tmp_zarr, stored, table.num_rows)
        _write_parquet(tmp_parquet, table)
        info = describe_shard(name, tmp_parquet, tmp_zarr, table)
        _commit(dataset_dir, name, tmp_parquet, tmp_zarr, info)
    finally:  # no-ops after the renames; a killed process leaves them to `reconcile`
        remove_path(tmp_zarr)
        remove_path(tmp_parquet)
    return info


def _write_zarr(path: Path, arrays: dict[str, np.ndarray], rows: int) -> None:
    group = zarr.open_group(path, mode="w-", zarr_format=3, attributes=group_attributes(rows))
    for name, values in arrays.items():
        array = group.create_array(
            name,
            shape=values.shape,
            dtype=values.dtype,
            chunks=chunk_shape(values.shape, values.dtype),
            compressors=ZstdCodec(level=ZSTD_LEVEL),
            dimension_names=ARRAYS[name].dims,
        )
        array[...] = values
    fsync_tree(path)


def _write_parquet(path: Path, table: pa.Table) -> None:
    pq.write_table(table, path, compression="zstd")
    fsync_file(path)


def describe_shard(name: str, parquet: Path, zarr_dir: Path, table: pa.Table) -> ShardInfo:
    """The manifest entry of a shard's files (which may still be under temporary names)."""
    sizes = {"parquet": parquet.stat().st_size}
    sizes.update({array: tree_bytes(zarr_dir / array) for array in ARRAYS if (zarr_dir / array).is_dir()})
    tokens = table["response_length"].to_numpy().sum() if table.num_rows else 0
    return ShardInfo(
        name=name,
        rows=table.num_rows,
        response_tokens=int(tokens),
        parquet_sha256=sha256_file(parquet),
        zarr_sha256=sha256_tree(zarr_dir),
        bytes=sizes,
    )


def _commit(dataset_dir: Path, name: str, tmp_parquet: Path, tmp_zarr: Path, info: ShardInfo) -> None:
    """Rename the temporaries into place: Zarr first, then Parquet (the visibility switch)."""
    final_parquet, final_zarr = parquet_path(dataset_dir, name), zarr_path(dataset_dir, name)
    if _same_content(final_parquet, final_zarr, info):
        return  # a retried unit that produced the same bytes: keep the committed files
    # Parquet moves aside first, so no reader ever sees new Parquet with an old Zarr.
    old = [_move_aside(final_parquet), _move_aside(final_zarr)]
    os.rename(tmp_zarr, final_zarr)
    fsync_dir(dataset_dir)
    os.rename(tmp_parquet, final_parquet)
    fsync_dir(dataset_dir)
    for path in old:
        if path is not None:
            remove_path(path)


def _same_content(parquet: Path, zarr_dir: Path, info: ShardInfo) -> bool:
    if not (parquet.is_file() and zarr_dir.is_dir()):
        return False
    return sha256_file(parquet) == info.parquet_sha256 and sha256_tree(zarr_dir) == info.zarr_sha256


def _move_aside(path: Path) -> Path | None:
    """Rename an existing final path to a temporary name (deleted later, or by reconcile)."""
    if not path.exists():
        return None
    aside = temp_path(path)
    os.rename(path, aside)
    return aside


# ---------------------------------------------------------------------------- reconcile


@dataclass(frozen=True, kw_only=True)
class Reconciled:
    """What `reconcile` did, and the manifest to save afterwards."""

    manifest: Manifest
    removed_temporaries: tuple[str, ...]
    adopted: tuple[str, ...]
    """Complete shards on disk that the manifest did not list yet (now listed)."""
    removed_incomplete: tuple[str, ...]
    """Final-named shard parts without a valid partner, deleted (the unit will be redone)."""
    dropped_missing: tuple[str, ...]
    """Shards the manifest listed but whose files are gone (now unlisted)."""

    @property
    def changed(self) -> bool:
        return bool(self.removed_temporaries or self.adopted or self.removed_incomplete or self.dropped_missing)

    def summary(self) -> str:
        """One log line."""
        return (
            f"reconcile: removed {len(self.removed_temporaries)} temporaries, adopted {len(self.adopted)} shard(s)"
            f" {list(self.adopted)}, removed {len(self.removed_incomplete)} incomplete {list(self.removed_incomplete)},"
            f" dropped {len(self.dropped_missing)} missing {list(self.dropped_missing)}"
        )


def reconcile(dataset_dir: str | Path, manifest: Manifest) -> Reconciled:
    """Bring a dataset directory and its manifest into agreement after a crash.

    Call from the driver while no writer runs. Deletes temporaries; adopts shards whose
    both parts are present and valid but that the manifest lacks (the writer committed,
    the driver died before saving); deletes lone or invalid parts; unlists shards whose
    files are gone. Listed shards are not re-checksummed (that is `Dataset.verify`).
    The caller saves `result.manifest`.
    """
    dataset_dir = Path(dataset_dir)
    names = sorted(os.listdir(dataset_dir)) if dataset_dir.is_dir() else []
    temporaries = tuple(n for n in names if is_temporary(n))
    for entry in temporaries:
        remove_path(dataset_dir / entry)
    parts = _final_parts(names)
    dropped = tuple(s for s in sorted(manifest.shards) if parts.get(s) != {"parquet", "zarr"})
    manifest = manifest.without_shards(dropped)
    adopted, removed = [], []
    for shard in sorted(set(parts) - set(manifest.shards)):
        try:
            manifest = manifest.with_shard(check_shard_files(dataset_dir, shard))
            adopted.append(shard)
        except DatasetError:
            remove_path(parquet_path(dataset_dir, shard))  # Parquet first: hide it, then drop Zarr
            remove_path(zarr_path(dataset_dir, shard))
            removed.append(shard)
    if names:
        fsync_dir(dataset_dir)
    return Reconciled(
        manifest=manifest,
        removed_temporaries=temporaries,
        adopted=tuple(adopted),
        removed_incomplete=tuple(removed),
        dropped_missing=dropped,
    )


_FINAL_PART = re.compile(r"^(shard-\d{5,})\.(parquet|zarr)$")


def _final_parts(names: list[str]) -> dict[str, set[str]]:
    """shard name -> which of {"parquet", "zarr"} exist under final names."""
    parts: dict[str, set[str]] = {}
    for entry in names:
        match = _FINAL_PART.match(entry)
        if match is not None:
            parts.setdefault(match.group(1), set()).add(match.group(2))
    return parts


def check_shard_files(dataset_dir: str | Path, name: str) -> ShardInfo:
    """Fully validate a shard's files (readable, version, schema, aligned arrays) and describe it."""
    dataset_dir = Path(dataset_dir)
    parquet, zarr_dir = parquet_path(dataset_dir, name), zarr_path(dataset_dir, name)
    where = f"shard {name} in {dataset_dir}"
    if not (parquet.is_file() and zarr_dir.is_dir()):
        raise DatasetError(f"{where}: needs both {parquet.name} and {zarr_dir.name}/")
    try:
        table = pq.read_table(parquet)
        group = zarr.open_group(zarr_dir, mode="r")
        group_rows = group.attrs.get("rows")
        version = group.attrs.get(VERSION_KEY)
        arrays = {key: group[key] for key in group.array_keys()}
    except (OSError, ValueError, KeyError, pa.ArrowException) as err:
        raise DatasetError(f"{where}: unreadable: {first_line(err)}") from None
    parquet_version = (table.schema.metadata or {}).get(VERSION_KEY.encode(), b"missing").decode()
    check_version(parquet_version, f"{where} (parquet)")
    check_version(version, f"{where} (zarr)")
    table = validate_table(table, where)
    if group_rows != table.num_rows:
        raise DatasetError(f"{where}: zarr says {group_rows} rows, parquet has {table.num_rows}")
    validate_arrays(arrays, table.num_rows, response_width(table, where), where)
    return describe_shard(name, parquet, zarr_dir, table)
