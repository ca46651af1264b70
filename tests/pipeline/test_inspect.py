"""t3d-inspect on a dataset built without Ray: the numbers, --json, --plot, and a clean error."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from t3d.dllm import load_model
from t3d.dllm.sampling import SamplerConfig
from t3d.pipeline.config import RolloutConfig, TeacherConfig
from t3d.pipeline.inspect import build_app, reveal_order
from t3d.pipeline.prompts import EncodedPrompt
from t3d.pipeline.rollout import RolloutJob, run_unit
from t3d.pipeline.units import plan_units
from t3d.storage_schemas import Dataset, Manifest


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, teacher_dir):
    """Two shards of a dense-states dataset, committed and listed like collect does."""
    out = tmp_path_factory.mktemp("inspect") / "dataset"
    teacher = load_model(teacher_dir)
    identity = teacher.identity()
    rollout = RolloutConfig(rollouts_per_prompt=3, record_states="dense", sampler=SamplerConfig(steps_per_block=2, stop_at_eos=False))
    job = RolloutJob(out_dir=str(out), teacher=TeacherConfig(model=identity["path"]), teacher_identity=identity, rollout=rollout, seed=1)
    prompts = [EncodedPrompt(index=i, ids=(4, 6 + i, 5), text=None, answer=None) for i in range(5)]
    units = plan_units(prompts, shard_size=3)
    manifest = Manifest(teacher=identity, collect_config={"config": {"rollout": {"rollouts_per_prompt": 3}}, "units": len(units)},
                        skipped={"prompt_too_long": 2})
    for unit in units:
        manifest = manifest.with_shard(run_unit(teacher, unit, job).shard)
    manifest.save(out)
    return out


def run(args):
    return CliRunner().invoke(build_app(), args)


def test_json_report_adds_up(dataset):
    result = run([str(dataset), "--json", "--verify"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = Dataset.open(dataset).scan().collect()
    assert (report["shards"], report["shards_planned"], report["rows"], report["prompts"]) == (2, 2, 15, 5)
    assert report["response_tokens"] == rows["response_length"].sum()
    assert report["finish_reasons"] == dict(rows["finish_reason"].value_counts().rows())
    assert report["steps"]["max"] == rows["num_steps"].max()
    assert report["skipped"] == {"prompt_too_long": 2}
    assert set(report["bytes_per_response_token"]) == {"parquet", "topk_ids", "topk_logprobs", "states"}
    per_token = {k: v / report["response_tokens"] for k, v in report["bytes"].items()}
    assert per_token == pytest.approx(report["bytes_per_response_token"])


def test_text_report_and_plot(dataset, tmp_path):
    plot = tmp_path / "trajectory.png"
    result = run([str(dataset), "--plot", str(plot)])
    assert result.exit_code == 0, result.output
    for label in ("shards      2 of 2", "rows        15 (5 prompts x 3 rollouts)", "bytes/token", "states", "skipped     prompt_too_long 2"):
        assert label in result.stdout, label
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:4] == b"\x89PNG"


def test_reveal_order_is_a_distribution_per_position(dataset):
    order = reveal_order(Dataset.open(dataset))  # (B, steps within a block)
    assert order.shape == (4, 2), "blocks of 4 decoded in 2 static steps"
    np.testing.assert_allclose(order.sum(axis=1), 1.0)
    np.testing.assert_allclose(order.sum(axis=0), [2.0, 2.0]), "two tokens revealed per step"


def test_a_missing_dataset_is_one_line(tmp_path):
    result = run([str(tmp_path / "nothing")])
    assert result.exit_code == 2
    assert result.stderr.strip() == f"error: no manifest.json in {tmp_path / 'nothing'}: not a t3d dataset, or collect never committed"
