"""Reveal strategies: given the proposals of a block, which positions to reveal this step.

One class per strategy in a registry picked by name; the sampler never branches on it.
A strategy also says whether it follows the steps-per-block schedule (`scheduled`) and
how a setting of it is written (`describe`), so the evaluation's labels, records and
plot never compare strategy names either: a new strategy with one setting is its class
here plus that field of `SamplerConfig`.

What "most confident" means is a second registry, `CONFIDENCES` (`SamplerConfig.confidence`):
the proposal's probability (the default), the top-1 minus top-2 margin, or the negative
entropy: Dream's three `alg` choices of `diffusion_generate` (maskgit_plus, topk_margin,
entropy). Any strategy ranks by whichever is chosen. The confidence recorded in a
trajectory stays the proposal's probability whatever ranks the positions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Protocol

import torch

DREAM_EPS = 1e-3
"""Dream's `eps`: its schedule's times run from 1 down to eps (DreamGenerationConfig's default)."""


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

    uses_entropy: bool
    """Whether `choose` also takes `entropy=` (R, B), each position's entropy in nats (optional; default False)."""


class ConfidenceMeasure(Protocol):
    def score(self, probs: torch.Tensor, probability: torch.Tensor) -> torch.Tensor:
        """probs (R, B, V) untempered, probability (R, B) of each proposal -> (R, B), higher = more certain."""
        ...


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Entropy in nats of each distribution (..., V) -> (...), written as Dream writes it (log of p + 1e-10)."""
    return -(probs * (probs + 1e-10).log()).sum(dim=-1)


class Probability:
    """The proposal's probability (Dream's `maskgit_plus`): t3d's confidence since the start."""

    def score(self, probs, probability):
        return probability


class Margin:
    """Top-1 minus top-2 probability (Dream's `topk_margin`): low where two tokens compete."""

    def score(self, probs, probability):
        top = probs.topk(2, dim=-1).values  # (R, B, 2)
        return top[..., 0] - top[..., 1]


class NegativeEntropy:
    """Minus the entropy of the whole distribution (Dream's `entropy`, its README's choice)."""

    negative_entropy = True
    """Its score is exactly -entropy(probs): a caller that already has the entropy need not compute it again."""

    def score(self, probs, probability):
        return -entropy(probs)


CONFIDENCES: dict[str, ConfidenceMeasure] = {"probability": Probability(), "margin": Margin(), "entropy": NegativeEntropy()}


def get_confidence(name: str) -> ConfidenceMeasure:
    return CONFIDENCES[name]


def static_schedule(block_size: int, steps: int) -> list[int]:
    """Tokens revealed at each step of a block: B // S each, the remainder on the first steps."""
    base, extra = divmod(block_size, steps)
    return [base + (1 if s < extra else 0) for s in range(steps)]


def dream_schedule(block_size: int, steps: int, eps: float = DREAM_EPS) -> list[int]:
    """Tokens revealed at each step by Dream's `diffusion_generate`, its steps that reveal none left out.

    Dream's step i of `steps` reveals int(n (1 - s / t)) of the n positions still masked, t and s
    its times i and i + 1 of linspace(1, eps, steps + 1), and every one left at its last step;
    computed in float32 as Dream computes it, so the counts are Dream's to the token. Its
    steps that reveal nothing (the first, at one token per step) change nothing at
    temperature 0 and cost a forward each: t3d skips them.
    """
    times = torch.linspace(1, eps, steps + 1)  # float32, as Dream builds them
    left, counts = block_size, []
    for i in range(steps):
        n = torch.tensor(float(left))  # Dream: masks per row, a float32 tensor
        count = int(n * (1 - times[i + 1] / times[i])) if i < steps - 1 else left
        counts.append(count)
        left -= count
    return [c for c in counts if c]


