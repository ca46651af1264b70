"""Pure metric functions for `t3d-eval` (DESIGN.md section 6).

Nothing here loads a model or samples: every function takes plain Python values
(booleans, strings, token-id tuples, counts, seconds) so each can be checked against
numbers worked out by hand. A metric that has nothing to measure returns None rather
than a made-up number, and JSON writes it as null.

Responses are compared as tuples of token ids, so "identical" means identical tokens,
not identical text after decoding.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence

Response = tuple[int, ...]

# --- task metric ---------------------------------------------------------------------


def rate(flags: Iterable[bool]) -> float | None:
    """Share of True among `flags` (validity, accuracy, agreement); None when there are none."""
    flags = [bool(f) for f in flags]
    return sum(flags) / len(flags) if flags else None


_NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?|-?\.\d+")


def _boxed_contents(text: str) -> list[str]:
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


def _after_marker(text: str) -> str | None:
    """What follows the last GSM8K `####` marker on its line, or None."""
    if "####" not in text:
        return None
    answer = text.rsplit("####", 1)[1].split("\n", 1)[0].strip()
    return answer or None


def _last_boxed(text: str) -> str | None:
    boxed = [b.strip() for b in _boxed_contents(text) if b.strip()]
    return boxed[-1] if boxed else None


def extract_answer(text: str) -> str | None:
    """The final answer a response states, or None when it states none.

    Order: the last GSM8K marker `#### 42`, else the last `\\boxed{42}`, else the last
    number in the text (the lenient fallback GSM8K evaluations use for answers that
    forget the marker). The answer is returned as written; `answers_match` normalises.
    """
    stated = _after_marker(text) or _last_boxed(text)
    if stated is not None:
        return stated
    numbers = _NUMBER.findall(text)
    return numbers[-1] if numbers else None


def reference_answer(answer: str) -> str:
    """The final answer of a reference: a GSM8K solution keeps only what follows `####`."""
    return _after_marker(answer) or _last_boxed(answer) or answer.strip()


def normalize_answer(answer: str) -> str:
    """Lower case, no `$`, no `\\text{}` wrapper, no thousands commas, single spaces, no final period."""
    text = re.sub(r"\\text\{([^}]*)\}", r"\1", answer)
    text = text.replace("$", "").replace("\\!", "").replace("\\%", "%").strip()
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)
    text = re.sub(r"\s+", " ", text).rstrip(".").strip()
    return text.lower()


def parse_number(answer: str) -> float | None:
    """A number from a normalised answer: `42`, `-3.5`, `1,000`, `50%`, `3/4`, `\\frac{3}{4}`; else None."""
    text = normalize_answer(answer).rstrip("%").strip()
    frac = re.fullmatch(r"\\d?frac\{(-?[\d.]+)\}\{(-?[\d.]+)\}|(-?[\d.]+)\s*/\s*(-?[\d.]+)", text)
    try:
        if frac:
            num, den = (g for g in frac.groups() if g is not None)
            return float(num) / float(den)
        return float(text)
    except (ValueError, ZeroDivisionError):
        return None


def answers_match(predicted: str | None, reference: str) -> bool:
    """Numeric match (relative tolerance 1e-6) when both sides are numbers, else exact normalised text."""
    if predicted is None:
        return False
    want = reference_answer(reference)
    got_number, want_number = parse_number(predicted), parse_number(want)
    if got_number is not None and want_number is not None:
        return math.isclose(got_number, want_number, rel_tol=1e-6, abs_tol=1e-9)
    return normalize_answer(predicted) == normalize_answer(want)


def is_correct(response_text: str, reference: str) -> bool:
    """Does the final answer stated in `response_text` match the reference's final answer?"""
    return answers_match(extract_answer(response_text), reference)


# --- agreement and diversity -----------------------------------------------------------


def agreement(responses: Sequence[Response], anchors: Sequence[Response]) -> float | None:
    """Share of responses identical to the anchor (the teacher's full-step response, same prompt and seed)."""
    if len(responses) != len(anchors):
        raise ValueError(f"{len(responses)} responses but {len(anchors)} anchors")
    return rate(r == a for r, a in zip(responses, anchors))


def empirical_entropy(items: Sequence[Hashable]) -> float:
    """Entropy in nats of the empirical distribution of `items` (0 for one distinct item).

    With n samples it is at most log(n): compare models only at the same samples per prompt.
    """
    counts = Counter(items)
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values()) if total else 0.0


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


def distinct_per_prompt(groups: Sequence[Sequence[Hashable]]) -> float | None:
    """Mean over prompts of the number of distinct responses among that prompt's samples."""
    return _mean([len(set(group)) for group in groups])


def distinct_valid_per_prompt(groups: Sequence[Sequence[Hashable]], valid: Sequence[Sequence[bool]]) -> float | None:
    """Mean over prompts of the number of distinct *valid* responses: collapse onto one good answer shows here."""
    return _mean([len({r for r, ok in zip(group, oks) if ok}) for group, oks in zip(groups, valid)])


def entropy_per_prompt(groups: Sequence[Sequence[Hashable]]) -> float | None:
    """Mean over prompts of the empirical entropy (nats) of that prompt's samples."""
    return _mean([empirical_entropy(group) for group in groups])


def mean_finite(values: Iterable[float]) -> float | None:
    """Mean of the finite values (e.g. exact log-likelihoods of the valid responses); None when none."""
    return _mean([v for v in values if math.isfinite(v)])


# --- the headline and speed --------------------------------------------------------------


def gap_closure(student_k: float | None, teacher_k: float | None, teacher_full: float | None, eps: float = 1e-9) -> float | None:
    """Share of the teacher's few-step quality gap the student closes.

    `(student@K - teacher@K) / (teacher@T - teacher@K)`: 0 = no better than the teacher
    at K steps, 1 = as good as the teacher at full steps (it can exceed 1 or go below 0).
    Undefined, so None, when any input is missing or the teacher loses nothing at K
    steps (|teacher@T - teacher@K| <= eps): there is no gap to close.
    """
    if student_k is None or teacher_k is None or teacher_full is None:
        return None
    gap = teacher_full - teacher_k
    if abs(gap) <= eps:
        return None
    return (student_k - teacher_k) / gap


def per_response(total: float, responses: int) -> float | None:
    """`total / responses` (network evaluations per response), None for no responses."""
    return total / responses if responses else None


def tokens_per_second(tokens: int, seconds: float) -> float | None:
    """Generated tokens over wall-clock seconds of the sampler calls; None when nothing was timed."""
    return tokens / seconds if seconds > 0 else None


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """`numerator / denominator`, None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator
