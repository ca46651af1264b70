"""Reductions over the vocabulary in two levels: one streaming pass over chunks, then work on a few chunks.

At SDAR's vocabulary (151,936 ids) every full pass over a step's (R, B, V) scores
costs about as much as a small model's LM head on the CPU, and `torch.topk`, `argmax`
and `cumsum` over the last dimension are several times slower than a plain reduction.
Each function here reads the scores once as (..., V / C, C) chunks with a vectorised
reduction (max or sum per chunk), picks the few chunks that matter from those
per-chunk numbers, and finishes exactly inside them:

- `argmax`: the first maximum lies in the first chunk whose maximum is largest;
- `topk`: the k largest values lie in the k chunks with the largest maxima (a value
  outside them has k chunk maxima, hence k other values, at least as large);
- `inverse_cdf`: the draw lies in the chunk where the chunk-sum CDF crosses the target,
  found by a cumsum over C values.

The results equal torch's own (argmax: the index; topk: the values, and the indices up
to ties; the draw: the inverse CDF, up to float rounding of the partial sums). A last,
shorter chunk holds V mod C ids, so any V works.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

CHUNK = 128
"""Ids per chunk (151,936 = 1,187 x 128): the finishing work inside a few chunks is then negligible."""


def chunk_reduce(x: torch.Tensor, op: Callable[[torch.Tensor], torch.Tensor], chunk: int | None = None) -> torch.Tensor:
    """op over the last dim of each chunk of (..., V) -> (..., ceil(V / chunk)); op maps (..., n, c) -> (..., n)."""
    chunk = chunk or CHUNK
    v = x.shape[-1]
    full = v // chunk
    parts = []
    if full:
        parts.append(op(x[..., : full * chunk].unflatten(-1, (full, chunk))))
    if full * chunk < v:
        parts.append(op(x[..., full * chunk :].unsqueeze(-2)))
    return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)


def gather_chunks(x: torch.Tensor, which: torch.Tensor, fill: float, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The values of chunks `which` (..., m) of x (..., V): (..., m * chunk) values and their ids.

    Ids past the end of the vocabulary (in the last, shorter chunk) read as `fill`.
    """
    chunk = chunk or CHUNK
    v = x.shape[-1]
    ids = (which[..., None] * chunk + torch.arange(chunk, device=x.device)).flatten(-2)  # (..., m * chunk)
    values = x.gather(-1, ids.clamp(max=v - 1))
    return values.masked_fill(ids >= v, fill), ids


def argmax(x: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """torch.argmax(x, -1) (the first maximum) for finite x (..., V) -> (...,) int64."""
    chunk = chunk or CHUNK
    best = chunk_reduce(x, lambda c: c.amax(dim=-1), chunk).argmax(dim=-1, keepdim=True)  # (..., 1)
    values, ids = gather_chunks(x, best, float("-inf"), chunk)  # (..., chunk)
    return ids.gather(-1, values.argmax(dim=-1, keepdim=True)).squeeze(-1)


def topk(x: torch.Tensor, k: int, chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.topk(x, k, -1) (values sorted, largest first) for x (..., V) -> values, ids (..., k)."""
    chunk = chunk or CHUNK
    if k * chunk * 4 > x.shape[-1]:  # the chunks would cover much of the row: nothing to save
        return x.topk(k, dim=-1)
    maxima = chunk_reduce(x, lambda c: c.amax(dim=-1), chunk)  # (..., n)
    which = maxima.topk(k, dim=-1).indices  # (..., k)
    values, ids = gather_chunks(x, which, float("-inf"), chunk)  # (..., k * chunk)
    top = values.topk(k, dim=-1)
    return top.values, ids.gather(-1, top.indices)


def inverse_cdf(weights: torch.Tensor, uniforms: torch.Tensor, chunk: int | None = None) -> torch.Tensor:
    """The id where u * total mass falls in the cumulative weights: weights (..., V) >= 0, uniforms (...,) in [0, 1).

    A zero weight is never drawn, whatever the rounding (the draw is clamped to the
    last id with positive weight, at both levels).
    """
    chunk = chunk or CHUNK
    sums = chunk_reduce(weights, lambda c: c.sum(dim=-1), chunk)  # (..., n)
    cdf = sums.cumsum(dim=-1)
    target = uniforms * cdf[..., -1]  # (...,) no normalisation needed
    last = _last_positive(sums)  # (...,)
    which = torch.minimum(torch.searchsorted(cdf, target[..., None], right=True).squeeze(-1), last)  # (...,)
    before = torch.where(which > 0, cdf.gather(-1, (which - 1).clamp(min=0)[..., None]).squeeze(-1), 0.0)
    values, ids = gather_chunks(weights, which[..., None], 0.0, chunk)  # (..., chunk)
    inner = values.cumsum(dim=-1)
    rest = (target - before).clamp(min=0.0)
    pick = torch.searchsorted(inner, rest[..., None], right=True).squeeze(-1)
    pick = torch.minimum(pick, _last_positive(values))
    return ids.gather(-1, pick[..., None]).squeeze(-1)


def _last_positive(values: torch.Tensor) -> torch.Tensor:
    """(..., n) -> (...,) the last index whose value is > 0 (0 when none is)."""
    index = torch.arange(values.shape[-1], device=values.device)
    return torch.where(values > 0, index, 0).amax(dim=-1)
