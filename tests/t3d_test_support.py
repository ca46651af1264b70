"""Helpers shared by test modules (importable as `t3d_test_support`: pyproject puts tests/ on pytest's pythonpath)."""

import random
import subprocess
import sys
from pathlib import Path

import torch

from t3d.dllm import outdir


def random_trajectories(n, blocks, size, seed, max_per_step=2, vocab=(10, 50), eos=2, pad=0):
    """Semi-AR teacher rollouts: per block a random permutation gives the reveal order,
    1..max_per_step tokens per step; some rows stop at an EOS (pad, -1 after it).

    Returns x0 (n, blocks * size) int64 and reveal steps (n, blocks * size) int16.
    """
    rng = random.Random(seed)
    x0, reveal = [], []
    for _ in range(n):
        tokens = [rng.randrange(*vocab) for _ in range(blocks * size)]
        steps, start = [], 0
        for _ in range(blocks):
            per_step = rng.randint(1, max_per_step)
            perm = list(range(size))
            rng.shuffle(perm)
            steps += [start + p // per_step for p in perm]
            start = max(steps) + 1
        if rng.random() < 0.6:  # finished with EOS somewhere
            at = rng.randrange(blocks * size)
            tokens[at] = eos
            for i in range(at + 1, blocks * size):
                tokens[i], steps[i] = pad, -1
        x0.append(tokens)
        reveal.append(steps)
    return torch.tensor(x0), torch.tensor(reveal, dtype=torch.int16)


# ---- the output lock (t3d.dllm.outdir): another process holding an output ------------------------

# The child imports the lock module alone (t3d.dllm's __init__ would load torch: 3 s a child).
HOLD = f"""
import sys, types
from pathlib import Path
sys.modules["t3d.dllm"] = package = types.ModuleType("t3d.dllm")
package.__path__ = [{str(Path(outdir.__file__).parent)!r}]
from t3d.dllm.outdir import Output, claim
with claim(sys.argv[1], Output(path=Path(sys.argv[2]), option=sys.argv[4], is_file=sys.argv[3] == "file")):
    print("held", flush=True)
    sys.stdin.read()  # until the test closes our stdin (or kills us)
"""


class Holder:
    """A child process holding the lock of one output until `release` (or `kill`): a second run's rival."""

    def __init__(self, path: Path, command: str = "t3d-holder", is_file: bool = False, option: str = "--out") -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", HOLD, command, str(path), "file" if is_file else "dir", option],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
        line = self.proc.stdout.readline()
        assert line == "held\n", (line, self.proc.stderr.read())

    def release(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(timeout=30) == 0, self.proc.stderr.read()

    def kill(self) -> None:
        self.proc.kill()  # SIGKILL: no handler runs, the lock file stays behind
        self.proc.wait(timeout=30)
