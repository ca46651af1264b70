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
import statistics
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Sequence

import numpy as np

Response = tuple[int, ...]

# --- task metric ---------------------------------------------------------------------


def rate(flags: Iterable[bool]) -> float | None:
    """Share of True among `flags` (validity, accuracy, agreement); None when there are none.

    Whether a response is correct is the scorers' job (`t3d.dllm.scoring`).
    """
    flags = [bool(f) for f in flags]
    return sum(flags) / len(flags) if flags else None


def pass_at_k(n: int, c: int, k: int) -> float | None:
    """Unbiased pass@k from n samples of which c pass: 1 - C(n-c, k) / C(n, k) (Chen et al. 2021).

    The chance that at least one of k samples drawn without replacement from the n
    passes; None when k > n (too few samples to say).
    """
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass@k needs 0 <= c <= n and k >= 1, got n={n}, c={c}, k={k}")
    if k > n:
        return None
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


PASS_AT = (1, 2, 5, 10, 20, 50, 100)
"""The k values reported, those up to the samples per prompt."""


def pass_at_k_table(groups: Sequence[Sequence[bool | None]]) -> dict[str, float] | None:
    """`{"pass@k": mean over prompts}` for each k of PASS_AT that every prompt has samples for.

    groups: each prompt's verdicts; None (unjudged) are left out. None when nothing is judged.
    """
    counts = [(len(j), sum(j)) for j in ([bool(v) for v in g if v is not None] for g in groups) if j]
    if not counts:
        return None
    fewest = min(n for n, _ in counts)
    return {f"pass@{k}": _mean([pass_at_k(n, c, k) for n, c in counts]) for k in PASS_AT if k <= fewest}


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


def relative_spread(values: Sequence[float]) -> float | None:
    """(max - min) / median of repeated timings: how far apart the passes were; None when none or a 0 median."""
    if not values:
        return None
    middle = statistics.median(values)
    return (max(values) - min(values)) / middle if middle > 0 else None


MIN_TIMING_REPEATS = 3
"""Timed passes below which a wall-clock ratio is reported as noisy."""
NOISY_SPREAD = 0.2
"""Relative spread of the timed passes above which a wall-clock ratio is reported as noisy."""


def noisy_timing(repeats: Iterable[int], spreads: Iterable[float | None]) -> bool:
    """Whether a speed-up built from these timings is noise: too few passes, or passes too far apart.

    One pass cannot show how much the machine's load moved it (a loaded machine gave
    0.91, 15.0 and 25.0 for one setting); several passes far apart show that it did.
    """
    return min(repeats) < MIN_TIMING_REPEATS or any(s is not None and s > NOISY_SPREAD for s in spreads)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """`numerator / denominator`, None when either is missing or the denominator is 0."""
    if numerator is None or not denominator:
        return None
    return numerator / denominator


# --- uncertainty: the bootstrap over prompts --------------------------------------------------

BOOTSTRAP_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 1000


def bootstrap_interval(
    counts: Sequence[Sequence[float]],
    statistic: Callable[[np.ndarray], np.ndarray],
    *,
    resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = 0,
    level: float = BOOTSTRAP_LEVEL,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of `statistic`, resampling prompts with replacement.

    Prompts, not responses, are resampled: the samples of one prompt are not independent
    of each other, so treating them as such would make the interval too narrow.
    counts: (P, C) per-prompt counts (e.g. correct and judged responses); each resample
    sums the rows of P prompts drawn with replacement, and `statistic` maps those sums
    (R, C) to one value per resample (R,), NaN where it is undefined (those resamples are
    left out). Seeded: the same input gives the same interval. None when there are no
    prompts or the statistic is undefined in every resample.
    """
    table = np.asarray(counts, dtype=np.float64)  # (P, C)
    if table.ndim != 2 or len(table) == 0:
        return None
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(table), size=(resamples, len(table)))  # (R, P)
    with np.errstate(divide="ignore", invalid="ignore"):
        values = np.asarray(statistic(table[picks].sum(axis=1)), dtype=np.float64)  # (R,)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def _share(sums: np.ndarray, hits: int, total: int) -> np.ndarray:
    return np.where(sums[:, total] > 0, sums[:, hits] / np.maximum(sums[:, total], 1), np.nan)


def _counts(groups: Sequence[Sequence[bool | None]]) -> list[tuple[int, int]]:
    """Per prompt: (True verdicts, judged verdicts); None (unjudged) is left out, as `rate` leaves it."""
    return [(sum(bool(v) for v in g if v is not None), sum(v is not None for v in g)) for g in groups]


def rate_interval(groups: Sequence[Sequence[bool | None]], **kwargs) -> tuple[float, float] | None:
    """Bootstrap interval of the pooled rate (validity, accuracy) over prompts; groups: each prompt's verdicts."""
    return bootstrap_interval(_counts(groups), lambda s: _share(s, 0, 1), **kwargs)


def gap_closure_interval(
    student_k: Sequence[Sequence[bool | None]],
    teacher_k: Sequence[Sequence[bool | None]],
    teacher_full: Sequence[Sequence[bool | None]],
    eps: float = 1e-9,
    **kwargs,
) -> tuple[float, float] | None:
    """Bootstrap interval of `gap_closure`, the three runs resampled together (the same prompts in each).

    Each argument: per prompt, that run's verdicts. Resamples where the teacher loses
    nothing at K steps have no gap to close and are left out.
    """
    if not len(student_k) == len(teacher_k) == len(teacher_full):
        raise ValueError("the three runs must hold the same prompts")
    table = [s + t + f for s, t, f in zip(_counts(student_k), _counts(teacher_k), _counts(teacher_full))]  # (P, 6)

    def closure(sums: np.ndarray) -> np.ndarray:
        s, k, full = _share(sums, 0, 1), _share(sums, 2, 3), _share(sums, 4, 5)
        gap = full - k
        return np.where(np.abs(gap) > eps, (s - k) / np.where(gap == 0, 1, gap), np.nan)

    return bootstrap_interval(table, closure, **kwargs)
