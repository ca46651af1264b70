"""`t3d-eval --grade RESPONSES.jsonl`: grade responses produced elsewhere with the same scorers.

One JSON object per line: `prompt`, `response`, the reference (`answer` for math;
`tests` as a list of assert statements with an optional `setup`, or `test` +
`entry_point`, for code) and optional `model` and `setting` labels. The scorer is
`--scorer` (`auto`: from the lines' fields, as for a prompt file). The summary is per
(model, setting): the share correct (accuracy, or pass@1 for code) and pass@k over the
samples of each prompt (the lines with the same prompt and reference).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from t3d.dllm.errors import UserError
from t3d.dllm.prompt_files import PromptRecord, record_from_value
from t3d.dllm.scoring import Limits, Verdict, choose_scorer, text_scorer
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


def read_responses(path: str | Path) -> list[ResponseLine]:
    """Every line of a responses file; a bad line is a one-line `UserError` naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"responses file not found: {path}")
    lines = []
    with path.open(encoding="utf-8") as fh:
        for number, text in enumerate(fh, start=1):
            if text.strip():
                lines.append(_line(text, f"{path} line {number}"))
    if not lines:
        raise UserError(f"responses file holds no lines: {path}")
    return lines


def _line(text: str, where: str) -> ResponseLine:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise UserError(f"{where}: malformed JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(value, dict) or not isinstance(value.get("prompt"), str) or not isinstance(value.get("response"), str):
        raise UserError(f"{where}: a line to grade is an object with text 'prompt' and 'response' fields")
    labels = [value.get(k, default) for k, default in (("model", "responses"), ("setting", "-"))]
    if not all(isinstance(label, str) for label in labels):
        raise UserError(f"{where}: 'model' and 'setting' must be text labels")
    return ResponseLine(record_from_value(value, where), value["response"], labels[0], labels[1], value)


@dataclass
class GradeRecord:
    """The summary of one (model, setting)."""

    model: str
    setting: str
    prompts: int
    responses: int
    judged: int
    metric: str
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


def grade(lines: Sequence[ResponseLine], scorer: str = "auto", source: str = "", code_limits: Limits | None = None) -> GradeReport:
    """Judge every line with the scorer `scorer` resolves to; summarise per (model, setting)."""
    name = choose_scorer(scorer, [line.record for line in lines], source)
    if name is None:
        raise UserError(
            f"{lines[0].record.where}: nothing to grade by: lines need an 'answer' (math) or 'tests' / 'test' + "
            "'entry_point' (code) -- a t3d-eval --samples file has neither"
        )
    judge = text_scorer(name, code_limits)
    verdicts = [judge.score(line.record.reference(), line.response) for line in lines]
    groups: dict[tuple[str, str], list[tuple[ResponseLine, Verdict]]] = {}
    for line, verdict in zip(lines, verdicts):
        groups.setdefault((line.model, line.setting), []).append((line, verdict))
    records = [_summary(model, setting, rows, judge.metric) for (model, setting), rows in groups.items()]
    return GradeReport(source=source, scorer=name, records=records, verdicts=verdicts)


def _summary(model: str, setting: str, rows: list[tuple[ResponseLine, Verdict]], metric: str) -> GradeRecord:
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
    """One row per (model, setting): prompts, responses, the metric and each pass@k."""
    ks = sorted({k for r in report.records for k in (r.pass_at_k or {}) if k != "pass@1"}, key=lambda k: int(k[5:]))
    header = ["model", "setting", "prompts", "responses", report.records[0].metric if report.records else "quality", *ks]
    body = [
        [r.model, r.setting, str(r.prompts), str(r.responses), _fmt(r.quality)] + [_fmt((r.pass_at_k or {}).get(k)) for k in ks]
        for r in report.records
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in [header, *body]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def grade_dict(report: GradeReport) -> dict[str, Any]:
    return {"schema_version": GRADE_SCHEMA_VERSION, "source": report.source, "scorer": report.scorer,
            "records": [asdict(r) for r in report.records]}  # fmt: skip


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
