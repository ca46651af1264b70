"""Atomic commits and crash recovery: a failed write never shows a shard; reconcile repairs."""

import os
import pickle
import shutil
import subprocess
import sys
import textwrap

import pytest

from t3d.storage_schemas import Dataset, Manifest, reconcile, write_shard


def _visible_parquet(directory):
    """What `polars.scan_parquet(dir + "/*.parquet")` would read (hidden files included)."""
    return sorted(p.name for p in directory.iterdir() if p.name.endswith(".parquet"))


def _temporaries(directory):
    return sorted(p.name for p in directory.iterdir() if ".tmp-" in p.name)


def test_failed_commit_shows_nothing_and_cleans_its_temporaries(tmp_path, make_shard, monkeypatch):
    columns, arrays = make_shard()
    real_rename = os.rename

    def failing_rename(src, dst):  # the disk fills up at the last step
        if str(dst).endswith(".parquet"):
            raise OSError(28, "No space left on device")
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(OSError, match="No space left"):
        write_shard(tmp_path, 0, columns, arrays)
    monkeypatch.setattr(os, "rename", real_rename)
    assert _visible_parquet(tmp_path) == []
    assert _temporaries(tmp_path) == []
    assert (tmp_path / "shard-00000.zarr").is_dir()  # renamed first; invisible without its Parquet
    result = reconcile(tmp_path, Manifest())
    assert result.removed_incomplete == ("shard-00000",) and result.adopted == ()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


_CRASHING_WRITER = """
import os, pickle, sys
from t3d.storage_schemas import write_shard
real_rename = os.rename
def crash(src, dst):
    if str(dst).endswith(sys.argv[3]):
        os._exit(3)  # killed: no finally blocks, no cleanup
    real_rename(src, dst)
os.rename = crash
columns, arrays = pickle.load(open(sys.argv[2], "rb"))
write_shard(sys.argv[1], 0, columns, arrays)
"""


@pytest.mark.parametrize("crash_at", [".zarr", ".parquet"])
def test_killed_writer_leaves_no_visible_shard_and_reconcile_repairs(tmp_path, make_shard, crash_at):
    data = tmp_path / "data"
    payload = tmp_path / "payload.pkl"
    payload.write_bytes(pickle.dumps(make_shard()))
    script = textwrap.dedent(_CRASHING_WRITER)
    done = subprocess.run([sys.executable, "-c", script, str(data), str(payload), crash_at], capture_output=True, timeout=120)
    assert done.returncode == 3, done.stderr.decode()[-2000:]
    assert _visible_parquet(data) == []
    left = _temporaries(data)
    assert any(name.startswith(".shard-00000.parquet.tmp-") for name in left)
    result = reconcile(data, Manifest())
    assert result.removed_temporaries == tuple(left) and _temporaries(data) == []
    assert result.removed_incomplete == (("shard-00000",) if crash_at == ".parquet" else ())
    assert list(data.iterdir()) == []
    columns, arrays = pickle.loads(payload.read_bytes())
    result.manifest.with_shard(write_shard(data, 0, columns, arrays)).save(data)  # the retry
    assert Dataset.open(data, verify=True).num_rows == 5


def test_reconcile_adopts_a_complete_orphan(tmp_path, make_shard):
    infos = [write_shard(tmp_path, i, *make_shard(seed=i)) for i in range(2)]
    manifest = Manifest().with_shard(infos[0])  # the driver died before listing shard 1
    result = reconcile(tmp_path, manifest)
    assert result.adopted == ("shard-00001",) and result.removed_incomplete == ()
    assert result.manifest.shards["shard-00001"] == infos[1]
    assert "adopted 1 shard(s) ['shard-00001']" in result.summary()
    result.manifest.save(tmp_path)
    assert Dataset.open(tmp_path, verify=True).shards == ["shard-00000", "shard-00001"]


def test_reconcile_removes_incomplete_and_invalid_shards(tmp_path, make_shard):
    for i in range(5):
        write_shard(tmp_path, i, *make_shard(rows=4 + i, seed=i))
    shutil.rmtree(tmp_path / "shard-00001.zarr")  # Parquet without Zarr
    (tmp_path / "shard-00002.parquet").unlink()  # Zarr without Parquet
    shutil.copy(tmp_path / "shard-00004.parquet", tmp_path / "shard-00003.parquet")  # rows disagree: 8 vs 7
    (tmp_path / ".manifest.json.tmp-99-0badf00d").write_text("{")
    result = reconcile(tmp_path, Manifest())
    assert result.adopted == ("shard-00000", "shard-00004")
    assert result.removed_incomplete == ("shard-00001", "shard-00002", "shard-00003")
    assert result.removed_temporaries == (".manifest.json.tmp-99-0badf00d",)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["shard-00000.parquet", "shard-00000.zarr", "shard-00004.parquet", "shard-00004.zarr"]


def test_reconcile_unlists_shards_whose_files_are_gone(dataset_dir):
    shutil.rmtree(dataset_dir / "shard-00001.zarr")
    result = reconcile(dataset_dir, Manifest.load(dataset_dir))
    assert result.dropped_missing == ("shard-00001",) and result.removed_incomplete == ("shard-00001",)
    result.manifest.save(dataset_dir)
    assert Dataset.open(dataset_dir, verify=True).shards == ["shard-00000"]
