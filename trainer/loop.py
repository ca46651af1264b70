"""The distillation loop: build the parts, then optimizer steps until `max_steps`.

One optimizer step (`train_step`) takes `grad_accum` micro-batches. Their training
states are built first, so the supervised counts of the whole step (all micro-batches,
all workers) are known before any forward pass; every micro-batch loss is divided by
those totals (`losses.normalizer_counts`), which makes the accumulated gradient equal
to the gradient of the full batch. Under DDP the gradients are averaged over workers,
so each worker's loss is scaled by the world size to keep that identity.

A step whose loss or gradient norm is not finite stops the run before the optimizer
touches the weights; nothing is saved, so the newest checkpoint is the last good one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from t3d.dllm import load_model
from t3d.dllm.errors import UserError
from t3d.dllm.model import DiffusionLM
from t3d.dllm.prompt_encoding import dataset_encoding
from t3d.trainer import checkpoint as ckpt
from t3d.trainer import sharding
from t3d.trainer.config import DistillConfig, describe_changes, differences_from_preset, effective_warmup
from t3d.trainer.data import Batch, TrajectoryDataset, row_seeds
from t3d.trainer.logprobs import ResponseLogProbs
from t3d.trainer.losses import OBJECTIVES, LossBatch, combine, normalizer_counts
from t3d.trainer.reference import Reference
from t3d.trainer.states import StateConfig, TrainingStates, build_states, response_to_sections
from t3d.trainer.tracking import open_trackers

# Metrics whose micro-batch values add up to the step's value (divided by step-wide counts).
SUMMED_METRICS = frozenset({"loss", "ddo", "path", "ce", "fkl", "rows"})
METRICS_FILE = "metrics.jsonl"


class NonFiniteLoss(UserError):
    """The loss or the gradient norm became NaN or infinite; the run stopped."""


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
    ref_logprobs: torch.nn.Module | None  # the reference's `ResponseLogProbs`
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


@dataclass(frozen=True)
class RunResult:
    """What a finished run leaves: the exported student, the step reached, the rows this worker read."""

    student: Path | None
    step: int
    rows: np.ndarray  # (R, 2) int64 (shard number, zarr_index) of every row read, in order
    metrics: dict[str, float]  # of the last step
    model: DiffusionLM | None  # the final student in memory (None where it ran elsewhere)


# ---- building ---------------------------------------------------------------------------------


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
        rank=dist.rank, world=dist.world, with_topk=OBJECTIVES[cfg.loss.kind].needs_topk,
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
    states = cfg.states
    return StateConfig(
        block_size=block, mask_id=model.mask_id, eos_id=model.eos_id,
        layout="block_causal" if model.family.block_causal else "semi_ar", state_order=cfg.states.state_order,
        random_ratio=cfg.states.random_ratio, random_vocab=(low, high), path_k_steps=cfg.states.path_k_steps,
        absolute_blocks=model.family.absolute_blocks, supervise_padding=states.supervise_padding,
        random_count=states.random_count, path_mode=states.path_mode, padding_shows=states.padding_shows,
        pad_id=model.pad_id, pad_columns=extra,
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
    student = build_model(cfg, device, resume_from)
    loader = build_loader(cfg, student, dist, log if dist.is_main else _quiet)
    cfg = resolve_epochs(cfg, loader)
    reference = _build_reference(cfg, student, device, resume_from)
    optimizer = build_optimizer(student.net, cfg)
    trainer = Trainer(
        cfg=cfg, student=student, logprobs=ResponseLogProbs(student), reference=reference,
        ref_logprobs=ResponseLogProbs(reference.model) if reference is not None else None,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, cfg), loader=loader,
        states=build_state_config(cfg, student, loader), device=device, dist=dist,
    )  # fmt: skip
    if dist.world > 1 and cfg.dist.strategy == "fsdp":
        _shard(trainer)
    if resume_from is not None:
        restore(trainer, resume_from, log if dist.is_main else _quiet)
    if dist.world > 1 and cfg.dist.strategy == "ddp":
        ids = [device.index] if device.type == "cuda" else None
        trainer.logprobs = torch.nn.parallel.DistributedDataParallel(trainer.logprobs, device_ids=ids)
    return trainer


def _shard(trainer: Trainer) -> None:
    """FSDP2 over the workers: student and reference sharded; the optimizer rebuilt on the shards."""
    bf16 = trainer.cfg.train.bf16
    trainer.logprobs = sharding.shard_module(trainer.logprobs, trainer.student.net, trainer.device, bf16)
    if trainer.ref_logprobs is not None:
        trainer.ref_logprobs = sharding.shard_module(trainer.ref_logprobs, trainer.reference.net, trainer.device, bf16)
    trainer.optimizer = build_optimizer(trainer.student.net, trainer.cfg)
    trainer.scheduler = build_scheduler(trainer.optimizer, trainer.cfg)


def _build_reference(cfg: DistillConfig, student: DiffusionLM, device, resume_from: Path | None) -> Reference | None:
    """A copy of the starting student; when resuming, the starting model from --model (its
    refreshed weights, if any, come from the checkpoint in `restore`)."""
    if not OBJECTIVES[cfg.loss.kind].needs_reference:
        return None
    if resume_from is None:
        return Reference.copy_of(student)
    model = cfg.model
    start = load_model(model.path, family=model.family, trust_remote_code=model.trust_remote_code, device=device,
                       dtype=model.dtype)  # fmt: skip
    return Reference(start)


def _quiet(*_args, **_kwargs) -> None:
    return None


def restore(trainer: Trainer, path: Path, log: Callable = print) -> None:
    """Continue exactly where checkpoint `path` stopped (the student weights are already loaded)."""
    state = ckpt.load_trainer_state(path)
    changes = describe_changes(ckpt.load_checkpoint_config(path), trainer.cfg)
    changes = [c for c in changes if not c.startswith("train.resume")]
    if changes:
        log(f"resuming {path} with changed settings: {'; '.join(changes)}")
    if sharding.is_sharded(trainer.student.net):
        sharding.load_full_optimizer_state(trainer.student.net, trainer.optimizer, state["optimizer"])
    else:
        trainer.optimizer.load_state_dict(state["optimizer"])
    trainer.scheduler.load_state_dict(state["scheduler"])
    trainer.loader.load_state_dict(state["data"])
    if trainer.reference is not None:
        trainer.reference.load(path, int(state.get("reference_refreshed_at", 0)))
    trainer.step = trainer.saved_step = int(state["step"])
    trainer.last_checkpoint = path
    ckpt.set_rng_state(state["rng"])
    log(f"resumed from {path} at step {trainer.step}")


# ---- one optimizer step -------------------------------------------------------------------------


def make_states(batch: Batch, cfg: StateConfig, device: torch.device, dtype: torch.dtype = torch.float32) -> TrainingStates:
    """Training states of a micro-batch; row i's randomness comes only from its own seed.

    One generator per row (seeded by `Batch.row_seed`) makes a row's state the same in
    any batch, which is what lets 4 x 1 and 1 x 4 accumulation be compared exactly.
    Built on one CPU thread: the tensors are tiny, and waking torch's thread pool for
    each small reduction cost ~17x the work itself on a busy 2-core machine.
    """
    with _one_thread():
        parts = [_row_states(batch, i, cfg, dtype) for i in range(len(batch))]
    return _to_device(_cat_states(parts), device)


@contextlib.contextmanager
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _row_states(batch: Batch, i: int, cfg: StateConfig, dtype: torch.dtype) -> TrainingStates:
    generator = torch.Generator().manual_seed(int(batch.row_seed[i]))
    rows = slice(i, i + 1)
    return build_states(
        batch.prompt_ids[rows], batch.prompt_mask[rows], batch.x0[rows], batch.reveal_step[rows],
        cfg, generator=generator, dtype=dtype,
    )  # fmt: skip


def _cat_states(parts: list[TrainingStates]) -> TrainingStates:
    values = {}
    for f in dataclasses.fields(TrainingStates):
        items = [getattr(p, f.name) for p in parts]
        values[f.name] = torch.cat(items) if isinstance(items[0], torch.Tensor) else items[0]
    return TrainingStates(**values)


def _to_device(states: TrainingStates, device: torch.device) -> TrainingStates:
    moved = {
        f.name: v.to(device, non_blocking=True) if isinstance(v := getattr(states, f.name), torch.Tensor) else v
        for f in dataclasses.fields(TrainingStates)
    }
    return TrainingStates(**moved)


def step_normalizers(states: list[TrainingStates], dist: Dist) -> dict[str, torch.Tensor]:
    """Counts of the whole step (every micro-batch of every worker) that the losses divide by."""
    counts = [normalizer_counts(s.supervised, s.path, s.padding) for s in states]
    keys = sorted(counts[0])
    total = torch.stack([sum(c[k] for c in counts) for k in keys]).float()  # (K,)
    dist.all_reduce(total)
    return dict(zip(keys, total))


def _autocast(trainer: Trainer):
    fsdp = trainer.cfg.dist.strategy == "fsdp" and trainer.dist.world > 1  # FSDP's own mixed precision instead
    if trainer.device.type == "cuda" and trainer.cfg.train.bf16 and not fsdp:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def _logp_metrics(ref_logp: torch.Tensor, states: TrainingStates, metrics: dict) -> dict:
    """ℓ (mean log-prob over M per sequence, averaged over sequences) of real and fake answers.

    ref_logp: (B, L, 2) the reference's log-probs of [x0, fake]. The objective already
    reports the per-sequence log-ratios ℓ_θ - ℓ_ref averaged over the same sequences, so
    ℓ_θ = ℓ_ref + ratio exactly.
    """
    supervised = states.supervised  # (B, L)
    count = supervised.sum(dim=-1)  # (B,)
    per_row = (ref_logp * supervised[..., None]).sum(dim=1) / count.clamp(min=1)[:, None]  # (B, 2)
    valid = (count > 0).to(per_row.dtype)  # (B,)
    mean = (per_row * valid[:, None]).sum(dim=0) / valid.sum().clamp(min=1)  # (2,)
    return {
        "logp_real_ref": mean[0], "logp_fake_ref": mean[1],
        "logp_real_student": mean[0] + metrics["real_log_ratio"], "logp_fake_student": mean[1] + metrics["fake_log_ratio"],
    }  # fmt: skip


def _fake_generator(trainer: Trainer, micro: int) -> torch.Generator | None:
    """For a sampled fake: seeded by (seed, step, worker, micro-batch), so resume replays it."""
    if trainer.cfg.loss.fake_temperature == 0.0:
        return None
    key = (trainer.cfg.train.seed * 1_000_003 + trainer.step) * 4096 + trainer.dist.rank * 64 + micro
    seed = int(row_seeds(0, 0, np.array([key]))[0])
    return torch.Generator(device=trainer.device).manual_seed(seed)


def _scatter(values: torch.Tensor, select: torch.Tensor) -> torch.Tensor:
    """(N, ...) values at the True positions of select (B, L) -> (B, L, ...), zeros elsewhere (differentiable)."""
    dense = values.new_zeros((*select.shape, *values.shape[1:]))
    return dense.index_put(select.nonzero(as_tuple=True), values)


def micro_loss(trainer: Trainer, states: TrainingStates, batch: Batch, norms: dict, micro: int = 0):
    """Student (and reference) forward and the objective of one micro-batch -> (loss, metrics).

    Both networks compute log-probs only at the positions the objective reads
    (`Objective.positions`), in chunks over V (`logprobs.ResponseLogProbs`): first the
    reference's fake answer and its log-probs, then the student's log-probs of the ids
    the objective needs. No (B, L, V) tensor is made.
    """
    objective = OBJECTIVES[trainer.cfg.loss.kind]
    topk_ids = _in_sections(batch.topk_ids, states, trainer.device)
    select = objective.positions(states.supervised, states.path, states.padding)  # (B, L)
    inputs = (states.input_ids, states.attention_bias, states.position_ids, states.targets.shape[1], select)
    targets = states.targets[select]  # (N,)
    fake = ref_logp = None
    with _autocast(trainer):
        if objective.needs_reference:
            with torch.no_grad():
                prop = trainer.ref_logprobs(*inputs, targets=targets, temperature=trainer.cfg.loss.fake_temperature,
                                            generator=_fake_generator(trainer, micro))  # fmt: skip
            if hasattr(trainer.ref_logprobs, "reshard"):  # FSDP keeps a root unsharded after forward; no backward here
                trainer.ref_logprobs.reshard()
            in_m = states.supervised[select]  # (N,) the fake is the reference's answer on M only
            fake_sel = torch.where(in_m, prop.fake, targets)
            ref_logp = _scatter(torch.stack([prop.logp_target, torch.where(in_m, prop.logp_fake, prop.logp_target)], -1), select)
            fake = torch.where(select, _scatter(fake_sel, select), states.targets)  # (B, L)
        ids = objective.ids(targets, fake_sel if fake is not None else None, topk_ids[select] if topk_ids is not None else None)
        logp = _scatter(trainer.logprobs(*inputs, ids=ids), select)  # (B, L, k)
    loss_batch = LossBatch(
        logp=logp, ref_logp=ref_logp, fake=fake, targets=states.targets, supervised=states.supervised,
        path=states.path, path_weight=states.path_weight, padding=states.padding,
        topk_logprobs=_in_sections(batch.topk_logprobs, states, trainer.device), topk_ids=topk_ids,
    )  # fmt: skip
    loss, metrics = combine(loss_batch, trainer.cfg.loss, norms)
    if ref_logp is not None:
        metrics |= _logp_metrics(ref_logp, states, metrics)
    return loss, metrics


def micro_step(trainer: Trainer, states: TrainingStates, batch: Batch, norms: dict, micro: int, sync: bool) -> dict:
    """Forward, loss and backward of one micro-batch; gradients add up in `.grad`.

    DDP all-reduces gradients only on the last micro-batch of the step (`sync`).
    """
    sync_ctx = contextlib.nullcontext()
    if hasattr(trainer.logprobs, "set_requires_gradient_sync"):  # FSDP2
        trainer.logprobs.set_requires_gradient_sync(sync)
    elif not sync and trainer.dist.world > 1:
        sync_ctx = trainer.logprobs.no_sync()
    with sync_ctx:
        loss, metrics = micro_loss(trainer, states, batch, norms, micro)
        (loss * trainer.dist.world).backward()
    return metrics


@torch.no_grad()
def evaluate(trainer: Trainer, batches: list[Batch]) -> dict[str, float]:
    """The objective and its metrics on fixed batches, without touching the weights or the step."""
    states = [make_states(b, trainer.states, trainer.device, _state_dtype(trainer)) for b in batches]
    norms = step_normalizers(states, trainer.dist)
    parts = [micro_loss(trainer, s, b, norms, i)[1] for i, (s, b) in enumerate(zip(states, batches))]
    return reduce_metrics(parts, trainer.dist)


def _state_dtype(trainer: Trainer) -> torch.dtype:
    """Attention-bias dtype: the student's (float32 under autocast, whose weights stay float32)."""
    dtype = trainer.student.dtype
    return dtype if dtype.is_floating_point else torch.float32


