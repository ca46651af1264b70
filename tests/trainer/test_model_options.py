"""--family and --dtype on t3d-distill and t3d-eval (the same options as t3d-collect's), and a student whose family is not its data's teacher's.

Bad values are one line on stderr, exit code 2, no traceback, and nothing written.
"""

import json

import pytest
from typer.testing import CliRunner

from t3d.dllm.tiny import build_checkpoint
from t3d.trainer import checkpoint as ckpt
from t3d.trainer.distill import app as distill_app
from t3d.trainer.eval_cli import app as eval_app


def test_every_command_loads_a_model_with_the_same_options():
    """--family, --dtype, --trust-remote-code: one dataclass (LoadConfig), so one help and one default everywhere."""
    from dataclasses import fields

    from t3d.dllm.loading import LoadConfig
    from t3d.dllm.options import field_docs
    from t3d.pipeline.config import TREE as COLLECT
    from t3d.trainer.config import TREE as DISTILL
    from t3d.trainer.eval_cli import TREE as EVAL

    names = [f.name for f in fields(LoadConfig)]
    expected = [(name, field_docs(LoadConfig)[name], f.default) for name, f in zip(names, fields(LoadConfig))]
    for tree in (COLLECT, DISTILL, EVAL):
        found = [(o.name, o.help, o.default) for o in tree.options if o.name in names]
        assert found == expected, tree.root.__name__
        assert all(tree.by_name[name].route[-2:] == ("load", name) for name in names), tree.root.__name__


def distill(data, model, out, *extra):
    args = ["--data", str(data), "--model", str(model), "--out", str(out), "--max-steps", "1", "--batch-size", "4",
            "--no-progress", "--device", "cpu", "--warmup-steps", "0", *map(str, extra)]  # fmt: skip
    return CliRunner().invoke(distill_app, args)


def evaluate(model, *extra):
    args = ["--model", f"teacher={model}", "--prompts", "builtin:test", "--limit", "2", "--samples-per-prompt", "1", "--steps-per-block", "1",
            "--max-new-tokens", "4", *map(str, extra)]  # fmt: skip
    return CliRunner().invoke(eval_app, args)


@pytest.mark.parametrize(
    "flags, words",
    [(["--family", "gpt2"], ("unknown model family 'gpt2'", "sdar", "llada", "dream")),
     (["--dtype", "int8"], ("--dtype must be one of", "bfloat16"))],
)  # fmt: skip
def test_distill_refuses_an_unknown_family_or_dtype_and_writes_nothing(one_line_error, teachers, datasets, tmp_path, flags, words):
    out = tmp_path / "o"
    one_line_error(distill(datasets["bidirectional"], teachers["bidirectional"], out, *flags), *words)
    assert not out.exists()


def test_distill_refuses_a_student_of_another_family_than_the_datas_teacher(one_line_error, teachers, datasets, tmp_path):
    """Block-causal trajectories (states laid out per block) cannot train a bidirectional student."""
    out = tmp_path / "o"
    result = distill(datasets["block_causal"], teachers["bidirectional"], out)
    one_line_error(result, "student family bidirectional", "teacher's (block_causal)")
    assert not out.exists()
    result = distill(datasets["block_causal"], teachers["bidirectional"], out, "--family", "block_causal")
    assert result.exit_code == 0, result.output  # --family makes the same weights a block-causal student


def test_distill_dtype_is_the_training_dtype_and_the_student_keeps_the_teachers(teachers, datasets, tmp_path):
    out = tmp_path / "o"
    result = distill(datasets["bidirectional"], teachers["bidirectional"], out, "--dtype", "bfloat16", "--lr", "1e-3")
    assert result.exit_code == 0, result.output
    assert "(bidirectional, bfloat16," in result.output  # the run header names family and dtype
    checkpoint = ckpt.latest_checkpoint(out)
    assert json.loads((checkpoint / ckpt.T3D_JSON).read_text())["weights_dtype"] == "bfloat16"
    meta = json.loads((out / "student" / ckpt.T3D_JSON).read_text())
    assert meta["family"] == "bidirectional" and meta["base"]["dtype"] == "float32"


@pytest.fixture(scope="module")
def eval_model(tmp_path_factory):
    from t3d.dllm.task import BuiltinTask

    task = BuiltinTask()
    common = dict(vocab_size=len(task.vocabulary), mask_id=task.mask_id, pad_id=task.pad_id, eos_id=task.eos_id,
                  tokenizer=task.tokenizer())  # fmt: skip
    return build_checkpoint(tmp_path_factory.mktemp("eval") / "m", **common)


@pytest.mark.parametrize(
    "flags, words",
    [(["--family", "gpt2"], ("unknown model family 'gpt2'",)), (["--dtype", "int8"], ("--dtype must be one of",))],
)
def test_eval_refuses_an_unknown_family_or_dtype(one_line_error, eval_model, tmp_path, flags, words):
    json_path = tmp_path / "r.json"
    one_line_error(evaluate(eval_model, "--json", json_path, *flags), *words)
    assert not json_path.exists()


def test_eval_family_and_dtype_reach_the_model_and_the_header(eval_model):
    plain = evaluate(eval_model)
    assert plain.exit_code == 0, plain.output
    assert "models: teacher (bidirectional, float32)" in plain.stderr
    forced = evaluate(eval_model, "--family", "block_causal", "--dtype", "bfloat16")
    assert forced.exit_code == 0, forced.output
    assert "models: teacher (block_causal, bfloat16)" in forced.stderr
