"""Readers refuse what they cannot trust: other schema versions, corrupt or missing shards."""

import json

import pyarrow.parquet as pq
import pytest

from t3d.storage_schemas import DatasetError, Dataset, check_shard_files


def _edit_manifest(dataset_dir, **changes):
    path = dataset_dir / "manifest.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _flip_one_byte(path, offset=-20):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def _a_chunk(dataset_dir, shard, array):
    return next(p for p in sorted((dataset_dir / f"{shard}.zarr" / array).rglob("*")) if p.is_file() and p.name != "zarr.json")


def test_schema_version_mismatch_names_versions_and_dir(dataset_dir):
    _edit_manifest(dataset_dir, schema_version=2)
    with pytest.raises(DatasetError, match=r"schema version 2, this t3d reads version 1") as err:
        Dataset.open(dataset_dir)
    assert str(dataset_dir) in str(err.value) and "\n" not in str(err.value)


def test_parquet_of_another_version_is_refused(dataset_dir):
    path = dataset_dir / "shard-00000.parquet"
    table = pq.read_table(path)
    pq.write_table(table.replace_schema_metadata({"t3d.schema_version": "0"}), path)
    with pytest.raises(DatasetError, match=r"shard-00000.*schema version 0"):
        check_shard_files(dataset_dir, "shard-00000")


@pytest.mark.parametrize("part", ["parquet", "zarr"])
def test_one_corrupt_byte_is_named_by_shard(dataset_dir, part):
    target = dataset_dir / "shard-00001.parquet" if part == "parquet" else _a_chunk(dataset_dir, "shard-00001", "topk_ids")
    _flip_one_byte(target)
    ds = Dataset.open(dataset_dir)  # opening does not read every byte...
    with pytest.raises(DatasetError, match=rf"checksum mismatch in shard shard-00001 .*\({part}\)"):
        ds.verify()  # ...verify does
    with pytest.raises(DatasetError, match="shard-00001"):
        Dataset.open(dataset_dir, verify=True)


def test_skip_bad_excludes_the_shard_everywhere(dataset_dir):
    _flip_one_byte(_a_chunk(dataset_dir, "shard-00000", "states"))
    ds = Dataset.open(dataset_dir)
    assert ds.verify(skip_bad=True) == ["shard-00000"]
    assert ds.shards == ["shard-00001"]
    assert ds.num_rows == 6 == ds.scan().collect().height
    assert ds.scan().collect()["shard"].unique().to_list() == ["shard-00001"]
    with pytest.raises(DatasetError, match="shard-00000.*excluded"):
        ds.arrays("shard-00000", [0])
    assert ds.verify() == []  # the rest is sound


def test_listed_shard_missing_is_refused(dataset_dir):
    (dataset_dir / "shard-00001.parquet").unlink()
    with pytest.raises(DatasetError, match=r"shard-00001 is listed in .*manifest.json but .*shard-00001.parquet is missing"):
        Dataset.open(dataset_dir)


def test_missing_and_corrupt_manifest(tmp_path, dataset_dir):
    with pytest.raises(DatasetError, match=rf"no manifest.json in {tmp_path / 'nowhere'}"):
        Dataset.open(tmp_path / "nowhere")
    (dataset_dir / "manifest.json").write_text('{"format": "t3d-traj')
    with pytest.raises(DatasetError, match=r"corrupt manifest .*manifest.json"):
        Dataset.open(dataset_dir)
    fields_missing = {"format": "t3d-trajectories", "schema_version": 1, "shards": {}}
    (dataset_dir / "manifest.json").write_text(json.dumps(fields_missing))
    with pytest.raises(DatasetError, match=r"corrupt manifest .*KeyError"):
        Dataset.open(dataset_dir)


def test_unknown_shard_and_out_of_range_rows(dataset_dir):
    ds = Dataset.open(dataset_dir)
    with pytest.raises(DatasetError, match="shard-00009 is not in the manifest"):
        ds.arrays("shard-00009", [0])
    with pytest.raises(DatasetError, match=r"shard-00000 .*out of range 0..4"):
        ds.arrays("shard-00000", [5])