def _in_sections(tensor: torch.Tensor | None, states: TrainingStates, device: torch.device) -> torch.Tensor | None:
    """A per-response-position tensor (the stored top-k) in the states' column coordinates."""
    if tensor is None:
        return None
    tensor = tensor.to(device, non_blocking=True)
    extra = states.targets.shape[1] - tensor.shape[1]  # StateConfig.pad_columns
    if extra:
        tensor = torch.nn.functional.pad(tensor, (0, 0, 0, extra))
    return response_to_sections(tensor, states.shift) if bool(states.shift.any()) else tensor


def reduce_metrics(parts: list[dict], dist: Dist) -> dict[str, float]:
    """Step metrics: loss parts and counts add up over micro-batches and workers, the rest average.

    The values stay on their device until one stacked copy to the host (one sync per step).
    """
    keys = sorted(set().union(*parts))
    summed = [k in SUMMED_METRICS or k.endswith("_tokens") for k in keys]
    device = next((v.device for p in parts for v in p.values() if isinstance(v, torch.Tensor)), torch.device("cpu"))
    values = []
    for key, add in zip(keys, summed):
        vals = [torch.as_tensor(p[key]).detach().to(device, torch.float64) for p in parts if key in p]
        values.append(sum(vals) if add else sum(vals) / len(vals))
    stacked = torch.stack(values).cpu() if values else torch.zeros(0, dtype=torch.float64)
    dist.all_reduce(stacked)
    return {k: float(v) if add else float(v) / dist.world for k, v, add in zip(keys, stacked.tolist(), summed)}


