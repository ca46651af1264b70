"""Additive attention masks `(B, 1, T, T)` shared by every model family.

transformers honours a 4D float mask as given under both `sdpa` and `eager` (a bool 4D
mask is misread by `eager`), so every family passes one of these: 0 where a query may
attend to a key, the dtype's most negative value where it may not.
"""

from __future__ import annotations

import torch


def additive(allowed: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """bool (B, T, T) allowed pattern -> float (B, 1, T, T); a query row with no key keeps its diagonal (no NaN)."""
    eye = torch.eye(allowed.shape[-1], dtype=torch.bool, device=allowed.device)
    empty_rows = ~allowed.any(dim=-1, keepdim=True)  # (B, T, 1)
    allowed = allowed | (empty_rows & eye)
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    bias.masked_fill_(~allowed, torch.finfo(dtype).min)
    return bias.unsqueeze(1)  # (B, 1, T, T)


def bidirectional_mask(attention_mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Every real token sees every real token; padding keys are never seen.

    attention_mask: (B, T) bool, False on padding.
    """
    keys = attention_mask[:, None, :]  # (B, 1, T)
    queries = attention_mask[:, :, None]  # (B, T, 1)
    return additive(keys & queries, dtype)


def block_ids(prompt_len: int, total_len: int, block_size: int, device=None) -> torch.Tensor:
    """Block index per position: the prompt is block 0, response position j is in block 1 + j // B."""
    pos = torch.arange(total_len, device=device)
    resp = (pos - prompt_len).clamp(min=0)
    return torch.where(pos < prompt_len, 0, 1 + resp // block_size)  # (T,)


def block_causal_mask(
    attention_mask: torch.Tensor,
    prompt_len: int,
    block_size: int,
    dtype: torch.dtype = torch.float32,
    absolute: bool = False,
) -> torch.Tensor:
    """A query in block b sees the keys of blocks <= b (bidirectional inside a block).

    attention_mask: (B, T) bool, False on (left) padding; the prompt occupies the first
    `prompt_len` columns (padding included), the response the rest.
    absolute: blocks at absolute positions (position // block_size, positions counted from
    each row's first real token, as SDAR was trained), so a prompt's tail shares a block
    with the first response tokens; otherwise the prompt is block 0 and the response's
    blocks start at its first token.
    """
    if absolute:
        blocks = position_ids(attention_mask) // block_size  # (B, T)
        causal = blocks[:, None, :] <= blocks[:, :, None]  # (B, T, T) query row, key column
    else:
        total = attention_mask.shape[1]
        causal = block_ids(prompt_len, total, block_size, attention_mask.device)  # (T,)
        causal = (causal[None, :] <= causal[:, None])[None]  # (1, T, T)
    allowed = causal & attention_mask[:, None, :] & attention_mask[:, :, None]  # (B, T, T)
    return additive(allowed, dtype)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted from the first real token, so left padding changes nothing. (B, T)"""
    pos = attention_mask.long().cumsum(dim=-1) - 1
    return pos.clamp(min=0)


def block_index(attention_mask: torch.Tensor, prompt_len: int, block_size: int, absolute: bool) -> torch.Tensor:
    """Block of every column (B, T), as `block_causal_mask` numbers them (absolute or prompt-as-block-0)."""
    if absolute:
        return position_ids(attention_mask) // block_size
    blocks = block_ids(prompt_len, attention_mask.shape[1], block_size, attention_mask.device)  # (T,)
    return blocks[None, :].expand(attention_mask.shape[0], -1)


def query_bias(
    key_real: torch.Tensor,
    query_cols: torch.Tensor,
    key_block: torch.Tensor | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Additive mask (R, 1, q, W) for q queries at columns `query_cols` over the keys of columns [0, W).

    The rows of the full-sequence mask that a cached forward needs, without building the
    (T, T) square: key_real (R, W) bool (False on padding), query_cols (R, q) int64 (< W),
    key_block (R, W) block per column for block-causal attention (None: bidirectional).
    A query with no allowed key sees its own column, as `additive` does (no NaN).
    """
    r, q = query_cols.shape
    width = key_real.shape[1]
    allowed = key_real[:, None, :].expand(r, q, width)  # (R, q, W)
    if key_block is not None:
        q_block = key_block.gather(1, query_cols)  # (R, q)
        allowed = allowed & (key_block[:, None, :] <= q_block[:, :, None])
    own = torch.arange(width, device=query_cols.device)[None, None, :] == query_cols[:, :, None]  # (R, q, W)
    allowed = allowed | (own & ~allowed.any(dim=-1, keepdim=True))
    bias = torch.zeros((r, q, width), dtype=dtype, device=key_real.device)
    bias.masked_fill_(~allowed, torch.finfo(dtype).min)
    return bias.unsqueeze(1)  # (R, 1, q, W)
