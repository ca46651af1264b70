"""Proposal sampling on the model's device, with noise keyed by (row seed, step, position).

A row's proposal at a step depends only on its seed, the step and the response column,
never on the batch it is in, its slot or the other rows: the uniform that drives each
draw is a counter-based hash of (seed, step, column), computed with integer tensor ops
on the device (no generator state, no per-row Python loop, no host round trip).

One uniform per position is enough: the token is drawn by inverting the cumulative
distribution of the tempered, top-k / top-p filtered softmax (`t3d.dllm.vocab.inverse_cdf`:
chunk sums, then a cumsum inside one chunk), so the cost is one streaming pass over the
vocabulary, not one uniform per vocabulary entry as Gumbel-max would need. The uniform
has 24 bits: tokens whose proposal probability is below ~6e-8 are drawn slightly less
often than they should be.
"""

from __future__ import annotations

import torch

from t3d.dllm import vocab

_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9


def _fmix32(h: torch.Tensor) -> torch.Tensor:
    """murmur3's 32-bit finaliser on int64 tensors holding values in [0, 2^32)."""
    h = h ^ (h >> 16)
    h = (h * 0x85EBCA6B) & _MASK32  # int64 wraps; the low 32 bits stay exact
    h = h ^ (h >> 13)
    h = (h * 0xC2B2AE35) & _MASK32
    return h ^ (h >> 16)


def keyed_uniforms(seed: torch.Tensor, step: torch.Tensor, column: torch.Tensor) -> torch.Tensor:
    """Uniforms in (0, 1), one per (row, column): seed (R,) int64, step (R,) int64, column (R, B) -> (R, B) float32."""
    h = _fmix32((seed & _MASK32) ^ _GOLDEN)
    h = _fmix32(h ^ ((seed >> 32) & _MASK32))
    h = _fmix32(h ^ (step & _MASK32))  # (R,)
    h = _fmix32(h[:, None] ^ (column & _MASK32))  # (R, B)
    h = _fmix32(h ^ _GOLDEN)
    return ((h >> 8).float() + 0.5) * (1.0 / (1 << 24))


def filter_scores(scores: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Top-k then nucleus filtering of (..., V) scores; the most likely token always survives."""
    if top_k and top_k < scores.shape[-1]:
        kth = vocab.topk(scores, top_k)[0][..., -1:]  # (..., 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        probs = sorted_scores.softmax(dim=-1)
        drop = probs.cumsum(dim=-1) - probs > top_p  # mass before this token already exceeds top_p
        scores = scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return scores


def proposal_weights(logits: torch.Tensor, probs: torch.Tensor, cfg) -> torch.Tensor:
    """The proposal (R, B, V), up to a constant: the tempered, filtered softmax of the model's logits.

    probs: the untempered softmax (or anything proportional to it), reused untouched
    when there is nothing to temper or filter.
    """
    if cfg.temperature == 1.0 and not cfg.top_k and cfg.top_p >= 1.0:
        return probs
    return filter_scores(logits / cfg.temperature, cfg.top_k, cfg.top_p).softmax(dim=-1)


def draw(weights: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF draw: weights (R, B, V) >= 0, uniforms (R, B) -> token ids (R, B); zero weights are never drawn."""
    return vocab.inverse_cdf(weights, uniforms)


def propose(
    logits: torch.Tensor, probs: torch.Tensor, cfg, seed: torch.Tensor, step: torch.Tensor, column: torch.Tensor
) -> torch.Tensor:
    """Proposal tokens (R, B) from untempered logits (R, B, V) and their softmax `probs`.

    Greedy (argmax) at temperature 0; otherwise one keyed uniform per (row, column).
    """
    if cfg.temperature == 0:
        return vocab.argmax(logits)
    return draw(proposal_weights(logits, probs, cfg), keyed_uniforms(seed, step, column))
