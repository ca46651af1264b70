"""Building a trainer: the student, its data, the reference, the optimizer and schedule, the
states' configuration, and the data-parallel strategy; restored from a checkpoint with --resume."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from t3d.dllm import load_model
from t3d.dllm.errors import UserError
from t3d.dllm.model import DiffusionLM
from t3d.trainer import checkpoint as ckpt
from t3d.trainer import sharding
from t3d.trainer.config import DistillConfig, effective_warmup
from t3d.trainer.data import TrajectoryDataset
from t3d.trainer.logprobs import ResponseLogProbs
from t3d.trainer.lora import Adapters
from t3d.trainer.objectives import OBJECTIVES, Objective
from t3d.trainer.reference import AdapterReference, Reference
from t3d.trainer.states import StateConfig


@dataclass(frozen=True)
class Dist:
    """This process's place among the data-parallel workers (1 of 1 without Ray)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_reduce(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum over workers (in place; a no-op for one worker), on the backend's device."""
        if self.world > 1:
            nccl = torch.distributed.get_backend() == "nccl"
            moved = tensor.to(torch.device("cuda", torch.cuda.current_device()) if nccl else "cpu")
            torch.distributed.all_reduce(moved)
            tensor.copy_(moved)
        return tensor

    def barrier(self) -> None:
        if self.world > 1:
            torch.distributed.barrier()


@dataclass
class Trainer:
    """Everything the loop holds between steps."""

    cfg: DistillConfig
    student: DiffusionLM
    logprobs: torch.nn.Module  # the student's `ResponseLogProbs` (log-probs through `DiffusionLM`), DDP-wrapped with more than one worker
    reference: Reference | None
    ref_logprobs: Callable | None  # the reference's `ResponseLogProbs` (with LoRA: the student's, adapters off)
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: TrajectoryDataset
    states: StateConfig
    device: torch.device
    dist: Dist = field(default_factory=Dist)
    step: int = 0
    saved_step: int = -1  # step of the newest checkpoint (every worker knows it)
    last_checkpoint: Path | None = None  # its path (rank 0)
    rows_read: list[np.ndarray] = field(default_factory=list)
    adapters: Adapters | None = None  # the student's LoRA adapters (--lora-r), None for full fine-tuning
    strategy: Any = None  # the data-parallel strategy in use (`sharding.applied`), None for the plain loop

    @property
    def objective(self) -> Objective:
        """The objective `--loss` names."""
        return OBJECTIVES[self.cfg.loss.kind]


def resolve_device(name: str, dist: Dist) -> torch.device:
    """`auto` -> this worker's CUDA device when there is one, else CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and dist.world > 1:
        name = f"cuda:{torch.cuda.current_device()}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine")
    return torch.device(name)


def build_model(cfg: DistillConfig, device: torch.device, path: str | Path | None = None) -> DiffusionLM:
    """The student, trainable, from `path` (a checkpoint when resuming) or `--model`."""
    model = load_model(
        path or cfg.model.path, family=cfg.model.family, trust_remote_code=cfg.model.trust_remote_code,
        device=device, dtype=cfg.model.dtype,
    )  # fmt: skip
    model.net.train()
    model.net.requires_grad_(True)
    if cfg.model.gradient_checkpointing:
        _enable_checkpointing(model.net)
    return model


def _enable_checkpointing(net: torch.nn.Module) -> None:
    """Non-reentrant activation checkpointing (works under DDP and with frozen inputs)."""
    kwargs = {"use_reentrant": False}
    if hasattr(net, "activation_checkpointing_enable"):  # transformers >= 5.x name
        net.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        net.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    net.config.use_cache = False


def build_loader(cfg: DistillConfig, model: DiffusionLM, dist: Dist, log: Callable = print) -> TrajectoryDataset:
    """The worker's stream of micro-batches, checked against the student."""
    loader = TrajectoryDataset(
        cfg.data, batch_size=cfg.train.batch_size, seed=cfg.train.seed, pad_id=model.pad_id,
        rank=dist.rank, world=dist.world, arrays=OBJECTIVES[cfg.loss.kind].arrays,
        fixed_states=cfg.states.fixed_states, log=log,
    )  # fmt: skip
    check_compatible(loader.manifest.teacher, model.identity(), cfg.data.path)
    return loader


