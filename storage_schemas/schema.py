"""The trajectory data contract: Parquet columns, Zarr arrays, shard names, validation.

Both stages check data against this module: `t3d-collect` before it writes a shard,
the reader when it adopts one. Bump `SCHEMA_VERSION` on any change that a reader of the
old version would misread; readers refuse other versions rather than guess.

One shard = `shard-{index:05d}.parquet` (one row per (prompt, rollout)) plus
`shard-{index:05d}.zarr/` (dense arrays whose row `zarr_index` belongs to that row).
Every row of a shard has the same response length L (the sampler's max_new_tokens),
because the Zarr arrays are dense (N, L, ...).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from t3d.storage_schemas.errors import DatasetError, first_line

SCHEMA_VERSION = 1
VERSION_KEY = "t3d.schema_version"  # key in Parquet schema metadata and Zarr group attrs
FINISH_REASONS = ("eos", "length")

_I32_LIST = pa.list_(pa.int32())
SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),  # "p000123-r0": prompt 123, rollout 0
        pa.field("prompt_index", pa.int64(), nullable=False),  # index of the prompt in the collect run
        pa.field("rollout", pa.int32(), nullable=False),  # rollout number for that prompt, from 0
        pa.field("prompt", pa.string(), nullable=False),  # prompt text
        pa.field("prompt_ids", _I32_LIST, nullable=False),  # prompt token ids, no padding
        pa.field("response_ids", _I32_LIST, nullable=False),  # x0, length L, pad after EOS
        pa.field("response_text", pa.string(), nullable=False),  # decoded response up to EOS
        pa.field("response_length", pa.int32(), nullable=False),  # tokens up to and incl. EOS
        pa.field("reveal_step", pa.list_(pa.int16()), nullable=False),  # (L,) global step; -1 = pad
        pa.field("confidence", pa.list_(pa.float32()), nullable=False),  # (L,) p(token) at reveal
        pa.field("num_steps", pa.int32(), nullable=False),  # denoising steps used by this row
        pa.field("finish_reason", pa.string(), nullable=False),  # "eos" | "length"
        pa.field("block_size", pa.int32(), nullable=False),  # sampler settings ...
        pa.field("steps_per_block", pa.int32(), nullable=False),
        pa.field("strategy", pa.string(), nullable=False),
        pa.field("threshold", pa.float32(), nullable=False),
        pa.field("temperature", pa.float32(), nullable=False),
        pa.field("top_p", pa.float32(), nullable=False),
        pa.field("top_k", pa.int32(), nullable=False),  # ... end of sampler settings
        pa.field("seed", pa.int64(), nullable=False),  # seed of this row's generator
        pa.field("teacher_name", pa.string(), nullable=False),
        pa.field("teacher_fingerprint", pa.string(), nullable=False),  # sha256 prefix of weights
        pa.field("answer", pa.string(), nullable=True),  # reference answer, if the task has one
        pa.field("correct", pa.bool_(), nullable=True),  # response matches the answer, if known
        pa.field("zarr_index", pa.int64(), nullable=False),  # row of this sample in the Zarr arrays
    ],
    metadata={VERSION_KEY: str(SCHEMA_VERSION)},
)
COLUMNS: tuple[str, ...] = tuple(SCHEMA.names)
OPTIONAL_COLUMNS = ("answer", "correct")  # may be left out: they are filled with nulls
SAMPLER_COLUMNS = ("block_size", "steps_per_block", "strategy", "threshold", "temperature", "top_p", "top_k")
"""The sampler settings stored on every row, each filled from the `SamplerConfig` field of
the same name (`columns.shard_columns`). Storing another setting is a contract change:
its column here and in SCHEMA, and a version bump; the writer needs no edit."""
_PER_POSITION = ("response_ids", "reveal_step", "confidence")  # lists of length L per row


@dataclass(frozen=True, kw_only=True)
class ArraySpec:
    """One Zarr array of a shard: rows align with the Parquet rows through `zarr_index`."""

    name: str
    """The array's name in the shard's Zarr group, and the sampler output's attribute it is read from."""
    dtype: np.dtype
    """Stored dtype; the writer casts to it (range-checked for integers)."""
    dims: tuple[str, ...]
    """Dimension names; the first is always "row"; a "position" dimension must have the response's length L."""
    required: bool
    """Every shard must store it (else the sampler may leave it out: its output attribute is None)."""
    about: str
    """What it holds and when the sampler records it, in words (the trainer's refusal quotes it)."""


