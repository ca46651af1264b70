"""A slot KV cache: one fixed buffer per layer that every forward writes in place.

The engine decodes a fixed number of slots (rows) whose sequences share one column
layout (left-padded prompts, then the response). Each layer keeps keys and values of
shape (S, H, T, D); a forward writes its new keys at the columns it computed, per slot,
and attends over columns [0, W) of its slots. Which keys a query may use is the
attention mask's business, so rows at different blocks, stale columns of a slot that a
finished row left behind and columns written by a not-yet-final step are all handled by
masking, and memory is fixed by the batch (no per-step growth, no crop).

`plan` says what the next forward reads and writes; the engine's runners set it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import Cache, CacheLayerMixin


@dataclass
class ForwardPlan:
    """What one forward through the cache reads and writes."""

    slots: torch.Tensor | None  # (R,) slots forming the forward's batch; None = every slot, in order
    columns: torch.Tensor  # (R, q) buffer column of each new key
    width: int  # attention sees columns [0, width)


class SlotLayer(CacheLayerMixin):
    """One layer's keys and values (S, H, T, D), written in place at the plan's columns."""

    is_sliding = False

    def __init__(self, owner: SlotCache) -> None:
        super().__init__()
        self.owner = owner

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        shape = (self.owner.num_slots, key_states.shape[1], self.owner.width, key_states.shape[3])
        self.keys = torch.zeros(shape, dtype=key_states.dtype, device=key_states.device)
        self.values = torch.zeros(shape, dtype=value_states.dtype, device=value_states.device)
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        plan = self.owner.plan
        slots = plan.slots if plan.slots is not None else torch.arange(self.keys.shape[0], device=self.keys.device)
        rows = slots[:, None].expand_as(plan.columns)  # (R, q)
        self.keys[rows, :, plan.columns] = key_states.transpose(1, 2)  # (R, q, H, D)
        self.values[rows, :, plan.columns] = value_states.transpose(1, 2)
        keys, values = self.keys[:, :, : plan.width], self.values[:, :, : plan.width]  # (S, H, W, D) views
        if plan.slots is not None:
            keys, values = keys.index_select(0, plan.slots), values.index_select(0, plan.slots)
        return keys, values

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.owner.plan.width, 0

    def get_seq_length(self) -> int:
        return 0  # positions always come from position_ids

    def get_max_length(self) -> int:
        return self.owner.width


class SlotCache(Cache):
    """The cache object handed to the network (`cache=` / `past_key_values=`)."""

    def __init__(self, num_layers: int, num_slots: int, width: int) -> None:
        self.num_slots, self.width = num_slots, width
        self.plan: ForwardPlan | None = None
        super().__init__(layers=[SlotLayer(self) for _ in range(num_layers)])

    def nbytes(self) -> int:
        return sum(2 * layer.keys.numel() * layer.keys.element_size() for layer in self.layers if layer.is_initialized)
