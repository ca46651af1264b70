"""t3d-distill and t3d-eval: one writer per output, and their outputs and checkpoints fail as one line.

A held output is refused naming its holder; a --out that cannot be a directory, an eval
output that cannot be a file and a truncated safetensors file are one-line errors, the
path ones before any model loads.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from t3d_test_support import Holder
from typer.testing import CliRunner

from t3d.dllm.outdir import LOCK_NAME
from t3d.trainer import checkpoint as ckpt
from t3d.trainer import build, eval_cli
from t3d.trainer.distill import app as distill_app

STEPS = ["--batch-size", "4", "--no-progress", "--device", "cpu", "--warmup-steps", "0"]


def distill_args(data, model, out, *extra) -> list[str]:
    return ["--data", str(data), "--model", str(model), "--out", str(out), "--max-steps", "2", *STEPS, *map(str, extra)]


def distill(*args):
    return CliRunner().invoke(distill_app, distill_args(*args))


def evaluate(*args):
    return CliRunner().invoke(eval_cli.app, ["--limit", "2", "--timing-repeats", "1", "--samples-per-prompt", "1", *map(str, args)])


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load fails the test: the errors under test must come first."""

    def boom(*_args, **_kwargs):
        raise AssertionError("a model was loaded before the output was checked")

    monkeypatch.setattr(build, "build_model", boom)
    monkeypatch.setattr(eval_cli, "load_models", boom)


@pytest.fixture
def truncated(tmp_path, teachers) -> Path:
    """A copy of a tiny teacher whose model.safetensors lost its second half (a download cut short)."""
    model = tmp_path / "cut"
    shutil.copytree(teachers["bidirectional"], model)
    weights = model / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return model


@pytest.mark.parametrize("where", ["a_file", "under_a_file"])
def test_distill_out_that_cannot_be_a_directory_is_one_line(one_line_error, no_model_loads, teachers, datasets, tmp_path, where):
    regular = tmp_path / "regular"
    regular.write_text("mine")
    out, words = {"a_file": (regular, ("--out", "exists and is not a directory")),
                  "under_a_file": (regular / "run", ("--out", f"{regular} is a file"))}[where]  # fmt: skip
    one_line_error(distill(datasets["bidirectional"], teachers["bidirectional"], out), *words)
    assert regular.read_text() == "mine"


def test_a_held_distill_out_is_refused_naming_the_holder(one_line_error, no_model_loads, teachers, datasets, tmp_path):
    out = tmp_path / "out"
    holder = Holder(out, "t3d-distill")
    try:
        one_line_error(distill(datasets["bidirectional"], teachers["bidirectional"], out),
                       f"{out} is in use by t3d-distill (pid {holder.proc.pid} on host ", "choose another --out")  # fmt: skip
    finally:
        holder.release()
    assert not out.exists()


@pytest.mark.parametrize("command", ["distill", "eval"])
def test_a_truncated_checkpoint_is_one_line_naming_the_file(one_line_error, truncated, datasets, tmp_path, command):
    out = tmp_path / "out"
    if command == "distill":
        result = distill(datasets["bidirectional"], truncated, out)
    else:
        prompts = tmp_path / "prompts.jsonl"
        prompts.write_text('{"prompt": "w1 w2", "answer": "w3"}\n')
        result = evaluate("--model", f"cut={truncated}", "--prompts", prompts, "--json", out / "eval.json")
    if command == "eval":  # t3d-eval says how it reads the prompts first (stderr): the error is its last line
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        error = result.stderr.strip().splitlines()[-1]
        assert error.startswith(f"error: {truncated / 'model.safetensors'} is truncated or corrupt"), error
    else:
        one_line_error(result, str(truncated / "model.safetensors"), "truncated or corrupt")
    assert not out.exists(), "nothing is left behind"


@pytest.mark.parametrize(
    ("option", "where", "words"),
    [("--json", "a_directory", "is a directory"), ("--plot", "under_a_file", "is a file, not a directory"),
     ("--samples", "under_a_file", "is a file, not a directory")],
)  # fmt: skip
def test_eval_outputs_that_cannot_be_files_are_one_line(one_line_error, no_model_loads, tmp_path, option, where, words):
    regular = tmp_path / "regular"
    regular.write_text("mine")
    path = tmp_path if where == "a_directory" else regular / "x.out"
    one_line_error(evaluate(option, path), option, words)
    assert regular.read_text() == "mine"


def test_a_held_eval_output_is_refused_but_its_neighbour_is_not(one_line_error, no_model_loads, tmp_path):
    report = tmp_path / "results" / "eval.json"
    holder = Holder(report, "t3d-eval", is_file=True, option="--json")
    try:
        one_line_error(evaluate("--json", report), f"{report} is being written by t3d-eval (pid {holder.proc.pid}", "--json")
        result = evaluate("--json", tmp_path / "results" / "other.json")  # a free file beside it: on to the models
        assert isinstance(result.exception, AssertionError) and "model was loaded" in str(result.exception)
    finally:
        holder.release()


def _wait_for(condition, what: str, seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


def _lock_pid(out: Path) -> int | None:
    try:
        return json.loads((out / LOCK_NAME).read_text())["pid"]
    except (OSError, ValueError, KeyError):
        return None


@pytest.mark.slow
def test_two_real_distill_runs_one_out_then_resume_after_sigkill(one_line_error, teachers, datasets, tmp_path):
    """The issue's measured case: the second run is refused; the first, SIGKILLed, is resumed and its lock taken over."""
    data, model, out = datasets["bidirectional"], teachers["bidirectional"], tmp_path / "out"
    args = distill_args(data, model, out, "--save-every", "2")
    args[args.index("--max-steps") + 1] = "100000"
    first = subprocess.Popen([sys.executable, "-m", "t3d.trainer.distill", *args], stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"})  # fmt: skip
    try:
        _wait_for(lambda: _lock_pid(out) == first.pid and ckpt.latest_checkpoint(out) is not None or first.poll() is not None,
                  "the first run's lock and first checkpoint")  # fmt: skip
        assert first.poll() is None, first.stderr.read()
        second = distill(data, model, out)
        one_line_error(second, f"{out} is in use by t3d-distill (pid {first.pid} on host ")
    finally:
        first.kill()  # SIGKILL: the lock file stays, the kernel lock goes
        first.wait(timeout=60)
    assert _lock_pid(out) == first.pid
    step = int(ckpt.load_trainer_state(ckpt.latest_checkpoint(out))["step"])
    resumed = distill(data, model, out, "--resume", "--max-steps", step + 2)
    assert resumed.exit_code == 0, resumed.output
    assert f"stale lock of {out}: t3d-distill (pid {first.pid}" in resumed.stderr
    assert f"at step {step}" in resumed.output  # resumed from the killed run's checkpoint
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, step + 3)), steps
    assert not (out / LOCK_NAME).exists()