ARRAYS: dict[str, ArraySpec] = {
    # float16 because Zarr has no bfloat16 and k=8 already costs 48 B per token before compression.
    "topk_logprobs": ArraySpec(
        name="topk_logprobs", dtype=np.dtype(np.float16), dims=("row", "position", "k"), required=False,
        about="the teacher's top-k log-probs at each position's reveal, recorded unless logits_top_k=0",
    ),  # fmt: skip
    "topk_ids": ArraySpec(
        name="topk_ids", dtype=np.dtype(np.int32), dims=("row", "position", "k"), required=False,
        about="the ids of the teacher's top-k at each position's reveal, recorded unless logits_top_k=0",
    ),  # fmt: skip
    # rows shorter than S repeat their final state
    "states": ArraySpec(
        name="states", dtype=np.dtype(np.int32), dims=("row", "step", "position"), required=False,
        about="dense masked states (states[:, s] = the input of step s), recorded with record_states",
    ),  # fmt: skip
}
"""Every Zarr array a shard may hold. Declaring one here is all the writer (`shard_arrays` reads
the sampler output's attribute of that name) and the reader (`Dataset.arrays`, `RowStream`,
the trainer's `Batch.arrays`) need; storing it is a contract change: bump `SCHEMA_VERSION`."""
TOPK_ARRAYS = ("topk_logprobs", "topk_ids")  # both or neither (top-k recording off)
ROWS_PER_CHUNK = 256
MAX_CHUNK_BYTES = 16 * 2**20  # fewer rows per chunk when rows are large (dense states)
ZSTD_LEVEL = 3

_SHARD_NAME = re.compile(r"^shard-(\d{5,})$")


class ArrayLike(Protocol):
    """What validation needs of an array: numpy arrays and open zarr arrays both fit."""

    shape: tuple[int, ...]
    dtype: Any
    ndim: int


# ---------------------------------------------------------------------------- names


def shard_name(index: int) -> str:
    """Deterministic shard name of a work unit, so a re-run finds its own output."""
    if index < 0:
        raise ValueError(f"shard index must be >= 0, got {index}")
    return f"shard-{index:05d}"


def shard_index(name: str) -> int:
    """Inverse of `shard_name`."""
    match = _SHARD_NAME.match(name)
    if match is None:
        raise DatasetError(f"not a shard name: {name!r} (expected shard-NNNNN)")
    return int(match.group(1))


def parquet_path(dataset_dir: str | Path, name: str) -> Path:
    """Final path of a shard's Parquet part; its presence makes the shard visible."""
    return Path(dataset_dir) / f"{name}.parquet"


def zarr_path(dataset_dir: str | Path, name: str) -> Path:
    """Final path of a shard's Zarr group directory."""
    return Path(dataset_dir) / f"{name}.zarr"