def check_compatible(teacher: dict[str, Any], student: dict[str, Any], data_path: str) -> None:
    """The student must speak the teacher's vocabulary: the dataset holds ids, not text.

    teacher: the manifest's teacher identity; student: `DiffusionLM.identity()` (or the
    same keys read from a config.json).
    """
    vocab = teacher.get("vocab_size")
    if vocab is not None and int(vocab) != student["vocab_size"]:
        raise UserError(
            f"student vocabulary ({student['vocab_size']} ids, {student['name']}) does not match the teacher of "
            f"{data_path} ({vocab} ids, {teacher.get('name', '?')})"
        )
    mask = teacher.get("mask_id")
    if mask is not None and int(mask) != student["mask_id"]:
        raise UserError(f"student mask id {student['mask_id']} differs from the teacher's ({mask}) in {data_path}")
    family = teacher.get("family")
    if family is not None and student.get("family") is not None and family != student["family"]:
        raise UserError(
            f"student family {student['family']} ({student['name']}) differs from the teacher's ({family}) in "
            f"{data_path}: the trajectories were decoded with that family's attention layout"
        )


def _block_size(cfg: DistillConfig, model: DiffusionLM, loader: TrajectoryDataset) -> int:
    """--block-size (a multiple of the rollouts' block: whole rollout blocks per training
    block), else the block size the teacher decoded with, else the model's."""
    sizes = loader.block_sizes
    if len(sizes) > 1 and not cfg.model.block_size:
        raise UserError(f"{cfg.data.path} mixes sampler block sizes {sizes}: pass --block-size or --filter one")
    if cfg.model.block_size:
        bad = [s for s in sizes if cfg.model.block_size % int(s)]
        if bad:
            raise UserError(f"--block-size {cfg.model.block_size} is not a multiple of the rollouts' block size "
                            f"{bad[0]} in {cfg.data.path} (--block-size 0 trains at the rollouts' own)")  # fmt: skip
        return cfg.model.block_size
    block = sizes[0] if sizes else model.block_size
    if not block:
        raise UserError("cannot tell the response block size: pass --block-size")
    return int(block)


def random_token_range(model: DiffusionLM) -> tuple[int, int]:
    """The widest [low, high) id range holding no special token: where `random_ratio` draws from.

    Specials sit at the top (LLaDA, SDAR: mask, EOS) or the bottom (the built-in task) of
    a vocabulary, so the widest gap between them is the ordinary tokens.
    """
    specials = {model.mask_id, model.pad_id, model.eos_id}
    if model.tokenizer is not None:
        specials |= {int(i) for i in getattr(model.tokenizer, "all_special_ids", []) if i is not None}
    edges = sorted(i for i in specials if 0 <= i < model.vocab_size)
    gaps = zip([-1, *edges], [*edges, model.vocab_size])  # (special, next special)
    low, high = max(((a + 1, b) for a, b in gaps), key=lambda r: r[1] - r[0])
    if high - low < 1:
        raise UserError(f"{model.name} has no ordinary tokens to use as random tokens (set --random-ratio 0)")
    return low, high


def build_state_config(cfg: DistillConfig, model: DiffusionLM, loader: TrajectoryDataset) -> StateConfig:
    """How states are cut: the teacher's blocks, the family's layout, never the mask as a random token."""
    block = _block_size(cfg, model, loader)
    low, high = random_token_range(model)
    length, rollout_block = loader.response_length, (loader.block_sizes or [block])[0]
    extra = (-length) % block + (block if model.family.absolute_blocks and block != int(rollout_block) else 0)
    return StateConfig.of(
        cfg.states, block_size=block, mask_id=model.mask_id, eos_id=model.eos_id, layout=model.family.training_layout,
        random_vocab=(low, high), absolute_blocks=model.family.absolute_blocks, pad_id=model.pad_id, pad_columns=extra,
    )  # fmt: skip


def build_optimizer(net: torch.nn.Module, cfg: DistillConfig) -> torch.optim.Optimizer:
    """AdamW; weight decay on matrices only (norm gains and biases are not shrunk)."""
    params = [p for p in net.parameters() if p.requires_grad]
    decay_vectors = cfg.optim.weight_decay if cfg.optim.decay_all else 0.0
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.optim.weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": decay_vectors},
    ]
    fused = next(net.parameters()).is_cuda
    return torch.optim.AdamW(groups, lr=cfg.optim.lr, betas=(cfg.optim.beta1, cfg.optim.beta2), fused=fused or None)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: DistillConfig) -> Any:
    """Linear warm-up then cosine decay to min_lr_ratio x lr at max_steps (transformers' implementation)."""
    from transformers import get_cosine_schedule_with_warmup, get_cosine_with_min_lr_schedule_with_warmup

    warmup, _ = effective_warmup(cfg)  # at most a quarter of the run (`describe` says when it was cut)
    if cfg.optim.min_lr_ratio:
        return get_cosine_with_min_lr_schedule_with_warmup(optimizer, warmup, cfg.train.max_steps,
                                                           min_lr_rate=cfg.optim.min_lr_ratio)  # fmt: skip
    return get_cosine_schedule_with_warmup(optimizer, warmup, cfg.train.max_steps)