def _clip(trainer: Trainer) -> float:
    params = [p for p in trainer.student.net.parameters() if p.grad is not None]
    max_norm = trainer.cfg.optim.grad_clip or float("inf")
    return sharding.grad_norm(torch.nn.utils.clip_grad_norm_(params, max_norm))


def _sizes(states: list[TrainingStates], batches: list[Batch]) -> dict[str, int]:
    """What the step read and supervised; `*_tokens` add up over micro-batches and workers."""
    return {
        "input_tokens": sum(int(s.attention_mask.sum()) for s in states), "rows": sum(map(len, batches)),
        "supervised_tokens": sum(int(s.supervised.sum()) for s in states),
        "supervised_padding_tokens": sum(int((s.supervised & s.padding).sum()) for s in states),
        "response_padding_tokens": sum(int(s.padding.sum()) for s in states),
    }  # fmt: skip


def train_step(trainer: Trainer, batches: list[Batch]) -> dict[str, float]:
    """One optimizer step over `batches` (the micro-batches of this worker); returns its metrics."""
    states = [make_states(b, trainer.states, trainer.device, _state_dtype(trainer)) for b in batches]
    norms = step_normalizers(states, trainer.dist)
    trainer.optimizer.zero_grad(set_to_none=True)
    last = len(batches) - 1
    parts = [micro_step(trainer, s, b, norms, i, i == last) for i, (s, b) in enumerate(zip(states, batches))]
    metrics = reduce_metrics([*parts, _sizes(states, batches)], trainer.dist)
    metrics["padding_share"] = metrics["supervised_padding_tokens"] / max(1.0, metrics["supervised_tokens"])
    if not math.isfinite(metrics["loss"]):
        raise NonFiniteLoss(f"loss is {metrics['loss']} at step {trainer.step + 1}")
    grad_norm = _clip(trainer)
    if not math.isfinite(grad_norm):
        raise NonFiniteLoss(f"gradient norm is {grad_norm} at step {trainer.step + 1}")
    lr = trainer.scheduler.get_last_lr()[0]
    trainer.optimizer.step()
    trainer.scheduler.step()
    trainer.step += 1
    return metrics | {"grad_norm": grad_norm, "lr": lr}


