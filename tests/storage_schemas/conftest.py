"""Shard contents shaped like the sampler's output (numpy, int64 ids, float32 log-probs)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from t3d.storage_schemas import Manifest, shard_columns, write_shard

SAMPLER = SimpleNamespace(block_size=4, steps_per_block=2, strategy="static", threshold=0.9, temperature=1.0, top_p=1.0, top_k=0)
"""The stored sampler settings (a `SamplerConfig` has these fields; the contract does not import it)."""


def shard_data(rows: int = 5, length: int = 12, k: int = 4, steps: int = 6, seed: int = 0, states: bool = True):
    """(columns, arrays) of one shard. zarr_index is a permutation (reversed), so a reader
    that ignored it and used the row number would fetch the wrong arrays."""
    rng = np.random.default_rng(seed)
    prompt_index = np.arange(rows, dtype=np.int64) + 1000 * seed
    response_length = rng.integers(1, length + 1, size=rows).astype(np.int32)  # (N,)
    after_eos = np.arange(length)[None, :] >= response_length[:, None]  # (N, L)
    reveal = rng.integers(0, steps, size=(rows, length)).astype(np.int16)
    reveal[after_eos] = -1
    tokens = rng.integers(0, 50_000, size=(rows, length))  # (N, L) int64, like SampleOutput.tokens
    tokens[after_eos] = 0
    prompt_ids = [rng.integers(0, 50_000, size=int(n)).tolist() for n in rng.integers(1, 9, size=rows)]
    decoded = SimpleNamespace(
        tokens=tokens, reveal_step=reveal, confidence=rng.random((rows, length), dtype=np.float32),
        num_steps=np.full(rows, steps, dtype=np.int32), finish_reason=["eos" if i % 2 else "length" for i in range(rows)],
        response_length=response_length,
    )  # fmt: skip
    columns = shard_columns(
        prompt_index=prompt_index,
        rollout=np.zeros(rows, dtype=np.int32),
        prompt=[f"prompt number {i}" for i in prompt_index],
        prompt_ids=prompt_ids,
        seed=prompt_index * 7919,
        decoded=decoded,
        response_text=[f"response {i}" for i in range(rows)],
        sampler=SAMPLER,
        teacher={"name": "builtin", "fingerprint": "0123456789abcdef"},
        answer=[None if i % 3 == 0 else f"answer {i}" for i in range(rows)],
        correct=[None if i % 3 == 0 else bool(i % 2) for i in range(rows)],
    )
    columns["zarr_index"] = np.arange(rows, dtype=np.int64)[::-1].copy()
    logprobs = np.log(rng.random((rows, length, k))).astype(np.float32)  # (N, L, k)
    logprobs[0, 0, 0] = -np.inf
    logprobs[0, 0, 1] = 1e-6  # float16 subnormal
    arrays: dict[str, Any] = {
        "topk_logprobs": logprobs,
        "topk_ids": rng.integers(0, 50_000, size=(rows, length, k)),  # (N, L, k) int64
        "states": rng.integers(0, 50_000, size=(rows, steps, length)) if states else None,  # (N, S, L)
    }
    return columns, arrays


@pytest.fixture
def dataset_dir(tmp_path):
    """A dataset of two committed shards, written and listed as the driver would."""
    manifest = Manifest(collect_config={"rollouts": 1}, teacher={"name": "builtin"})
    for index in range(2):
        columns, arrays = shard_data(rows=5 + index, seed=index)
        manifest = manifest.with_shard(write_shard(tmp_path, index, columns, arrays))
    manifest.save(tmp_path)
    return tmp_path


@pytest.fixture
def make_shard():
    """`shard_data` as a fixture (tests run in importlib mode and cannot import conftest)."""
    return shard_data