def resolve_epochs(cfg: DistillConfig, loader: TrajectoryDataset) -> DistillConfig:
    """--epochs E > 0: --max-steps = ceil(E x rows / global batch) (the rows this run's workers can read)."""
    if not cfg.train.epochs:
        return cfg
    rows = loader.batches_per_epoch * cfg.train.batch_size * cfg.dist.num_workers
    steps = max(1, math.ceil(cfg.train.epochs * rows / cfg.rows_per_step))
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=steps))


def build_trainer(cfg: DistillConfig, dist: Dist = Dist(), log: Callable = print) -> Trainer:
    """Model, reference, data, optimizer; restored from the latest checkpoint with --resume."""
    torch.manual_seed(cfg.train.seed)
    device = resolve_device(cfg.train.device, dist)
    out = Path(cfg.train.out)
    resume_from = ckpt.resume_point(out) if cfg.train.resume else None
    student = build_model(cfg, device, None if cfg.lora.enabled else resume_from)  # LoRA: the base, then its adapters
    adapters = _attach_adapters(cfg, student, resume_from)
    loader = build_loader(cfg, student, dist, log if dist.is_main else quiet)
    cfg = resolve_epochs(cfg, loader)
    reference = _build_reference(cfg, student, device, resume_from, adapters)
    optimizer = build_optimizer(student.net, cfg)
    logprobs = ResponseLogProbs(student)
    trainer = Trainer(
        cfg=cfg, student=student, logprobs=logprobs, reference=reference,
        ref_logprobs=reference.log_probs(logprobs) if reference is not None else None,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg), loader=loader,
        states=build_state_config(cfg, student, loader), device=device, dist=dist, adapters=adapters,
    )  # fmt: skip
    trainer.strategy = strategy = sharding.applied(cfg.dist.strategy, dist.world, cfg.dist.offload)
    if strategy is not None:
        strategy.shard(trainer, _rebuild_optimizer)
    if resume_from is not None:
        ckpt.restore(trainer, resume_from, log if dist.is_main else quiet)
    if strategy is not None:
        strategy.wrap(trainer)
    return trainer


def _rebuild_optimizer(trainer: Trainer) -> None:
    """The optimizer and its schedule on the student's current (sharded) parameters."""
    trainer.optimizer = build_optimizer(trainer.student.net, trainer.cfg)
    trainer.scheduler = build_scheduler(trainer.optimizer, trainer.cfg)


def _attach_adapters(cfg: DistillConfig, student: DiffusionLM, resume_from: Path | None) -> Adapters | None:
    """With --lora-r: the student's LoRA adapters (and a frozen reference adapter when rounds refresh the
    reference), restored from the checkpoint when resuming; None for full fine-tuning."""
    if resume_from is not None:
        trained = ckpt.load_checkpoint_config(resume_from).lora
        if (trained.r, trained.targets) != (cfg.lora.r, cfg.lora.targets):
            raise UserError(f"--resume: {resume_from} was trained with --lora-r {trained.r} --lora-targets "
                            f"{','.join(trained.targets) or 'default'}: resume with the same")  # fmt: skip
    if not cfg.lora.enabled:
        return None
    rounds = OBJECTIVES[cfg.loss.kind].needs_reference and cfg.reference.round_every > 0
    adapters = Adapters.attach(student, cfg.lora, ckpt.base_dir(cfg), reference=rounds)
    if resume_from is not None:
        adapters.load(resume_from)
    return adapters


def _build_reference(
    cfg: DistillConfig, student: DiffusionLM, device, resume_from: Path | None, adapters: Adapters | None = None
) -> Reference | None:
    """A copy of the starting student; when resuming, the starting model from --model (its
    refreshed weights, if any, come from the checkpoint in `checkpoint.restore`). A LoRA
    student's reference is its own network with the adapters off (`AdapterReference`)."""
    if not OBJECTIVES[cfg.loss.kind].needs_reference:
        return None
    if adapters is not None:
        return AdapterReference(student, adapters)
    if resume_from is None:
        return Reference.copy_of(student)
    model = cfg.model
    start = load_model(model.path, family=model.family, trust_remote_code=model.trust_remote_code, device=device,
                       dtype=model.dtype)  # fmt: skip
    return Reference(start)


def quiet(*_args, **_kwargs) -> None:
    """The log of a worker that is not rank 0."""
    return None


