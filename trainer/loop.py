"""The distillation loop: build the trainer, then optimizer steps until `max_steps`.

The loop's one job is the order of things: data, the step (`step.train_step`), the
reference's rounds, checkpoints (`checkpoint.save`), the log (`reporting`, trackers, the
progress bar), and the exported student at the end. What a step computes is the
objective's (`objectives`); how the parts are built is `build`'s.

A step whose loss or gradient norm is not finite stops the run before the optimizer
touches the weights; nothing is saved, so the newest checkpoint is the last good one.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from t3d.dllm.model import DiffusionLM
from t3d.trainer import checkpoint as ckpt
from t3d.trainer import sharding
from t3d.trainer.build import Dist, Trainer, build_trainer, quiet, resolve_device
from t3d.trainer.config import DistillConfig, to_dict
from t3d.trainer.reporting import METRICS_FILE, MetricsLog, describe
from t3d.trainer.step import NonFiniteLoss, train_step
from t3d.trainer.tracking import open_trackers


@dataclass(frozen=True)
class RunResult:
    """What a finished run leaves: the exported student, the step reached, the rows this worker read."""

    student: Path | None
    step: int
    rows: np.ndarray  # (R, 2) int64 (shard number, zarr_index) of every row read, in order
    metrics: dict[str, float]  # of the last step
    model: DiffusionLM | None  # the final student in memory (None where it ran elsewhere)


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
            ckpt.save(trainer)


def train(cfg: DistillConfig, dist: Dist = Dist(), log: Callable = print) -> RunResult:
    """A whole run on this worker: build, describe, train, checkpoint, export the student. One worker with
    --offload trains under FSDP2 over a process group of its own."""
    if dist.world == 1 and sharding.shards(cfg.dist.strategy, 1, cfg.dist.offload):
        with sharding.one_process_group(resolve_device(cfg.train.device, dist)):
            return _train(cfg, dist, log)
    return _train(cfg, dist, log)


def _train(cfg: DistillConfig, dist: Dist, log: Callable) -> RunResult:
    say = log if dist.is_main else quiet
    trainer = build_trainer(cfg, dist, say)
    cfg = trainer.cfg  # with --epochs resolved to steps
    describe(trainer, say)
    out = Path(cfg.train.out)
    metrics_log = MetricsLog(out / METRICS_FILE, trainer.step, dist.is_main)
    trackers = open_trackers(cfg.tracking, out, to_dict(cfg), dist.is_main, trainer.step)  # JSONL names, rank 0
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
        ckpt.save(trainer)
    student = None
    if trainer.dist.is_main:
        student = ckpt.export_student(trainer.last_checkpoint, out)
        log(f"student saved to {student} (step {trainer.step}; checkpoint {trainer.last_checkpoint})")
    rows = np.concatenate(trainer.rows_read) if trainer.rows_read else np.zeros((0, 2), np.int64)
    return RunResult(student=student, step=trainer.step, rows=rows, metrics=last, model=trainer.student)
