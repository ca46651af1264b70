"""The one shard builder: sampler columns come from SamplerConfig's fields, arrays from the output's attributes."""

import dataclasses

import numpy as np
import pyarrow as pa
import pytest

from t3d.dllm.sampling import SampleOutput, SamplerConfig
from t3d.storage_schemas import (
    ARRAYS, SAMPLER_COLUMNS, SCHEMA, Dataset, DatasetError, Manifest, shard_arrays, shard_columns, write_shard,
)  # fmt: skip

ARROW_OF = {int: pa.int32(), float: pa.float32(), str: pa.string()}
NOT_STORED = {  # SamplerConfig fields no row column records, and where the row says it instead
    "max_new_tokens": "the width of response_ids",
    "logits_top_k": "the k of the topk_* arrays",
    "record_states": "whether the states array is stored",
    "stop_at_eos": "finish_reason and the padding after EOS",
    "cache": "the manifest's collect_config only: one cache mode per dataset",
    "confidence": "the manifest's collect_config only: one ranking measure per dataset",
    "entropy_budget": "the manifest's collect_config only: one budget per dataset",
}


def test_sampler_columns_are_sampler_config_fields_of_the_same_type():
    fields = {f.name: f for f in dataclasses.fields(SamplerConfig)}
    for name in SAMPLER_COLUMNS:
        kind = type(getattr(SamplerConfig(), name))
        assert name in fields and SCHEMA.field(name).type == ARROW_OF[kind], name


def test_every_sampler_setting_is_stored_or_says_where_the_row_records_it():
    """A new SamplerConfig field fails here until it is given a column (schema + version bump) or a reason."""
    names = {f.name for f in dataclasses.fields(SamplerConfig)}
    assert names == set(SAMPLER_COLUMNS) | set(NOT_STORED)
    assert not set(SAMPLER_COLUMNS) & set(NOT_STORED)


def decoded(n: int = 3, length: int = 8, k: int = 2) -> SampleOutput:
    rng = np.random.default_rng(0)
    reveal = np.tile(np.arange(length, dtype=np.int16), (n, 1))  # (N, L)
    reveal[0, 5:] = -1  # row 0 stops after 5 tokens
    return SampleOutput(
        tokens=rng.integers(4, 30, (n, length)), reveal_step=reveal, confidence=rng.random((n, length), np.float32),
        topk_logprobs=-rng.random((n, length, k), np.float32), topk_ids=rng.integers(0, 30, (n, length, k)),
        states=None, num_steps=np.full(n, length, np.int32), finish_reason=["eos", "length", "length"], nfe=length,
    )  # fmt: skip


def test_a_built_shard_reads_back_with_the_sampler_and_teacher_it_was_given(tmp_path):
    sampler = SamplerConfig(max_new_tokens=8, block_size=4, steps_per_block=2, strategy="threshold", threshold=0.5,
                            temperature=0.7, top_k=5, top_p=0.75)  # fmt: skip
    out = decoded()
    columns = shard_columns(
        prompt_index=[7, 7, 8], rollout=[0, 1, 0], prompt=["a", "a", "b"], prompt_ids=[(5, 6), (5, 6), (9,)],
        seed=[11, 12, 13], decoded=out, response_text=["x", "y", "z"], sampler=sampler,
        teacher={"name": "tiny", "fingerprint": "f" * 16, "family": "bidirectional"},
    )  # fmt: skip
    Manifest().with_shard(write_shard(tmp_path, 0, columns, shard_arrays(out))).save(tmp_path)
    ds = Dataset.open(tmp_path, verify=True)
    frame = ds.scan().collect()
    assert frame["sample_id"].to_list() == ["p000007-r0", "p000007-r1", "p000008-r0"]
    assert frame["response_length"].to_list() == [5, 8, 8]
    assert frame["zarr_index"].to_list() == [0, 1, 2]
    assert set(frame["teacher_name"]) == {"tiny"} and set(frame["teacher_fingerprint"]) == {"f" * 16}
    assert frame["answer"].null_count() == frame["correct"].null_count() == 3  # left out: nulls
    for name in SAMPLER_COLUMNS:
        assert frame[name].to_list() == [pytest.approx(getattr(sampler, name))] * 3, name
    assert np.array_equal(ds.arrays("shard-00000", [2, 0])["topk_ids"], out.topk_ids[[2, 0]])
    assert ds.stored_arrays("shard-00000") == ["topk_logprobs", "topk_ids"]  # states were None: not stored


def test_shard_arrays_reads_every_contract_array_by_name():
    out = decoded()
    arrays = shard_arrays(out)
    assert list(arrays) == list(ARRAYS)
    assert arrays["topk_ids"] is out.topk_ids and arrays["states"] is None  # None: not stored


def test_rows_reads_chosen_rows_of_one_shard_sorted(dataset_dir):
    ds = Dataset.open(dataset_dir)
    rows = ds.rows("shard-00001", [4, 1, 4], ["sample_id", "response_ids"])
    assert rows.columns == ["zarr_index", "sample_id", "response_ids"]
    assert rows["zarr_index"].to_list() == [1, 4]
    whole = ds.scan().collect()
    expected = whole.filter((whole["shard"] == "shard-00001") & whole["zarr_index"].is_in([1, 4])).sort("zarr_index")
    assert rows["sample_id"].to_list() == expected["sample_id"].to_list()


def test_rows_refuses_missing_rows_and_unlisted_shards(dataset_dir):
    ds = Dataset.open(dataset_dir)
    with pytest.raises(DatasetError, match="1 row"):
        ds.rows("shard-00000", [0, 99], ["sample_id"])
    with pytest.raises(DatasetError, match="not in the manifest"):
        ds.rows("shard-00009", [0], ["sample_id"])