# ---- the loop ------------------------------------------------------------------------------------


class MetricsLog:
    """metrics.jsonl, one line per step; a resumed run first drops lines after its start step."""

    def __init__(self, path: Path, start_step: int, enabled: bool) -> None:
        self.path, self.enabled = path, enabled
        if not enabled:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        kept = []
        if path.is_file() and start_step > 0:
            kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= start_step]
        path.write_text("".join(line + "\n" for line in kept))
        self._fh = path.open("a")

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            self._fh.write(json.dumps(record, sort_keys=True) + "\n")
            self._fh.flush()

    def close(self) -> None:
        if self.enabled:
            self._fh.close()


def describe(trainer: Trainer, log: Callable = print) -> None:
    """Print the derived sizes once, so the run explains itself."""
    cfg, loader, model = trainer.cfg, trainer.loader, trainer.student
    params = sum(p.numel() for p in model.net.parameters())
    length = loader.response_length
    copies = 2 if trainer.states.layout == "block_causal" else 1
    tokens = cfg.rows_per_step * (loader.mean_prompt_len + copies * length)
    rows_per_epoch = loader.batches_per_epoch * cfg.train.batch_size * cfg.dist.num_workers
    ref = "frozen copy of the start"
    if trainer.reference is None:
        ref = "none (the objective does not use one)"
    elif cfg.reference.round_every:
        ref = f"frozen copy, refreshed every {cfg.reference.round_every} steps"
    dtype = str(model.dtype).removeprefix("torch.")
    log(f"student {model.name} ({model.family.name}, {dtype}, {params / 1e6:.2f}M params) on {trainer.device}; "
        f"reference: {ref}")  # fmt: skip
    log(f"data {cfg.data.path}: {loader.num_rows:,} rows in {loader.num_shards} shards; response length {length}, "
        f"mean prompt {loader.mean_prompt_len:.1f} tokens")  # fmt: skip
    log(f"global batch {cfg.rows_per_step} rows = {cfg.train.batch_size} per micro-batch x {cfg.train.grad_accum} "
        f"accumulated x {cfg.dist.num_workers} workers; ~{tokens:,.0f} tokens per step "
        f"({trainer.states.layout} layout)")  # fmt: skip
    loss, states = cfg.loss, trainer.states
    weights = {"t3d": f"alpha {loss.alpha}, beta {loss.beta}, lambda_path {loss.lambda_path}, path_k {states.path_k_steps}",
               "ddo": f"alpha {loss.alpha}, beta {loss.beta}"}.get(loss.kind)  # fmt: skip
    changed = differences_from_preset(cfg)
    log(f"preset {cfg.preset}; " + (f"differs from it: {', '.join(changed)}" if changed else "no value differs from it"))
    if (note := effective_warmup(cfg)[1]) is not None:
        log(note)
    log(f"{cfg.train.max_steps} steps = {cfg.train.max_steps * cfg.rows_per_step / rows_per_epoch:.2f} epochs; "
        f"objective {loss.kind}{f' ({weights})' if weights else ''}; states {states.state_order}, block {states.block_size}")  # fmt: skip


