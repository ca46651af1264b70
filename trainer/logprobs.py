"""Log-probabilities of a few ids per position straight from hidden states, in chunks.

The losses read log p(id) for one to k ids per supervised position, never the whole
distribution. Materialising the (B, L, V) logits and a float32 copy of them costs
B·L·V·4 bytes per copy (5 GB at vocabulary 151,936, batch 8 and 1,024 response tokens),
and the block-causal layout doubles L. Here the LM head runs only on the selected
positions, `chunk` rows at a time, and each chunk's logits are dropped as soon as its
log-sum-exp and the picked logits are known; the backward pass recomputes them chunk by
chunk (a fused linear log-prob, like the fused linear cross-entropy of the official
code). Peak extra memory: a chunk's logits, sized by a budget (`CHUNK_BYTES`).

`ResponseLogProbs` wraps a `DiffusionLM` so that the whole thing (trunk, head, chunked
log-probs) is one module `forward`, which is what DDP and FSDP hook into; the network
itself is called by `DiffusionLM.response_rows` only.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from t3d.dllm.model import DiffusionLM

CHUNK_BYTES = 1 << 28
"""Memory budget of one chunk's logits (256 MiB): their float32 values and one copy in the compute dtype."""


KEEP_BYTES = 1 << 28
"""Softmax rows of the whole call (N x V in float32) up to this size (256 MiB) are kept from the forward for the
backward, which then skips recomputing the logits (3 matmuls instead of 4); larger calls recompute chunk by chunk."""


def kept_bytes(rows: int, vocab: int, dtype: torch.dtype = torch.float32) -> int:
    """Bytes a call on `rows` x `vocab` keeps from forward to backward (its softmax when it fits `KEEP_BYTES`, else 0)."""
    size = rows * vocab * _wide(dtype).itemsize
    return size if size <= KEEP_BYTES else 0


