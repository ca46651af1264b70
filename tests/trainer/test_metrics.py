"""Metric functions of t3d-eval on cases worked out by hand."""

import math

import numpy as np
import pytest

from t3d.dllm.task import BuiltinTask
from t3d.trainer import metrics
from t3d.trainer.evaluate import EvalPrompt, TaskScorer, truth_summary

# --- task metric: validity rate and answers -------------------------------------------------


def test_rate_counts_true_and_is_undefined_when_empty():
    assert metrics.rate([True, False, True, True]) == 0.75
    assert metrics.rate([False, False]) == 0.0
    assert metrics.rate([]) is None


def test_validity_rate_of_the_builtin_task():
    task = BuiltinTask()
    prompt = task.prompts("test")[0]
    valid = task.sample(prompt, np.random.default_rng(0))
    broken = list(valid)
    broken[0] = broken[1] = int(task.marker_ids[task.categories(prompt)[0]])  # the marker twice: the one-shot failure
    assert task.is_valid(prompt, valid) and not task.is_valid(prompt, broken)
    flags = [task.is_valid(prompt, r) for r in (valid, broken, valid, valid)]
    assert metrics.rate(flags) == 0.75


# --- gap closure ------------------------------------------------------------------------------


def test_gap_closure_hand_worked():
    # teacher: 0.9 at full steps, 0.5 at K steps; student 0.8 at K closes 0.3 of the 0.4 gap.
    assert metrics.gap_closure(0.8, 0.5, 0.9) == pytest.approx(0.75)
    assert metrics.gap_closure(0.5, 0.5, 0.9) == 0.0  # no better than the teacher at K
    assert metrics.gap_closure(0.9, 0.5, 0.9) == pytest.approx(1.0)  # as good as full steps
    assert metrics.gap_closure(0.95, 0.5, 0.9) == pytest.approx(1.125)  # better than full steps
    assert metrics.gap_closure(0.4, 0.5, 0.9) == pytest.approx(-0.25)  # worse than the teacher at K


def test_gap_closure_undefined_without_a_gap_or_an_input():
    assert metrics.gap_closure(0.8, 0.6, 0.6) is None  # the teacher loses nothing at K steps
    assert metrics.gap_closure(0.8, 0.6, 0.6 + 1e-12) is None
    assert metrics.gap_closure(None, 0.5, 0.9) is None
    assert metrics.gap_closure(0.8, None, 0.9) is None


# --- agreement and diversity --------------------------------------------------------------------


def test_agreement_is_share_of_identical_responses():
    anchors = [(5, 6, 3), (7, 3), (8, 9, 3)]
    assert metrics.agreement([(5, 6, 3), (7, 4), (8, 9, 3)], anchors) == pytest.approx(2 / 3)
    assert metrics.agreement(anchors, anchors) == 1.0
    with pytest.raises(ValueError):
        metrics.agreement([(1,)], anchors)


def test_distinct_and_entropy_per_prompt():
    a, b, c = (1, 2), (1, 3), (4,)
    groups = [[a, a, b, b], [c, c, c, c]]
    assert metrics.distinct_per_prompt(groups) == 1.5  # (2 + 1) / 2
    assert metrics.empirical_entropy([a, a, b, b]) == pytest.approx(math.log(2))
    assert metrics.empirical_entropy([c, c, c, c]) == 0.0
    assert metrics.empirical_entropy([a, b, c, (9,)]) == pytest.approx(math.log(4))  # at most log(n)
    assert metrics.entropy_per_prompt(groups) == pytest.approx(math.log(2) / 2)
    # 3 of 4 valid in the first prompt, two distinct among them; none valid in the second.
    valid = [[True, True, True, False], [False] * 4]
    groups = [[a, a, b, c], [c, c, c, c]]
    assert metrics.distinct_valid_per_prompt(groups, valid) == 1.0  # (2 + 0) / 2
    assert metrics.distinct_per_prompt([]) is None


def test_diversity_against_the_true_distribution():
    """True samples look diverse next to the truth; one valid answer repeated is collapse."""
    task = BuiltinTask()
    scorer = TaskScorer(task)
    rng = np.random.default_rng(1)
    prompts = [EvalPrompt(text=task.decode(p), ids=tuple(p)) for p in task.prompts("test")[:3]]
    true = [[tuple(task.sample(list(q.ids), rng)) for _ in range(8)] for q in prompts]
    collapsed = [[g[0]] * 8 for g in true]
    fair, mode = truth_summary(scorer, prompts, true), truth_summary(scorer, prompts, collapsed)
    assert fair["true_distinct"] == mode["true_distinct"] == pytest.approx(8, abs=0.05)  # a huge support
    assert fair["distinct_ratio"] == pytest.approx(1.0, abs=0.05)
    assert mode["distinct_ratio"] == pytest.approx(1 / 8, abs=0.01)
    assert set(fair["truth_extra"]) == {"marker_first_rate", "positional_tv"}


# --- speed ---------------------------------------------------------------------------------------


