"""Sampler settings, decoding with timing, and the records of one (model, setting).

`decode` samples every row in batches and times only the sampler calls (a warm-up
first, then the median of repeated passes); `judge` applies the prompt set's scorer;
`make_record` turns one decode into an `EvalRecord`, before `evaluate` compares it with
the teacher.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from t3d.dllm import DiffusionLM, SamplerConfig, UserError, sample
from t3d.dllm.reveal import get_strategy
from t3d.dllm.scoring import Verdict
from t3d.trainer import metrics
from t3d.trainer.eval_prompts import EvalPrompt, PromptSet, Scorer, decode_response, judge_rows


# --- settings and configuration ------------------------------------------------------------------


def sampler_settings(
    *,
    block_size: int,
    max_new_tokens: int,
    steps_per_block: Sequence[int],
    strategies: Sequence[str] = (SamplerConfig.strategy,),
    threshold: float = SamplerConfig.threshold,
    temperature: float = SamplerConfig.temperature,
    cache: str = SamplerConfig.cache,
    confidence: str = SamplerConfig.confidence,
    entropy_budget: float = SamplerConfig.entropy_budget,
) -> list[SamplerConfig]:
    """The settings to compare: a scheduled strategy (static) at each steps-per-block value, one setting per other.

    No top-k log-probs are recorded (logits_top_k=0): evaluation never reads them, and
    recording them would slow the speed measurement.
    """
    common = dict(
        block_size=block_size, max_new_tokens=max_new_tokens, threshold=threshold, temperature=temperature, logits_top_k=0,
        cache=cache, confidence=confidence, entropy_budget=entropy_budget,
    )
    settings = []
    for strategy in dict.fromkeys(strategies):
        steps = steps_per_block if get_strategy(strategy).scheduled else [block_size]  # steps only schedule those
        settings += [SamplerConfig(strategy=strategy, steps_per_block=s, **common) for s in steps]
    return settings


def full_steps(setting: SamplerConfig) -> SamplerConfig:
    """The same decode at one token per step: the anchor for agreement and the speed baseline."""
    return replace(setting, strategy="static", steps_per_block=setting.block_size)


def setting_label(setting: SamplerConfig) -> str:
    """Short name of a setting for tables, samples and the plot."""
    label = f"{setting.strategy} B={setting.block_size} {get_strategy(setting.strategy).describe(setting)}"
    label = label if setting.confidence == SamplerConfig.confidence else f"{label} by={setting.confidence}"
    return label if setting.temperature == SamplerConfig.temperature else f"{label} T={setting.temperature:g}"


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    """How an evaluation runs, apart from the models, prompts and sampler settings."""

    samples_per_prompt: int = 4
    """Responses per prompt (distinct seeds); diversity needs more than one."""
    seed: int = 0
    """Base seed: sample j of prompt p gets a seed derived from (seed, p, j) for every model and setting."""
    batch_size: int = 64
    """Rows per sampler call (also what tokens per second is measured at)."""
    teacher: str | None = None
    """Label of the anchor model; None picks the model labelled `teacher` (t3d-eval: else the first --model)."""
    warmup: bool = True
    """Run one untimed sampler call per model and setting before timing it."""
    timing_repeats: int = 1
    """Timed passes per model and setting; the median is reported with the spread (seeded: outputs repeat exactly)."""
    keep_samples: bool = False
    """Keep every response in `EvalReport.samples` (for `--samples`)."""
    progress: bool = True
    """Show a progress bar on stderr while decoding (only when stderr is a terminal)."""

    def __post_init__(self) -> None:
        if min(self.samples_per_prompt, self.batch_size, self.timing_repeats) < 1:
            raise UserError("samples per prompt, batch size and timing repeats must be at least 1")


# --- decoding and records ---------------------------------------------------------------------


@dataclass
class Decoded:
    """Every response of one model at one setting, in row order (prompt-major, then sample)."""

    responses: list[metrics.Response]
    num_steps: list[int]
    finish_reason: list[str]
    seconds: float
    """Median wall clock of the timed passes."""
    batched_nfe: int
    seconds_all: list[float] = field(default_factory=list)
    """Wall clock of every timed pass, in order."""
    revealed: list[int] = field(default_factory=list)
    """Tokens the sampler revealed per row, those after the stop id included (`SampleOutput.revealed`)."""


def row_seeds(num_prompts: int, samples: int, seed: int) -> list[int]:
    """One seed per (prompt, sample) row, independent of model, setting and batch size."""
    return [int(np.random.SeedSequence([seed, p, j]).generate_state(1)[0]) for p in range(num_prompts) for j in range(samples)]


def decode(
    model: DiffusionLM, rows: list[list[int]], seeds: list[int], setting: SamplerConfig, batch_size: int,
    repeats: int = 1, warmup: bool = True, on_batch: Callable[[int], None] | None = None,
) -> Decoded:  # fmt: skip
    """Sample every row in batches; time only the sampler calls.

    First one untimed warm-up call on the first batch at this very setting (kernels,
    allocator and caches warmed for these shapes), then `repeats` timed passes over all
    rows. Seeded, so every pass gives the same responses; the first pass's are kept.
    `seconds` is the median pass, `seconds_all` every pass. `on_batch(rows)` is called
    after every sampler call, outside the timed region (a progress bar).
    """
    tick = on_batch or (lambda rows: None)
    if warmup:
        sample(model, rows[:batch_size], setting, seeds[:batch_size])
        tick(len(rows[:batch_size]))
    out = Decoded(responses=[], num_steps=[], finish_reason=[], seconds=0.0, batched_nfe=0)
    for repeat in range(repeats):
        seconds = 0.0
        for start in range(0, len(rows), batch_size):
            chunk = slice(start, start + batch_size)
            began = time.perf_counter()
            result = sample(model, rows[chunk], setting, seeds[chunk])
            seconds += time.perf_counter() - began
            tick(len(rows[chunk]))
            if repeat == 0:
                kept = result.reveal_step >= 0  # (N, L): up to and including the first EOS
                out.responses += [tuple(int(t) for t in tok[keep]) for tok, keep in zip(result.tokens, kept)]
                out.num_steps += [int(s) for s in result.num_steps]
                out.revealed += [int(n) for n in result.revealed]
                out.finish_reason += list(result.finish_reason)
                out.batched_nfe += result.nfe
        out.seconds_all.append(seconds)
    out.seconds = statistics.median(out.seconds_all)
    return out


@dataclass(frozen=True, kw_only=True)
class EvalRecord:
    """Every number for one (model, setting); None where a metric is undefined (null in JSON)."""

    model: str
    setting: str
    strategy: str
    block_size: int
    steps_per_block: int | None
    threshold: float | None
    temperature: float
    max_new_tokens: int
    is_full_steps: bool
    tokens_per_step: float
    """Nominal B / steps per block (static); measured for the threshold strategy."""
    measured_tokens_per_step: float
    prompts: int
    samples_per_prompt: int
    responses: int
    quality_metric: str | None
    """`validity` (built-in task), `accuracy` (answers), `pass@1` (code tests) or None."""
    quality: float | None
    """The task metric: share of valid / correct responses."""
    pass_at_k: dict[str, float] | None
    """Unbiased pass@k over each prompt's samples, for k = 1, 2, 5, 10, ... up to the samples per prompt."""
    distinct: float | None
    """Distinct responses per prompt (mean over prompts)."""
    distinct_valid: float | None
    """Distinct valid (or correct) responses per prompt."""
    entropy: float | None
    """Empirical entropy (nats) of each prompt's responses, mean over prompts; at most log(samples)."""
    true_distinct: float | None
    """Distinct responses expected among as many samples of the task's true distribution."""
    distinct_ratio: float | None
    """distinct / true_distinct per prompt, averaged: below 1 is mode collapse."""
    truth_extra: dict[str, float] | None
    """Task-specific measures against the true distribution (built-in: marker_first_rate, positional_tv)."""
    log_likelihood: float | None
    """Mean exact log-likelihood of the valid responses under the task."""
    eos_rate: float | None
    response_tokens: float | None
    """Tokens per response, up to and including the first EOS."""
    nfe_per_response: float | None
    """Network evaluations per response (the sampler's steps for that row)."""
    batched_nfe: int
    tokens: int
    seconds: float
    """Wall clock of the sampler calls only: the median of the timed passes."""
    seconds_spread: float | None
    """(slowest - fastest) / median over the timed passes; 0 for one pass."""
    timing_repeats: int
    """Timed passes behind `seconds` (after one untimed warm-up at this setting)."""
    tokens_per_second: float | None
    agreement: float | None = None
    """Share of responses identical to the anchor's (teacher, full steps, same prompt and seed)."""
    nfe_reduction: float | None = None
    """Baseline NFE per response / this NFE per response."""
    speedup: float | None = None
    """This tokens per second / the baseline's."""
    speedup_to_nfe_reduction: float | None = None
    """speedup / nfe_reduction: 1 when wall-clock gains match the saved network evaluations."""
    speed_baseline: str | None = None
    """Which run the speed numbers are relative to."""
    gap_closure: float | None = None
    """(self@K - teacher@K) / (teacher@T - teacher@K) on quality; students only, None when undefined."""
    quality_interval: tuple[float, float] | None = None
    """Bootstrap 95 % interval [low, high] of quality, prompts resampled (seeded by EvalConfig.seed)."""
    gap_closure_interval: tuple[float, float] | None = None
    """Bootstrap 95 % interval of gap_closure, the three runs resampled on the same prompts."""
    speed_noisy: bool | None = None
    """True when speedup rests on fewer than 3 timed passes, or passes over 20 % apart, on either side."""
    forwards: int | None = None
    """Denoising forwards summed over the responses (each row's steps; the exact cache's prefill and commit forwards, which
    compute no logits, are not counted, as d3LLM and Fast-dLLM count the forwards of their decoding iterations)."""
    revealed_tokens: int | None = None
    """Tokens the sampler revealed, summed over the responses, those after a row's stop id included."""
    tokens_per_forward: float | None = None
    """revealed_tokens / forwards: the parallelism the decode reached (B / steps per block for a fixed schedule, counted
    for adaptive strategies); the x of AUP. The kept response's tokens per forward is measured_tokens_per_step."""


