"""What the code sandbox costs per sample: today's (bubblewrap + trusted harness) against the first one.

    python benchmarks/sandbox_cost.py [--samples 100] [--workers 2]

The first sandbox (a subprocess, rlimits, an audit hook, a network namespace) is not in
the package any more: it is read from git history (`git show f1eacf9:...`) into a
temporary directory and imported from there, for this measurement only.

One trivial sample (`def f(): return 1`, one test `assert f() == 1`) is graded
`--samples` times by each, interleaved (old, new, old, new, ...) so that the shared
machine's load drifts the same for both. Prints one JSON object:
- `old_median_ms`, `new_median_ms` (and p90): wall time of one `run_python` call;
- `new_over_old_ms`: the difference of the medians;
- `many_per_sample_ms`: `run_many` of the same samples with `--workers` sandboxes at once,
  total time over the number of samples (the throughput a grader gets);
- `isolation`: the line `sandbox.isolation()` gives on this machine.
Target (issue 20): new median <= 150 ms.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from t3d.dllm.scoring import sandbox
from t3d.dllm.scoring.sandbox import Job, Limits, run_many, run_python

OLD_COMMIT = "f1eacf9"
PROGRAM, TESTS = "def f():\n    return 1\n", ["assert f() == 1"]


def old_sandbox(directory: Path):
    """The first sandbox, from git history, as a module of its own."""
    repo = Path(__file__).resolve().parent.parent
    for name in ("sandbox.py", "_sandbox_runner.py"):
        source = subprocess.run(["git", "show", f"{OLD_COMMIT}:dllm/scoring/{name}"], cwd=repo, check=True, capture_output=True, text=True)
        (directory / name).write_text(source.stdout)
    spec = importlib.util.spec_from_file_location("t3d_old_sandbox", directory / "sandbox.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def timed(run) -> float:
    began = time.perf_counter()
    result = run()
    assert result.passed, result
    return (time.perf_counter() - began) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    limits = Limits(timeout_s=10.0)
    with tempfile.TemporaryDirectory() as scratch:
        old = old_sandbox(Path(scratch))
        old_limits = old.Limits(timeout_s=10.0)
        timed(lambda: old.run_python(PROGRAM, TESTS, old_limits)), timed(lambda: run_python(PROGRAM, TESTS, limits))  # warm
        old_ms, new_ms = [], []
        for _ in range(args.samples):
            old_ms.append(timed(lambda: old.run_python(PROGRAM, TESTS, old_limits)))
            new_ms.append(timed(lambda: run_python(PROGRAM, TESTS, limits)))
    began = time.perf_counter()
    results = run_many([Job(program=PROGRAM, tests=tuple(TESTS))] * args.samples, limits, workers=args.workers)
    many_ms = (time.perf_counter() - began) * 1000 / args.samples
    assert all(r.passed for r in results)
    p90 = lambda xs: statistics.quantiles(xs, n=10)[-1]  # noqa: E731
    print(json.dumps({
        "samples": args.samples,
        "old_median_ms": round(statistics.median(old_ms), 1), "old_p90_ms": round(p90(old_ms), 1),
        "new_median_ms": round(statistics.median(new_ms), 1), "new_p90_ms": round(p90(new_ms), 1),
        "new_over_old_ms": round(statistics.median(new_ms) - statistics.median(old_ms), 1),
        "workers": args.workers, "many_per_sample_ms": round(many_ms, 1),
        "isolation": sandbox.isolation(), "python": sys.version.split()[0],
    }, indent=1))  # fmt: skip


if __name__ == "__main__":
    main()