def save(trainer: Trainer) -> Path | None:
    """Checkpoint the current step (rank 0 writes; every worker waits for it)."""
    path = None
    student, optimizer_state, reference_state = trainer.student, None, None
    if sharding.is_sharded(trainer.student.net):  # every worker joins in gathering the full states (to rank 0)
        weights = sharding.full_state(trainer.student.net)
        student = sharding.export_model(trainer.student, weights) if trainer.dist.is_main else None
        optimizer_state = sharding.full_optimizer_state(trainer.student.net, trainer.optimizer)
        if trainer.reference is not None and trainer.reference.refreshed_at:
            reference_state = sharding.full_state(trainer.reference.net)
    if trainer.dist.is_main:
        state = {
            "optimizer": optimizer_state or trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
            "data": trainer.loader.state_dict(), "rng": ckpt.rng_state(),
            "reference_refreshed_at": trainer.reference.refreshed_at if trainer.reference else 0,
        }  # fmt: skip
        out = Path(trainer.cfg.train.out)
        meta = {"block_size": trainer.states.block_size, "absolute_blocks": trainer.states.absolute_blocks,
                "teacher": trainer.loader.manifest.teacher, "data": str(Path(trainer.cfg.data.path).resolve()),
                "prompt_encoding": dataset_encoding(trainer.loader.manifest.collect_config).to_dict()}  # fmt: skip
        path = ckpt.save_checkpoint(out, trainer.step, student, state, trainer.cfg, trainer.reference, meta,
                                    reference_state=reference_state)  # fmt: skip
    trainer.dist.barrier()
    trainer.saved_step = trainer.step
    trainer.last_checkpoint = path or trainer.last_checkpoint
    return path