def chunk_shape(shape: Sequence[int], dtype: np.dtype) -> tuple[int, ...]:
    """Chunk by rows: ROWS_PER_CHUNK rows, fewer if that exceeds MAX_CHUNK_BYTES."""
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * np.dtype(dtype).itemsize)
    rows = max(1, min(ROWS_PER_CHUNK, MAX_CHUNK_BYTES // row_bytes))
    return (rows, *(max(1, int(n)) for n in shape[1:]))


def group_attributes(rows: int) -> dict[str, int]:
    """Attributes of a shard's Zarr group: plain Zarr users can see the version too."""
    return {VERSION_KEY: SCHEMA_VERSION, "rows": rows}


def check_version(found: object, where: str) -> None:
    """Refuse data written under another schema version."""
    if str(found) != str(SCHEMA_VERSION):
        raise DatasetError(f"{where}: schema version {found}, this t3d reads version {SCHEMA_VERSION}")


# ---------------------------------------------------------------------------- tables


def build_table(columns: Mapping[str, Any], where: str) -> pa.Table:
    """Build a contract table from columns (lists, 1-D numpy, or 2-D numpy for list columns).

    Values are converted to the contract types with overflow checks, so an int64
    `response_ids` array from the sampler can be passed as it is.
    """
    _check_column_names(columns.keys(), where)
    lengths = {name: len(values) for name, values in columns.items()}
    if len(set(lengths.values())) > 1:
        raise DatasetError(f"{where}: columns have different lengths: {lengths}")
    rows = next(iter(lengths.values()), 0)
    arrays = [_to_arrow(columns.get(f.name, [None] * rows), f, where) for f in SCHEMA]
    return validate_table(pa.Table.from_arrays(arrays, schema=SCHEMA), where)


def validate_table(table: pa.Table, where: str) -> pa.Table:
    """Check a table against the contract; return it in contract column order and types.

    Accepts equivalent Arrow layouts (large_string, large_list, other list item names, as
    polars produces) and casts them; anything else raises DatasetError naming the column.
    """
    _check_column_names(table.column_names, where)
    for name in OPTIONAL_COLUMNS:
        if name not in table.column_names:
            table = table.append_column(SCHEMA.field(name), pa.nulls(table.num_rows, SCHEMA.field(name).type))
    for field in SCHEMA:
        actual = table.schema.field(field.name).type
        if _normalized(actual) != field.type:
            raise DatasetError(
                f"{where}: column {field.name!r} has type {actual}, schema v{SCHEMA_VERSION} says {field.type}"
            )
    _check_nulls(table, where)
    table = table.select(list(COLUMNS)).cast(SCHEMA).replace_schema_metadata(SCHEMA.metadata)
    _check_values(table, where)
    return table


def response_width(table: pa.Table, where: str) -> int | None:
    """The per-shard response length L (None for an empty table): arrays need one L."""
    widths = np.unique(_list_lengths(table["response_ids"]))
    if len(widths) > 1:
        raise DatasetError(f"{where}: response_ids lengths differ across rows ({widths.min()}..{widths.max()})")
    return int(widths[0]) if len(widths) else None


def _check_column_names(names: Iterable[str], where: str) -> None:
    names = set(names)
    missing = [c for c in COLUMNS if c not in names and c not in OPTIONAL_COLUMNS]
    if missing:
        raise DatasetError(f"{where}: missing column(s) {', '.join(missing)}")
    unknown = sorted(names - set(COLUMNS))
    if unknown:
        raise DatasetError(f"{where}: unknown column(s) {', '.join(unknown)} (schema v{SCHEMA_VERSION})")


def _normalized(kind: pa.DataType) -> pa.DataType:
    """Map equivalent Arrow layouts onto the contract's (string, list<item>)."""
    if pa.types.is_large_string(kind) or pa.types.is_string_view(kind):
        return pa.string()
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_list_view(kind):
        return pa.list_(_normalized(kind.value_type))
    return kind


def _to_arrow(values: Any, field: pa.Field, where: str) -> pa.Array:
    try:
        if isinstance(values, (pa.Array, pa.ChunkedArray)):
            return values.cast(field.type)
        if isinstance(values, np.ndarray) and values.ndim == 2 and pa.types.is_list(field.type):
            flat = pa.array(values.reshape(-1)).cast(field.type.value_type)  # checked cast
            offsets = pa.array(np.arange(len(values) + 1, dtype=np.int32) * values.shape[1])  # (N + 1,)
            return pa.ListArray.from_arrays(offsets, flat)
        return pa.array(values, type=field.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as err:
        raise DatasetError(f"{where}: column {field.name!r} cannot be stored as {field.type}: {first_line(err)}") from None


def _list_lengths(column: pa.ChunkedArray) -> np.ndarray:
    return pc.list_value_length(column).to_numpy().astype(np.int64)  # (N,)


def _check_nulls(table: pa.Table, where: str) -> None:
    """Nulls only in the nullable columns, never inside lists."""
    for field in SCHEMA:
        column = table[field.name]
        nulls = 0 if field.nullable else column.null_count
        if pa.types.is_list(field.type):
            nulls += pc.list_flatten(column).null_count
        if nulls:
            raise DatasetError(f"{where}: column {field.name!r} has {nulls} null value(s)")


def _check_values(table: pa.Table, where: str) -> None:
    """Row-level invariants a reader relies on (aligned lists, a valid zarr_index, ...)."""
    lengths = {name: _list_lengths(table[name]) for name in _PER_POSITION}  # (N,) each
    for name in _PER_POSITION[1:]:
        if not np.array_equal(lengths[name], lengths["response_ids"]):
            raise DatasetError(f"{where}: {name} and response_ids differ in length on some rows")
    response_length = table["response_length"].to_numpy()  # (N,)
    if np.any((response_length < 0) | (response_length > lengths["response_ids"])):
        raise DatasetError(f"{where}: response_length outside 0..len(response_ids) on some rows")
    reasons = set(pc.unique(table["finish_reason"]).to_pylist()) - set(FINISH_REASONS)
    if reasons:
        raise DatasetError(f"{where}: finish_reason must be one of {FINISH_REASONS}, got {sorted(reasons)}")
    if pc.count_distinct(table["sample_id"]).as_py() != table.num_rows:
        raise DatasetError(f"{where}: sample_id values are not unique")
    index = np.sort(table["zarr_index"].to_numpy())
    if not np.array_equal(index, np.arange(table.num_rows)):
        raise DatasetError(f"{where}: zarr_index must hold each of 0..{table.num_rows - 1} exactly once")


# ---------------------------------------------------------------------------- arrays


def coerce_arrays(arrays: Mapping[str, np.ndarray | None], where: str) -> dict[str, np.ndarray]:
    """Convert arrays to contract dtypes (float -> float16, int -> int32, range-checked).

    None values are dropped, so `SampleOutput.topk_logprobs` can be passed as it is.
    """
    out: dict[str, np.ndarray] = {}
    for name, values in arrays.items():
        if values is None:
            continue
        if name not in ARRAYS:
            raise DatasetError(f"{where}: unknown array {name!r} (known: {', '.join(ARRAYS)})")
        out[name] = _cast(np.asarray(values), ARRAYS[name], where)
    return out


def _cast(values: np.ndarray, spec: ArraySpec, where: str) -> np.ndarray:
    if spec.dtype.kind == "f" and values.dtype.kind != "f":
        raise DatasetError(f"{where}: array {spec.name!r} must be floating point, got {values.dtype}")
    if spec.dtype.kind == "i":
        if values.dtype.kind not in "iu":
            raise DatasetError(f"{where}: array {spec.name!r} must hold integers, got {values.dtype}")
        info = np.iinfo(spec.dtype)
        if values.size and (values.min() < info.min or values.max() > info.max):
            raise DatasetError(f"{where}: array {spec.name!r} has values outside {spec.dtype}")
    return np.ascontiguousarray(values, dtype=spec.dtype)


def validate_arrays(arrays: Mapping[str, ArrayLike], rows: int, width: int | None, where: str) -> None:
    """Check arrays (numpy or zarr) against the contract and against the table's rows and L."""
    for name in arrays:
        if name not in ARRAYS:
            raise DatasetError(f"{where}: unknown array {name!r} (known: {', '.join(ARRAYS)})")
    missing = [name for name, spec in ARRAYS.items() if spec.required and name not in arrays]
    if missing:
        raise DatasetError(f"{where}: missing array(s) {', '.join(missing)}")
    topk = [name for name in TOPK_ARRAYS if name in arrays]
    if len(topk) == 1:
        raise DatasetError(f"{where}: {topk[0]} without its partner: store both of {TOPK_ARRAYS} or neither")
    for name, values in arrays.items():
        _check_array(values, ARRAYS[name], rows, width, where)
    if len(topk) == 2 and tuple(arrays["topk_logprobs"].shape) != tuple(arrays["topk_ids"].shape):
        shapes = f"{tuple(arrays['topk_logprobs'].shape)} and {tuple(arrays['topk_ids'].shape)}"
        raise DatasetError(f"{where}: topk_logprobs and topk_ids differ in shape: {shapes}")


def _check_array(values: ArrayLike, spec: ArraySpec, rows: int, width: int | None, where: str) -> None:
    if np.dtype(values.dtype) != spec.dtype:
        raise DatasetError(f"{where}: array {spec.name!r} has dtype {values.dtype}, schema says {spec.dtype}")
    if len(values.shape) != len(spec.dims):
        raise DatasetError(f"{where}: array {spec.name!r} has shape {tuple(values.shape)}, schema says {spec.dims}")
    if values.shape[0] != rows:
        raise DatasetError(f"{where}: array {spec.name!r} has {values.shape[0]} rows, the table has {rows}")
    if "position" not in spec.dims:
        return
    position = values.shape[spec.dims.index("position")]
    if width is not None and position != width:
        raise DatasetError(f"{where}: array {spec.name!r} has {position} positions, response_ids has {width}")
