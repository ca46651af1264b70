"""The built-in task: hand-worked validity and likelihood, exact normalisation against a
brute force over every token sequence, the true sampler, splits, and diversity measures."""

import itertools
import math

import numpy as np
import pytest

from t3d.dllm import UserError
from t3d.dllm.task import (
    FAULTS,
    BuiltinTask,
    TaskConfig,
    distinct_responses,
    diversity_report,
    empirical_entropy,
    marker_first_rate,
    mean_report,
    positional_tv,
)

# K=2, a=2 from a pool of 3, 1-2 words: 16 valid words per category, small enough to enumerate.
SMALL = TaskConfig(num_categories=2, alphabet_size=2, pool_size=3, min_words=1, max_words=2, max_new_tokens=12)


@pytest.fixture(scope="module")
def task():
    return BuiltinTask(seed=0)


@pytest.fixture(scope="module")
def small():
    return BuiltinTask(seed=0, config=SMALL)


def test_seed_zero_alphabets_are_pinned(task):
    """The shipped teacher learned these; a change here silently invalidates it."""
    assert task.decode(task.alphabets[0]) == "a b d e f g h p"
    assert task.decode(task.alphabets[1]) == "d f g j k l m o"
    assert task.decode(task.marker_ids[:2]) == "M0 M1"
    assert (task.pad_id, task.mask_id, task.eos_id) == (0, 2, 3)


@pytest.mark.parametrize(
    "response, words",
    [
        ("M0 a b d M1 d f g <eos>", [(0.8, 3)] * 2),
        ("a M0 b d M1 d f g <eos>", [(0.2, 3), (0.8, 3)]),
        ("p M0 p p o M1 o o <eos> <pad> <pad> <pad>", [(0.2, 3), (0.2, 3)]),  # padding after <eos> ignored
        ("M0 h h h g M1 m m <eos> M3 x", [(0.8, 3), (0.2, 3)]),  # anything after <eos> ignored
    ],
)
def test_valid_responses_and_their_likelihood(task, response, words):
    prompt, ids = task.encode("c0 c1"), task.encode(response.replace(" x", " a"))
    assert task.is_valid(prompt, ids)
    expected = sum(math.log(p) + free * math.log(1 / 8) for p, free in words)
    assert task.log_likelihood(prompt, ids) == pytest.approx(expected)


@pytest.mark.parametrize(
    "response, why",
    [
        ("M0 M0 b d M1 d f g <eos>", "two markers"),
        ("a b b d M1 d f g <eos>", "no marker"),
        ("a b M0 d M1 d f g <eos>", "marker in the tail"),
        ("M0 c b d M1 d f g <eos>", "c is not in c0's alphabet"),
        ("M0 a b j M1 d f g <eos>", "j is not in c0's alphabet"),
        ("M1 a b d M0 d f g <eos>", "markers of the wrong categories"),
        ("M0 a b d M1 d f g", "no <eos>"),
        ("M0 a b d M1 d f <eos>", "second word too short"),
        ("M0 a b d <eos>", "a word missing"),
        ("M0 a b d M1 d f g M0 a b d <eos>", "a word too many"),
        ("M0 a b d M1 d f g <mask> <eos>", "a mask left"),
    ],
)
def test_invalid_responses(task, response, why):
    prompt, ids = task.encode("c0 c1"), task.encode(response)
    assert not task.is_valid(prompt, ids), why
    assert task.log_likelihood(prompt, ids) == -math.inf


@pytest.mark.parametrize(
    "response, faults",
    [
        ("M0 a b d M1 d f g <eos>", []),
        ("a M0 b d M1 d f g <eos> <eos>", []),
        ("M0 M0 b d M1 d f g <eos>", ["two markers"]),
        ("a b b d d M1 f g <eos>", ["no marker"]),
        ("a b M0 d M1 M1 f g <eos>", ["no marker", "two markers"]),
        ("M0 c b d M1 d f g <eos>", ["foreign token"]),  # the marker's partner
        ("j M0 b d M1 d f g <eos>", ["foreign token"]),
        ("M0 a b d M1 d f M1 <eos>", ["foreign token"]),  # a marker in the tail
        ("M1 a b d M0 d f g <eos>", ["no marker", "no marker"]),  # markers of the wrong categories
        ("M0 a b d M1 d f g", ["length"]),
        ("M0 a b d <eos>", ["length"]),
    ],
)
def test_faults_name_what_breaks_each_word(task, response, faults):
    prompt, ids = task.encode("c0 c1"), task.encode(response)
    assert task.faults(prompt, ids) == faults
    assert set(faults) <= set(FAULTS)


