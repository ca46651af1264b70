"""Reveal strategies: given the proposals of a block, which positions to reveal this step.

One class per strategy in a registry picked by name; the sampler never branches on it.
A strategy also says whether it follows the steps-per-block schedule (`scheduled`) and
how a setting of it is written (`describe`), so the evaluation's labels, records and
plot never compare strategy names either: a new strategy with one setting is its class
here plus that field of `SamplerConfig`.
"""

from __future__ import annotations

import functools
from typing import Protocol

import torch


class RevealStrategy(Protocol):
    def choose(self, confidence: torch.Tensor, masked: torch.Tensor, step_in_block: torch.Tensor, cfg) -> torch.Tensor:
        """confidence (R, B) float, masked (R, B) bool, step_in_block (R,) -> reveal (R, B) bool.

        Only masked positions may be chosen, and at least one per row that has any.
        """
        ...

    scheduled: bool
    """Whether it follows the steps_per_block schedule (then the block must divide into those steps)."""

    def max_reveals(self, cfg) -> int:
        """The most positions one step can choose in a row (the engine records top-k for that many only)."""
        ...

    def describe(self, cfg) -> str:
        """Its own setting in labels (`spb=2`, `t=0.9`); block size and temperature are written by the caller."""
        ...


def static_schedule(block_size: int, steps: int) -> list[int]:
    """Tokens revealed at each step of a block: B // S each, the remainder on the first steps."""
    base, extra = divmod(block_size, steps)
    return [base + (1 if s < extra else 0) for s in range(steps)]


@functools.cache
def _schedule_tensor(block_size: int, steps: int, device: torch.device) -> torch.Tensor:
    """`static_schedule` on the device, built once (no host-to-device copy per step)."""
    return torch.tensor(static_schedule(block_size, steps), device=device)


def _top_confident(confidence: torch.Tensor, masked: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """The `counts[r]` most confident masked positions of each row (R, B) -> bool (R, B)."""
    scores = confidence.masked_fill(~masked, float("-inf"))  # (R, B)
    order = scores.argsort(dim=1, descending=True, stable=True)  # (R, B)
    rank = order.argsort(dim=1)  # rank of each position among its row
    counts = torch.minimum(counts, masked.sum(dim=1))  # (R,)
    return (rank < counts[:, None]) & masked


class StaticStrategy:
    """Reveal the k most confident masked positions; k follows `static_schedule`."""

    scheduled = True  # follows steps_per_block

    def choose(self, confidence, masked, step_in_block, cfg):
        schedule = _schedule_tensor(cfg.block_size, cfg.steps_per_block, confidence.device)
        step = step_in_block.clamp(max=len(schedule) - 1)
        counts = schedule[step]  # (R,)
        # A block that still has masks after its last scheduled step reveals the rest.
        leftover = step_in_block >= len(schedule) - 1
        counts = torch.where(leftover, masked.sum(dim=1), counts)
        return _top_confident(confidence, masked, counts)

    def max_reveals(self, cfg):
        # Every step reveals min(scheduled, masked), so at the last scheduled step at most
        # its own count is left: no step exceeds the largest scheduled count.
        return max(static_schedule(cfg.block_size, cfg.steps_per_block))

    def describe(self, cfg):
        return f"spb={cfg.steps_per_block}"


class ThresholdStrategy:
    """Reveal every masked position whose confidence exceeds the threshold, at least one (Fast-dLLM)."""

    scheduled = False  # reveals by confidence, steps_per_block unused

    def choose(self, confidence, masked, step_in_block, cfg):
        above = (confidence > cfg.threshold) & masked  # (R, B)
        best = _top_confident(confidence, masked, torch.ones(len(masked), dtype=torch.long, device=masked.device))
        return above | best

    def max_reveals(self, cfg):
        return cfg.block_size

    def describe(self, cfg):
        return f"t={cfg.threshold:g}"


STRATEGIES: dict[str, RevealStrategy] = {"static": StaticStrategy(), "threshold": ThresholdStrategy()}


def get_strategy(name: str) -> RevealStrategy:
    return STRATEGIES[name]
