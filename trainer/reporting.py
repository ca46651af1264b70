"""What a run reports: the derived sizes once at the start, and metrics.jsonl, one line per step."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from t3d.trainer.build import Trainer
from t3d.trainer.config import differences_from_preset, effective_warmup

METRICS_FILE = "metrics.jsonl"


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
    copies = trainer.states.layout.copies
    tokens = cfg.rows_per_step * (loader.mean_prompt_len + copies * length)
    rows_per_epoch = loader.batches_per_epoch * cfg.train.batch_size * cfg.dist.num_workers
    ref = "frozen copy of the start"
    if trainer.reference is None:
        ref = "none (the objective does not use one)"
    elif trainer.reference.shares_student:  # LoRA
        ref = "the student's own base, adapters off (no copy)"
        if cfg.reference.round_every:
            ref += f"; a frozen copy of its adapter, refreshed every {cfg.reference.round_every} steps"
    elif cfg.reference.round_every:
        ref = f"frozen copy, refreshed every {cfg.reference.round_every} steps"
    dtype = str(model.dtype).removeprefix("torch.")
    trainable = sum(p.numel() for p in model.net.parameters() if p.requires_grad)
    lora = f"; LoRA r {cfg.lora.r}, {trainable / 1e6:.3f}M trainable" if trainer.adapters is not None else ""
    log(f"student {model.name} ({model.family.name}, {dtype}, {params / 1e6:.2f}M params{lora}) on {trainer.device}; "
        f"reference: {ref}")  # fmt: skip
    log(f"data {cfg.data.path}: {loader.num_rows:,} rows in {loader.num_shards} shards; response length {length}, "
        f"mean prompt {loader.mean_prompt_len:.1f} tokens")  # fmt: skip
    used = trainer.strategy
    spread = "" if used is None else f"; {used.name}" + (", shards offloaded to the CPU" if cfg.dist.offload else "")
    log(f"global batch {cfg.rows_per_step} rows = {cfg.train.batch_size} per micro-batch x {cfg.train.grad_accum} "
        f"accumulated x {cfg.dist.num_workers} workers{spread}; ~{tokens:,.0f} tokens per step "
        f"({trainer.states.layout.name} layout)")  # fmt: skip
    loss, states = cfg.loss, trainer.states
    weights = trainer.objective.describe(loss, states)
    changed = differences_from_preset(cfg)
    log(f"preset {cfg.preset}; " + (f"differs from it: {', '.join(changed)}" if changed else "no value differs from it"))
    if (note := effective_warmup(cfg)[1]) is not None:
        log(note)
    log(f"{cfg.train.max_steps} steps = {cfg.train.max_steps * cfg.rows_per_step / rows_per_epoch:.2f} epochs; "
        f"objective {loss.kind}{f' ({weights})' if weights else ''}; states {states.state_order}, block {states.block_size}")  # fmt: skip
