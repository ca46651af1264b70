"""Helpers shared by test modules (importable as `t3d_test_support`: pyproject puts tests/ on pytest's pythonpath)."""

import random

import torch


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
