"""Run one work unit in this process: sample its rows, build the shard, commit it.

This is everything an actor does, without Ray, so it can be called and tested directly.
Rows are (prompt, rollout) pairs in shard order; each row's sampler noise comes from its
own seed (see `units.row_seed`), and the sampler decodes a row the same whatever else is
in its batch (up to the last float bit of the probabilities, which follow the batch's
padding and shapes). A unit always forms the same batches, so its shard has the same
bytes whichever actor writes it and however often it is retried.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from t3d.dllm.sampling import SampleOutput, sample
from t3d.pipeline.config import RolloutConfig, TeacherConfig
from t3d.pipeline.prompts import EncodedPrompt
from t3d.pipeline.units import WorkUnit, unit_rows
from t3d.storage_schemas import ShardInfo, shard_arrays, shard_columns, write_shard


@dataclass(frozen=True)
class RolloutJob:
    """What every actor of a run needs: the same for all units."""

    out_dir: str
    teacher: TeacherConfig
    teacher_identity: dict[str, Any]  # name + fingerprint, as the driver saw them
    rollout: RolloutConfig
    seed: int
    torch_threads: int | None = None  # None: leave torch's default
    score: Any = None  # optional callable (prompt_ids, response_ids) -> bool, fills `correct`


@dataclass(frozen=True)
class UnitResult:
    """One committed unit, as the driver records it."""

    shard: ShardInfo
    prompts: int
    rows: int
    response_tokens: int
    sample_seconds: float  # time inside `sample`
    total_seconds: float  # the whole unit: sampling, building and committing the shard
    finish_reasons: dict[str, int] = field(default_factory=dict)


class UnitRunner:
    """Loads the teacher once, then runs units (what a Ray actor wraps)."""

    def __init__(self, job: RolloutJob, device: str | None = None) -> None:
        import torch

        from t3d.pipeline.teacher import load_teacher

        if job.torch_threads:
            torch.set_num_threads(job.torch_threads)
        self.job = job
        self.model = load_teacher(job.teacher, job.teacher_identity["fingerprint"], device)
        self.device = str(self.model.device)

    def run(self, unit: WorkUnit) -> UnitResult:
        return run_unit(self.model, unit, self.job)


def run_unit(model: Any, unit: WorkUnit, job: RolloutJob) -> UnitResult:
    """Sample every row of `unit` with `model` and commit it as shard `unit.index` of `job.out_dir`."""
    start = time.perf_counter()
    rows = unit_rows(unit, job.rollout.rollouts_per_prompt, job.seed)
    out, sample_seconds = sample_rows(model, [p.ids for p, _, _ in rows], [s for _, _, s in rows], job.rollout)
    info = write_shard(job.out_dir, unit.index, unit_columns(model, rows, out, job), shard_arrays(out))
    reasons: dict[str, int] = {}
    for reason in out.finish_reason:
        reasons[reason] = reasons.get(reason, 0) + 1
    return UnitResult(
        shard=info,
        prompts=len(unit.prompts),
        rows=len(rows),
        response_tokens=info.response_tokens,
        sample_seconds=sample_seconds,
        total_seconds=time.perf_counter() - start,
        finish_reasons=reasons,
    )


def sample_rows(
    model: Any, prompts: list[tuple[int, ...]], seeds: list[int], cfg: RolloutConfig
) -> tuple[SampleOutput, float]:
    """`sample` over all rows with `cfg.batch_size` slots (continuous batching); also the seconds spent.

    A row that finishes hands its slot to the next pending row at once, so a unit's
    mixed response lengths do not wait for its longest row. Rows keep their order, and a
    row's tokens depend only on its own seed, never on its slot.
    """
    tic = time.perf_counter()
    out = sample(model, [list(p) for p in prompts], cfg.sampler_config(), seeds, max_batch=cfg.batch_size)
    return out, time.perf_counter() - tic


def unit_columns(
    model: Any, rows: list[tuple[EncodedPrompt, int, int]], out: SampleOutput, job: RolloutJob
) -> dict[str, Any]:
    """The Parquet columns of a unit's rows (built by `t3d.storage_schemas.shard_columns`)."""
    responses = [out.tokens[i, :length].tolist() for i, length in enumerate(out.response_length)]
    return shard_columns(
        prompt_index=[p.index for p, _, _ in rows],
        rollout=[r for _, r, _ in rows],
        prompt=[p.text if p.text is not None else _decode(model, p.ids, special=True) for p, _, _ in rows],
        prompt_ids=[p.ids for p, _, _ in rows],
        seed=[s for _, _, s in rows],
        decoded=out,
        response_text=[_decode(model, ids, special=False) for ids in responses],
        sampler=job.rollout.sampler,
        teacher=job.teacher_identity,
        answer=[p.answer for p, _, _ in rows],
        correct=_correct(job.score, [p.ids for p, _, _ in rows], responses),
    )


def _correct(score: Any, prompts: list[Any], responses: list[list[int]]) -> list[bool | None]:
    """The `correct` column: a scorer's `score_all` where it has one (code judged several at a time), else row by row."""
    if score is None:
        return [None] * len(prompts)
    pairs = list(zip(prompts, responses))
    many = getattr(score, "score_all", None)
    return many(pairs) if many is not None else [score(p, r) for p, r in pairs]


def _decode(model: Any, ids: Any, special: bool) -> str:
    """Text of token ids (special tokens kept in prompts, dropped in responses); ids as text without a tokenizer."""
    ids = [int(t) for t in ids]
    if model.tokenizer is None:
        return " ".join(map(str, ids))
    return model.tokenizer.decode(ids, skip_special_tokens=not special)