@functools.cache
def _schedule_tensor(schedule: Callable[[int, int], list[int]], block_size: int, steps: int, device: torch.device) -> torch.Tensor:
    """A schedule on the device, built once (no host-to-device copy per step)."""
    return torch.tensor(schedule(block_size, steps), device=device)


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
    uses_entropy = False
    schedule = staticmethod(static_schedule)

    def choose(self, confidence, masked, step_in_block, cfg):
        schedule = _schedule_tensor(self.schedule, cfg.block_size, cfg.steps_per_block, confidence.device)
        step = step_in_block.clamp(max=len(schedule) - 1)
        counts = schedule[step]  # (R,)
        # A block that still has masks after its last scheduled step reveals the rest.
        leftover = step_in_block >= len(schedule) - 1
        counts = torch.where(leftover, masked.sum(dim=1), counts)
        return _top_confident(confidence, masked, counts)

    def max_reveals(self, cfg):
        # Every step reveals min(scheduled, masked), so at the last scheduled step at most
        # its own count is left: no step exceeds the largest scheduled count.
        return max(self.schedule(cfg.block_size, cfg.steps_per_block))

    def describe(self, cfg):
        return f"spb={cfg.steps_per_block}"


class DreamStrategy(StaticStrategy):
    """Reveal the k most confident masked positions; k follows Dream's `dream_schedule` over steps_per_block steps.

    With the whole response as one block (block_size = max_new_tokens) and temperature 0 this
    is Dream's own `diffusion_generate` (tests/dllm/test_dream_parity.py).
    """

    schedule = staticmethod(dream_schedule)

    def describe(self, cfg):
        return f"steps={cfg.steps_per_block}"


class ThresholdStrategy:
    """Reveal every masked position whose confidence exceeds the threshold, at least one (Fast-dLLM)."""

    scheduled = False  # reveals by confidence, steps_per_block unused
    uses_entropy = False

    def choose(self, confidence, masked, step_in_block, cfg):
        above = (confidence > cfg.threshold) & masked  # (R, B)
        best = _top_confident(confidence, masked, torch.ones(len(masked), dtype=torch.long, device=masked.device))
        return above | best

    def max_reveals(self, cfg):
        return cfg.block_size

    def describe(self, cfg):
        return f"t={cfg.threshold:g}"


class EntropyBoundedStrategy:
    """Reveal masked positions in order of confidence while their summed entropy stays within a budget (EB-sampler).

    Ben-Hamu et al. (EB-sampler, arXiv 2505.24857) bound the error of revealing several
    positions at once by their entropies. Here: the most confident position is always
    revealed; the next ones in order of confidence join while the entropies of all revealed
    so far sum to at most `entropy_budget` nats. (Their rule subtracts the largest entropy
    from the sum; this one counts every revealed token, so a budget reads as nats per step.)
    """

    scheduled = False  # reveals by entropy, steps_per_block unused
    uses_entropy = True

    def choose(self, confidence, masked, step_in_block, cfg, entropy):
        order = confidence.masked_fill(~masked, float("-inf")).argsort(dim=1, descending=True, stable=True)  # (R, B)
        in_order = masked.gather(1, order)  # (R, B) masked positions first
        spent = entropy.gather(1, order).masked_fill(~in_order, 0.0).cumsum(dim=1)  # (R, B) nats revealed so far
        keep = spent <= cfg.entropy_budget
        keep[:, 0] = True  # at least one per step
        return torch.zeros_like(masked).scatter(1, order, keep & in_order)

    def max_reveals(self, cfg):
        return cfg.block_size

    def describe(self, cfg):
        return f"eb={cfg.entropy_budget:g}"


STRATEGIES: dict[str, RevealStrategy] = {
    "static": StaticStrategy(),
    "threshold": ThresholdStrategy(),
    "dream": DreamStrategy(),
    "entropy_bounded": EntropyBoundedStrategy(),
}


def get_strategy(name: str) -> RevealStrategy:
    return STRATEGIES[name]
