"""`t3d-eval --grade --code-workers N`: code samples are graded N at a time, with the verdicts of one at a time."""

import json
import threading

from typer.testing import CliRunner

from t3d.dllm.scoring import code_tests
from t3d.trainer.eval_cli import app

TESTS = ["assert double(2) == 4", "assert double(0) == 0"]
RESPONSES = ["def double(x):\n    return 2 * x\n", "def double(x):\n    return x + 2\n"] * 3


def grade(tmp_path, *options):
    path = tmp_path / "code.jsonl"
    path.write_text("".join(json.dumps({"prompt": "double", "tests": TESTS, "response": r}) + "\n" for r in RESPONSES))
    out = tmp_path / f"graded{len(options)}.jsonl"
    result = CliRunner().invoke(app, ["--grade", str(path), "--samples", str(out), "--code-timeout", "5", *options])
    assert result.exit_code == 0, result.output
    return [json.loads(line)["correct"] for line in out.read_text().splitlines()]


def test_code_workers_run_sandboxes_side_by_side_with_the_same_verdicts(tmp_path, monkeypatch):
    sequential = grade(tmp_path)
    meet = threading.Barrier(2, timeout=30)  # the first two samples must be in flight together, or this breaks
    calls = []
    real = code_tests.run_python

    def side_by_side(*args, **kwargs):
        calls.append(threading.current_thread().name)
        if len(calls) <= 2:
            meet.wait()
        return real(*args, **kwargs)

    monkeypatch.setattr(code_tests, "run_python", side_by_side)
    assert grade(tmp_path, "--code-workers", "2") == sequential == [True, False] * 3
    assert len(calls) == 6 and all(name.startswith("t3d-grade") for name in calls)


def test_code_workers_below_one_is_one_line(tmp_path):
    path = tmp_path / "code.jsonl"
    path.write_text(json.dumps({"prompt": "double", "tests": TESTS, "response": RESPONSES[0]}) + "\n")
    result = CliRunner().invoke(app, ["--grade", str(path), "--code-workers", "0"])
    assert result.exit_code == 2 and "--code-workers must be at least 1" in result.output
