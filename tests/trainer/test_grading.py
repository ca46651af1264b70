"""`t3d-eval --grade`: a hand-made responses file gives the expected table, samples and JSON; bad files fail cleanly."""

import json

import pytest
from typer.testing import CliRunner

from t3d.trainer.eval_cli import app

MATH = [  # (model, prompt, answer, response, correct)
    ("A", "1+1?", "2", "so #### 2", True),
    ("A", "1+1?", "2", "\\boxed{3}", False),
    ("A", "half?", "0.5", "\\boxed{\\dfrac12}", True),
    ("A", "half?", "0.5", "#### 1/2", True),
    ("B", "1+1?", "2", "#### 3", False),
    ("B", "1+1?", "2", "#### 4", False),
    ("B", "half?", "0.5", "#### 0.25", False),
    ("B", "half?", "0.5", "\\boxed{50\\%}", True),
]
# A: 3/4 correct; pass@2 per prompt 1 - C(n-c,2)/C(2,2): (1, 1) -> 1.  B: 1/4; pass@2 (0, 1) -> 0.5.
EXPECTED_TABLE = """\
model  setting  prompts  responses  judged  accuracy  pass@2
-----  -------  -------  ---------  ------  --------  ------
A      s1             2          4       4     0.750   1.000
B      s1             2          4       4     0.250   0.500"""


def write_lines(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_grade_math_gives_the_expected_table_samples_and_json(tmp_path):
    rows = [{"model": m, "setting": "s1", "prompt": p, "answer": a, "response": r} for m, p, a, r, _ in MATH]
    path = write_lines(tmp_path / "responses.jsonl", rows)
    result = run("--grade", path, "--samples", tmp_path / "graded.jsonl", "--json", tmp_path / "grade.json")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == EXPECTED_TABLE
    graded = [json.loads(line) for line in (tmp_path / "graded.jsonl").read_text().splitlines()]
    assert [g["correct"] for g in graded] == [c for *_, c in MATH]
    assert all(g | {} == row | {"correct": g["correct"], "score_detail": g["score_detail"]} for g, row in zip(graded, rows))
    assert graded[2]["score_detail"]["extracted"] == "\\dfrac12" and graded[2]["score_detail"]["parsed"][0] == "1/2"
    data = json.loads((tmp_path / "grade.json").read_text())
    assert data["scorer"] == "math"
    assert [(r["model"], r["quality"], r["pass_at_k"]) for r in data["records"]] == [
        ("A", 0.75, {"pass@1": 0.75, "pass@2": 1.0}), ("B", 0.25, {"pass@1": 0.25, "pass@2": 0.5}),
    ]  # fmt: skip


def test_grade_code_names_the_failing_test_and_the_timeout(tmp_path):
    tests = ["assert double(2) == 4", "assert double(0) == 0"]
    rows = [
        {"prompt": "double", "tests": tests, "response": "```python\ndef double(x):\n    return 2 * x\n```"},
        {"prompt": "double", "tests": tests, "response": "def double(x):\n    return x + 2\n"},
        {"prompt": "double", "tests": tests, "response": "def double(x):\n    while True: pass\n"},
        {"prompt": "add", "test": "def check(f):\n    assert f(1, 2) == 3\n", "entry_point": "add",
         "response": "def add(a, b):\n    return a + b\n"},
    ]  # fmt: skip
    path = write_lines(tmp_path / "code.jsonl", rows)
    result = run("--grade", path, "--samples", tmp_path / "graded.jsonl", "--code-timeout", "1")
    assert result.exit_code == 0, result.output
    graded = [json.loads(line) for line in (tmp_path / "graded.jsonl").read_text().splitlines()]
    assert [g["correct"] for g in graded] == [True, False, False, True]
    assert graded[1]["score_detail"]["failed_test"] == "assert double(0) == 0"
    assert graded[2]["score_detail"]["status"] == "timeout"
    header, _, row = result.stdout.strip().splitlines()
    assert header.split() == ["model", "setting", "prompts", "responses", "judged", "pass@1"]  # pass@2 needs 2 samples of every prompt
    assert row.split() == ["responses", "-", "2", "4", "4", "0.500"]


@pytest.mark.parametrize(
    "content, args, message",
    [
        ('{"prompt": "q", "response": "r", "answer": "1"}\n{"prompt": "q", "response": ', [], "r.jsonl line 2: malformed JSON"),
        ('{"prompt": "q", "answer": "1"}\n', [], "r.jsonl line 1: a line to grade is an object with a text 'response'"),
        ('{"txt": "q", "response": "r"}\n', [], "r.jsonl line 1: no known layout has these fields (txt)"),
        ('{"prompt": "q", "response": "r"}\n', ["--answer-field", "solution"], "r.jsonl: --answer-field 'solution' names no field of its records"),
        ('{"model": "t", "setting": "s", "prompt": "q", "response": "r", "tokens": [1, 2], "validity": true}\n', [],
         "r.jsonl line 1: nothing to grade by"),  # t3d-eval's own --samples format
        ('{"prompt": "q", "response": "r", "tests": ["assert f(1) =="]}\n', [], "r.jsonl line 1: tests[0] is not valid Python"),
        ('{"prompt": "q", "response": "r", "answer": "1"}\n', ["--scorer", "code"], "r.jsonl line 1: --scorer code needs"),
        ('{"prompt": "q", "response": "r", "answer": "1"}\n', ["--model", "builtin"], "--grade grades the responses in a file"),
        # the default's own value, given explicitly, is refused too (it used to be dropped without a word)
        ('{"prompt": "q", "response": "r", "answer": "1"}\n', ["--model", "teacher=builtin"], "--grade grades the responses in a file"),
    ],
)
def test_bad_responses_files_are_one_line_errors(tmp_path, content, args, message):
    path = tmp_path / "r.jsonl"
    path.write_text(content)
    result = run("--grade", path, *args)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith("error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.output