@dataclass
class EvalReport:
    """What `evaluate` returns: the records and enough context to reproduce them."""

    records: list[EvalRecord]
    models: dict[str, dict[str, Any]]
    teacher: str | None
    prompt_source: str
    quality_metric: str | None
    config: EvalConfig
    settings: list[SamplerConfig]
    samples: list[dict[str, Any]] = field(default_factory=list)
    keys: list[tuple[str, SamplerConfig]] = field(default_factory=list)
    prompt_grading: dict[str, Any] | None = None
    """A prompt file's records per scorer and the ones nothing could judge (`Grading.summary()`); None: the built-in task."""
    """(model label, setting) of each record, in the same order."""

    def record(self, model: str, setting: SamplerConfig) -> EvalRecord | None:
        """The record of `model` at `setting`, if it was evaluated."""
        key = (model, setting)
        return self.records[self.keys.index(key)] if key in self.keys else None


def _per_prompt(values: Sequence[Any], n: int) -> list[list[Any]]:
    """Split row-ordered values into one list per prompt (n samples each)."""
    return [list(values[i : i + n]) for i in range(0, len(values), n)]


@dataclass
class Judged:
    """The task's view of one decode: per-row texts, judgments, log-likelihoods, and the summary."""

    texts: list[str]
    verdicts: list[Verdict]
    log_likelihoods: list[float | None]
    summary: dict[str, Any]
    """EvalRecord fields: quality, distinct, distinct_valid, entropy, truth and likelihood numbers."""