def test_faults_are_empty_exactly_for_valid_responses(small):
    """Every sequence of 4 vocabulary tokens + <eos>, and one token short: no fault <=> valid."""
    prompt = small.encode("c1")
    for word in itertools.product(range(len(small.vocabulary)), repeat=4):
        for response in (list(word) + [small.eos_id], list(word[:3]) + [small.eos_id]):
            faults = small.faults(prompt, response)
            assert (faults == []) == small.is_valid(prompt, response), small.decode(response)
            assert len(faults) <= 1


def test_enumerated_likelihoods_sum_to_one(small):
    for prompt in small.prompts("train"):
        responses = list(small.enumerate_valid(prompt))
        assert len({tuple(r) for r in responses}) == len(responses) == 16 ** len(prompt)
        total = math.fsum(math.exp(small.log_likelihood(prompt, r)) for r in responses)
        assert total == pytest.approx(1.0, abs=1e-12)


def test_validity_matches_brute_force_over_all_sequences(small):
    """Every sequence of 4 vocabulary tokens + <eos>: valid exactly when enumerated."""
    prompt = small.encode("c1")
    enumerated = {tuple(r[:5]) for r in small.enumerate_valid(prompt)}
    found = set()
    for word in itertools.product(range(len(small.vocabulary)), repeat=4):
        response = list(word) + [small.eos_id]
        if small.is_valid(prompt, response):
            found.add(tuple(response))
    assert found == enumerated


def test_enumerate_refuses_huge_prompts(task):
    with pytest.raises(ValueError, match="exceed limit"):
        next(task.enumerate_valid(task.encode("c0 c1 c2")))


def test_sampler_matches_the_likelihood(small):
    prompt = small.encode("c0")
    rng = np.random.default_rng(0)
    draws = small.sample_batch([prompt] * 40_000, rng)
    counts = {}
    for row in draws:
        counts[tuple(row)] = counts.get(tuple(row), 0) + 1
    valid = list(small.enumerate_valid(prompt))
    tv = 0.5 * sum(abs(counts.get(tuple(r), 0) / len(draws) - math.exp(small.log_likelihood(prompt, r))) for r in valid)
    assert set(counts) <= {tuple(r) for r in valid}
    assert tv < 0.02  # 16 outcomes, 40k draws: sampling TV is ~0.01


