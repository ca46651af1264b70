"""AUP against d3LLM's stated formula, on curves worked by hand.

AUP = rho_1 y_1 + sum 1/2 (rho_i - rho_{i-1}) (y_i W(y_i) + y_{i-1} W(y_{i-1})),
W(y) = min(exp(-3 (1 - y / y_max)), 1), over the points sorted by rho with y >= y_1 - 5.
Each expected value below is that sum written out, not a call into the code.
"""

import itertools
from math import exp

import pytest

from t3d.trainer.aup import aup, aup_points, quality_weight


def test_one_point_is_its_rectangle_unweighted():
    assert aup([(2.0, 80.0)], y_max=100.0) == pytest.approx(2.0 * 80.0)  # W(80) < 1 is not applied to rho_1 y_1


def test_a_flat_curve_at_the_best_accuracy_is_rho_max_times_y():
    assert aup([(1.0, 100.0), (3.0, 100.0)], y_max=100.0) == pytest.approx(100.0 + 0.5 * 2.0 * (100.0 + 100.0))  # 300


def test_a_falling_curve_weights_every_trapezoid():
    w98, w96 = exp(-3 * (1 - 98 / 100)), exp(-3 * (1 - 96 / 100))
    expected = 1.0 * 100.0 + 0.5 * 1.0 * (98.0 * w98 + 100.0) + 0.5 * 1.0 * (96.0 * w96 + 98.0 * w98)
    assert aup([(1.0, 100.0), (2.0, 98.0), (3.0, 96.0)], y_max=100.0) == pytest.approx(expected)  # 284.87: 100 + 96.146 + 88.719
    assert expected == pytest.approx(284.8651, abs=1e-4)


def test_unsorted_points_give_the_same_score():
    points = [(3.0, 96.0), (1.0, 100.0), (2.0, 98.0)]
    scores = {round(aup(list(p), y_max=100.0), 9) for p in itertools.permutations(points)}
    assert len(scores) == 1 and scores.pop() == pytest.approx(aup(sorted(points), y_max=100.0))


def test_points_more_than_five_points_below_the_first_are_dropped():
    w86 = exp(-3 * (1 - 86 / 90))
    # (4, 84) is below y_1 - 5 = 85: dropped; (2, 86) stays
    assert aup([(1.0, 90.0), (2.0, 86.0), (4.0, 84.0)], y_max=90.0) == pytest.approx(90.0 + 0.5 * 1.0 * (86.0 * w86 + 90.0))
    # a dropped middle point: the trapezoid joins its neighbours
    w88 = exp(-3 * (1 - 88 / 90))
    assert aup([(1.0, 90.0), (2.0, 80.0), (3.0, 88.0)], y_max=90.0) == pytest.approx(90.0 + 0.5 * 2.0 * (88.0 * w88 + 90.0))
    kept, dropped = aup_points([(3.0, 88.0), (1.0, 90.0), (2.0, 85.0), (2.5, 84.99)])
    assert kept == [(1.0, 90.0), (2.0, 85.0), (3.0, 88.0)] and dropped == [(2.5, 84.99)], "exactly y_1 - 5 is kept"


def test_the_threshold_follows_the_lowest_parallelism_point_not_the_best():
    # y_1 = 70 at rho 1: y_min = 65, so (2, 66) counts although it is far below y_max = 90
    w70, w66 = exp(-3 * (1 - 70 / 90)), exp(-3 * (1 - 66 / 90))
    assert aup([(2.0, 66.0), (1.0, 70.0)], y_max=90.0) == pytest.approx(70.0 + 0.5 * 1.0 * (66.0 * w66 + 70.0 * w70))


def test_the_weight_is_capped_at_one_and_defined_at_zero():
    assert quality_weight(95.0, 90.0) == 1.0 and quality_weight(90.0, 90.0) == 1.0
    assert quality_weight(45.0, 90.0) == pytest.approx(exp(-1.5))
    assert aup([(1.0, 0.0), (4.0, 0.0)], y_max=0.0) == 0.0, "nothing right anywhere scores 0, not a division error"


def test_d3llm_leaderboard_numbers():
    """d3LLM-LLaDA on GSM8K-CoT from their AUP_leaderboard/data_llada.yaml (lines 20-22); y_max = 74.98 (D2F, line 15)."""
    y_max = 74.98
    w1, w2 = exp(-3 * (1 - 74.02 / y_max)), exp(-3 * (1 - 73.09 / y_max))
    expected = 1.0 * 74.02 + 0.5 * (9.11 - 1.0) * (73.09 * w2 + 74.02 * w1)
    assert aup([(1.0, 74.02), (9.11, 73.09)], y_max=y_max) == pytest.approx(expected)
    assert expected == pytest.approx(637.66, abs=0.01)


@pytest.mark.parametrize("points, y_max", [([], 100.0), ([(0.0, 50.0)], 100.0), ([(1.0, 50.0)], -1.0)])
def test_bad_input_is_refused(points, y_max):
    with pytest.raises(ValueError):
        aup(points, y_max=y_max)
