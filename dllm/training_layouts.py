"""Training layouts: how a family's attention pattern is trained, declared by the family.

A `TrainingLayout` says which response copies the training input holds and builds that
input with its additive mask; `t3d.trainer.states` cuts the states and calls it, never
asking which family or layout it is. Two ship with t3d:

- `BLOCK_CAUSAL` ("block_causal"): every block trained at once, each at its own state
  step; the input is [prompt | clean response | noisy response] with a mask where each
  noisy block sees the prompt, the clean blocks before it and itself (exactly what a
  block-causal decoder gives that block; with absolute blocks, SDAR's alignment).
- `SEMI_AR` ("semi_ar"): one current block per row for bidirectional families; the input
  is [prompt | noisy response] with a bidirectional mask.

A family with another attention pattern defines its own `TrainingLayout` (see
tests/trainer/test_toy_family.py) and names it in `Family.training`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from t3d.dllm import masks
from t3d.dllm.errors import UserError


class ModelInputs(NamedTuple):
    """What the model is called with; fields as in `TrainingStates`."""

    input_ids: Tensor
    attention_mask: Tensor
    attention_bias: Tensor
    position_ids: Tensor
    response_start: int


def block_causal_pattern(prompt_len: int, response_len: int, block_size: int, device=None) -> Tensor:
    """(T, T) bool, query row / key column, for [prompt | clean | noisy], T = P + 2L.

    Prompt queries see the prompt. A clean block j sees the prompt and clean blocks
    <= j (block-causal, as at inference). A noisy block j sees the prompt, clean
    blocks < j and itself, never another noisy block, never its own clean copy.
    """
    blk = torch.arange(response_len, device=device) // block_size  # (L,)
    none = torch.full((prompt_len,), -1, device=device)
    block = torch.cat([none, blk, blk])  # (T,)
    part = torch.cat([torch.zeros_like(none), torch.ones_like(blk), torch.full_like(blk, 2)])  # 0 / 1 / 2
    qp, kp, qb, kb = part[:, None], part[None, :], block[:, None], block[None, :]
    clean_key = (kp == 1) & (((qp == 1) & (kb <= qb)) | ((qp == 2) & (kb < qb)))
    noisy_key = (kp == 2) & (qp == 2) & (kb == qb)
    return (kp == 0) | clean_key | noisy_key


def absolute_block_causal_pattern(prompt_blocks: Tensor, first_block: Tensor, response_len: int, block_size: int) -> Tensor:
    """(N, T, T) bool for [prompt | clean | noisy] with blocks at absolute positions.

    prompt_blocks: (N, P) absolute block of each prompt column (its position // B);
    first_block: (N,) absolute block of the copies' first column. Prompt and clean
    queries see keys of blocks <= their own (SDAR's block-causal prefill); a noisy block
    sees the prompt and clean blocks strictly before it and its own noisy block.
    """
    n, p = prompt_blocks.shape
    device = prompt_blocks.device
    resp = first_block[:, None] + torch.arange(response_len, device=device) // block_size  # (N, L)
    block = torch.cat([prompt_blocks, resp, resp], dim=1)  # (N, T)
    part = torch.cat([torch.zeros(p, device=device), torch.ones(response_len, device=device),
                      torch.full((response_len,), 2, device=device)]).long()  # (T,)  # fmt: skip
    qp, kp = part[None, :, None], part[None, None, :]  # (1, T, 1), (1, 1, T)
    qb, kb = block[:, :, None], block[:, None, :]  # (N, T, 1), (N, 1, T)
    earlier = torch.where(qp == 2, kb < qb, kb <= qb)  # (N, T, T)
    return ((kp < 2) & earlier) | ((kp == 2) & (qp == 2) & (kb == qb))


def block_causal_inputs(
    prompt_ids: Tensor, prompt_mask: Tensor, clean: Tensor, noisy: Tensor, block_size: int, dtype: torch.dtype,
    absolute: bool = False,
) -> ModelInputs:  # fmt: skip
    """[prompt | clean | noisy] (N, P + 2L) with its block-causal additive mask.

    prompt_ids, prompt_mask: (N, P), left padded (with absolute blocks: the mask of the
    prompt's whole blocks, the tail being the copies' first columns); clean, noisy:
    (N, L). Both copies get positions n_prompt + c, so noisy block j sits where clean
    block j does.
    """
    n, p = prompt_ids.shape
    length = clean.shape[1]
    input_ids = torch.cat([prompt_ids.long(), clean, noisy], dim=1)  # (N, T)
    keys = torch.cat([prompt_mask.bool(), prompt_mask.new_ones((n, 2 * length), dtype=torch.bool)], dim=1)
    prompt_pos = masks.position_ids(prompt_mask.bool())  # (N, P)
    n_prompt = prompt_mask.sum(-1)  # (N,)
    if absolute:
        pattern = absolute_block_causal_pattern(prompt_pos // block_size, n_prompt // block_size, length, block_size)
    else:
        pattern = block_causal_pattern(p, length, block_size, prompt_ids.device)[None]  # (1, T, T)
    allowed = pattern & keys[:, None, :] & keys[:, :, None]  # (N, T, T)
    response_pos = n_prompt[:, None] + torch.arange(length, device=prompt_ids.device)  # (N, L)
    positions = torch.cat([prompt_pos, response_pos, response_pos], dim=1)
    return ModelInputs(input_ids, keys, masks.additive(allowed, dtype), positions, p + length)


def semi_ar_inputs(
    prompt_ids: Tensor, prompt_mask: Tensor, clean: Tensor, noisy: Tensor, block_size: int, dtype: torch.dtype,
    absolute: bool = False,
) -> ModelInputs:  # fmt: skip
    """[prompt | noisy] (N, P + L) with a bidirectional additive mask (clean and absolute are unused)."""
    n, p = prompt_ids.shape
    input_ids = torch.cat([prompt_ids.long(), noisy], dim=1)  # (N, T)
    keys = torch.cat([prompt_mask.bool(), prompt_mask.new_ones(noisy.shape, dtype=torch.bool)], dim=1)
    bias = masks.bidirectional_mask(keys, dtype)  # (N, 1, T, T)
    return ModelInputs(input_ids, keys, bias, masks.position_ids(keys), p)


@dataclass(frozen=True, kw_only=True)
class TrainingLayout:
    """How a family's attention pattern is trained: the states it takes and the input it is called with."""

    name: str
    """How logs and `StateConfig(layout=...)` call it."""
    every_block: bool
    """True: every block is trained at once, each at its own state step (a block-causal pattern, where later
    blocks never reach earlier ones); False: one current block per row, earlier blocks clean, later ones masked."""
    copies: int
    """Response copies in the input (2: [prompt | clean | noisy], 1: [prompt | noisy]); sizes the tokens per step."""
    absolute_blocks: bool = False
    """Whether `inputs` can place blocks at absolute positions from the first prompt token (SDAR)."""
    inputs: Callable[..., ModelInputs]
    """(prompt_ids, prompt_mask, clean, noisy, block_size, dtype, absolute) -> `ModelInputs`; see `block_causal_inputs`."""


BLOCK_CAUSAL = TrainingLayout(name="block_causal", every_block=True, copies=2, absolute_blocks=True,
                              inputs=block_causal_inputs)  # fmt: skip
SEMI_AR = TrainingLayout(name="semi_ar", every_block=False, copies=1, inputs=semi_ar_inputs)

TRAINING_LAYOUTS: dict[str, TrainingLayout] = {layout.name: layout for layout in (BLOCK_CAUSAL, SEMI_AR)}


def get_training_layout(layout: str | TrainingLayout) -> TrainingLayout:
    """The layout itself, or the one registered under its name (a one-line error listing the known ones)."""
    if isinstance(layout, TrainingLayout):
        return layout
    if layout not in TRAINING_LAYOUTS:
        raise UserError(f"unknown training layout {layout!r} (known: {', '.join(TRAINING_LAYOUTS)})")
    return TRAINING_LAYOUTS[layout]
