"""Evaluate labelled models over sampler settings: quality, agreement, diversity, speed.

The library behind `t3d-eval` (DESIGN.md section 6), written so that a script can call it
in-process::

    prompts = builtin_prompts(split="test")
    settings = sampler_settings(block_size=4, max_new_tokens=16, steps_per_block=[4, 2, 1])
    report = evaluate({"teacher": load_model("builtin"), "t3d": load_model(path)}, prompts, settings)
    print(render_table(report)); write_json(report, "eval.json"); save_plot(report, "eval.png")

Decisions worth knowing:
- Every model decodes the same prompts with the same seeds: sample j of prompt p uses
  a seed derived from (EvalConfig.seed, p, j), whatever the model or setting.
- The anchor is the teacher (the model labelled `teacher`, or the one EvalConfig.teacher
  names) decoded once per block size at full steps, one token per step (static
  strategy), with the same temperature and filters. Agreement is the share of responses
  identical to the anchor's for the same prompt and seed; gap closure uses the anchor as
  teacher@T and the teacher at the same setting as teacher@K. Without a teacher neither
  is computed (null).
- Speed: wall clock around the sampler calls only, after one untimed warm-up call per
  model and setting (the first call at a new shape is slow: compilation, allocator,
  caches), the median of `timing_repeats` passes with their spread. Every speed
  compared is measured this way, so the speed-up and the NFE reduction, both taken
  against the anchor (else the same model's own full-step run), compare like with like.
"""

from __future__ import annotations

import json
import math
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from t3d.dllm import DiffusionLM, SampleOutput, SamplerConfig, UserError, sample
from t3d.dllm.prompt_encoding import PromptEncoding, dataset_encoding
from t3d.dllm.prompt_encoding import encode_prompt as encode_prompt_text
from t3d.dllm.prompt_files import PromptRecord, read_prompt_file
from t3d.dllm.scoring import Limits, Reference, Verdict, choose_scorer, text_scorer
from t3d.dllm.task import BuiltinTask, diversity_report
from t3d.storage_schemas import DatasetError, Manifest
from t3d.trainer import metrics
from t3d.trainer.checkpoint import read_t3d_json

JSON_SCHEMA_VERSION = 1

# --- prompts and how responses are judged ----------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class EvalPrompt:
    """One evaluation prompt: text, token ids when the task defines them, optional reference answer."""

    text: str
    """The prompt as text (what the samples file shows)."""
    ids: tuple[int, ...] | None = None
    """Token ids used as they are (built-in task, id-list prompt files); None: tokenise `text` per model."""
    answer: str | None = None
    """Reference answer (GSM8K `#### 42`, `\\boxed{42}` or bare); None when unknown."""
    reference: Reference | None = None
    """Everything a prompt file's record gives its scorer (answer, code tests); None for the built-in task."""


class Scorer(Protocol):
    """How a prompt set judges responses; one implementation per kind of prompt source."""

    metric: str | None
    """Name of the task metric (`validity`, `accuracy`), None when there is nothing to judge."""

    def judge(self, prompt: EvalPrompt, response: metrics.Response, text: str) -> Verdict:
        """The verdict on one response: correct True/False (None when this prompt cannot be judged) and its detail."""

    def log_likelihood(self, prompt: EvalPrompt, response: metrics.Response) -> float | None:
        """Exact log p(response | prompt) under the task's true distribution, when it has one."""

    def against_truth(self, prompt: EvalPrompt, responses: list[metrics.Response]) -> dict[str, float] | None:
        """Diversity of one prompt's responses measured against the true distribution, when there is one.

        Keys: `expected_distinct` (distinct responses expected among as many true
        samples), `distinct_ratio` (distinct / expected: below 1 is mode collapse), and
        any task-specific measures.
        """


class TextScorer:
    """Prompt-file records judged on response text by a scorer of `t3d.dllm.scoring` (math, exact, code)."""

    def __init__(self, name: str | None, code_limits: Limits | None = None) -> None:
        self.name = name
        self.scorer = text_scorer(name, code_limits) if name is not None else None
        self.metric = self.scorer.metric if self.scorer is not None else None

    def judge(self, prompt: EvalPrompt, response: metrics.Response, text: str) -> Verdict:
        if self.scorer is None or prompt.reference is None:
            return Verdict(None)
        return self.scorer.score(prompt.reference, text)

    def log_likelihood(self, prompt: EvalPrompt, response: metrics.Response) -> float | None:
        return None

    def against_truth(self, prompt: EvalPrompt, responses: list[metrics.Response]) -> dict[str, float] | None:
        return None


