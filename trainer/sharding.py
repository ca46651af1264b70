"""The distributed strategies (`--strategy`, a registry: `STRATEGIES`) and FSDP2's machinery.

A strategy says how the student (and the reference) are spread over more than one
worker: `ddp` keeps a whole copy per worker and wraps the student's log-probs module in
DistributedDataParallel after a resume; `fsdp` shards before the resume (so the optimizer
state loads onto the shards). The loop calls both hooks and never asks which it has.

`--strategy fsdp`: FSDP2 (`torch.distributed.fsdp.fully_shard`) over the Ray Train workers.
With `--offload`, FSDP2's own `CPUOffloadPolicy` (on one worker too: FSDP2 over a process
group of one, `applied` / `one_process_group`): the sharded weights, their gradients
and so AdamW's state (built on the shards) stay in CPU memory; each unit's weights are
copied to the device for its forward and backward, and the optimizer steps on the CPU.
The arithmetic is the same, so a run with offload equals one without, and resumes
exactly (the checkpoint holds the same gathered states).

Each decoder layer is one FSDP unit and the head module (`ResponseLogProbs`: embeddings,
final norm, LM head) the root, for the student and the frozen reference alike, so no
worker holds a whole model, its gradients or its AdamW state. On CUDA with --bf16 the
layers compute in bfloat16 and reduce gradients in float32 (`MixedPrecisionPolicy`); the
sharded master weights stay in the training dtype. Gradients are reduce-scattered and
averaged over workers like DDP's all-reduce, so the loop's loss scaling is the same, and
gradient sync is skipped on all but the last micro-batch of a step.

Checkpoints stay in the student format: every worker joins in gathering the full state
dicts (`torch.distributed.checkpoint.state_dict`, offloaded to CPU), and rank 0 writes
them through `checkpoint.save_checkpoint` from a meta-device shell of the network, so the
files are exactly those of an unsharded run. Resume loads the full optimizer state on
every worker and shards it again.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

if TYPE_CHECKING:
    from t3d.dllm.model import DiffusionLM


def _options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


def _layers(net: nn.Module) -> list[nn.Module]:
    """The decoder layers of a transformers model (`model.layers`), or none."""
    layers = getattr(getattr(net, "model", None), "layers", None)
    return list(layers) if layers is not None else []


def shard_module(head: nn.Module, net: nn.Module, device: torch.device, bf16: bool, offload: bool = False) -> nn.Module:
    """fully_shard each decoder layer of `net`, then `head` (which holds `net`) as the root;
    `offload`: the shards and their gradients live in CPU memory (`CPUOffloadPolicy`)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    mesh = init_device_mesh(device.type, (torch.distributed.get_world_size(),))
    kwargs: dict[str, Any] = {"mesh": mesh}
    if device.type == "cuda" and bf16:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if offload:
        kwargs["offload_policy"] = CPUOffloadPolicy(pin_memory=device.type == "cuda")  # pinning needs an accelerator
    for layer in _layers(net):
        fully_shard(layer, **kwargs)
    return fully_shard(head, **kwargs)


def is_sharded(net: nn.Module) -> bool:
    from torch.distributed.tensor import DTensor

    return any(isinstance(p, DTensor) for p in net.parameters())


def is_offloaded(net: nn.Module) -> bool:
    """Whether `net` has FSDP units and every one keeps its shards on the CPU (`--offload`)."""
    units = [m for m in net.modules() if hasattr(m, "_get_fsdp_state")]
    groups = [g for m in units if (g := m._get_fsdp_state()._fsdp_param_group) is not None]
    return bool(groups) and all(p.offload_to_cpu for g in groups for p in g.fsdp_params)


def full_state(net: nn.Module, everywhere: bool = False) -> dict[str, torch.Tensor]:
    """The whole network's state dict (a collective: every worker calls it): on rank 0's CPU
    only ({} elsewhere), or with `everywhere` on every worker's device."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if everywhere:
        return get_model_state_dict(net, options=StateDictOptions(full_state_dict=True))
    return get_model_state_dict(net, options=_options())


def load_full_state(net: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load a full state dict into a sharded network (every worker holds `state`)."""
    from torch.distributed.checkpoint.state_dict import set_model_state_dict

    set_model_state_dict(net, state, options=_options())


