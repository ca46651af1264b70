"""Scorers: how a response is judged, one registry for `t3d-collect` (the `correct` column) and `t3d-eval`.

| name | judges | by | metric |
|---|---|---|---|
| `builtin` | the built-in task's prompts (token ids) | the task's validity check | validity |
| `math` | records with an `answer` | math-verify equivalence of the stated answer | accuracy |
| `exact` | records with an `answer` | normalised text of the stated answer | accuracy |
| `code` | records with `tests` (MBPP) or `test` + `entry_point` (HumanEval) | running the tests in a sandboxed subprocess | pass@1 |

`auto` picks from the prompts: `builtin` for the built-in task, `code` when records
carry tests, `math` when they carry answers, else nothing (no task metric). A scorer
named explicitly must fit every record; under `auto` a record without what the chosen
scorer needs is left unjudged (`correct` is null).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from t3d.dllm.errors import UserError
from t3d.dllm.scoring.base import Reference, Scorer, Verdict
from t3d.dllm.scoring.code_tests import CodeScorer
from t3d.dllm.scoring.math_answers import ExactScorer, MathScorer
from t3d.dllm.scoring.sandbox import Limits

__all__ = [
    "BUILTIN", "SCORER_NAMES", "TEXT_SCORERS", "CodeScorer", "ExactScorer", "Limits", "MathScorer", "Reference", "Scorer", "Verdict",
    "choose_scorer", "text_scorer",
]  # fmt: skip

BUILTIN = "builtin"
TEXT_SCORERS: dict[str, type] = {"math": MathScorer, "code": CodeScorer, "exact": ExactScorer}
"""Scorers of response text against a record's reference, by name."""
SCORER_NAMES = ("auto", BUILTIN, *TEXT_SCORERS)
"""What `--scorer` accepts."""


def text_scorer(name: str, code_limits: Limits | None = None) -> Scorer:
    """A new scorer of response text, by registry name; `code_limits` go to a scorer that runs code."""
    if name not in TEXT_SCORERS:
        raise UserError(f"unknown scorer {name!r}: choose one of {', '.join(TEXT_SCORERS)}")
    kind = TEXT_SCORERS[name]
    return kind(code_limits) if code_limits is not None and getattr(kind, "runs_code", False) else kind()


def _auto(records: Sequence[Any]) -> str | None:
    references = [r.reference() for r in records]
    if any(ref.has_code_tests for ref in references):
        return "code"
    return "math" if any(ref.answer is not None for ref in references) else None


def choose_scorer(name: str, records: Sequence[Any] | None, source: str) -> str | None:
    """Resolve `--scorer NAME` against the prompts; None when there is nothing to judge.

    records: the prompt file's records (`PromptRecord`: `.reference()`, `.where`), or
    None for the built-in task. A scorer that does not fit is a one-line `UserError`
    naming the first record it cannot judge.
    """
    if name not in SCORER_NAMES:
        raise UserError(f"--scorer must be one of {', '.join(SCORER_NAMES)}, got {name!r}")
    if records is None:
        if name in ("auto", BUILTIN):
            return BUILTIN
        raise UserError(f"--scorer {name} needs a prompt file whose records carry its references; {source} is judged by 'builtin'")
    if name == BUILTIN:
        raise UserError(f"--scorer builtin judges only the built-in task's prompts, not {source}")
    if name == "auto":
        return _auto(records)
    scorer = text_scorer(name)
    for record in records:
        if not scorer.fits(record.reference()):
            raise UserError(f"{record.where or source}: --scorer {name} needs {scorer.needs} in every record; this one has none")
    return name
