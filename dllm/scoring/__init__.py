"""Scorers: how a response is judged, one registry for `t3d-collect` (the `correct` column) and `t3d-eval`.

| name | judges | by | metric |
|---|---|---|---|
| `builtin` | the built-in task's prompts (token ids) | the task's validity check | validity |
| `math` | records with an `answer` | math-verify equivalence of the stated answer | accuracy |
| `exact` | records with an `answer` | normalised text of the stated answer | accuracy |
| `code` | records with `tests` (MBPP) or `test` + `entry_point` (HumanEval) | running the tests in a sandboxed subprocess | pass@1 |

`auto` picks per record, from that record's fields: `builtin` for the built-in task;
for a prompt file, the first scorer of `AUTO_ORDER` that fits the record (code tests,
then an answer). So a file mixing GSM8K and MBPP rows grades each row by its own
reference. A record nothing fits is counted and named (`Grading.describe`), never
silently left out. A scorer named explicitly must fit every record.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from t3d.dllm.errors import UserError
from t3d.dllm.scoring.base import Reference, Scorer, Verdict
from t3d.dllm.scoring.code_tests import CodeScorer
from t3d.dllm.scoring.math_answers import ExactScorer, MathScorer
from t3d.dllm.scoring.sandbox import Limits, box

__all__ = [
    "AUTO", "AUTO_ORDER", "BUILTIN", "SCORER_NAMES", "TEXT_SCORERS", "AutoScorer", "CodeScorer", "ExactScorer", "Grading", "Limits",
    "MathScorer", "Reference", "Scorer", "Verdict", "choose_scorer", "judge_concurrently", "runs_code", "text_scorer",
]  # fmt: skip

BUILTIN = "builtin"
AUTO = "auto"
TEXT_SCORERS: dict[str, type] = {"math": MathScorer, "code": CodeScorer, "exact": ExactScorer}
"""Scorers of response text against a record's reference, by name."""
AUTO_ORDER = ("code", "math")
"""Under `--scorer auto` a record is judged by the first of these that fits it: its code tests, else its answer."""
SCORER_NAMES = (AUTO, BUILTIN, *TEXT_SCORERS)
"""What `--scorer` accepts."""
MIXED_METRIC = "accuracy"
"""The metric's name when records of one set are judged by scorers with different metrics (share correct)."""


def text_scorer(name: str, code_limits: Limits | None = None) -> Scorer:
    """A new scorer of response text, by registry name (`auto`: per record); `code_limits` go to a scorer that runs code."""
    if name == AUTO:
        return AutoScorer(code_limits)
    if name not in TEXT_SCORERS:
        raise UserError(f"unknown scorer {name!r}: choose one of {', '.join(TEXT_SCORERS)}")
    kind = TEXT_SCORERS[name]
    return kind(code_limits) if code_limits is not None and getattr(kind, "runs_code", False) else kind()


def runs_code(scorer: Scorer, reference: Reference) -> bool:
    """Whether `scorer` runs code to judge `reference` (auto: the scorer it picks for that record)."""
    picked = scorer.pick(reference) if isinstance(scorer, AutoScorer) else scorer
    return bool(getattr(picked, "runs_code", False))


def judge_concurrently(score: Callable[[int], Verdict], code: Sequence[bool], workers: int = 1) -> list[Verdict]:
    """score(i) for i in range(len(code)): those whose `code[i]` is true `workers` at a time (threads, each
    waiting on its own sandbox), the rest in this thread (math-verify's timeouts need the main thread)."""
    verdicts: dict[int, Verdict] = {}
    if workers > 1:
        running = [i for i, is_code in enumerate(code) if is_code]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="t3d-judge") as pool:
            verdicts.update(zip(running, pool.map(score, running)))
    return [verdicts[i] if i in verdicts else score(i) for i in range(len(code))]


class AutoScorer:
    """`--scorer auto` on text records: each record judged by the first scorer of `AUTO_ORDER` that fits it."""

    name = AUTO
    metric = MIXED_METRIC
    needs = "an 'answer' or code tests"

    def __init__(self, code_limits: Limits | None = None) -> None:
        self.scorers = tuple(text_scorer(name, code_limits) for name in AUTO_ORDER)

    def pick(self, reference: Reference) -> Scorer | None:
        """The scorer judging `reference`, or None when it carries nothing to judge by."""
        return next((s for s in self.scorers if s.fits(reference)), None)

    def fits(self, reference: Reference) -> bool:
        return self.pick(reference) is not None

    def score(self, reference: Reference, response: str) -> Verdict:
        scorer = self.pick(reference)
        if scorer is None:
            return Verdict(None, {"scorer": None})
        verdict = scorer.score(reference, response)
        return Verdict(verdict.correct, {"scorer": scorer.name} | verdict.detail)