class TaskScorer:
    """The built-in task: validity, exact log-likelihood and the true distribution."""

    metric: str | None = "validity"

    def __init__(self, task: BuiltinTask) -> None:
        self.task = task

    def judge(self, prompt: EvalPrompt, response: metrics.Response, text: str) -> Verdict:
        return Verdict(bool(self.task.is_valid(list(prompt.ids), list(response))))

    def log_likelihood(self, prompt: EvalPrompt, response: metrics.Response) -> float:
        return float(self.task.log_likelihood(list(prompt.ids), list(response)))

    def against_truth(self, prompt: EvalPrompt, responses: list[metrics.Response]) -> dict[str, float]:
        report = diversity_report(self.task, list(prompt.ids), [list(r) for r in responses])
        return {
            "expected_distinct": report.expected_distinct,
            "distinct_ratio": report.distinct_ratio,
            "marker_first_rate": report.marker_first_rate,
            "positional_tv": report.positional_tv,
        }


@dataclass(frozen=True, kw_only=True)
class PromptSet:
    """The prompts of one evaluation and the scorer that judges their responses."""

    prompts: tuple[EvalPrompt, ...]
    scorer: Scorer
    source: str
    """Where the prompts came from (`builtin:test`, a file path), recorded in the JSON."""


def builtin_prompts(split: str = "test", limit: int | None = None, task_seed: int = 0, scorer: str = "auto") -> PromptSet:
    """The built-in task's prompts; `test` is held out from collect's defaults (train) and tuning (val)."""
    choose_scorer(scorer, None, f"builtin:{split}")  # only `builtin` (or auto) fits
    task = BuiltinTask(seed=task_seed)
    ids = list(task.prompts(split))[:limit]
    prompts = tuple(EvalPrompt(text=task.decode(p), ids=tuple(int(t) for t in p)) for p in ids)
    return PromptSet(prompts=prompts, scorer=TaskScorer(task), source=f"builtin:{split}")


def load_prompt_file(path: str | Path, limit: int | None = None, scorer: str = "auto", code_limits: Limits | None = None) -> PromptSet:
    """JSONL, JSON (a list) or Parquet rows with `prompt` or `question` and what to judge by.

    Read by `t3d.dllm.prompt_files`, the same reader as t3d-collect's `--prompts`: a
    prompt is text or a list of token ids; a bare string is a prompt. `scorer` is a
    name of `t3d.dllm.scoring` (`auto`: from the records' fields).
    """
    records = read_prompt_file(path)[:limit]
    name = choose_scorer(scorer, records, str(path))
    return PromptSet(prompts=tuple(_eval_prompt(r) for r in records), scorer=TextScorer(name, code_limits), source=str(path))


def _eval_prompt(record: PromptRecord) -> EvalPrompt:
    if isinstance(record.prompt, str):
        return EvalPrompt(text=record.prompt, answer=record.answer, reference=record.reference())
    text = " ".join(map(str, record.prompt))
    return EvalPrompt(text=text, ids=record.prompt, answer=record.answer, reference=record.reference())


def encode_prompt(model: DiffusionLM, prompt: EvalPrompt, encoding: PromptEncoding = PromptEncoding()) -> list[int]:
    """Token ids of `prompt` for `model`: the task's ids as they are, else text through `encoding`."""
    if prompt.ids is not None:
        if max(prompt.ids, default=0) >= model.vocab_size:
            raise UserError(f"model {model.name} has {model.vocab_size} tokens: too few for prompt ids up to {max(prompt.ids)}")
        return list(prompt.ids)
    if model.tokenizer is None:
        raise UserError(f"model {model.name} has no tokenizer to encode text prompts ({model.path})")
    return encode_prompt_text(model.tokenizer, prompt.text, encoding)


def recorded_encoding(model: DiffusionLM) -> PromptEncoding | None:
    """The encoding a student was distilled on (its t3d.json, written by t3d-distill), or None."""
    recorded = read_t3d_json(Path(model.path)).get("prompt_encoding") if model.path else None
    return None if recorded is None else PromptEncoding.from_dict(recorded, f"{model.path}/t3d.json")


def like_dataset(path: str | Path) -> PromptEncoding:
    """The prompt encoding recorded in a dataset's manifest (`t3d-eval --like DATASET`)."""
    try:
        manifest = Manifest.load(path)
    except (DatasetError, FileNotFoundError, NotADirectoryError) as err:
        raise UserError(f"--like {path}: not a readable t3d dataset ({str(err).splitlines()[0] if str(err) else type(err).__name__})") from None
    return dataset_encoding(manifest.collect_config, f"{path}/manifest.json")