def judge(prompts: PromptSet, model: DiffusionLM, decoded: Decoded, n: int) -> Judged:
    """Quality, diversity and likelihood of one decode (rows are prompt-major, n per prompt)."""
    scorer = prompts.scorer
    rows = [prompt for prompt in prompts.prompts for _ in range(n)]
    texts = [decode_response(model, r) for r in decoded.responses]
    verdicts = judge_rows(scorer, rows, decoded.responses, texts)
    judged = [v.correct for v in verdicts]
    lls = [scorer.log_likelihood(q, r) for q, r in zip(rows, decoded.responses)]
    groups = _per_prompt(decoded.responses, n)
    has_judge = scorer.metric is not None
    summary = {
        "quality": metrics.rate(j for j in judged if j is not None) if has_judge else None,
        "pass_at_k": metrics.pass_at_k_table(_per_prompt(judged, n)) if has_judge else None,
        "distinct": metrics.distinct_per_prompt(groups),
        "distinct_valid": metrics.distinct_valid_per_prompt(groups, _per_prompt(judged, n)) if has_judge else None,
        "entropy": metrics.entropy_per_prompt(groups),
        "log_likelihood": metrics.mean_finite(ll for ll in lls if ll is not None),
        **truth_summary(scorer, prompts.prompts, groups),
    }
    return Judged(texts=texts, verdicts=verdicts, log_likelihoods=lls, summary=summary)


