"""The code sandbox and the code scorer: right and wrong solutions, and solutions that misbehave.

Kept safe on a shared machine: the runaway-child case starts three sleeping children,
never an unbounded fork loop, and every limit is small.
"""

import os
import time

import pytest

from t3d.dllm.scoring import CodeScorer, Reference
from t3d.dllm.scoring.sandbox import Limits, network_wrapper, run_python

FAST = Limits(timeout_s=2.0, memory_mb=512)


def test_a_correct_and_a_wrong_solution():
    assert run_python("def add(a, b):\n    return a + b\n", ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"], FAST).passed
    wrong = run_python("def add(a, b):\n    return a - b\n", ["assert add(0, 0) == 0", "assert add(1, 2) == 3"], FAST)
    assert wrong.status == "failed" and wrong.failed_test == "assert add(1, 2) == 3"  # the first failing test, named


def test_a_syntax_error_is_an_error_not_a_crash():
    result = run_python("def add(a, b)\n    return a + b\n", ["assert add(1, 2) == 3"], FAST)
    assert result.status == "error" and result.error.startswith("SyntaxError")


def test_an_infinite_loop_times_out():
    result = run_python("while True:\n    pass\n", [], Limits(timeout_s=1.0))
    assert result.status == "timeout"


def test_a_memory_hog_hits_the_limit():
    result = run_python("hog = [bytearray(64 * 1024 * 1024) for _ in range(64)]\n", [], Limits(timeout_s=5.0, memory_mb=256))
    assert result.status == "memory"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as fh:  # a zombie no one has reaped yet is dead too
        return fh.read().split(")")[-1].split()[0] != "Z"


def test_runaway_children_die_with_the_process_group():
    program = (
        "import subprocess, sys\n"
        "kids = [subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']) for _ in range(3)]\n"
        "print(' '.join(str(k.pid) for k in kids), flush=True)\n"
    )
    result = run_python(program, ["assert True"], FAST)
    assert result.passed
    pids = [int(p) for p in result.stdout.split()]
    assert len(pids) == 3
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(p) for p in pids), "the group was killed, children included"


@pytest.mark.skipif(os.geteuid() == 0, reason="the kernel does not apply RLIMIT_NPROC to root")
def test_forks_beyond_the_process_limit_fail():
    program = (
        "import os, time\n"
        "n = 0\n"
        "try:\n"
        "    for _ in range(64):\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30); os._exit(0)\n"
        "        n += 1\n"
        "except OSError:\n"
        "    pass\n"
        "print(n)\n"
    )
    result = run_python(program, [], Limits(timeout_s=5.0, max_processes=4))
    assert int(result.stdout.split()[-1]) <= 4


def test_writing_outside_its_directory_is_refused(tmp_path):
    target = tmp_path / "escaped.txt"
    result = run_python(f"open({str(target)!r}, 'w').write('x')\n", [], FAST)
    assert result.status == "error" and "writing outside its directory is refused" in result.error
    assert not target.exists()
    inside = run_python("open('mine.txt', 'w').write('x')\nassert open('mine.txt').read() == 'x'\n", [], FAST)
    assert inside.passed, "its own directory is writable"


def test_a_socket_to_a_non_loopback_address_is_refused():
    program = "import socket\ns = socket.socket()\ns.settimeout(1)\ns.connect(('192.0.2.1', 80))\n"  # TEST-NET-1
    result = run_python(program, [], FAST)
    assert result.status == "error" and "network beyond loopback is refused" in result.error


@pytest.mark.skipif(not network_wrapper(), reason="no network namespace for this user here")
def test_without_the_audit_hook_the_namespace_has_no_network():
    """A child process has no audit hook; in the namespace its connect fails with no route."""
    inner = "import socket; s = socket.socket(); s.settimeout(1); s.connect(('192.0.2.1', 80))"
    program = f"import subprocess, sys\nr = subprocess.run([sys.executable, '-c', {inner!r}], capture_output=True, text=True)\nprint(r.stderr)\n"
    result = run_python(program, [], FAST)
    assert "Network is unreachable" in result.stdout


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
