"""The one builder of a shard's contents from a sampler's output: every writer fills them here.

`t3d-collect`, the trainer's test datasets and the benchmarks all write shards through
`shard_columns` + `shard_arrays`, so the derived columns (sample_id, response_length,
zarr_index, the sampler settings, the teacher's name) are spelled once and a new stored
array or sampler column is declared in `schema` alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np

from t3d.storage_schemas.schema import ARRAYS, SAMPLER_COLUMNS


class Decoded(Protocol):
    """What the builder reads of a sampler's output (`t3d.dllm.SampleOutput` fits). N rows, L positions."""

    tokens: np.ndarray  # (N, L) response ids, pad after the first EOS
    reveal_step: np.ndarray  # (N, L) -1 on padding
    confidence: np.ndarray  # (N, L)
    num_steps: np.ndarray  # (N,)
    finish_reason: Sequence[str]  # "eos" | "length" per row

    @property
    def response_length(self) -> np.ndarray: ...  # (N,) tokens up to and including EOS


def sample_id(prompt_index: int, rollout: int) -> str:
    """The row's name: "p000123-r0" is rollout 0 of prompt 123."""
    return f"p{prompt_index:06d}-r{rollout}"


def shard_columns(
    *,
    prompt_index: Sequence[int],
    rollout: Sequence[int],
    prompt: Sequence[str],
    prompt_ids: Sequence[Sequence[int]],
    seed: Sequence[int],
    decoded: Decoded,
    response_text: Sequence[str],
    sampler: Any,
    teacher: Mapping[str, Any],
    answer: Sequence[str | None] | None = None,
    correct: Sequence[bool | None] | None = None,
) -> dict[str, Any]:
    """The Parquet columns of N rows, ready for `write_shard` (which checks them against `SCHEMA`).

    Per row: prompt_index, rollout, prompt (text), prompt_ids, seed (the row's generator),
    response_text, and optionally answer / correct (left out: nulls). decoded: the
    sampler's output for these rows in this order. sampler: the `SamplerConfig` the rows
    were decoded with; its `SAMPLER_COLUMNS` fields are stored on every row. teacher: its
    identity (`name`, `fingerprint`). Row i's arrays are row i of `shard_arrays(decoded)`.
    """
    n = len(prompt_index)
    columns: dict[str, Any] = {
        "sample_id": [sample_id(p, r) for p, r in zip(prompt_index, rollout)],
        "prompt_index": prompt_index,
        "rollout": rollout,
        "prompt": prompt,
        "prompt_ids": [list(ids) for ids in prompt_ids],
        "response_ids": decoded.tokens,
        "response_text": response_text,
        "response_length": decoded.response_length,
        "reveal_step": decoded.reveal_step,
        "confidence": decoded.confidence,
        "num_steps": decoded.num_steps,
        "finish_reason": decoded.finish_reason,
        "seed": seed,
        "teacher_name": [teacher["name"]] * n,
        "teacher_fingerprint": [teacher["fingerprint"]] * n,
        "zarr_index": np.arange(n),
    }
    columns |= {name: [getattr(sampler, name)] * n for name in SAMPLER_COLUMNS}
    if answer is not None:
        columns["answer"] = answer
    if correct is not None:
        columns["correct"] = correct
    return columns


def shard_arrays(decoded: Any) -> dict[str, np.ndarray | None]:
    """The Zarr arrays of `decoded`: each `ARRAYS` name read from the attribute of that name (None: not stored)."""
    return {name: getattr(decoded, name, None) for name in ARRAYS}