def test_samples_are_valid_canonical_and_seeded(task):
    prompts = task.prompts("train")[:50]
    a = task.sample_batch(prompts, np.random.default_rng(7))
    b = task.sample_batch(prompts, np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (50, 16)
    for prompt, response in zip(prompts, a):
        assert task.is_valid(prompt, response)
        assert (response[4 * len(prompt) :] == task.eos_id).all(), "canonical form fills with <eos>"
    assert task.sample(prompts[0], np.random.default_rng(1)) == task.sample(prompts[0], np.random.default_rng(1))


def test_splits_are_disjoint_complete_and_deterministic(task):
    splits = {s: {tuple(p) for p in task.prompts(s)} for s in ("train", "val", "test")}
    assert not (splits["train"] & splits["val"]) and not (splits["train"] & splits["test"]) and not (splits["val"] & splits["test"])
    assert sum(len(s) for s in splits.values()) == 8**2 + 8**3
    for name, prompts in splits.items():
        assert {len(p) for p in prompts} == {2, 3}, f"{name} holds both prompt lengths"
    assert BuiltinTask(seed=0).prompts("test") == task.prompts("test")
    assert BuiltinTask(seed=1).prompts("test") != task.prompts("test")
    with pytest.raises(UserError, match="unknown split"):
        task.prompts("dev")


def test_encode_decode_and_bad_prompts(task):
    assert task.decode(task.encode("c3 c1 c5")) == "c3 c1 c5"
    with pytest.raises(UserError, match="unknown word"):
        task.encode("c3 zebra")
    with pytest.raises(UserError, match="not a built-in task prompt"):
        task.is_valid(task.encode("c3 M1"), task.encode("<eos>"))
    with pytest.raises(UserError, match="names 2-3 categories"):
        task.is_valid(task.encode("c3"), task.encode("<eos>"))


def test_config_ranges_are_checked():
    with pytest.raises(ValueError):
        TaskConfig(marker_second_prob=0.0)
    with pytest.raises(ValueError):
        TaskConfig(max_words=4)  # 4 words of 4 leave no room for <eos> in 16 tokens
    with pytest.raises(ValueError):
        TaskConfig(alphabet_size=20, pool_size=16)


# ----- the calibration the task exists for ------------------------------------------------


def _independent_validity(task, prompt):
    """P(valid) when every position is drawn independently from its true marginal (exact)."""
    marginals = task.position_marginals(prompt)
    return math.fsum(math.prod(m.get(t, 0.0) for m, t in zip(marginals, r)) for r in task.enumerate_valid(prompt))


def test_independent_sampling_breaks_words(small):
    q = small.config.marker_second_prob
    for prompt in small.prompts("train"):
        assert _independent_validity(small, prompt) == pytest.approx(((1 - q) ** 2 + q**2) ** len(prompt))


def test_argmax_of_the_marginals_is_invalid_with_margin(task):
    """Greedy one-step-per-block decoding writes the marker twice, by a clear margin."""
    for prompt in task.prompts("test")[:10]:
        marginals = task.position_marginals(prompt)
        greedy = [max(m, key=m.get) for m in marginals]
        assert not task.is_valid(prompt, greedy)
        ordered = sorted(marginals[1].values(), reverse=True)
        assert ordered[0] >= 1.5 * ordered[1]


# ----- diversity -----------------------------------------------------------------------


def test_exact_summaries_match_enumeration(small):
    prompt = small.encode("c0 c1")
    probs = np.array([math.exp(small.log_likelihood(prompt, r)) for r in small.enumerate_valid(prompt)])
    assert small.entropy(prompt) == pytest.approx(float(-(probs * np.log(probs)).sum()))
    for n in (1, 10, 300):
        assert small.expected_distinct(prompt, n) == pytest.approx(float((1 - (1 - probs) ** n).sum()))


def test_expected_distinct_matches_true_samples(small):
    prompt = small.encode("c0 c1")
    rng = np.random.default_rng(3)
    observed = np.mean([distinct_responses(small, small.sample_batch([prompt] * 200, rng)) for _ in range(50)])
    assert observed == pytest.approx(small.expected_distinct(prompt, 200), rel=0.02)


def test_distinct_and_entropy_on_hand_made_lists(task):
    a, b = task.encode("M0 a b d M1 d f g <eos>"), task.encode("a M0 b d M1 d f g <eos>")
    assert distinct_responses(task, [a, a + [0, 0], b]) == 2  # padding after <eos> does not count
    assert empirical_entropy(task, [a, a, b, b]) == pytest.approx(math.log(2))
    assert empirical_entropy(task, [a, a, a]) == 0.0


def test_true_samples_look_true_and_collapse_does_not(task):
    prompt = task.encode("c2 c5 c7")
    truth = task.sample_batch([prompt] * 4000, np.random.default_rng(0)).tolist()
    good = diversity_report(task, prompt, truth)
    assert good.valid_rate == 1.0 and good.distinct_ratio == pytest.approx(1.0, abs=0.01)
    assert good.marker_first_rate == pytest.approx(0.8, abs=0.02)
    assert good.positional_tv < 0.03
    collapsed = diversity_report(task, prompt, [truth[0]] * 2000 + truth[:2000])
    assert collapsed.distinct_ratio < 0.6 and collapsed.positional_tv > 0.2 and collapsed.entropy < good.entropy
    assert marker_first_rate(task, prompt, [truth[0]] * 10) in (0.0, 1.0, 1 / 3, 2 / 3)
    assert positional_tv(task, prompt, [task.encode("<eos>")]) == pytest.approx(1.0)
    summary = mean_report([good, collapsed])
    assert summary["valid_rate"] == 1.0 and summary["samples"] == 4000