def test_speed_helpers():
    assert metrics.per_response(48, 12) == 4.0
    assert metrics.per_response(0, 0) is None
    assert metrics.tokens_per_second(500, 2.0) == 250.0
    assert metrics.tokens_per_second(500, 0.0) is None
    assert metrics.ratio(3.0, 4.0) == 0.75
    assert metrics.ratio(None, 4.0) is None and metrics.ratio(3.0, 0.0) is None
    assert metrics.mean_finite([-1.0, -math.inf, -3.0]) == -2.0
    assert metrics.mean_finite([-math.inf]) is None


# --- pass@k ------------------------------------------------------------------------------------


def test_pass_at_k_on_hand_computed_numbers():
    # n=5 samples, c=2 pass: pass@1 = 2/5; pass@2 = 1 - C(3,2)/C(5,2) = 1 - 3/10; pass@3 = 1 - C(3,3)/C(5,3) = 1 - 1/10
    assert metrics.pass_at_k(5, 2, 1) == pytest.approx(0.4)
    assert metrics.pass_at_k(5, 2, 2) == pytest.approx(0.7)
    assert metrics.pass_at_k(5, 2, 3) == pytest.approx(0.9)
    assert metrics.pass_at_k(5, 2, 4) == 1.0  # only 3 fail: any 4 hold a pass
    assert metrics.pass_at_k(4, 0, 2) == 0.0 and metrics.pass_at_k(4, 4, 1) == 1.0
    assert metrics.pass_at_k(3, 1, 5) is None  # too few samples
    # n=10, c=3, k=5: 1 - C(7,5)/C(10,5) = 1 - 21/252
    assert metrics.pass_at_k(10, 3, 5) == pytest.approx(1 - 21 / 252)


def test_pass_at_k_table_averages_over_prompts_and_skips_unjudged():
    groups = [[True, False, False, False], [True, True, None, False]]  # n=4 c=1; n=3 c=2
    table = metrics.pass_at_k_table(groups)
    assert set(table) == {"pass@1", "pass@2"}  # k=5 needs 5 samples of every prompt
    assert table["pass@1"] == pytest.approx((1 / 4 + 2 / 3) / 2)
    assert table["pass@2"] == pytest.approx(((1 - 3 / 6) + 1.0) / 2)  # 1 - C(3,2)/C(4,2); n-c=1 < 2
    assert metrics.pass_at_k_table([[None, None]]) is None


def test_relative_spread_of_repeated_timings():
    assert metrics.relative_spread([3.0, 1.0, 2.0]) == 1.0  # (3 - 1) / median 2
    assert metrics.relative_spread([2.0, 4.0]) == pytest.approx(2 / 3)  # (4 - 2) / 3
    assert metrics.relative_spread([5.0]) == 0.0 and metrics.relative_spread([]) is None


# --- bootstrap intervals over prompts ----------------------------------------------------------


def test_bootstrap_interval_of_a_rate_on_a_hand_worked_case():
    # Four prompts, one sample each: three right, one wrong. A resample of four prompts
    # has mean 1 with chance (3/4)^4 = 0.32 (> 2.5 %), mean 0 with chance (1/4)^4 = 0.004
    # and mean <= 0.25 with chance 13/256 = 0.05: the 2.5th percentile is 0.25 and the
    # 97.5th is 1.
    groups = [[True], [True], [True], [False]]
    assert metrics.rate_interval(groups, resamples=4000) == (0.25, 1.0)
    # every prompt alike: nothing varies between resamples
    assert metrics.rate_interval([[True, False]] * 5) == (0.5, 0.5)
    assert metrics.rate_interval([]) is None


def test_bootstrap_resamples_prompts_not_responses():
    # Two prompts of 8 samples: one always right, one always wrong. Resampling prompts,
    # a quarter of resamples draw the right one twice (rate 1) and a quarter the wrong one
    # twice (rate 0): the interval spans (0, 1). Responses resampled on their own would
    # give a narrow interval around 0.5.
    assert metrics.rate_interval([[True] * 8, [False] * 8]) == (0.0, 1.0)


def test_bootstrap_is_seeded_and_skips_unjudged():
    groups = [[True, None], [False, True], [True, True], [False, None]]
    first = metrics.rate_interval(groups, seed=3)
    assert first == metrics.rate_interval(groups, seed=3)
    low, high = first
    assert low <= metrics.rate([v for g in groups for v in g if v is not None]) <= high
    assert metrics.rate_interval([[None], [None]]) is None  # nothing judged: undefined


def test_gap_closure_interval_resamples_the_three_runs_together():
    teacher_full = [[True], [True], [False], [True]]
    teacher_k = [[False], [True], [False], [False]]
    # a student exactly as good as the teacher at full steps closes the whole gap in every resample
    assert metrics.gap_closure_interval(teacher_full, teacher_k, teacher_full) == (1.0, 1.0)
    # a student no better than the teacher at K closes none of it
    assert metrics.gap_closure_interval(teacher_k, teacher_k, teacher_full) == (0.0, 0.0)
    # no gap anywhere: undefined
    assert metrics.gap_closure_interval(teacher_k, teacher_k, teacher_k) is None
