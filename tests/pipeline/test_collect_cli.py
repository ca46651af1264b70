"""Bad input to t3d-collect: one line on stderr, exit code 2, no traceback, no shard visible.

Every case fails before Ray starts, so the CLI runs in-process (typer's runner); one case
runs the installed console script to check the same behaviour end to end.
"""

import dataclasses
import socket

import numpy as np
import pytest
from typer.testing import CliRunner

from t3d.pipeline.collect import build_app
from t3d.storage_schemas import Manifest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args):
    return CliRunner().invoke(build_app(), args)


@pytest.fixture
def bad_files(tmp_path):
    files = {
        "empty": tmp_path / "empty.jsonl",
        "malformed": tmp_path / "malformed.jsonl",
        "nofield": tmp_path / "nofield.jsonl",
    }
    files["empty"].write_text("")
    files["malformed"].write_text('{"prompt": "w1"}\n{"prompt": "w2"}\n{"prompt": "w3",}\n')
    files["nofield"].write_text('{"prompt": "w1"}\n{"txt": "w2"}\n')
    return files


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "prompts file not found: "),
        ("empty", "prompts file is empty: "),
        ("malformed", "malformed.jsonl line 3: malformed JSON"),
        ("nofield", "nofield.jsonl line 2: no known layout has these fields (txt)"),
        ("too_long", "prompt 5 has 22 tokens, more than the 16 the model allows"),
        ("no_model", "model directory not found: "),
        ("bad_option", "unknown option 'temprature' in "),
        ("scorer_misfit", "--scorer builtin judges only the built-in task's prompts"),
        ("no_cluster", "no Ray cluster at 127.0.0.1:"),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(one_line_error, tmp_path, collect_cmd, bad_files, case, message):
    out = tmp_path / "out"
    args = collect_cmd(out)
    if case == "missing":
        args[args.index("--prompts") + 1] = str(tmp_path / "nope.jsonl")
    elif case in bad_files:
        args[args.index("--prompts") + 1] = str(bad_files[case])
    elif case == "too_long":
        args += ["--on-long-prompt", "error"]
    elif case == "no_model":
        args[args.index("--model") + 1] = str(tmp_path / "no-such-model")
    elif case == "scorer_misfit":
        args += ["--scorer", "builtin"]
    elif case == "no_cluster":  # nothing listens there: refused at once, not after ray.init's minutes of retries
        args += ["--address", f"127.0.0.1:{free_port()}"]
    elif case == "bad_option":
        config = tmp_path / "cfg.toml"
        config.write_text("temprature = 0.5\n")
        args += ["--config", str(config)]
    result = run(args)
    one_line_error(result, message)
    assert not out.exists(), "nothing is written before the input is known to be good"


@pytest.mark.parametrize(
    ("manifest", "message"),
    [
        (Manifest(teacher={"name": "other", "fingerprint": "0123456789abcdef"}), "holds a dataset of another teacher"),
        (dataclasses.replace(Manifest(), schema_version=99), "schema version 99, this t3d reads version 1"),
    ],
)
def test_an_incompatible_dataset_is_refused(one_line_error, tmp_path, collect_cmd, manifest, message):
    out = tmp_path / "out"
    manifest.save(out)
    before = (out / "manifest.json").read_text()
    result = run(collect_cmd(out))
    one_line_error(result, message)
    assert "--overwrite" in result.stderr
    assert (out / "manifest.json").read_text() == before


def test_the_console_script_fails_cleanly(tmp_path, collect_cmd, tools):
    out = tmp_path / "out"
    args = collect_cmd(out)
    args[args.index("--model") + 1] = str(tmp_path / "no-such-model")
    result = tools.cli("t3d-collect", args, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: model directory not found: {tmp_path / 'no-such-model'}"
    assert not out.exists()


def test_help_lists_the_options_with_their_docs():
    result = CliRunner().invoke(build_app(), ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for text in ("--rollouts-per-prompt", "Responses sampled per prompt", "--address", "--record-states", "--config"):
        assert text in result.output, text


def test_default_prompts_are_the_builtin_train_split():
    """No --prompts, no --model: the shipped teacher on its task's train split (test is kept for eval)."""
    from t3d.dllm.loading import BUILTIN_DIR
    from t3d.dllm.task import BuiltinTask
    from t3d.pipeline.collect import plan_run
    from t3d.pipeline.config import CollectConfig

    if not (BUILTIN_DIR / "config.json").is_file():
        pytest.skip("the built-in teacher is not shipped in this checkout")
    plan = plan_run(CollectConfig())
    task = BuiltinTask(seed=plan.teacher.task_seed)
    ids = [list(p.ids) for p in plan.prompts.prompts]
    assert ids == task.prompts("train") and plan.prompts.skipped == []
    assert not {tuple(p) for p in task.prompts("test")} & {tuple(p) for p in ids}
    assert plan.teacher.identity["name"] == "builtin"
    assert plan.score(ids[0], task.sample(ids[0], np.random.default_rng(0))), "scores fill `correct`"
