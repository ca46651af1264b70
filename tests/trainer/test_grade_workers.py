"""`t3d-eval --code-workers N`: code samples are judged N at a time (by --grade and by a decode's scorer), with the
verdicts of one at a time; math stays on the calling thread."""

import json

from typer.testing import CliRunner

from t3d.trainer.eval_cli import app
from t3d.trainer.eval_prompts import load_prompt_file

TESTS = ["assert double(2) == 4", "assert double(0) == 0"]
RESPONSES = ["def double(x):\n    return 2 * x\n", "def double(x):\n    return x + 2\n"] * 3


def grade(tmp_path, *options):
    path = tmp_path / "code.jsonl"
    path.write_text("".join(json.dumps({"prompt": "double", "tests": TESTS, "response": r}) + "\n" for r in RESPONSES))
    out = tmp_path / f"graded{len(options)}.jsonl"
    result = CliRunner().invoke(app, ["--grade", str(path), "--samples", str(out), "--code-timeout", "5", *options])
    assert result.exit_code == 0, result.output
    return [json.loads(line)["correct"] for line in out.read_text().splitlines()]


def test_code_workers_run_sandboxes_side_by_side_with_the_same_verdicts(tmp_path, request):
    sequential = grade(tmp_path)
    calls = request.getfixturevalue("sandboxes_in_pairs")  # patched only after the sequential run
    assert grade(tmp_path, "--code-workers", "2") == sequential == [True, False] * 3
    assert len(calls) == 6 and all(name.startswith("t3d-judge") for name in calls)


def test_a_decodes_scorer_judges_code_side_by_side_and_math_here(tmp_path, request):
    path = tmp_path / "mixed.jsonl"
    rows = [{"prompt": "double", "tests": TESTS}] * 4 + [{"question": "1 + 1?", "answer": "#### 2"}] * 2
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    texts = RESPONSES[:4] + ["The answer is 2.", "The answer is 3."]
    one, two = (load_prompt_file(path, code_workers=n) for n in (1, 2))
    responses = [()] * len(texts)  # token ids: unused by a text scorer
    sequential = one.scorer.judge_all(one.prompts, responses, texts)
    calls = request.getfixturevalue("sandboxes_in_pairs")
    parallel = two.scorer.judge_all(two.prompts, responses, texts)
    assert [v.correct for v in parallel] == [v.correct for v in sequential] == [True, False, True, False, True, False]
    assert len(calls) == 4 and all(name.startswith("t3d-judge") for name in calls)  # math ran on this thread


def test_code_workers_below_one_is_one_line(tmp_path):
    path = tmp_path / "code.jsonl"
    path.write_text(json.dumps({"prompt": "double", "tests": TESTS, "response": RESPONSES[0]}) + "\n")
    result = CliRunner().invoke(app, ["--grade", str(path), "--code-workers", "0"])
    assert result.exit_code == 2 and "--code-workers must be at least 1" in result.output
    result = CliRunner().invoke(app, ["--prompts", str(path), "--code-workers", "0"])  # a decode's too, before any load
    assert result.exit_code == 2 and "--code-workers must be at least 1" in result.output