@dataclass(frozen=True)
class Grading:
    """What `--scorer` resolved to for a set of prompt records: which scorer judges each one."""

    scorer: str
    """`builtin`, `auto` (per record) or the text scorer named."""
    judges: tuple[str | None, ...] = ()
    """Per record, the text scorer that judges it; None: nothing to judge it by."""
    wheres: tuple[str, ...] = ()
    """Per record, where it was read (`FILE line 3`), to name the records left unjudged."""

    @property
    def metric(self) -> str | None:
        """The table's name for the share correct: the one metric of the scorers used, `accuracy` when they differ."""
        if self.scorer == BUILTIN:
            return "validity"
        metrics = {TEXT_SCORERS[name].metric for name in self.judges if name is not None}
        return None if not metrics else metrics.pop() if len(metrics) == 1 else MIXED_METRIC

    @property
    def name(self) -> str | None:
        """One name for the set: the scorer judging every judged record (`math`), `auto` when they differ, None when none."""
        if self.scorer == BUILTIN:
            return BUILTIN
        used = {name for name in self.judges if name is not None}
        return None if not used else used.pop() if len(used) == 1 else AUTO

    @property
    def unjudged(self) -> list[str]:
        """Where each record nothing can judge was read."""
        return [where for where, name in zip(self.wheres, self.judges) if name is None]

    def summary(self) -> dict[str, Any]:
        """JSON-ready: the scorer asked for, records per scorer, and the unjudged records."""
        counts = Counter(name or "none" for name in self.judges)
        return {"scorer": self.scorer, "judged_by": dict(counts), "unjudged": self.unjudged}

    def describe(self, limit: int = 5) -> str:
        """`graded per record: 3 math, 2 code; 1 record had nothing to grade it by: FILE line 4`."""
        if self.scorer == BUILTIN:
            return "graded by the built-in task's validity check"
        counts = Counter(name for name in self.judges if name is not None)
        text = ("graded per record: " if self.scorer == AUTO else f"graded by {self.scorer}: ") + (
            ", ".join(f"{n} {name}" for name, n in counts.items()) or "none"
        )
        left = self.unjudged
        if left:
            shown = ", ".join(left[:limit]) + (f" and {len(left) - limit} more" if len(left) > limit else "")
            text += f"; {len(left)} record{'s' if len(left) != 1 else ''} had nothing to grade {'them' if len(left) != 1 else 'it'} by (no answer, no tests): {shown}"
        return text


def choose_scorer(name: str, records: Sequence[Any] | None, source: str) -> Grading:
    """Resolve `--scorer NAME` against the prompts: which scorer judges each record.

    records: the prompt file's records (`PromptRecord`: `.reference()`, `.where`), or
    None for the built-in task. A scorer named explicitly that does not fit a record is a
    one-line `UserError` naming the first record it cannot judge; under `auto` such a
    record is left unjudged and named in `Grading.describe`.
    """
    if name not in SCORER_NAMES:
        raise UserError(f"--scorer must be one of {', '.join(SCORER_NAMES)}, got {name!r}")
    if records is None:
        if name in (AUTO, BUILTIN):
            return Grading(BUILTIN)
        raise UserError(f"--scorer {name} needs a prompt file whose records carry its references; {source} is judged by 'builtin'")
    if name == BUILTIN:
        raise UserError(f"--scorer builtin judges only the built-in task's prompts, not {source}")
    wheres = tuple(record.where or f"{source} record {i}" for i, record in enumerate(records))
    if name == AUTO:
        auto = AutoScorer()
        picked = [auto.pick(record.reference()) for record in records]
        return _sandboxed(Grading(AUTO, tuple(None if s is None else s.name for s in picked), wheres))
    scorer = text_scorer(name)
    for record, where in zip(records, wheres):
        if not scorer.fits(record.reference()):
            raise UserError(f"{where}: --scorer {name} needs {scorer.needs} in every record; this one has none")
    return _sandboxed(Grading(name, (name,) * len(records), wheres))


def _sandboxed(grading: Grading) -> Grading:
    """Fail closed before anything loads: code to run and no sandbox here is one line (sandbox.box), unless opted out."""
    if "code" in grading.judges:
        box()
    return grading