def resolve_encodings(
    models: dict[str, DiffusionLM], like: PromptEncoding | None = None, like_source: str = "", overrides: dict[str, Any] | None = None
) -> tuple[dict[str, PromptEncoding], list[str]]:
    """Each model's prompt encoding, and notes to print when they are not all alike.

    `like` (a dataset's) is used for every model; without it each model uses the one it
    was distilled on, else the default. `overrides` (fields given on the command line)
    apply on top. A note names every model whose own recorded encoding is not the one used,
    and the models when they end up encoding prompts differently.
    """
    recorded = {label: recorded_encoding(m) for label, m in models.items()}
    chosen = {label: like or rec or PromptEncoding() for label, rec in recorded.items()}
    chosen = {label: replace(enc, **(overrides or {})) for label, enc in chosen.items()}
    notes = [f"prompt encoding of {like_source}: {like.describe()}"] if like is not None else []
    notes += [
        f"note: {label} was distilled on prompts encoded with {rec.describe()}; evaluating it with {chosen[label].describe()}"
        for label, rec in recorded.items() if rec is not None and rec != chosen[label]
    ]  # fmt: skip
    if len(set(chosen.values())) > 1:
        notes.append("note: the models encode prompts differently: " + "; ".join(f"{k}: {v.describe()}" for k, v in chosen.items()))
    return chosen, notes


def decode_response(model: DiffusionLM, response: metrics.Response) -> str:
    """Response text without special tokens; ids joined by spaces when the model has no tokenizer."""
    if model.tokenizer is None:
        return " ".join(str(t) for t in response)
    return model.tokenizer.decode(list(response), skip_special_tokens=True)


# --- settings and configuration ------------------------------------------------------------------


def sampler_settings(
    *,
    block_size: int,
    max_new_tokens: int,
    steps_per_block: Sequence[int],
    strategies: Sequence[str] = ("static",),
    threshold: float = 0.9,
    temperature: float = 1.0,
    cache: str = "auto",
) -> list[SamplerConfig]:
    """The settings to compare: static at each steps-per-block value, one setting per other strategy.

    No top-k log-probs are recorded (logits_top_k=0): evaluation never reads them, and
    recording them would slow the speed measurement.
    """
    common = dict(
        block_size=block_size, max_new_tokens=max_new_tokens, threshold=threshold, temperature=temperature, logits_top_k=0,
        cache=cache,
    )
    settings = []
    for strategy in dict.fromkeys(strategies):
        steps = steps_per_block if strategy == "static" else [block_size]  # steps only schedule `static`
        settings += [SamplerConfig(strategy=strategy, steps_per_block=s, **common) for s in steps]
    return settings


def full_steps(setting: SamplerConfig) -> SamplerConfig:
    """The same decode at one token per step: the anchor for agreement and the speed baseline."""
    return replace(setting, strategy="static", steps_per_block=setting.block_size)


def setting_label(setting: SamplerConfig) -> str:
    """Short name of a setting for tables, samples and the plot."""
    if setting.strategy == "static":
        label = f"static B={setting.block_size} spb={setting.steps_per_block}"
    else:
        label = f"{setting.strategy} B={setting.block_size} t={setting.threshold:g}"
    return label if setting.temperature == 1.0 else f"{label} T={setting.temperature:g}"


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
    """Label of the anchor model; None picks the model labelled `teacher`, if any."""
    warmup: bool = True
    """Run one untimed sampler call per model and setting before timing it."""
    timing_repeats: int = 1
    """Timed passes per model and setting; the median is reported with the spread (seeded: outputs repeat exactly)."""
    keep_samples: bool = False
    """Keep every response in `EvalReport.samples` (for `--samples`)."""

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


def row_seeds(num_prompts: int, samples: int, seed: int) -> list[int]:
    """One seed per (prompt, sample) row, independent of model, setting and batch size."""
    return [int(np.random.SeedSequence([seed, p, j]).generate_state(1)[0]) for p in range(num_prompts) for j in range(samples)]


