"""The contract's checks: each violation raises a one-line DatasetError naming what and where."""

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from t3d.storage_schemas import (
    COLUMNS,
    SCHEMA,
    DatasetError,
    build_table,
    shard_index,
    shard_name,
    validate_arrays,
    validate_table,
    write_shard,
)
from t3d.storage_schemas.schema import MAX_CHUNK_BYTES, chunk_shape, coerce_arrays, response_width


def _raises(match, fn, *args):
    with pytest.raises(DatasetError, match=match) as err:
        fn(*args)
    assert "\n" not in str(err.value)


def test_build_table_converts_sampler_arrays_to_contract_types(make_shard):
    columns, _ = make_shard()
    table = build_table(columns, "t")
    assert table.schema.equals(SCHEMA, check_metadata=True)
    assert table["response_ids"].to_pylist() == columns["response_ids"].tolist()  # int64 -> int32
    columns.pop("answer"), columns.pop("correct")  # optional columns may be left out
    assert build_table(columns, "t")["answer"].null_count == 5


def test_wrong_column_type_is_named(tmp_path, make_shard):
    table = build_table(make_shard()[0], "t")
    as_int32 = table["reveal_step"].cast(pa.list_(pa.int32()))
    wrong = table.set_column(COLUMNS.index("reveal_step"), "reveal_step", as_int32)
    expected = r"shard shard-00004 in .*: column 'reveal_step' has type list<item: int32>, schema v1 says list<item: int16>"
    _raises(expected, write_shard, tmp_path, 4, wrong, {})
    assert list(tmp_path.iterdir()) == []
    text_seed = table.set_column(COLUMNS.index("seed"), "seed", table["seed"].cast(pa.string()))
    _raises(r"column 'seed' has type string", validate_table, text_seed, "x")


def test_missing_unknown_and_unconvertible_columns(make_shard):
    columns, _ = make_shard()
    without = {k: v for k, v in columns.items() if k != "prompt_ids"}
    _raises(r"t: missing column\(s\) prompt_ids", build_table, without, "t")
    _raises(r"t: unknown column\(s\) extra", build_table, {**columns, "extra": [0] * 5}, "t")
    too_big = columns["reveal_step"].astype(np.int64)
    too_big[0, 0] = 40_000
    expected = r"t: column 'reveal_step' cannot be stored as list<item: int16>"
    _raises(expected, build_table, {**columns, "reveal_step": too_big}, "t")
    _raises(r"t: columns have different lengths", build_table, {**columns, "rollout": [0] * 4}, "t")


def test_polars_layouts_are_accepted(make_shard):
    table = build_table(make_shard()[0], "t")
    via_polars = pl.from_arrow(table).to_arrow()  # large_string / string_view, large_list
    assert via_polars.schema != table.schema
    assert validate_table(via_polars, "t").equals(table)


@pytest.mark.parametrize(
    ("column", "edit", "match"),
    [
        ("confidence", lambda v: [x[:-1] if i == 2 else x for i, x in enumerate(v)], "confidence and response_ids differ"),
        ("zarr_index", lambda v: [0] * len(v), r"zarr_index must hold each of 0..4 exactly once"),
        ("finish_reason", lambda v: ["stop"] * len(v), r"finish_reason must be one of"),
        ("sample_id", lambda v: ["same"] * len(v), "sample_id values are not unique"),
        ("response_length", lambda v: [99] * len(v), r"response_length outside"),
        ("teacher_name", lambda v: [None] * len(v), r"column 'teacher_name' has 5 null"),
    ],
)
def test_row_level_invariants(make_shard, column, edit, match):
    columns, _ = make_shard()
    values = columns[column].tolist() if isinstance(columns[column], np.ndarray) else columns[column]
    _raises(match, build_table, {**columns, column: edit(values)}, "t")


def test_misaligned_arrays_are_named(make_shard):
    columns, arrays = make_shard()
    width = response_width(build_table(columns, "t"), "t")  # L = 12
    good = coerce_arrays(arrays, "t")
    validate_arrays(good, 5, width, "t")

    def check(match, **changed):
        _raises(match, validate_arrays, {**good, **changed}, 5, width, "t")

    check(r"t: array 'topk_ids' has 4 rows, the table has 5", topk_ids=good["topk_ids"][:4])
    check(r"array 'states' has 11 positions, response_ids has 12", states=good["states"][..., :11])
    check(r"topk_logprobs and topk_ids differ in shape", topk_ids=good["topk_ids"][..., :2])
    check(r"unknown array 'logits'", logits=good["topk_ids"])
    check(r"array 'topk_logprobs' has dtype float32, schema says float16", topk_logprobs=arrays["topk_logprobs"])
    _raises(r"topk_ids without its partner", validate_arrays, {"topk_ids": good["topk_ids"]}, 5, width, "t")
    _raises(r"array 'topk_ids' must hold integers", coerce_arrays, {"topk_ids": arrays["topk_logprobs"]}, "t")
    _raises(r"array 'states' has values outside int32", coerce_arrays, {"states": np.array([[[2**40]]])}, "t")


def test_names_and_chunks():
    assert shard_name(12) == "shard-00012" and shard_index("shard-00012") == 12
    assert shard_name(123456) == "shard-123456" and shard_index("shard-123456") == 123456
    _raises("not a shard name", shard_index, "shard-12")
    assert chunk_shape((1000, 256, 8), np.dtype(np.float16)) == (256, 256, 8)
    rows, steps, length = chunk_shape((1000, 512, 512), np.dtype(np.int32))
    assert (steps, length) == (512, 512) and rows * 512 * 512 * 4 <= MAX_CHUNK_BYTES and rows >= 1
