"""One optimizer step: states, the objective on each micro-batch, exact metric reduction, the update.

One optimizer step (`train_step`) takes `grad_accum` micro-batches. Their training
states are built first, so the counts of the whole step (all micro-batches, all
workers; `Objective.counts`) are known before any forward pass; every micro-batch loss
is divided by those totals, which makes the accumulated gradient equal to the gradient
of the full batch. Under DDP the gradients are averaged over workers, so each worker's
loss is scaled by the world size to keep that identity. The objective says how each of
its metrics reduces (`objectives.Metric`); the step reduces them without knowing names.

A step whose loss or gradient norm is not finite stops the run before the optimizer
touches the weights.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math

import numpy as np
import torch

from t3d.dllm.errors import UserError
from t3d.trainer import sharding
from t3d.trainer.build import Dist, Trainer
from t3d.trainer.data import Batch, row_seeds
from t3d.trainer.objectives import Metric, Metrics, Micro, Objective
from t3d.trainer.states import StateConfig, TrainingStates, build_states


class NonFiniteLoss(UserError):
    """The loss or the gradient norm became NaN or infinite; the run stopped."""


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


def step_normalizers(states: list[TrainingStates], dist: Dist, objective: Objective) -> dict[str, torch.Tensor]:
    """Counts of the whole step (every micro-batch of every worker) that the losses divide by."""
    counts = [objective.counts(s) for s in states]
    keys = sorted(counts[0])
    total = torch.stack([sum(c[k] for c in counts) for k in keys]).float()  # (K,)
    dist.all_reduce(total)
    return dict(zip(keys, total))


def _autocast(trainer: Trainer):
    own = trainer.strategy is not None and not trainer.strategy.autocast  # FSDP's own mixed precision
    if trainer.device.type == "cuda" and trainer.cfg.train.bf16 and not own:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def micro_seed(trainer: Trainer, micro: int) -> int:
    """A micro-batch's own seed, from (seed, step, worker, micro-batch), so resume replays what it draws."""
    key = (trainer.cfg.train.seed * 1_000_003 + trainer.step) * 4096 + trainer.dist.rank * 64 + micro
    return int(row_seeds(0, 0, np.array([key]))[0])


def micro_loss(trainer: Trainer, states: TrainingStates, batch: Batch, norms: dict, micro: int = 0) -> tuple[torch.Tensor, Metrics]:
    """The objective's forward passes and loss on one micro-batch -> (loss, metrics)."""
    return trainer.objective.loss(Micro(
        states=states, batch=batch, norms=norms, cfg=trainer.cfg.loss, student=trainer.logprobs,
        reference=trainer.ref_logprobs, seed=micro_seed(trainer, micro), autocast=lambda: _autocast(trainer),
    ))  # fmt: skip


def micro_step(trainer: Trainer, states: TrainingStates, batch: Batch, norms: dict, micro: int, sync: bool) -> Metrics:
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
    norms = step_normalizers(states, trainer.dist, trainer.objective)
    parts = [micro_loss(trainer, s, b, norms, i)[1] for i, (s, b) in enumerate(zip(states, batches))]
    return reduce_metrics(parts, trainer.dist)


def _state_dtype(trainer: Trainer) -> torch.dtype:
    """Attention-bias dtype: the student's (float32 under autocast, whose weights stay float32)."""
    dtype = trainer.student.dtype
    return dtype if dtype.is_floating_point else torch.float32


def reduce_metrics(parts: list[Metrics], dist: Dist) -> dict[str, float]:
    """Step metrics, exactly: Σ numerator / Σ count over micro-batches and workers (a sum without a count).

    The values stay on their device until one stacked copy to the host (one sync per step).
    """
    keys = sorted(set().union(*parts))
    for key, value in ((k, v) for p in parts for k, v in p.items() if not isinstance(v, Metric)):
        raise TypeError(f"metric {key!r} is a {type(value).__name__}, not a Metric: say how it reduces "
                        "(Metric.total for a sum, Metric.mean with its count)")  # fmt: skip
    device = next((m.numerator.device for p in parts for m in p.values() if isinstance(m.numerator, torch.Tensor)),
                  torch.device("cpu"))  # fmt: skip
    means = [any(p[k].count is not None for p in parts if k in p) for k in keys]
    values = []
    for key, mean in zip(keys, means):
        metrics = [p[key] for p in parts if key in p]
        values.append(sum(torch.as_tensor(m.numerator).detach().to(device, torch.float64) for m in metrics))
        if mean:
            values.append(sum(torch.as_tensor(m.count).detach().to(device, torch.float64) for m in metrics))
    stacked = torch.stack(values).cpu() if values else torch.zeros(0, dtype=torch.float64)
    dist.all_reduce(stacked)
    totals, out = iter(stacked.tolist()), {}
    for key, mean in zip(keys, means):
        numerator = next(totals)
        out[key] = numerator / max(next(totals), 1.0) if mean else numerator
    return out


def _clip(trainer: Trainer) -> float:
    params = [p for p in trainer.student.net.parameters() if p.grad is not None]
    max_norm = trainer.cfg.optim.grad_clip or float("inf")
    return sharding.grad_norm(torch.nn.utils.clip_grad_norm_(params, max_norm))


def _sizes(states: list[TrainingStates], batches: list[Batch]) -> Metrics:
    """What the step read and supervised; each adds up over micro-batches and workers."""
    sizes = {
        "input_tokens": sum(int(s.attention_mask.sum()) for s in states), "rows": sum(map(len, batches)),
        "supervised_tokens": sum(int(s.supervised.sum()) for s in states),
        "supervised_padding_tokens": sum(int((s.supervised & s.padding).sum()) for s in states),
        "response_padding_tokens": sum(int(s.padding.sum()) for s in states),
    }  # fmt: skip
    return {name: Metric.total(value) for name, value in sizes.items()}


def train_step(trainer: Trainer, batches: list[Batch]) -> dict[str, float]:
    """One optimizer step over `batches` (the micro-batches of this worker); returns its metrics."""
    states = [make_states(b, trainer.states, trainer.device, _state_dtype(trainer)) for b in batches]
    norms = step_normalizers(states, trainer.dist, trainer.objective)
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
