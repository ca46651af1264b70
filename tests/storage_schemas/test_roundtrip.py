"""Write shards, read them back: bit-exact values, through t3d and through plain polars/zarr."""

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import zarr

from t3d.storage_schemas import SCHEMA_VERSION, VERSION_KEY, Dataset, Manifest, write_shard


def test_parquet_round_trip_is_exact(tmp_path, make_shard):
    columns, arrays = make_shard(rows=6, seed=3)
    Manifest().with_shard(write_shard(tmp_path, 7, columns, arrays)).save(tmp_path)
    frame = Dataset.open(tmp_path).scan().collect()
    assert frame["shard"].unique().to_list() == ["shard-00007"]
    assert frame["sample_id"].to_list() == columns["sample_id"]
    assert frame["response_ids"].to_list() == columns["response_ids"].tolist()
    assert frame["reveal_step"].to_list() == columns["reveal_step"].tolist()
    assert frame["prompt_ids"].to_list() == columns["prompt_ids"]
    confidence = np.array(frame["confidence"].to_list(), dtype=np.float32)
    assert confidence.tobytes() == columns["confidence"].tobytes()  # float32 stored as float32
    assert frame["answer"].to_list() == columns["answer"]
    assert frame["correct"].to_list() == columns["correct"]
    assert frame["zarr_index"].to_list() == columns["zarr_index"].tolist()
    assert frame.schema["reveal_step"] == pl.List(pl.Int16)
    assert frame.schema["response_ids"] == pl.List(pl.Int32)


def test_zarr_round_trip_is_bit_exact_through_zarr_index(tmp_path, make_shard):
    columns, arrays = make_shard(rows=5, seed=1)
    Manifest().with_shard(write_shard(tmp_path, 0, columns, arrays)).save(tmp_path)
    ds = Dataset.open(tmp_path)
    frame = ds.scan().collect()  # table order; arrays[j] was written as zarr row j
    order = frame["zarr_index"].to_numpy()
    assert np.array_equal(order, columns["zarr_index"])
    got = ds.arrays("shard-00000", order, upcast=False)
    expected16 = arrays["topk_logprobs"].astype(np.float16)[order]  # (N, L, k)
    assert got["topk_logprobs"].dtype == np.float16
    assert got["topk_logprobs"].view(np.uint16).tobytes() == expected16.view(np.uint16).tobytes()
    assert np.array_equal(got["topk_ids"], arrays["topk_ids"][order]) and got["topk_ids"].dtype == np.int32
    assert np.array_equal(got["states"], arrays["states"][order]) and got["states"].dtype == np.int32
    first = ds.arrays("shard-00000", [0], upcast=False)["topk_logprobs"]
    assert np.isneginf(first[0, 0, 0]) and 0 < first[0, 0, 1] < np.finfo(np.float16).tiny  # -inf, subnormal kept
    upcast = ds.arrays("shard-00000", order)
    assert upcast["topk_logprobs"].dtype == np.float32
    assert np.array_equal(upcast["topk_logprobs"], expected16.astype(np.float32))


def test_arrays_follow_requested_order_with_duplicates(dataset_dir):
    ds = Dataset.open(dataset_dir)
    full = ds.arrays("shard-00001", np.arange(6))
    picked = ds.arrays("shard-00001", [4, 0, 4, 2])
    for name in full:
        assert np.array_equal(picked[name], full[name][[4, 0, 4, 2]])
    assert ds.arrays("shard-00001", [])["topk_ids"].shape == (0, *full["topk_ids"].shape[1:])


def test_states_are_optional(tmp_path, make_shard):
    columns, arrays = make_shard(states=False)
    Manifest().with_shard(write_shard(tmp_path, 0, columns, arrays)).save(tmp_path)
    ds = Dataset.open(tmp_path)
    assert set(ds.arrays("shard-00000", [0])) == {"topk_ids", "topk_logprobs"}
    assert set(ds.arrays("shard-00000", [0], names=["topk_ids", "states"])) == {"topk_ids"}


def test_dataset_counts_and_bytes_per_token(dataset_dir):
    ds = Dataset.open(dataset_dir, verify=True)
    assert ds.shards == ["shard-00000", "shard-00001"]
    assert ds.num_rows == 11 == ds.scan().collect().height
    tokens = ds.scan().select(pl.col("response_length").sum()).collect().item()
    per_token = ds.bytes_per_response_token()
    assert set(per_token) == {"parquet", "topk_logprobs", "topk_ids", "states"}
    on_disk = sum(p.stat().st_size for p in (dataset_dir / "shard-00000.zarr" / "states").rglob("*") if p.is_file())
    on_disk += sum(p.stat().st_size for p in (dataset_dir / "shard-00001.zarr" / "states").rglob("*") if p.is_file())
    assert per_token["states"] == on_disk / tokens


def test_readable_without_t3d_and_temporaries_are_not_globbed(dataset_dir):
    leftover = dataset_dir / ".shard-00002.parquet.tmp-123-abcdef01"  # what a killed writer leaves
    pq.write_table(Dataset.open(dataset_dir).scan().collect().drop("shard").to_arrow(), leftover)
    frame = pl.scan_parquet(str(dataset_dir) + "/*.parquet").collect()
    assert frame.height == 11
    group = zarr.open_group(str(dataset_dir / "shard-00001.zarr"), mode="r")
    assert group.attrs[VERSION_KEY] == SCHEMA_VERSION and group.attrs["rows"] == 6
    assert group["topk_logprobs"].dtype == np.float16 and group["topk_logprobs"].shape[0] == 6
    assert group["states"].metadata.dimension_names == ("row", "step", "position")
    assert pq.read_schema(dataset_dir / "shard-00001.parquet").metadata[VERSION_KEY.encode()] == b"1"


def test_rewrite_same_content_keeps_files_and_new_content_replaces(tmp_path, make_shard):
    columns, arrays = make_shard(seed=4)
    first = write_shard(tmp_path, 3, columns, arrays)
    stamp = (tmp_path / "shard-00003.parquet").stat().st_ino
    assert write_shard(tmp_path, 3, columns, arrays) == first
    assert (tmp_path / "shard-00003.parquet").stat().st_ino == stamp  # not replaced
    other_columns, other_arrays = make_shard(seed=5)
    second = write_shard(tmp_path, 3, other_columns, other_arrays)
    assert second.zarr_sha256 != first.zarr_sha256
    Manifest().with_shard(second).save(tmp_path)
    ds = Dataset.open(tmp_path, verify=True)
    assert ds.scan().collect()["sample_id"].to_list() == other_columns["sample_id"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "shard-00003.parquet", "shard-00003.zarr"]


def test_manifest_round_trip(dataset_dir):
    manifest = Manifest.load(dataset_dir)
    assert manifest.collect_config == {"rollouts": 1} and manifest.teacher == {"name": "builtin"}
    assert manifest.shards["shard-00001"].rows == 6 and manifest.shards["shard-00001"].index == 1
    updated = manifest.with_skipped({"prompt_too_long": 2}).with_skipped({"prompt_too_long": 1})
    updated.save(dataset_dir)
    assert Manifest.load(dataset_dir) == updated and updated.skipped == {"prompt_too_long": 3}
    assert [p.name for p in dataset_dir.iterdir() if p.name.startswith(".")] == []