def decode(
    model: DiffusionLM, rows: list[list[int]], seeds: list[int], setting: SamplerConfig, batch_size: int,
    repeats: int = 1, warmup: bool = True,
) -> Decoded:  # fmt: skip
    """Sample every row in batches; time only the sampler calls.

    First one untimed warm-up call on the first batch at this very setting (kernels,
    allocator and caches warmed for these shapes), then `repeats` timed passes over all
    rows. Seeded, so every pass gives the same responses; the first pass's are kept.
    `seconds` is the median pass, `seconds_all` every pass.
    """
    if warmup:
        sample(model, rows[:batch_size], setting, seeds[:batch_size])
    out = Decoded(responses=[], num_steps=[], finish_reason=[], seconds=0.0, batched_nfe=0)
    for repeat in range(repeats):
        seconds = 0.0
        for start in range(0, len(rows), batch_size):
            chunk = slice(start, start + batch_size)
            began = time.perf_counter()
            result = sample(model, rows[chunk], setting, seeds[chunk])
            seconds += time.perf_counter() - began
            if repeat == 0:
                kept = result.reveal_step >= 0  # (N, L): up to and including the first EOS
                out.responses += [tuple(int(t) for t in tok[keep]) for tok, keep in zip(result.tokens, kept)]
                out.num_steps += [int(s) for s in result.num_steps]
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
    verdicts = [scorer.judge(q, r, t) for q, r, t in zip(rows, decoded.responses, texts)]
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
    measured = tokens / steps if steps else 0.0
    static = setting.strategy == "static"
    return EvalRecord(
        model=label,
        setting=setting_label(setting),
        strategy=setting.strategy,
        block_size=setting.block_size,
        steps_per_block=setting.steps_per_block if static else None,
        threshold=None if static else setting.threshold,
        temperature=setting.temperature,
        max_new_tokens=setting.max_new_tokens,
        is_full_steps=setting == full_steps(setting),
        tokens_per_step=setting.block_size / setting.steps_per_block if static else measured,
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


# --- the evaluation --------------------------------------------------------------------------


def pick_teacher(models: dict[str, DiffusionLM], requested: str | None) -> str | None:
    """The anchor's label: the one requested, else `teacher` if present, else None."""
    if requested is not None and requested not in models:
        raise UserError(f"--teacher {requested!r} is not one of the model labels: {', '.join(models)}")
    return requested or ("teacher" if "teacher" in models else None)


def plan(label: str, teacher: str | None, settings: Sequence[SamplerConfig]) -> list[SamplerConfig]:
    """Settings to decode for one model: the teacher also gets its full-step anchors, first, once each."""
    anchors = [full_steps(s) for s in settings] if label == teacher else []
    return list(dict.fromkeys(anchors + list(settings)))


def evaluate(
    models: dict[str, DiffusionLM],
    prompts: PromptSet,
    settings: Sequence[SamplerConfig],
    config: EvalConfig = EvalConfig(),
    on_record: Callable[[EvalRecord], None] | None = None,
    encodings: dict[str, PromptEncoding] | None = None,
) -> EvalReport:
    """Decode every prompt with every model at every setting, then compare against the teacher.

    encodings: each model's prompt encoding (see `resolve_encodings`); default: the default encoding.
    """
    encodings = {label: (encodings or {}).get(label, PromptEncoding()) for label in models}
    if not models or not settings:
        raise UserError("nothing to evaluate: give at least one model and one setting")
    teacher = pick_teacher(models, config.teacher)
    n = config.samples_per_prompt
    seeds = row_seeds(len(prompts.prompts), n, config.seed)
    report = EvalReport(
        records=[], models={label: m.identity() | {"prompt_encoding": encodings[label].to_dict()} for label, m in models.items()},
        teacher=teacher,
        prompt_source=prompts.source, quality_metric=prompts.scorer.metric, config=config, settings=list(settings),
    )  # fmt: skip
    decoded: dict[tuple[str, SamplerConfig], Decoded] = {}
    for label, model in models.items():
        rows = [encode_prompt(model, p, encodings[label]) for p in prompts.prompts for _ in range(n)]
        for setting in plan(label, teacher, settings):
            out = decoded[label, setting] = decode(model, rows, seeds, setting, config.batch_size, config.timing_repeats, config.warmup)
            judged = judge(prompts, model, out, n)
            record = make_record(label, setting, prompts, out, judged, n)
            report.records.append(record)
            report.keys.append((label, setting))
            if config.keep_samples:
                report.samples += sample_rows(record, prompts, out, judged, seeds)
            if on_record is not None:
                on_record(record)
    report.records = [compare(r, s, report, decoded) for r, (_, s) in zip(report.records, report.keys)]
    return report


def compare(
    record: EvalRecord, setting: SamplerConfig, report: EvalReport, decoded: dict[tuple[str, SamplerConfig], Decoded]
) -> EvalRecord:
    """Fill agreement with the anchor, speed against the baseline and gap closure against the teacher."""
    anchor = full_steps(setting)
    teacher = report.teacher
    changes: dict[str, Any] = {}
    if teacher is not None:
        changes["agreement"] = metrics.agreement(decoded[record.model, setting].responses, decoded[teacher, anchor].responses)
    base_label = teacher if teacher is not None else record.model
    base = report.record(base_label, anchor)
    if base is not None:
        changes["speed_baseline"] = f"{base.model} {base.setting}"
        changes["nfe_reduction"] = metrics.ratio(base.nfe_per_response, record.nfe_per_response)
        changes["speedup"] = metrics.ratio(record.tokens_per_second, base.tokens_per_second)
        changes["speedup_to_nfe_reduction"] = metrics.ratio(changes["speedup"], changes["nfe_reduction"])
    if teacher is not None and record.model != teacher:
        teacher_k, teacher_full = report.record(teacher, setting), report.record(teacher, anchor)
        changes["gap_closure"] = metrics.gap_closure(record.quality, teacher_k.quality, teacher_full.quality)
    return replace(record, **changes)


# --- outputs: table, JSON, samples, plot -------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def render_table(report: EvalReport) -> str:
    """A compact fixed-width table, one row per (model, setting)."""
    metric = report.quality_metric or "quality"
    header = ["model", "setting", "tok/step", metric, "agree", "distinct", "NFE", "tok/s", "spread", "speedup", "gap"]
    body = [
        [
            r.model, r.setting, _fmt(r.tokens_per_step, ".2f"), _fmt(r.quality, ".3f"), _fmt(r.agreement, ".3f"),
            _fmt(r.distinct, ".2f"), _fmt(r.nfe_per_response, ".1f"), _fmt(r.tokens_per_second, ".0f"),
            _fmt(r.seconds_spread, ".0%"), _fmt(r.speedup, ".2f"), _fmt(r.gap_closure, ".3f"),
        ]
        for r in report.records
    ]  # fmt: skip
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    def line(row: list[str]) -> str:  # text columns left-aligned, numbers right-aligned
        return "  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))

    lines = [line(row) for row in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _finite(value: Any) -> Any:
    """Non-finite floats become None so the JSON stays strict (no NaN / Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def machine() -> dict[str, Any]:
    """Where the numbers were measured (tokens per second mean nothing without it)."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def report_dict(report: EvalReport) -> dict[str, Any]:
    """The whole report as plain JSON-ready data."""
    return _finite(
        {
            "schema_version": JSON_SCHEMA_VERSION,
            "teacher": report.teacher,
            "prompts": {"source": report.prompt_source, "quality_metric": report.quality_metric},
            "config": asdict(report.config),
            "settings": [{"label": setting_label(s), **asdict(s)} for s in report.settings],
            "models": report.models,
            "machine": machine(),
            "records": [asdict(r) for r in report.records],
        }
    )


def write_json(report: EvalReport, path: str | Path) -> Path:
    """Write `report_dict(report)` to `path` (parents created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(report_dict(report), indent=2, allow_nan=False) + "\n")
    return path


def write_samples(report: EvalReport, path: str | Path) -> Path:
    """Every kept response as one JSON line (needs EvalConfig.keep_samples)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for row in report.samples:
            fh.write(json.dumps(_finite(row), allow_nan=False) + "\n")
    return path


def save_plot(report: EvalReport, path: str | Path) -> Path:
    """Quality (agreement when there is no task metric) against tokens per step, one line per model.

    Static settings are joined by a line; other strategies are single hollow markers in
    the model's colour. Uses the Agg canvas directly, so no display and no pyplot state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter

    metric = report.quality_metric or "agreement"
    value = (lambda r: r.quality) if report.quality_metric else (lambda r: r.agreement)
    fig = Figure(figsize=(6.4, 4.2), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for index, label in enumerate(report.models):
        color = f"C{index}"
        rows = [r for r in report.records if r.model == label and value(r) is not None]
        static = sorted((r for r in rows if r.strategy == "static"), key=lambda r: r.tokens_per_step)
        ax.plot([r.tokens_per_step for r in static], [value(r) for r in static], "o-", color=color, label=label)
        for r in rows:
            if r.strategy != "static":
                ax.plot([r.tokens_per_step], [value(r)], "D", mfc="none", color=color, label=f"{label} ({r.strategy})")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.set_ylim(-0.03, 1.03)  # every plotted metric is a rate
    ax.set_xlabel("tokens per step")
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} vs tokens per step ({report.prompt_source})")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
