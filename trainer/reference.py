"""The DDO reference: a frozen copy of the student, refreshed every round of self-play.

DDO scores the student against p_ref (DESIGN.md section 5): at the start p_ref is the
starting model, so every log-ratio is 0 and the loss is (1 + alpha) log 2. With
`--round-every R` the reference becomes a copy of the student every R optimizer steps
(multi-round self-play): each round then starts again from ratios of 0 against a
stronger reference, and the fakes are that stronger model's one-shot answers.
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch

from t3d.dllm.model import DiffusionLM

REFERENCE_WEIGHTS = "reference.safetensors"


class Reference:
    """A frozen `DiffusionLM` (eval mode, no gradients) plus the step it was last copied at."""

    def __init__(self, model: DiffusionLM) -> None:
        """Take `model` over (freezes it); see `copy_of` to start from the live student."""
        model.net.eval().requires_grad_(False)
        self.model = model
        self.refreshed_at = 0
        """Optimizer step of the last copy; 0 = still the starting model."""

    @classmethod
    def copy_of(cls, student: DiffusionLM) -> Reference:
        """A reference with the student's ids and family and its own copy of the network."""
        model = copy.copy(student)
        model.net = copy.deepcopy(student.net)
        return cls(model)

    @property
    def net(self) -> torch.nn.Module:
        return self.model.net

    @torch.no_grad()
    def refresh(self, student_net: torch.nn.Module, step: int) -> None:
        """Copy the student's weights in (in place: no second allocation)."""
        for ref, cur in zip(self.net.parameters(), student_net.parameters(), strict=True):
            ref.copy_(cur.detach())
        for ref, cur in zip(self.net.buffers(), student_net.buffers(), strict=True):
            ref.copy_(cur)
        self.refreshed_at = step

    def maybe_refresh(self, student_net: torch.nn.Module, step: int, round_every: int) -> bool:
        """Refresh after optimizer step `step` when a round ends; True if it did."""
        if round_every and step % round_every == 0:
            self.refresh(student_net, step)
            return True
        return False

    def save(self, directory: Path, state: dict[str, torch.Tensor] | None = None) -> None:
        """Write the weights only when they are no longer the starting model's; `state`: the
        gathered full state dict of a sharded reference."""
        if not self.refreshed_at:
            return
        from safetensors.torch import save_file, save_model

        if state is None:
            save_model(self.net, str(directory / REFERENCE_WEIGHTS))
        else:
            save_file({k: v.contiguous() for k, v in state.items()}, str(directory / REFERENCE_WEIGHTS))

    def load(self, directory: Path, refreshed_at: int) -> None:
        """Restore a checkpoint's reference (the starting model when refreshed_at is 0)."""
        self.refreshed_at = refreshed_at
        if not refreshed_at:
            return
        from safetensors.torch import load_file, load_model

        from t3d.dllm.weights import check_complete
        from t3d.trainer import sharding

        check_complete(directory / REFERENCE_WEIGHTS)  # a cut-short file: one line naming it
        if sharding.is_sharded(self.net):
            sharding.load_full_state(self.net, load_file(str(directory / REFERENCE_WEIGHTS)))
        else:
            load_model(self.net, str(directory / REFERENCE_WEIGHTS), device=str(self.model.device))