def chunk_rows(vocab: int, dtype: torch.dtype = torch.float32, budget: int = CHUNK_BYTES) -> int:
    """Rows per chunk whose (rows, V) logits, computed in `dtype`, fit `budget` (220 at vocabulary 151,936 in float32)."""
    per_row = vocab * (4 + torch.empty((), dtype=dtype).element_size())
    return max(1, budget // per_row)


def balanced(n: int, rows: int) -> int:
    """At most `rows` rows per chunk, as evenly as the chunk count allows (256 rows at 220: 128 + 128, not 220 + 36)."""
    chunks = max(1, -(-n // rows))
    return max(1, -(-n // chunks))


def compute_dtype(x: Tensor) -> torch.dtype:
    """The head's matmul dtype: autocast's on `x`'s device when autocast is on there, else `x`'s own."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def _wide(dtype: torch.dtype) -> torch.dtype:
    """Where the softmax runs: float32, or float64 for float64 inputs (exact checks)."""
    return torch.promote_types(dtype, torch.float32)


def _chunk_logits(hidden: Tensor, weight: Tensor | None, bias: Tensor | None, dtype: torch.dtype | None = None) -> Tensor:
    """(n, H) x (V, H) -> (n, V) float32 (float64) logits, the product in `dtype` (default: the hidden
    states'); weight None: `hidden` already holds logits rows."""
    dtype = dtype or hidden.dtype
    if weight is None:
        return hidden.to(_wide(dtype))
    logits = (hidden.to(dtype) @ weight.to(dtype).t()).to(_wide(dtype))  # (n, V)
    return logits if bias is None else logits + bias.to(logits.dtype)


class _LinearLogProbs(torch.autograd.Function):
    """log softmax(hidden @ W^T + b)[ids], chunked over rows; backward recomputes each chunk
    (or reads the softmax kept by the forward when the whole call's fits `KEEP_BYTES`).

    Autocast-correct (what torch.amp's custom_fwd / custom_bwd give, for any device): the
    forward's dtype (autocast's, else the hidden states') is kept in ctx and all four
    matmuls run in it, so the backward recomputes exactly the forward's logits.
    """

    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor, rows: int | None) -> Tensor:
        dtype = compute_dtype(hidden)
        rows = balanced(hidden.shape[0], rows or chunk_rows(weight.shape[0], dtype))
        out = hidden.new_empty(ids.shape, dtype=_wide(dtype))  # (N, k)
        lse = hidden.new_empty(ids.shape[0], dtype=_wide(dtype))  # (N,)
        keep = any(ctx.needs_input_grad) and kept_bytes(hidden.shape[0], weight.shape[0], dtype) > 0
        kept = lse.new_empty(hidden.shape[0], weight.shape[0]) if keep else None  # (N, V)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], rows):
                part = slice(start, start + rows)
                logits = _chunk_logits(hidden[part], weight, bias, dtype)  # (n, V)
                lse[part] = torch.logsumexp(logits, dim=-1)
                out[part] = logits.gather(-1, ids[part]) - lse[part, None]
                if kept is not None:
                    torch.exp(logits - lse[part, None], out=kept[part])  # (n, V) the softmax, as the backward computes it
        ctx.save_for_backward(hidden, weight, bias, ids, lse, kept)
        ctx.rows, ctx.dtype = rows, dtype
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):
        hidden, weight, bias, ids, lse, kept = ctx.saved_tensors
        dtype = ctx.dtype
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        wide = _wide(dtype)
        grad_w = torch.zeros(weight.shape, dtype=wide, device=weight.device) if ctx.needs_input_grad[1] else None
        grad_b = torch.zeros(weight.shape[0], dtype=wide, device=weight.device) if bias is not None else None
        w = weight.to(dtype)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], ctx.rows):
                part = slice(start, start + ctx.rows)
                g = grad_out[part].to(wide)  # (n, k)
                if kept is None:
                    probs = (_chunk_logits(hidden[part], w, bias, dtype) - lse[part, None]).exp_()  # (n, V)
                    grad_logits = probs.mul_(-g.sum(-1, keepdim=True))
                else:
                    grad_logits = kept[part].mul(-g.sum(-1, keepdim=True))  # (n, V)
                grad_logits.scatter_add_(-1, ids[part], g)
                if grad_h is not None:
                    grad_h[part] = grad_logits.to(dtype) @ w
                if grad_w is not None:
                    _accumulate(grad_w, grad_logits, hidden[part], dtype)
                if grad_b is not None:
                    grad_b += grad_logits.sum(0)
        grad_w = grad_w.to(weight.dtype) if grad_w is not None else None
        grad_b = grad_b.to(bias.dtype) if grad_b is not None and ctx.needs_input_grad[2] else None
        return grad_h, grad_w, grad_b, None, None


def _accumulate(grad_w: Tensor, grad_logits: Tensor, hidden: Tensor, dtype: torch.dtype) -> None:
    """grad_w (V, H) float32 (float64) += grad_logits^T (V, n) @ hidden (n, H), the product in `dtype`.

    In the accumulator's dtype in place (`addmm_`: no V x H temporary per chunk); in a lower
    dtype the product is rounded once and added, so the sum over chunks stays float32.
    """
    if dtype == grad_w.dtype:
        grad_w.addmm_(grad_logits.t(), hidden.to(dtype))
    else:
        grad_w += grad_logits.t().to(dtype) @ hidden.to(dtype)


def linear_logprobs(hidden: Tensor, weight: Tensor, bias: Tensor | None, ids: Tensor, rows: int | None = None) -> Tensor:
    """log p(ids) under softmax(hidden @ weight^T + bias), never holding more than `rows` x V logits.

    hidden: (N, H); weight: (V, H); bias: (V,) or None; ids: (N, k) int. Returns (N, k)
    float32 (float64 for float64 inputs), differentiable in hidden, weight and bias (the backward recomputes chunks).
    rows None: as many as `CHUNK_BYTES` allows.
    """
    return _LinearLogProbs.apply(hidden, weight, bias, ids.long(), rows)


class Proposal(NamedTuple):
    """The reference's answer at each selected position, from one pass over V."""

    logp_target: Tensor  # (N,) float32, log p_ref(target)
    fake: Tensor  # (N,) int64, argmax (temperature 0) or a sample at the temperature
    logp_fake: Tensor  # (N,) float32, log p_ref(fake)


@torch.no_grad()
def linear_proposal(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, targets: Tensor, temperature: float = 0.0,
    generator: torch.Generator | None = None, rows: int | None = None,
) -> Proposal:  # fmt: skip
    """For the reference: log p(target), the fake y (argmax or a sample of softmax(logits / T)) and
    log p(fake), chunked like `linear_logprobs`. hidden (N, H), or (N, V) logits with weight None;
    targets (N,). Samples are drawn chunk by chunk in row order with `generator` (on the hidden
    states' device)."""
    dtype = compute_dtype(hidden)
    rows = rows or chunk_rows(hidden.shape[-1] if weight is None else weight.shape[0], dtype)
    n = hidden.shape[0]
    out = [hidden.new_empty(n, dtype=torch.float32), targets.new_empty(n, dtype=torch.long),
           hidden.new_empty(n, dtype=torch.float32)]  # fmt: skip
    for start in range(0, n, rows):
        part = slice(start, start + rows)
        logits = _chunk_logits(hidden[part], weight, bias, dtype)  # (n, V)
        logp = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
        if temperature == 0.0:
            fake = logits.argmax(dim=-1)
        else:
            probs = torch.softmax(logits / temperature, dim=-1)
            fake = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        out[0][part] = logp.gather(-1, targets[part, None].long()).squeeze(-1)
        out[1][part] = fake
        out[2][part] = logp.gather(-1, fake[:, None]).squeeze(-1)
    return Proposal(*out)


class ResponseLogProbs(nn.Module):
    """A model whose forward returns log-probs of chosen ids at chosen response positions.

    `forward(input_ids, attention_bias, position_ids, length, select, ids=None, targets=None, ...)`:
    the response copy is the last `length` columns; `select` (B, L) bool picks positions
    (row-major), giving N rows. With `ids` (N, k): returns (N, k) log-probs (with grad).
    With `targets` (N,) instead: returns the `Proposal` (no grad; the reference's use).
    With neither: the (N, V) log-probs of every id (with grad; objectives that read the
    whole distribution, such as an entropy).
    The rows come from `DiffusionLM.response_rows` (the network is called there only):
    hidden states and the LM head when it is plain, applied here in chunks. `fused=False`
    (or a head that is not plain) takes the full-logits route, in the model's dtype, with
    log-probs in float32 chunks: the same numbers, more memory.
    """

    def __init__(self, model: DiffusionLM, fused: bool = True) -> None:
        super().__init__()
        self.net = model.net  # registered, so DDP / FSDP and `.parameters()` see the weights
        self.model = model
        self.fused = fused and model.lm_head is not None

    def forward(self, input_ids: Tensor, attention_bias: Tensor, position_ids: Tensor, length: int, select: Tensor,
                ids: Tensor | None = None, targets: Tensor | None = None, temperature: float = 0.0,
                generator: torch.Generator | None = None):  # fmt: skip
        rows, weight, bias = self.model.response_rows(input_ids, attention_bias, position_ids, length, select, self.fused)
        if targets is not None:
            return linear_proposal(rows, weight, bias, targets, temperature, generator)
        if ids is None:  # every id: (N, V), an expanded view (no copy of the ids)
            vocab = rows.shape[-1] if weight is None else weight.shape[0]
            ids = torch.arange(vocab, device=rows.device).expand(rows.shape[0], vocab)
        if weight is None:  # log-probs of the logits rows, float32 a chunk at a time
            return _logit_rows_logprobs(rows, ids)
        return linear_logprobs(rows, weight, bias, ids)


def _logit_rows_logprobs(logits: Tensor, ids: Tensor) -> Tensor:
    """(N, V) logits in any dtype -> (N, k) float32 log-probs, float32 a chunk at a time."""
    rows = chunk_rows(logits.shape[-1])
    parts = []
    for start in range(0, logits.shape[0], rows):
        chunk = logits[start : start + rows].float()
        parts.append(chunk.gather(-1, ids[start : start + rows].long()) - torch.logsumexp(chunk, -1, keepdim=True))
    return torch.cat(parts) if parts else logits.new_zeros(ids.shape, dtype=torch.float32)

