"""t3d-inspect on datasets built without Ray: the numbers, --json, the picture by default, --row, SDAR blocks, --verify."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from t3d.dllm import load_model
from t3d.dllm.sampling import SamplerConfig
from t3d.pipeline.config import RolloutConfig, TeacherConfig
from t3d.pipeline.inspect import MASK_GLYPH, build_app, reveal_order
from t3d.pipeline.prompts import EncodedPrompt
from t3d.pipeline.rollout import RolloutJob, run_unit
from t3d.pipeline.units import plan_units
from t3d.storage_schemas import Dataset, Manifest


def build_dataset(out, teacher_dir, prompts, sampler, rollouts=3, shard_size=3):
    """Shards of a dense-states dataset, committed and listed like collect does."""
    teacher = load_model(teacher_dir)
    identity = teacher.identity()
    rollout = RolloutConfig(rollouts_per_prompt=rollouts, record_states="dense", sampler=sampler)
    job = RolloutJob(out_dir=str(out), teacher=TeacherConfig(model=identity["path"]), teacher_identity=identity, rollout=rollout, seed=1)
    units = plan_units(prompts, shard_size=shard_size)
    manifest = Manifest(teacher=identity, collect_config={"config": {"rollout": {"rollouts_per_prompt": rollouts}}, "units": len(units)},
                        skipped={"prompt_too_long": 2})  # fmt: skip
    for unit in units:
        manifest = manifest.with_shard(run_unit(teacher, unit, job).shard)
    manifest.save(out)
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory, teacher_dir):
    """Two shards of the tiny word-level teacher's trajectories (blocks from the response)."""
    prompts = [EncodedPrompt(index=i, ids=(4, 6 + i, 5), text=None, answer=None) for i in range(5)]
    out = tmp_path_factory.mktemp("inspect") / "dataset"
    return build_dataset(out, teacher_dir, prompts, SamplerConfig(steps_per_block=2, stop_at_eos=False))


def run(args):
    return CliRunner().invoke(build_app(), args)


def test_json_report_adds_up(dataset):
    result = run([str(dataset), "--json", "--verify", "--no-plot"])
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


def test_text_report_and_plot_where_asked(dataset, tmp_path):
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


def test_the_picture_is_drawn_by_default_and_the_report_says_where(dataset):
    beside = dataset.parent / f"{dataset.name}-inspect.png"
    beside.unlink(missing_ok=True)
    result = run([str(dataset)])
    assert result.exit_code == 0, result.output
    assert beside.read_bytes()[:4] == b"\x89PNG" and f"plot        {beside}" in result.stdout
    assert not (dataset / beside.name).exists(), "nothing is written inside the dataset"
    beside.unlink()
    assert run([str(dataset), "--no-plot"]).exit_code == 0 and not beside.exists()


def test_row_shows_its_tokens_step_by_step_in_reveal_order(dataset, teacher_dir):
    from t3d.dllm.loading import load_tokenizer

    result = run([str(dataset), "--row", "4", "--no-plot"])
    assert result.exit_code == 0, result.output
    row = Dataset.open(dataset).scan().slice(4, 1).collect().row(0, named=True)
    tokenizer = load_tokenizer(teacher_dir, trust_remote_code=False)
    lines = result.stdout.split("\nrow 4 ", 1)[1].splitlines()
    step_lines = [line for line in lines if line.startswith("step ")]
    reveal = np.asarray(row["reveal_step"])
    assert [int(line.split()[1]) for line in step_lines] == sorted(set(reveal[reveal >= 0].tolist())), "one line per step, in order"
    for line in step_lines:  # each step lists exactly the tokens revealed at it, as text
        step = int(line.split()[1])
        listed = line.split("  ")[-1].split(", ")
        expected = [f"{i}:{tokenizer.decode([row['response_ids'][i]])!r}" for i in np.flatnonzero(reveal == step)]
        assert listed == expected, line
    final_state = lines[lines.index(step_lines[-1]) + 1].strip()
    words = [tokenizer.decode([row["response_ids"][i]]) for i in np.flatnonzero(reveal >= 0)]  # special tokens too
    assert MASK_GLYPH not in final_state and final_state.replace(" | ", " ").split() == words
    assert run([str(dataset), "--row", "99", "--no-plot"]).exit_code == 2


def test_row_without_a_tokenizer_shows_ids_and_says_why(dataset, tmp_path):
    import shutil

    copy = tmp_path / "moved"
    shutil.copytree(dataset, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["teacher"]["path"] = str(tmp_path / "gone")
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = run([str(copy), "--row", "0", "--no-plot"])
    assert result.exit_code == 0, result.output
    assert f"(token ids, no text: the teacher directory {tmp_path / 'gone'} is not on this machine)" in result.stdout
    assert "#" in result.stdout.split("step ", 1)[1]


def test_verify_says_what_it_checked(dataset):
    result = run([str(dataset), "--verify", "--no-plot"])
    assert result.exit_code == 0, result.output
    assert "verified    2 shards: sha256 of 2 Parquet files and 2 Zarr trees" in result.stdout
    assert "15 rows, as listed" in result.stdout
    assert "verified" not in run([str(dataset), "--no-plot"]).stdout, "nothing claimed without --verify"


@pytest.fixture(scope="module")
def sdar_dataset(tmp_path_factory, realckpt):
    """The real-layout SDAR fixture (blocks of 4 at absolute positions) on prompts of 5, 6 and 7 tokens."""
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("sdar")
    subprocess.run([sys.executable, str(realckpt / "build_fixtures.py"), "--out", str(root), "--small-vocab", "--only", "sdar"],
                   check=True, capture_output=True)  # fmt: skip
    prompts = [EncodedPrompt(index=i, ids=tuple(range(40, 45 + i)), text=None, answer=None) for i in range(3)]
    sampler = SamplerConfig(block_size=4, steps_per_block=4, max_new_tokens=16, stop_at_eos=False)
    return build_dataset(root / "dataset", root / "sdar", prompts, sampler, rollouts=2)


@pytest.mark.slow
def test_sdar_blocks_are_counted_from_the_first_prompt_token(sdar_dataset):
    data = Dataset.open(sdar_dataset)
    order = reveal_order(data)
    assert order.shape == (4, 4), "4 steps per block: nothing is revealed more than 3 steps after its block began"
    np.testing.assert_allclose(order.sum(axis=1), 1.0)
    wrong = reveal_order(data, absolute=False)
    assert wrong.shape[1] > 4, "response-relative blocks straddle two absolute blocks (the old picture)"
    result = run([str(sdar_dataset), "--row", "1", "--no-plot"])  # prompt of 5 tokens: 1 in block 1 with 3 masks
    assert result.exit_code == 0, result.output
    assert "sdar: blocks at absolute positions from the first prompt token" in result.stdout
    assert "(5 tokens, last 1 in block 1)" in result.stdout
    first_state = result.stdout.split("step ", 1)[1].splitlines()[1].strip()
    assert first_state.split(" | ")[0].count(MASK_GLYPH) == 2, "block 1 holds 3 response positions, one revealed at step 0"