def run_steps(trainer: Trainer, on_step: Callable[[dict], None]) -> None:
    """Optimizer steps until max_steps: data, step, reference rounds, checkpoints."""
    cfg = trainer.cfg
    while trainer.step < cfg.train.max_steps:
        start = time.perf_counter()
        batches = [trainer.loader.next_batch() for _ in range(cfg.train.grad_accum)]
        trainer.rows_read.extend(b.row_id.numpy() for b in batches)
        metrics = train_step(trainer, batches)
        if trainer.reference is not None:
            trainer.reference.maybe_refresh(trainer.student.net, trainer.step, cfg.reference.round_every)
        elapsed = time.perf_counter() - start
        metrics |= {"step": trainer.step, "epoch": trainer.loader.epochs_seen, "step_time_s": elapsed,
                    "tokens_per_s": metrics["input_tokens"] / elapsed, "rows_per_s": metrics["rows"] / elapsed}  # fmt: skip
        on_step(metrics)
        due = cfg.train.save_every and trainer.step % cfg.train.save_every == 0
        if due and trainer.step < cfg.train.max_steps:  # the last step is saved by _finish
            save(trainer)


def train(cfg: DistillConfig, dist: Dist = Dist(), log: Callable = print) -> RunResult:
    """A whole run on this worker: build, describe, train, checkpoint, export the student."""
    say = log if dist.is_main else _quiet
    trainer = build_trainer(cfg, dist, say)
    cfg = trainer.cfg  # with --epochs resolved to steps
    describe(trainer, say)
    out = Path(cfg.train.out)
    metrics_log = MetricsLog(out / METRICS_FILE, trainer.step, dist.is_main)
    trackers = open_trackers(cfg.tracking, out, dataclasses.asdict(cfg), dist.is_main, trainer.step)  # JSONL names, rank 0
    bar = tqdm(total=cfg.train.max_steps, initial=trainer.step, desc="distill", unit="step",
               disable=not (dist.is_main and cfg.train.progress), dynamic_ncols=True)  # fmt: skip
    last: dict[str, float] = {}

    def on_step(metrics: dict) -> None:
        last.update(metrics)
        metrics_log.write(metrics)
        trackers.log(metrics, trainer.step)
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}", refresh=False)

    try:
        run_steps(trainer, on_step)
    except NonFiniteLoss as err:
        where = trainer.last_checkpoint or "none was saved"
        raise NonFiniteLoss(f"{err}: stopped; last good checkpoint: {where}") from None
    finally:
        bar.close()
        metrics_log.close()
        trackers.close()
    return _finish(trainer, out, last, say)


def _finish(trainer: Trainer, out: Path, last: dict, log: Callable) -> RunResult:
    """Save the final checkpoint (unless this step already has one) and export the student."""
    if trainer.saved_step != trainer.step:
        save(trainer)
    student = None
    if trainer.dist.is_main:
        student = ckpt.export_student(trainer.last_checkpoint, out)
        log(f"student saved to {student} (step {trainer.step}; checkpoint {trainer.last_checkpoint})")
    rows = np.concatenate(trainer.rows_read) if trainer.rows_read else np.zeros((0, 2), np.int64)
    return RunResult(student=student, step=trainer.step, rows=rows, metrics=last, model=trainer.student)
