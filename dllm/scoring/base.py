"""What every scorer shares: the reference a prompt carries and the verdict on one response."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True, kw_only=True)
class Reference:
    """What a prompt record gives a scorer to judge its responses by (fields as in the prompt file)."""

    prompt: str = ""
    """The prompt's text (a HumanEval completion continues it)."""
    answer: str | None = None
    """Reference answer: `#### 42`, `\\boxed{42}` or the bare answer."""
    tests: tuple[str, ...] | None = None
    """MBPP style: assert statements, each run on its own."""
    setup: str | None = None
    """MBPP style: code run before the solution (imports, helpers)."""
    test: str | None = None
    """HumanEval style: code defining `check(candidate)`."""
    entry_point: str | None = None
    """HumanEval style: the function `check` is called with."""

    @property
    def has_code_tests(self) -> bool:
        return self.tests is not None or self.test is not None


@dataclass(frozen=True)
class Verdict:
    """One response judged: `correct` is None when the prompt has nothing to judge it by."""

    correct: bool | None
    detail: dict[str, Any] = field(default_factory=dict)
    """JSON-ready: the parsed answers (math), the failing test or `timeout` (code)."""


class Scorer(Protocol):
    """A way of judging responses, picked by name from `t3d.dllm.scoring.SCORERS`."""

    name: str
    metric: str
    """What the share of correct responses is called in tables (`accuracy`, `pass@1`, `validity`)."""
    needs: str
    """What a record must carry, for error messages (`an 'answer'`)."""

    def fits(self, reference: Reference) -> bool:
        """Whether `reference` has what this scorer needs."""

    def score(self, reference: Reference, response: str) -> Verdict:
        """Judge one response text against `reference`."""
