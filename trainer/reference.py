"""The DDO reference: a frozen copy of the student, refreshed every round of self-play.

DDO scores the student against p_ref (DESIGN.md section 5): at the start p_ref is the
starting model, so every log-ratio is 0 and the loss is (1 + alpha) log 2. With
`--round-every R` the reference becomes a copy of the student every R optimizer steps
(multi-round self-play): each round then starts again from ratios of 0 against a
stronger reference, and the fakes are that stronger model's one-shot answers.

A LoRA student (`--lora-r`) needs no copy: its reference (`AdapterReference`) is the
student's own network with the adapters switched off, which is exactly the frozen base;
after a round, with the frozen copy of the student's adapter active instead
(`t3d.trainer.lora` says why a frozen adapter rather than merging).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from t3d.dllm.model import DiffusionLM
from t3d.trainer.logprobs import ResponseLogProbs

if TYPE_CHECKING:
    from t3d.trainer.lora import Adapters

REFERENCE_WEIGHTS = "reference.safetensors"


class Reference:
    """A frozen `DiffusionLM` (eval mode, no gradients) plus the step it was last copied at."""

    shares_student = False
    """True when the reference runs on the student's own (adapted) network: nothing of its own to shard or gather."""

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

    def log_probs(self, student: ResponseLogProbs) -> torch.nn.Module:
        """The module the objectives call for the reference's log-probs (the student's: a LoRA reference runs it)."""
        return ResponseLogProbs(self.model)

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


class AdapterReference(Reference):
    """DDO's reference of a LoRA student: the student's network with its adapters off (the frozen base),
    or, once a round has refreshed it, with the frozen `reference` adapter active. No second network."""

    shares_student = True

    def __init__(self, student: DiffusionLM, adapters: Adapters) -> None:
        self.model = student
        self.adapters = adapters
        self.refreshed_at = 0

    def log_probs(self, student: ResponseLogProbs) -> AsReference:
        return AsReference(self, student)

    def running(self):
        """A context in which the student's network computes as the reference."""
        from t3d.trainer.lora import REFERENCE

        return self.adapters.running_as(REFERENCE if self.refreshed_at else None)

    def refresh(self, student_net: torch.nn.Module, step: int) -> None:
        """The reference adapter becomes a copy of the student's (in place)."""
        self.adapters.copy_to_reference()
        self.refreshed_at = step

    def save(self, directory: Path, state: dict[str, torch.Tensor] | None = None) -> None:
        """The reference adapter's weights, once refreshed; `state`: the network's (gathered) state dict."""
        from t3d.trainer.lora import REFERENCE_ADAPTER

        if self.refreshed_at:
            self.adapters.save_reference(directory / REFERENCE_ADAPTER, state if state is not None else self.net.state_dict())

    def load(self, directory: Path, refreshed_at: int) -> None:
        """The weights came with the student's adapters (`Adapters.load`, before any sharding): the step only."""
        self.refreshed_at = refreshed_at


class AsReference:
    """The student's log-probs module run as the reference (`AdapterReference.running`).

    A plain callable, not a module: it owns no parameters, so DDP, FSDP and `.parameters()`
    see the student's weights once, through the student's own module.
    """

    def __init__(self, reference: AdapterReference, student: ResponseLogProbs) -> None:
        self.reference = reference
        self.student = student

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.reference.running():
            return self.student(*args, **kwargs)
