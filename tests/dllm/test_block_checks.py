"""Block size and steps per block against the checkpoint: refused with the reason, before any weights load.

Uses the real-layout SDAR fixture (config.json `block_size: 4`, as SDAR-4B-Chat publishes).
"""

import json

import pytest
from typer.testing import CliRunner

from t3d.dllm.block_checks import check_steps_per_block, trained_block_size
from t3d.dllm.errors import UserError
from t3d.dllm.families import get_family


@pytest.fixture
def sdar(real_fixtures):
    return real_fixtures / "sdar"


@pytest.fixture
def prompts(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"question": f"What is {i} plus {i}?", "answer": str(2 * i)}) + "\n" for i in range(4)))
    return path


@pytest.fixture
def no_weights(monkeypatch):
    """Loading any model's weights fails the test: the checks must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("weights were loaded before the check")

    import t3d.trainer.eval_cli as eval_cli

    monkeypatch.setattr(eval_cli, "load_model", refuse)


def test_the_family_reads_its_trained_block_size(sdar, real_fixtures):
    assert json.loads((sdar / "config.json").read_text())["block_size"] == 4
    assert trained_block_size(sdar) == 4
    assert get_family("sdar").trained_block_size({"block_size": 8}) == 8
    assert trained_block_size(real_fixtures / "llada") is None  # bidirectional: any block decodes as trained
    assert trained_block_size("builtin") is None


def collect(*args):
    from t3d.pipeline.collect import build_app

    return CliRunner().invoke(build_app(), [str(a) for a in args])


def test_collect_refuses_another_block_size_for_sdar(one_line_error, sdar, prompts, tmp_path):
    out = tmp_path / "data"
    result = collect("--model", sdar, "--prompts", prompts, "--block-size", 8, "--max-new-tokens", 16, "--steps-per-block", 8,
                     "--out", out)  # fmt: skip
    one_line_error(result, "--block-size 8", "trained with blocks of 4", "--force-block-size")
    assert not out.exists()


def test_collect_force_block_size_lifts_the_check(sdar, prompts, tmp_path):
    from t3d.pipeline.collect import plan_run
    from t3d.pipeline.config import TREE

    flags = {"model": str(sdar), "prompts": str(prompts), "block_size": 8, "max_new_tokens": 16, "steps_per_block": 8}
    with pytest.raises(UserError, match="trained with blocks of 4"):
        plan_run(TREE.build(flags))
    plan = plan_run(TREE.build(flags | {"force_block_size": True}))  # planning reads no weights and writes nothing
    assert plan.cfg.rollout.sampler.block_size == 8
    # a permission, not a setting: forcing does not change what the dataset is
    assert "force_block_size" not in json.dumps(plan.cfg.dataset_key())


def test_collect_refuses_steps_that_do_not_divide_the_block(one_line_error, sdar, prompts, tmp_path):
    out = tmp_path / "data"
    result = collect("--model", sdar, "--prompts", prompts, "--block-size", 4, "--max-new-tokens", 16, "--steps-per-block", 3,
                     "--out", out)  # fmt: skip
    one_line_error(result, "--steps-per-block 3 does not divide the block size 4", "2, 1, 1", "1, 2, 4")
    assert not out.exists()


def test_steps_are_not_checked_for_a_strategy_without_a_schedule():
    check_steps_per_block(4, [3], "threshold")  # the threshold strategy never reads steps_per_block
    with pytest.raises(UserError, match="does not divide"):
        check_steps_per_block(4, [4, 2, 3], "static")
    check_steps_per_block(8, [8, 4, 2, 1], "static")
    check_steps_per_block(4, [8], "static")  # more steps than tokens: the sampler's own range error says so


def evaluate(*args):
    from t3d.trainer.eval_cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_eval_refuses_another_block_size_before_loading(one_line_error, no_weights, sdar, prompts):
    result = evaluate("--model", f"teacher={sdar}", "--prompts", prompts, "--block-size", 8, "--max-new-tokens", 16)
    one_line_error(result, "--block-size 8", "trained with blocks of 4")


def test_eval_refuses_uneven_steps_before_loading(one_line_error, no_weights, sdar, prompts):
    result = evaluate("--model", f"teacher={sdar}", "--prompts", prompts, "--block-size", 4, "--steps-per-block", "4,3")
    one_line_error(result, "--steps-per-block 3 does not divide the block size 4")


def test_eval_force_block_size_gets_past_the_check(no_weights, sdar, prompts):
    result = evaluate("--model", f"teacher={sdar}", "--prompts", prompts, "--block-size", 8, "--max-new-tokens", 16,
                      "--force-block-size")  # fmt: skip
    assert isinstance(result.exception, AssertionError), result.output  # it went on to load the weights


def distill(*args):
    from t3d.trainer.distill import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_distill_training_block_must_be_a_multiple_of_the_trained_one(one_line_error, sdar, tmp_path):
    data, out = tmp_path / "no-data", tmp_path / "student"
    result = distill("--model", sdar, "--data", data, "--out", out, "--block-size", 6, "--device", "cpu")
    one_line_error(result, "--block-size 6", "trained with blocks of 4", "multiple")
    assert not out.exists()
    # 8 over 4 is the official recipe's training block: the run goes on (and stops at the missing data)
    for extra in (("--block-size", 8), ("--block-size", 6, "--force-block-size")):
        result = distill("--model", sdar, "--data", data, "--out", out, "--device", "cpu", *extra)
        one_line_error(result, "no-data")
