"""`t3d-eval --grade RESPONSES.jsonl`: grade responses produced elsewhere with the same scorers.

One record per line (JSONL; also a JSON list, Parquet or a `save_to_disk` folder): a
`response`, the prompt and its reference in any layout a prompt file may use (t3d's
`prompt`/`question` + `answer` or `tests`/`setup` or `test`/`entry_point`, or GSM8K,
MATH-500, Hendrycks MATH, MBPP, HumanEval as published, or the fields `--prompt-field`
/ `--answer-field` / `--tests-field` name), and optional `model` and `setting` labels.
`--scorer auto` grades each line by its own reference (code tests, else an answer); a
line with neither is counted and named, never silently left out of the share. The
summary is per (model, setting): lines judged, the share correct (accuracy, or pass@1
for code) and pass@k over the samples of each prompt (the lines with the same prompt and
reference).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from t3d.dllm.errors import UserError
from t3d.dllm.prompt_files import FieldMap, PromptRecord, read_rows, record_from_value
from t3d.dllm.scoring import TEXT_SCORERS, Grading, Limits, Verdict, choose_scorer, judge_concurrently, text_scorer
from t3d.trainer import metrics

GRADE_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class ResponseLine:
    """One line of a responses file: the record (prompt and reference), the response, its labels."""

    record: PromptRecord
    response: str
    model: str
    setting: str
    raw: dict[str, Any]  # the line as read, written back with the verdict


def read_responses(path: str | Path, fields: FieldMap = FieldMap()) -> list[ResponseLine]:
    """Every line of a responses file; a bad line is a one-line `UserError` naming the file and line."""
    rows = read_rows(path, "responses")
    if not rows:
        raise UserError(f"responses file holds no lines: {path}")
    fields.check([value for value, _ in rows], str(path))
    return [_line(value, where, fields) for value, where in rows]


def _line(value: Any, where: str, fields: FieldMap) -> ResponseLine:
    if not isinstance(value, dict) or not isinstance(value.get("response"), str):
        raise UserError(f"{where}: a line to grade is an object with a text 'response' and its prompt's fields")
    labels = [value.get(k, default) for k, default in (("model", "responses"), ("setting", "-"))]
    if not all(isinstance(label, str) for label in labels):
        raise UserError(f"{where}: 'model' and 'setting' must be text labels")
    record = record_from_value({k: v for k, v in value.items() if k not in LINE_FIELDS}, where, fields)
    return ResponseLine(record, value["response"], labels[0], labels[1], value)


LINE_FIELDS = ("response", "model", "setting", "correct", "score_detail")
"""Fields of a responses line that are not its prompt's (a graded samples file may be graded again)."""


@dataclass
class GradeRecord:
    """The summary of one (model, setting)."""

    model: str
    setting: str
    prompts: int
    responses: int
    judged: int
    """Responses with something to grade them by (an answer or tests); the others count in no share."""
    metric: str | None
    quality: float | None
    """Share of judged responses that are correct (accuracy, or pass@1 for code)."""
    pass_at_k: dict[str, float] | None
    """Unbiased pass@k over each prompt's judged samples (k up to the fewest samples of a prompt)."""


@dataclass
class GradeReport:
    source: str
    scorer: str
    records: list[GradeRecord]
    verdicts: list[Verdict] = field(default_factory=list)  # one per line, in file order
    grading: Grading = field(default_factory=lambda: Grading("auto"))
    """Which scorer judged each line, and the lines nothing could judge."""


def grade(
    lines: Sequence[ResponseLine], scorer: str = "auto", source: str = "", code_limits: Limits | None = None, code_workers: int = 1
) -> GradeReport:
    """Judge every line by the scorer `scorer` resolves to for it (auto: per line); summarise per (model, setting).

    code_workers: sandboxes run at once when the scorer runs code (threads: each waits on its own sandbox).
    """
    plan = choose_scorer(scorer, [line.record for line in lines], source)
    if plan.name is None:
        raise UserError(
            f"{lines[0].record.where}: nothing to grade by: lines need an 'answer' (math) or 'tests' / 'test' + "
            "'entry_point' (code) -- a t3d-eval --samples file has neither"
        )
    judge = text_scorer(plan.scorer, code_limits)
    code = [getattr(TEXT_SCORERS.get(name), "runs_code", False) for name in plan.judges]  # the scorer says so
    verdicts = judge_concurrently(lambda i: judge.score(lines[i].record.reference(), lines[i].response), code, code_workers)
    groups: dict[tuple[str, str], list[tuple[ResponseLine, Verdict]]] = {}
    for line, verdict in zip(lines, verdicts):
        groups.setdefault((line.model, line.setting), []).append((line, verdict))
    records = [_summary(model, setting, rows, plan.metric) for (model, setting), rows in groups.items()]
    return GradeReport(source=source, scorer=plan.name, records=records, verdicts=verdicts, grading=plan)


def _summary(model: str, setting: str, rows: list[tuple[ResponseLine, Verdict]], metric: str | None) -> GradeRecord:
    per_prompt: dict[str, list[bool | None]] = {}
    for line, verdict in rows:
        key = json.dumps([line.record.prompt, asdict(line.record.reference())], sort_keys=True)
        per_prompt.setdefault(key, []).append(verdict.correct)
    judged = [v.correct for _, v in rows if v.correct is not None]
    return GradeRecord(
        model=model, setting=setting, prompts=len(per_prompt), responses=len(rows), judged=len(judged), metric=metric,
        quality=metrics.rate(judged), pass_at_k=metrics.pass_at_k_table(list(per_prompt.values())),
    )  # fmt: skip


def render_grade_table(report: GradeReport) -> str:
    """One row per (model, setting): prompts, responses, those judged, the metric and each pass@k; then the lines left unjudged."""
    ks = sorted({k for r in report.records for k in (r.pass_at_k or {}) if k != "pass@1"}, key=lambda k: int(k[5:]))
    header = ["model", "setting", "prompts", "responses", "judged", report.grading.metric or "quality", *ks]
    body = [
        [r.model, r.setting, str(r.prompts), str(r.responses), str(r.judged), _fmt(r.quality)]
        + [_fmt((r.pass_at_k or {}).get(k)) for k in ks]
        for r in report.records
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    if report.grading.unjudged:
        lines.append(report.grading.describe())
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def grade_dict(report: GradeReport) -> dict[str, Any]:
    return {"schema_version": GRADE_SCHEMA_VERSION, "source": report.source, "scorer": report.scorer,
            "grading": report.grading.summary(), "records": [asdict(r) for r in report.records]}  # fmt: skip


def write_grade_json(report: GradeReport, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(grade_dict(report), indent=2, allow_nan=False) + "\n")
    return path


def write_graded_samples(lines: Sequence[ResponseLine], report: GradeReport, path: str | Path) -> Path:
    """Every input line back, with `correct` and the scorer's `score_detail`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as fh:
        for line, verdict in zip(lines, report.verdicts):
            fh.write(json.dumps(line.raw | {"correct": verdict.correct, "score_detail": verdict.detail}) + "\n")
    return path
