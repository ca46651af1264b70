"""Math answers: the final answer a response states, judged equal to the reference by math-verify.

The front end finds what the response states as its answer: the last GSM8K marker
`#### 42`, else the last `\\boxed{...}` (braces balanced), else the whole text, from
which math-verify takes the last expression itself. A stated answer and the reference
are read as LaTeX inside `$\\boxed{...}$` (as MATH graders do), words wrapped in
`\\text{}` first so that `18 dollars` reads as 18 and `Paris` is not the product
p*a*r*i*s. math-verify's `verify(gold, prediction)` then decides by symbolic and
numeric equivalence, so `\\dfrac12`, `1/2`, `0.5` and `50\\%` are one answer. Answers
equal as normalised text are equal whatever math-verify makes of them (`method:
"text"` in the detail); an answer it cannot parse is otherwise wrong.

Percentages, as math-verify 0.9 treats them: `50\\%` (or `50%` inside our LaTeX
wrapping) parses to 50 * 1/100 kept unevaluated. Against a decimal or a fraction it
counts as 50/100 (`50\\%` = `0.5` = `\\frac12`; `5\\%` != `0.5`); against an integer it
counts as 50 (`50\\%` = `50`), the leniency GSM8K needs when a response writes a unit
its reference leaves out. So a percentage can equal two references, X/100 and X, and
never a third value.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from t3d.dllm.scoring.base import Reference, Verdict

PARSE_TIMEOUT_S = 5
"""math-verify's own limit per parse / verify call (signal based: main thread only)."""


def boxed_contents(text: str) -> list[str]:
    """Contents of every `\\boxed{...}` (or `\\fbox{...}`), braces balanced, in order."""
    found = []
    for match in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, start = 1, match.end()
        for pos in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[pos], 0)
            if depth == 0:
                found.append(text[start:pos])
                break
    return found


def after_marker(text: str) -> str | None:
    """What follows the last GSM8K `####` marker on its line, or None."""
    if "####" not in text:
        return None
    answer = text.rsplit("####", 1)[1].split("\n", 1)[0].strip()
    return answer or None


def last_boxed(text: str) -> str | None:
    boxed = [b.strip() for b in boxed_contents(text) if b.strip()]
    return boxed[-1] if boxed else None


def stated_answer(text: str) -> str | None:
    """The answer a text states with a marker or a box (`####` first, then `\\boxed{}`), else None."""
    return after_marker(text) or last_boxed(text)


def reference_answer(answer: str) -> str:
    """The final answer of a reference: a GSM8K solution keeps only what follows `####`."""
    return stated_answer(answer) or answer.strip()


def normalize_answer(answer: str) -> str:
    """Lower case, no `$`, no `\\text{}` wrapper, no thousands commas, single spaces, no final period."""
    text = re.sub(r"\\text\{([^}]*)\}", r"\1", answer)
    text = text.replace("$", "").replace("\\!", "").replace("\\%", "%").strip()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    text = re.sub(r"\s+", " ", text).rstrip(".").strip()
    return text.lower()


def _timeout() -> int | None:
    """math-verify times out with SIGALRM, which only the main thread may use."""
    return PARSE_TIMEOUT_S if threading.current_thread() is threading.main_thread() else None


_WORD = re.compile(r"(?<![\\A-Za-z{])[A-Za-z]{3,}(?![A-Za-z])")
"""A run of three or more letters outside a LaTeX command or braces: a word, not a product of variables."""


def parse_answer(answer: str) -> list[Any]:
    """math-verify's parse of one stated answer, read as LaTeX inside `$\\boxed{...}$` (as MATH graders do).

    Words become `\\text{...}` first: math-verify would read `Paris` as the product
    p*a*r*i*s (equal to `pairs`) and `18 dollars` as 18*d*o*l*l*a*r*s.
    """
    from math_verify import parse

    bare = answer.strip().rstrip(".").strip().strip("$").strip()
    latex = _WORD.sub(lambda m: f"\\text{{{m.group()}}}", bare)
    return parse(f"$\\boxed{{{latex}}}$", parsing_timeout=_timeout())


def parse_response(text: str) -> tuple[str | None, list[Any]]:
    """(the stated answer or None, its parse); without a marker or box math-verify reads the whole text."""
    from math_verify import parse

    stated = stated_answer(text)
    if stated is not None:
        return stated, parse_answer(stated)
    return None, parse(text, parsing_timeout=_timeout())


def _shown(parsed: list[Any]) -> list[str]:
    return [str(p) for p in parsed]


def judge_math(response: str, reference: str) -> Verdict:
    """Is the answer `response` states equivalent to the final answer of `reference`?"""
    from math_verify import verify

    want = reference_answer(reference)
    stated, got = parse_response(response)
    gold = parse_answer(want)
    detail: dict[str, Any] = {"extracted": stated, "parsed": _shown(got), "reference": want, "reference_parsed": _shown(gold)}
    candidate = stated if stated is not None else (_shown(got)[-1] if got else None)
    if candidate is not None and normalize_answer(candidate) == normalize_answer(want):
        return Verdict(True, detail | {"method": "text"})  # the same text is the same answer, parsed or not
    if got and gold:
        return Verdict(bool(verify(gold, got, timeout_seconds=_timeout())), detail | {"method": "math-verify"})
    return Verdict(False, detail | {"method": "text"})


def judge_exact(response: str, reference: str) -> Verdict:
    """Exact match after normalising text: the stated answer (or the whole response) against the reference's."""
    want = reference_answer(reference)
    stated = stated_answer(response)
    got = stated if stated is not None else response
    return Verdict(normalize_answer(got) == normalize_answer(want), {"extracted": got, "reference": want})


class MathScorer:
    """Answer equivalence by math-verify (MATH500, GSM8K)."""

    name = "math"
    metric = "accuracy"
    needs = "an 'answer'"

    def fits(self, reference: Reference) -> bool:
        return reference.answer is not None

    def score(self, reference: Reference, response: str) -> Verdict:
        return Verdict(None) if reference.answer is None else judge_math(response, reference.answer)


class ExactScorer:
    """Normalised exact match of the stated answer (names, labels, anything math-verify should not read)."""

    name = "exact"
    metric = "accuracy"
    needs = "an 'answer'"

    def fits(self, reference: Reference) -> bool:
        return reference.answer is not None

    def score(self, reference: Reference, response: str) -> Verdict:
        return Verdict(None) if reference.answer is None else judge_exact(response, reference.answer)