def truth_summary(scorer: Scorer, prompts: Sequence[EvalPrompt], groups: list[list[metrics.Response]]) -> dict[str, Any]:
    """Mean over prompts of the scorer's measures against the true distribution (None without one)."""
    per_prompt = [scorer.against_truth(q, g) for q, g in zip(prompts, groups)]
    if not per_prompt or per_prompt[0] is None:
        return {"true_distinct": None, "distinct_ratio": None, "truth_extra": None}
    means = {key: metrics.mean_finite(d[key] for d in per_prompt) for key in per_prompt[0]}
    return {
        "true_distinct": means.pop("expected_distinct"),
        "distinct_ratio": means.pop("distinct_ratio"),
        "truth_extra": means,
    }


def make_record(label: str, setting: SamplerConfig, prompts: PromptSet, decoded: Decoded, judged: Judged, n: int) -> EvalRecord:
    """The record of one decode, before the comparisons against the teacher and the baselines."""
    tokens = sum(len(r) for r in decoded.responses)
    steps = sum(decoded.num_steps)
    revealed = sum(decoded.revealed)
    measured = tokens / steps if steps else 0.0
    scheduled = get_strategy(setting.strategy).scheduled  # a schedule fixes the steps; otherwise they are measured
    return EvalRecord(
        model=label,
        setting=setting_label(setting),
        strategy=setting.strategy,
        block_size=setting.block_size,
        steps_per_block=setting.steps_per_block if scheduled else None,
        threshold=None if scheduled else setting.threshold,
        temperature=setting.temperature,
        max_new_tokens=setting.max_new_tokens,
        is_full_steps=setting == full_steps(setting),
        tokens_per_step=setting.block_size / setting.steps_per_block if scheduled else measured,
        measured_tokens_per_step=measured,
        prompts=len(prompts.prompts),
        samples_per_prompt=n,
        responses=len(decoded.responses),
        quality_metric=prompts.scorer.metric,
        **judged.summary,
        eos_rate=metrics.rate(f == "eos" for f in decoded.finish_reason),
        response_tokens=metrics.per_response(tokens, len(decoded.responses)),
        nfe_per_response=metrics.per_response(steps, len(decoded.responses)),
        batched_nfe=decoded.batched_nfe,
        tokens=tokens,
        seconds=decoded.seconds,
        seconds_spread=metrics.relative_spread(decoded.seconds_all),
        timing_repeats=len(decoded.seconds_all),
        tokens_per_second=metrics.tokens_per_second(tokens, decoded.seconds),
        forwards=steps,
        revealed_tokens=revealed,
        tokens_per_forward=metrics.ratio(revealed, steps),
    )


def sample_rows(
    record: EvalRecord, prompts: PromptSet, decoded: Decoded, judged: Judged, seeds: list[int]
) -> list[dict[str, Any]]:
    """One JSON-ready dict per response, for the `--samples` file."""
    n = record.samples_per_prompt
    rows = []
    for i, response in enumerate(decoded.responses):
        row = {
            "model": record.model,
            "setting": record.setting,
            "prompt_index": i // n,
            "sample_index": i % n,
            "seed": seeds[i],
            "prompt": prompts.prompts[i // n].text,
            "response": judged.texts[i],
            "tokens": list(response),
            "num_steps": decoded.num_steps[i],
            "finish_reason": decoded.finish_reason[i],
        }
        if record.quality_metric:
            verdict = judged.verdicts[i]
            row[record.quality_metric] = verdict.correct
            if verdict.detail:
                row["score_detail"] = verdict.detail
        if judged.log_likelihoods[i] is not None:
            row["log_likelihood"] = judged.log_likelihoods[i]
        rows.append(row)
    return rows
