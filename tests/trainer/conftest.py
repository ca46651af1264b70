"""Trajectory datasets collected from tiny random teachers with the real sampler.

The trainer tests read shards written through `t3d.storage_schemas`, exactly as a
`t3d-collect` run leaves them, so they exercise the same path a user's data takes.
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from t3d.dllm import SamplerConfig, load_model, sample
from t3d.dllm.tiny import build_checkpoint
from t3d.storage_schemas import Manifest, shard_arrays, shard_columns, write_shard

# Tiny models: waking a second thread for each small op costs more than the op (5x slower
# per step on a busy 2-core machine), so the trainer tests run single-threaded.
torch.set_num_threads(1)

SAMPLER = SamplerConfig(max_new_tokens=8, block_size=4, steps_per_block=2, temperature=1.0, logits_top_k=4)


def random_prompts(n: int, seed: int, vocab: int = 64) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(3, vocab - 1) for _ in range(rng.randint(2, 6))] for _ in range(n)]


def _columns(prompts, out, cfg: SamplerConfig, seeds, teacher, offset: int) -> dict:
    return shard_columns(
        prompt_index=list(range(offset, offset + len(prompts))),
        rollout=[0] * len(prompts),
        prompt=[" ".join(map(str, p)) for p in prompts],
        prompt_ids=prompts,
        seed=seeds,
        decoded=out,
        response_text=[" ".join(map(str, t[:k])) for t, k in zip(out.tokens.tolist(), out.response_length)],
        sampler=cfg,
        teacher=teacher.identity(),
        correct=[i % 3 != 0 for i in range(offset, offset + len(prompts))],  # something to --filter on
    )


def collect(out: Path, teacher_dir: Path | str, *, prompts: int | list = 48, shards: int = 3, seed: int = 0,
            cfg: SamplerConfig = SAMPLER) -> Path:  # fmt: skip
    """Sample trajectories from the teacher for `prompts` (a count of random prompts, or
    token-id lists) and write them as `shards` shards + manifest."""
    teacher = load_model(teacher_dir)
    all_prompts = random_prompts(prompts, seed, teacher.vocab_size) if isinstance(prompts, int) else prompts
    prompts = len(all_prompts)
    manifest = Manifest(collect_config={"sampler": {"block_size": cfg.block_size}}, teacher=teacher.identity())
    per = -(-prompts // shards)
    for s in range(shards):
        part = all_prompts[s * per : (s + 1) * per]
        seeds = [seed * 100_000 + s * per + i for i in range(len(part))]
        result = sample(teacher, part, cfg, seeds)
        info = write_shard(out, s, _columns(part, result, cfg, seeds, teacher, s * per), shard_arrays(result))
        manifest = manifest.with_shard(info)
    manifest.save(out)
    return out


@pytest.fixture(scope="session")
def teachers(tmp_path_factory) -> dict[str, Path]:
    """Tiny random checkpoints, one per family the trainer lays out differently."""
    root = tmp_path_factory.mktemp("teachers")
    return {
        "bidirectional": build_checkpoint(root / "bidirectional", "bidirectional", max_position_embeddings=32, seed=1),
        "block_causal": build_checkpoint(root / "block_causal", "block_causal", max_position_embeddings=32, seed=2),
    }


@pytest.fixture(scope="session")
def datasets(tmp_path_factory, teachers) -> dict[str, Path]:
    """One collected dataset per teacher (read-only: copy it before damaging it)."""
    root = tmp_path_factory.mktemp("trajectories")
    return {name: collect(root / name, path) for name, path in teachers.items()}


@pytest.fixture
def dataset_copy(tmp_path, datasets):
    """A private, writable copy of the bidirectional teacher's dataset."""

    def copy(name: str = "bidirectional") -> Path:
        target = tmp_path / f"data-{name}"
        shutil.copytree(datasets[name], target)
        return target

    return copy


def flags(data: Path, model: Path, out: Path, **extra) -> dict:
    """Option values for `build_config` of a small, fast CPU run."""
    values = {
        "data": str(data), "model": str(model), "out": str(out), "max_steps": 6, "batch_size": 4,
        "grad_accum": 1, "lr": 3e-3, "warmup_steps": 0, "save_every": 0, "progress": False, "device": "cpu",
    }  # fmt: skip
    values.update(extra)
    return values


def weights(path_or_net) -> dict[str, np.ndarray]:
    """State dict as numpy arrays (from a checkpoint directory or a module)."""
    if isinstance(path_or_net, (str, Path)):
        path_or_net = load_model(path_or_net).net
    return {k: v.detach().cpu().numpy().copy() for k, v in path_or_net.state_dict().items()}


@pytest.fixture(scope="session")
def kit():
    """The helpers above, for test modules (conftest is not importable under importlib mode)."""
    import types

    return types.SimpleNamespace(collect=collect, flags=flags, weights=weights, random_prompts=random_prompts)
