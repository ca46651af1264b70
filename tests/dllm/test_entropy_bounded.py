"""The entropy-bounded strategy: exact under the KV cache, per row, and within its budget at every step.

On a tiny block-causal checkpoint whose lm_head is scaled up: the random head alone gives
near-uniform distributions (every entropy about log V), under which any budget reveals
the same number per step; scaled, entropies range over ~0.5-2 nats and the budget decides.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from t3d.dllm import load_model
from t3d.dllm.reveal import EntropyBoundedStrategy
from t3d.dllm.sampling import SamplerConfig, sample
from t3d.dllm.tiny import build_checkpoint

PROMPTS = [[5, 6, 7], [8, 9], [10, 11, 12, 13, 14], [20]]
SEEDS = [1, 2, 3, 4]
VOCAB = 64
BUDGET = 1.5


@pytest.fixture(scope="module")
def peaked(tmp_path_factory):
    from safetensors.torch import load_file, save_file

    path = build_checkpoint(tmp_path_factory.mktemp("eb") / "tiny", "block_causal", vocab_size=VOCAB)
    weights = load_file(path / "model.safetensors")
    weights["lm_head.weight"] = weights["lm_head.weight"] * 32
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    return load_model(path)


def _cfg(**kw) -> SamplerConfig:
    return SamplerConfig(strategy="entropy_bounded", entropy_budget=BUDGET, stop_at_eos=False, **kw)


def test_cached_equals_uncached(peaked):
    cached = sample(peaked, PROMPTS, _cfg(cache="auto"), SEEDS)  # the exact KV cache of a block-causal model
    plain = sample(peaked, PROMPTS, _cfg(cache="none"), SEEDS)
    np.testing.assert_array_equal(cached.tokens, plain.tokens)
    np.testing.assert_array_equal(cached.reveal_step, plain.reveal_step)
    np.testing.assert_allclose(cached.confidence, plain.confidence, atol=1e-5)


def test_a_row_decodes_the_same_alone_and_in_a_batch(peaked):
    batch = sample(peaked, PROMPTS, _cfg(), SEEDS)
    slots = sample(peaked, PROMPTS, _cfg(), SEEDS, max_batch=2)  # rows enter freed slots mid-decode
    for i, prompt in enumerate(PROMPTS):
        alone = sample(peaked, [prompt], _cfg(), [SEEDS[i]])
        for other in (batch, slots):
            np.testing.assert_array_equal(alone.tokens[0], other.tokens[i])
            np.testing.assert_array_equal(alone.reveal_step[0], other.reveal_step[i])


def test_ranking_by_entropy_reuses_the_strategys_entropy_and_decodes_the_same(peaked, monkeypatch):
    from t3d.dllm import reveal

    calls = []
    counted = reveal.entropy
    for where in ("t3d.dllm.engine.entropy", "t3d.dllm.reveal.entropy"):  # the strategy's and the measure's
        monkeypatch.setattr(where, lambda probs: calls.append(1) or counted(probs))
    shared = sample(peaked, PROMPTS, _cfg(confidence="entropy"), SEEDS)
    once = len(calls)
    monkeypatch.setattr(reveal.NegativeEntropy, "negative_entropy", False)  # the measure computes its own
    again = sample(peaked, PROMPTS, _cfg(confidence="entropy"), SEEDS)
    assert once > 0 and len(calls) - once == 2 * once  # the same steps, each computing it twice instead of once
    np.testing.assert_array_equal(shared.tokens, again.tokens)
    np.testing.assert_array_equal(shared.reveal_step, again.reveal_step)
    np.testing.assert_array_equal(shared.confidence, again.confidence)


def test_each_step_reveals_within_the_budget(peaked):
    """From the recorded trajectory: the entropy of each revealed token at its reveal step (the whole
    distribution is recorded, top-k = V), summed per step, is within the budget unless the step revealed one."""
    out = sample(peaked, PROMPTS, _cfg(logits_top_k=VOCAB), SEEDS)
    probs = np.exp(out.topk_logprobs.astype(np.float64))  # (N, L, V) the full distribution at each reveal
    entropy = -(probs * np.log(np.where(probs > 0, probs, 1.0))).sum(-1)  # (N, L)
    sizes = []
    for row in range(len(PROMPTS)):
        for step in np.unique(out.reveal_step[row]):
            revealed = out.reveal_step[row] == step
            sizes.append(int(revealed.sum()))
            if revealed.sum() > 1:
                assert entropy[row, revealed].sum() <= BUDGET + 1e-4, (row, step, entropy[row, revealed])
    assert min(sizes) == 1 and max(sizes) > 1, "the budget must both allow and stop parallel reveals here"
    tight = sample(peaked, PROMPTS, SamplerConfig(strategy="entropy_bounded", entropy_budget=0.0, stop_at_eos=False), SEEDS)
    assert (tight.num_steps == 16).all(), "a budget of 0 reveals one token per step"


def test_the_most_confident_prefix_within_the_budget_on_hand_numbers():
    confidence = torch.tensor([[0.9, 0.2, 0.5, 0.7, 0.1]])
    masked = torch.tensor([[True, True, True, True, False]])
    entropy = torch.tensor([[0.4, 0.1, 0.3, 0.5, 0.0]])  # in confidence order: 0.4, 0.5 (0.9 so far), 0.3 (1.2), 0.1
    cfg = SamplerConfig(strategy="entropy_bounded", entropy_budget=1.0)
    chosen = EntropyBoundedStrategy().choose(confidence, masked, torch.zeros(1, dtype=torch.long), cfg, entropy=entropy)
    assert chosen.tolist() == [[True, False, False, True, False]]  # positions 0 and 3; 2 would bring it to 1.2
    over = entropy + 2.0  # the first alone exceeds the budget: it is still revealed, alone
    chosen = EntropyBoundedStrategy().choose(confidence, masked, torch.zeros(1, dtype=torch.long), cfg, entropy=over)
    assert chosen.tolist() == [[True, False, False, False, False]]
