"""Device sampling: keyed noise, and proposal frequencies against the tempered, filtered softmax."""

import numpy as np
import pytest
import torch

from t3d.dllm import noise
from t3d.dllm.sampling import SamplerConfig

LOGITS = torch.tensor([2.0, 1.5, 1.0, 0.2, -0.5, -1.0, -3.0, float("-inf")])  # the last id plays the mask token


def reference_probs(logits: np.ndarray, temperature: float, top_k: int, top_p: float) -> np.ndarray:
    """The proposal written out plainly: temper, keep the top k, keep the smallest nucleus of mass top_p."""
    scores = logits / temperature
    probs = np.exp(scores - scores[np.isfinite(scores)].max())
    probs[~np.isfinite(scores)] = 0.0
    order = np.argsort(-probs, kind="stable")
    keep = np.zeros_like(probs, dtype=bool)
    keep[order[: top_k or len(probs)]] = True
    probs = np.where(keep, probs, 0.0) / np.where(keep, probs, 0.0).sum()
    mass = 0.0
    for i in order:
        if mass > top_p:
            probs[i] = 0.0
        mass += probs[i] if keep[i] else 0.0
    return probs / probs.sum()


@pytest.mark.parametrize(
    "temperature, top_k, top_p", [(1.0, 0, 1.0), (0.5, 0, 1.0), (1.7, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.8), (0.8, 4, 0.9)]
)
def test_proposal_frequencies_match_the_filtered_softmax(temperature, top_k, top_p):
    cfg = SamplerConfig(temperature=temperature, top_k=top_k, top_p=top_p)
    rows, block = 4000, 8  # 32,000 draws: 4,000 seeds x 8 columns, all at step 3
    shifted = LOGITS.expand(rows, block, -1) - LOGITS.max()  # (R, B, V)
    seeds = torch.arange(rows, dtype=torch.long) * 7919 + 12345
    cols = torch.arange(block)[None, :].expand(rows, -1)
    tokens = noise.propose(shifted, shifted.exp(), cfg, seeds, torch.full((rows,), 3), cols)  # (R, B)
    freq = np.bincount(tokens.flatten().numpy(), minlength=len(LOGITS)) / tokens.numel()
    expected = reference_probs(LOGITS.numpy(), temperature, top_k, top_p)
    assert (freq[expected == 0] == 0).all(), "a filtered token (or the mask) was drawn"
    tv = 0.5 * np.abs(freq - expected).sum()
    assert tv < 0.015, f"total variation {tv:.4f} from the proposal distribution"
    live = expected > 0
    chi2 = (tokens.numel() * (freq[live] - expected[live]) ** 2 / expected[live]).sum()
    assert chi2 < 30.0, f"chi-square {chi2:.1f} on {live.sum() - 1} degrees of freedom"


def test_noise_is_keyed_by_seed_step_and_column_only():
    seeds = torch.tensor([1, 2, 3, 2**62 + 5])
    steps = torch.tensor([0, 4, 4, 9])
    cols = torch.arange(6)[None, :].expand(4, -1)
    u = noise.keyed_uniforms(seeds, steps, cols)  # (4, 6)
    assert ((u > 0) & (u < 1)).all()
    alone = noise.keyed_uniforms(seeds[2:3], steps[2:3], cols[2:3])
    assert torch.equal(alone[0], u[2]), "a row's noise does not depend on the other rows"
    assert torch.equal(noise.keyed_uniforms(seeds.flip(0), steps.flip(0), cols)[0], u[3]), "nor on its slot"
    assert len(torch.unique(u)) == u.numel()
    other_step = noise.keyed_uniforms(seeds, steps + 1, cols)
    other_seed = noise.keyed_uniforms(seeds + 1, steps, cols)
    assert not torch.equal(other_step, u) and not torch.equal(other_seed, u)


def test_uniforms_are_uniform():
    seeds = torch.arange(20000, dtype=torch.long)
    u = noise.keyed_uniforms(seeds, torch.zeros_like(seeds), torch.zeros((20000, 1), dtype=torch.long)).flatten()
    counts = np.histogram(u.numpy(), bins=20, range=(0, 1))[0]
    chi2 = ((counts - 1000) ** 2 / 1000).sum()
    assert chi2 < 50, f"chi-square {chi2:.1f} on 19 degrees of freedom"
