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
- Uncertainty: quality and gap closure carry a percentile bootstrap 95 % interval that
  resamples prompts (a prompt's samples are not independent), seeded by EvalConfig.seed;
  gap closure resamples the student and both teacher runs on the same prompts.
- Speed: wall clock around the sampler calls only, after one untimed warm-up call per
  model and setting (the first call at a new shape is slow: compilation, allocator,
  caches), the median of `timing_repeats` passes with their spread. Every speed
  compared is measured this way, so the speed-up and the NFE reduction, both taken
  against the anchor (else the same model's own full-step run), compare like with like.
  A speed-up from fewer than 3 timed passes, or from passes more than 20 % apart, is
  flagged `speed_noisy` (the table marks it) instead of being read as a result.
- Parallelism: tokens per forward is counted while decoding, tokens the sampler
  revealed / denoising forwards (the forwards that compute logits; the exact cache's
  prefill and commit forwards are not counted, as d3LLM and Fast-dLLM count NFE), so an
  adaptive strategy's number is what it reached and a fixed schedule's is B / steps.
  AUP (`t3d.trainer.aup`, d3LLM's accuracy under parallelism) scores each model's
  (tokens per forward, quality %) points against the best quality in the report.

The work is split by job: `eval_prompts` (prompt sets, scorers, encodings),
`eval_decode` (settings, decoding and timing, records) and `eval_report` (table, JSON,
samples, plot); this module runs the evaluation and re-exports their names, so
`from t3d.trainer import evaluate as ev` reaches all of it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from t3d.dllm import DiffusionLM, SamplerConfig, UserError
from t3d.dllm.prompt_encoding import PromptEncoding
from t3d.trainer import metrics
from t3d.trainer.eval_decode import (
    Decoded, EvalConfig, EvalRecord, EvalReport, Judged, decode, full_steps, judge, make_record, row_seeds, sample_rows,
    sampler_settings, setting_label, truth_summary,
)  # fmt: skip
from t3d.trainer.eval_prompts import (
    EvalPrompt, PromptSet, Scorer, TaskScorer, TextScorer, builtin_prompts, decode_response, encode_prompt, like_dataset,
    load_prompt_file, recorded_encoding, resolve_encodings,
)  # fmt: skip
from t3d.trainer.eval_report import (
    JSON_SCHEMA_VERSION, aup_summary, legend, machine, plot_figure, render_legend, render_table, report_dict, save_plot, write_json,
    write_samples,
)  # fmt: skip

__all__ = [
    "JSON_SCHEMA_VERSION", "aup_summary", "Decoded", "EvalConfig", "EvalPrompt", "EvalRecord", "EvalReport", "Judged", "PromptEncoding",
    "PromptSet", "Scorer", "TaskScorer", "TextScorer", "builtin_prompts", "compare", "decode", "decode_response",
    "encode_prompt", "evaluate", "full_steps", "judge", "like_dataset", "load_prompt_file", "machine", "make_record",
    "legend", "metrics", "pick_teacher", "plan", "plot_figure", "progress_bar", "recorded_encoding", "render_legend", "render_table", "report_dict", "resolve_encodings",
    "row_seeds", "sample_rows", "sampler_settings", "save_plot", "setting_label", "truth_summary", "write_json",
    "write_samples",
]  # fmt: skip


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
        prompt_grading=prompts.grading,
    )  # fmt: skip
    decoded: dict[tuple[str, SamplerConfig], Decoded] = {}
    verdicts: dict[tuple[str, SamplerConfig], list[list[bool | None]]] = {}
    with progress_bar(models, teacher, settings, len(seeds), config) as bar:
        for label, model in models.items():
            rows = [encode_prompt(model, p, encodings[label]) for p in prompts.prompts for _ in range(n)]
            for setting in plan(label, teacher, settings):
                bar.set_postfix_str(f"{label} {setting_label(setting)}", refresh=False)
                out = decoded[label, setting] = decode(
                    model, rows, seeds, setting, config.batch_size, config.timing_repeats, config.warmup, on_batch=bar.update
                )  # fmt: skip
                judged = judge(prompts, model, out, n)
                verdicts[label, setting] = [[v.correct for v in judged.verdicts[i : i + n]] for i in range(0, len(rows), n)]
                record = make_record(label, setting, prompts, out, judged, n)
                report.records.append(record)
                report.keys.append((label, setting))
                if config.keep_samples:
                    report.samples += sample_rows(record, prompts, out, judged, seeds)
                if on_record is not None:
                    on_record(record)
    report.records = [compare(r, s, report, decoded, verdicts) for r, (_, s) in zip(report.records, report.keys)]
    return report


def progress_bar(
    models: dict[str, DiffusionLM], teacher: str | None, settings: Sequence[SamplerConfig], rows: int, config: EvalConfig
) -> Any:
    """A bar over every row the sampler decodes (warm-ups and timed passes), on stderr when it is a terminal."""
    from tqdm import tqdm

    per_setting = config.timing_repeats * rows + (min(config.batch_size, rows) if config.warmup else 0)
    total = sum(len(plan(label, teacher, settings)) for label in models) * per_setting
    disable = None if config.progress else True  # None: tqdm turns itself off when stderr is not a terminal
    return tqdm(total=total, desc="eval", unit="row", file=sys.stderr, disable=disable, dynamic_ncols=True, leave=False)


def compare(
    record: EvalRecord,
    setting: SamplerConfig,
    report: EvalReport,
    decoded: dict[tuple[str, SamplerConfig], Decoded],
    verdicts: dict[tuple[str, SamplerConfig], list[list[bool | None]]] | None = None,
) -> EvalRecord:
    """Fill agreement with the anchor, speed against the baseline and gap closure against the teacher.

    verdicts: each run's per-prompt verdicts; with them, the bootstrap intervals of quality
    and gap closure are filled too (seeded by EvalConfig.seed).
    """
    anchor = full_steps(setting)
    teacher = report.teacher
    judged = verdicts if verdicts is not None and record.quality is not None else {}
    boot = {"seed": report.config.seed}
    changes: dict[str, Any] = {}
    if (record.model, setting) in judged:
        changes["quality_interval"] = metrics.rate_interval(judged[record.model, setting], **boot)
    if teacher is not None:
        changes["agreement"] = metrics.agreement(decoded[record.model, setting].responses, decoded[teacher, anchor].responses)
    base_label = teacher if teacher is not None else record.model
    base = report.record(base_label, anchor)
    if base is not None:
        changes["speed_baseline"] = f"{base.model} {base.setting}"
        changes["nfe_reduction"] = metrics.ratio(base.nfe_per_response, record.nfe_per_response)
        changes["speedup"] = metrics.ratio(record.tokens_per_second, base.tokens_per_second)
        changes["speedup_to_nfe_reduction"] = metrics.ratio(changes["speedup"], changes["nfe_reduction"])
        changes["speed_noisy"] = metrics.noisy_timing(
            (base.timing_repeats, record.timing_repeats), (base.seconds_spread, record.seconds_spread)
        )  # fmt: skip
    if teacher is not None and record.model != teacher:
        teacher_k, teacher_full = report.record(teacher, setting), report.record(teacher, anchor)
        changes["gap_closure"] = metrics.gap_closure(record.quality, teacher_k.quality, teacher_full.quality)
        if changes["gap_closure"] is not None and (record.model, setting) in judged:
            runs = (judged[record.model, setting], judged[teacher, setting], judged[teacher, anchor])
            changes["gap_closure_interval"] = metrics.gap_closure_interval(*runs, **boot)
    return replace(record, **changes)
