"""AUP, accuracy under parallelism: d3LLM's single score for a decoder's accuracy-parallelism curve.

Definition (Qian et al., "d3LLM: Ultra-Fast Diffusion LLM using Pseudo-Trajectory
Distillation", ICML 2026, arXiv 2601.07568; code: hao-ai-lab/d3LLM at e5bfcac,
`AUP_leaderboard/aup_utils.py` lines 5-7 (the weight) and 31-57 (the score), the task's
y_max in `AUP_leaderboard/main.py` line 63). Given a model's points (rho_i, y_i), rho the
parallelism in tokens per forward and y the accuracy in percent:

1. sort the points by rho (ties keep the order given, as Python's stable sort there);
2. keep the points with y_i >= y_min = y_1 - 5, y_1 the accuracy at the lowest rho;
3. AUP = rho_1 * y_1 + sum_{i>=2} 1/2 (rho_i - rho_{i-1}) (y_i W(y_i) + y_{i-1} W(y_{i-1})),
   W(y) = min(exp(-alpha (1 - y / y_max)), 1), alpha = 3, y_max the best accuracy any
   method reaches on the task.

The first rectangle is unweighted and the trapezoids are weighted, so a speed-up earns
area only while its accuracy stays near the task's best. One difference from their code,
on purpose: it refuses (asserts) a curve whose highest-parallelism point is more than 5
points below its first, because their leaderboard keeps only such points; an evaluation
cannot refuse a student for decoding badly, so here such a point is dropped by step 2
like any other and `aup_points` says which were.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

ALPHA = 3.0
"""d3LLM's penalty factor for accuracy below the task's best."""
Y_MIN_OFFSET = 5.0
"""Points more than this many accuracy points below the curve's first are left out (percent)."""

Point = tuple[float, float]
"""(tokens per forward, accuracy in percent)."""


def quality_weight(y: float, y_max: float, alpha: float = ALPHA) -> float:
    """W(y) = min(exp(-alpha (1 - y / y_max)), 1); 1 at or above y_max (so y_max = 0 needs no division)."""
    return 1.0 if y >= y_max else math.exp(-alpha * (1.0 - y / y_max))


def aup_points(points: Sequence[Point], y_min_offset: float = Y_MIN_OFFSET) -> tuple[list[Point], list[Point]]:
    """(kept, dropped): the points sorted by tokens per forward, split at y_1 - y_min_offset."""
    if not points:
        raise ValueError("AUP needs at least one (tokens per forward, accuracy) point")
    if any(rho <= 0 for rho, _ in points):
        raise ValueError(f"tokens per forward must be positive, got {[rho for rho, _ in points]}")
    ordered = sorted(points, key=lambda p: p[0])
    y_min = ordered[0][1] - y_min_offset
    return [p for p in ordered if p[1] >= y_min], [p for p in ordered if p[1] < y_min]


def aup(points: Sequence[Point], y_max: float, alpha: float = ALPHA, y_min_offset: float = Y_MIN_OFFSET) -> float:
    """AUP of one model's (tokens per forward, accuracy %) points; y_max: the task's best accuracy (%)."""
    if y_max < 0:
        raise ValueError(f"y_max is an accuracy in percent, got {y_max}")
    kept, _ = aup_points(points, y_min_offset)
    area = kept[0][0] * kept[0][1]
    for (rho_prev, y_prev), (rho, y) in zip(kept, kept[1:]):
        area += 0.5 * (rho - rho_prev) * (y * quality_weight(y, y_max, alpha) + y_prev * quality_weight(y_prev, y_max, alpha))
    return area