def full_optimizer_state(net: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The optimizer state with whole tensors, keyed by parameter name, on rank 0 (a collective)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    return get_optimizer_state_dict(net, optimizer, options=_options())


def load_full_optimizer_state(net: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

    set_optimizer_state_dict(net, optimizer, state, options=_options())


def export_model(model: DiffusionLM, state: dict[str, torch.Tensor]) -> DiffusionLM:
    """A `DiffusionLM` whose network is a meta-device shell holding `state` (for writing a checkpoint)."""
    with torch.device("meta"):
        shell = type(model.net)(model.net.config)
    missing, unexpected = shell.load_state_dict(state, assign=True, strict=False)
    if unexpected or any(not name.endswith("lm_head.weight") for name in missing):
        raise RuntimeError(f"gathered state does not fit the network: missing {missing}, unexpected {unexpected}")
    if missing:  # tied LM head
        shell.tie_weights()
    exported = copy.copy(model)
    exported.net = shell
    return exported


def grad_norm(total: torch.Tensor) -> float:
    """clip_grad_norm_'s result as a float (a DTensor under FSDP)."""
    return float(total.full_tensor() if hasattr(total, "full_tensor") else total)


class DDP:
    """A whole copy of the student per worker; gradients all-reduced by DistributedDataParallel."""

    name = "ddp"
    autocast = True
    """The loop's bf16 autocast applies (on CUDA with --bf16)."""
    shards = False
    """Each worker holds the whole student, its gradients and its optimizer state (the memory plan's view)."""

    def shard(self, trainer: Any, rebuild_optimizer: Callable[[Any], None]) -> None:
        """Before a resume: nothing to shard."""

    def wrap(self, trainer: Any) -> None:
        """After a resume: the student's log-probs module in DDP."""
        ids = [trainer.device.index] if trainer.device.type == "cuda" else None
        trainer.logprobs = torch.nn.parallel.DistributedDataParallel(trainer.logprobs, device_ids=ids)


class FSDP:
    """FSDP2 over the workers: student and reference sharded, the optimizer rebuilt on the shards."""

    name = "fsdp"
    autocast = False
    """FSDP brings its own mixed precision (`MixedPrecisionPolicy`) instead of the loop's autocast."""
    shards = True
    """Weights, gradients, optimizer state and the reference are split over the workers (and can be offloaded)."""

    def shard(self, trainer: Any, rebuild_optimizer: Callable[[Any], None]) -> None:
        bf16, offload = trainer.cfg.train.bf16, trainer.cfg.dist.offload
        trainer.logprobs = shard_module(trainer.logprobs, trainer.student.net, trainer.device, bf16, offload)
        if trainer.ref_logprobs is not None and not trainer.reference.shares_student:  # LoRA: the student's, sharded above
            trainer.ref_logprobs = shard_module(trainer.ref_logprobs, trainer.reference.net, trainer.device, bf16, offload)
        rebuild_optimizer(trainer)

    def wrap(self, trainer: Any) -> None:
        """After a resume: already sharded."""


STRATEGIES: dict[str, DDP | FSDP] = {s.name: s for s in (DDP(), FSDP())}
"""`--strategy` with more than one worker; one worker runs the plain loop whatever is named (FSDP2 with --offload)."""

SHARDED = next(name for name, strategy in STRATEGIES.items() if strategy.shards)
"""The strategy that shards (the one `--offload` needs and the memory plan proposes)."""


def applied(strategy: str, workers: int, offload: bool = False) -> DDP | FSDP | None:
    """The strategy a run uses: `--strategy` over more than one worker; FSDP2 over one process with
    `--offload` on one worker (its offload needs the shards, here all of them); else none (the plain loop)."""
    if workers > 1:
        return STRATEGIES[strategy]
    return STRATEGIES[SHARDED] if offload else None


def shards(strategy: str, workers: int, offload: bool = False) -> bool:
    """Whether a run with `--strategy strategy` over `workers` workers (and `--offload`) shards its state."""
    used = applied(strategy, workers, offload)
    return used is not None and used.shards


@contextlib.contextmanager
def one_process_group(device: torch.device) -> Iterator[None]:
    """A process group of this process alone (an in-memory store), for FSDP2 on one worker; none is
    made, or destroyed, when one exists already."""
    import torch.distributed as dist

    if dist.is_initialized():
        yield
        return
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()
