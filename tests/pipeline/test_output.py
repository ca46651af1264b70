"""The output directory: start, resume (repairing a crash), or refuse; --overwrite deletes only a dataset."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from t3d.dllm.errors import UserError
from t3d.dllm.sampling import SamplerConfig
from t3d.pipeline.output import first_difference, open_output
from t3d.storage_schemas import Manifest, shard_columns, write_shard

TEACHER = {"name": "tiny", "fingerprint": "aaaa"}
KEY = {"seed": 0, "rollout": {"sampler": {"temperature": 1.0}}}


def start(out, key=KEY, teacher=TEACHER, overwrite=False):
    return open_output(out, collect_config={"dataset_key": key}, teacher=teacher, skipped={"prompt_too_long": 2}, overwrite=overwrite)


def a_shard(out, index):
    n, length = 2, 4
    decoded = SimpleNamespace(
        tokens=np.full((n, length), 6), reveal_step=np.tile(np.arange(length, dtype=np.int16), (n, 1)),
        confidence=np.ones((n, length), np.float32), num_steps=[length] * n, finish_reason=["length"] * n,
        response_length=[length] * n,
    )  # fmt: skip
    columns = shard_columns(
        prompt_index=[index] * n, rollout=list(range(n)), prompt=["w"] * n, prompt_ids=[[5]] * n, seed=[1, 2],
        decoded=decoded, response_text=["x"] * n, sampler=SamplerConfig(), teacher=TEACHER,
    )  # fmt: skip
    return write_shard(out, index, columns, {})


def test_a_new_directory_gets_a_manifest_first(tmp_path):
    state = start(tmp_path / "out")
    assert not state.resumed and state.manifest.skipped == {"prompt_too_long": 2}
    assert Manifest.load(tmp_path / "out").teacher == TEACHER


def test_resume_keeps_shards_adopts_committed_ones_and_drops_temporaries(tmp_path):
    out = tmp_path / "out"
    manifest = start(out).manifest.with_shard(a_shard(out, 0))
    manifest.save(out)
    a_shard(out, 1)  # committed by a worker after the driver's last manifest save
    (out / ".shard-00002.zarr.tmp-123-abcdef12").mkdir()  # a worker killed mid-write
    (out / ".shard-00002.parquet.tmp-123-abcdef12").write_bytes(b"partial")
    state = start(out)
    assert state.resumed and sorted(state.manifest.shards) == ["shard-00000", "shard-00001"]
    assert state.manifest.skipped == {"prompt_too_long": 2}, "a resume does not count skipped prompts twice"
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.json", "shard-00000.parquet", "shard-00000.zarr", "shard-00001.parquet", "shard-00001.zarr"
    ]
    assert "removed 2 temporaries" in state.reconcile_note


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (dict(teacher={"name": "other", "fingerprint": "bbbb"}), "holds a dataset of another teacher"),
        (dict(key={"seed": 0, "rollout": {"sampler": {"temperature": 0.5}}}), r"other settings \(rollout.sampler.temperature: 1.0 there, 0.5 now\)"),
    ],
)
def test_another_teacher_or_settings_is_refused_unless_overwrite(tmp_path, change, message):
    out = tmp_path / "out"
    start(out).manifest.with_shard(a_shard(out, 0)).save(out)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match=message + ".*pass --overwrite"):
        start(out, **change)
    assert (out / "shard-00000.parquet").exists(), "a refusal touches nothing"
    state = start(out, overwrite=True, **change)
    assert not state.resumed and state.manifest.shards == {}
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "notes.txt"], "only the dataset's files go"


def test_another_schema_version_is_refused_unless_overwrite(tmp_path):
    out = tmp_path / "out"
    dataclasses.replace(Manifest(teacher=TEACHER, collect_config={"dataset_key": KEY}), schema_version=0).save(out)
    with pytest.raises(UserError, match="schema version 0, this t3d reads version 1.*--overwrite"):
        start(out)
    assert start(out, overwrite=True).manifest.schema_version == 1


def test_shards_without_a_manifest_or_foreign_files_are_not_deleted(tmp_path):
    out = tmp_path / "out"
    a_shard(out, 0)
    with pytest.raises(UserError, match="holds shard files but no manifest.json"):
        start(out)
    other = tmp_path / "other"
    other.mkdir()
    (other / "thesis.tex").write_text("x")
    with pytest.raises(UserError, match="not a t3d dataset; refusing to delete"):
        start(other, overwrite=True)
    assert start(other).manifest.shards == {}, "a directory with other files is fine without --overwrite"


def test_first_difference():
    assert first_difference({"a": {"b": 1}}, {"a": {"b": 1}}) is None
    assert first_difference({"a": (1, 2)}, {"a": [1, 2]}) is None
    assert first_difference({"a": {"b": 1}}, {"a": {"b": 2}}) == "a.b: 1 there, 2 now"
    assert first_difference({}, {"z": 1}) == "z: None there, 1 now"
