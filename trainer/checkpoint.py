"""Checkpoints that a user can load as a model and the trainer can resume exactly.

Layout of `--out`:

    checkpoints/step-0000200/   config.json + model.safetensors (save_pretrained, so
                                `t3d.dllm.load_model` and transformers load it), the
                                tokenizer when the model has one, trainer_state.pt
                                (optimizer, scheduler, data position, RNG states, step),
                                distill_config.json, reference.safetensors once the
                                reference has been refreshed
    checkpoints/latest          name of the newest complete checkpoint
    student/                    the final student (model files only, hard links)
    metrics.jsonl               one line per optimizer step

A checkpoint is written under a temporary name, fsynced, then renamed: a crash leaves
either the old or the new checkpoint, never half of one. A run that stops on a
non-finite loss saves nothing, so the newest checkpoint is the last good one.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from t3d.dllm.errors import UserError
from t3d.trainer.config import DistillConfig, from_dict, save_config

if TYPE_CHECKING:
    from t3d.dllm.model import DiffusionLM
    from t3d.trainer.reference import Reference

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STUDENT = "student"
TRAINER_STATE = "trainer_state.pt"
CONFIG = "distill_config.json"
_MODEL_FILES = ("*.safetensors", "*.json", "*.model", "*.txt", "*.py", "*.tiktoken")


def step_name(step: int) -> str:
    return f"step-{step:07d}"


def rng_state() -> dict[str, Any]:
    """Every global RNG a training step may touch (dropout, samplers in user code)."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        "numpy": np.random.get_state(legacy=False),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under root to disk before the rename publishes it."""
    for path in sorted(root.rglob("*")) + [root]:
        flags = os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0)
        fd = os.open(path, flags)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _publish(tmp: Path, final: Path) -> None:
    """Atomically move a finished directory to its final name (replacing an older one)."""
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    dir_fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    with tmp.open("rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def save_checkpoint(
    out: Path,
    step: int,
    model: DiffusionLM,
    trainer_state: dict[str, Any],
    cfg: DistillConfig,
    reference: Reference | None = None,
) -> Path:
    """Write checkpoint `step` (rank 0 only), point `latest` at it, prune old ones.

    model: the student `DiffusionLM` (unwrapped network); trainer_state: optimizer,
    scheduler, data and RNG states from the loop; reference: a `Reference` or None.
    """
    root = out / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{step_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    model.net.save_pretrained(tmp, safe_serialization=True)
    if model.tokenizer is not None:
        model.tokenizer.save_pretrained(tmp)
    torch.save(trainer_state | {"step": step}, tmp / TRAINER_STATE)
    save_config(cfg, tmp / CONFIG)
    if reference is not None:
        reference.save(tmp)
    final = root / step_name(step)
    _publish(tmp, final)
    _write_text_atomic(root / LATEST, final.name + "\n")
    prune_checkpoints(root, cfg.train.keep_checkpoints)
    return final


def prune_checkpoints(root: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints; drop leftovers of interrupted saves."""
    for tmp in root.glob(".tmp-step-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    steps = sorted(p for p in root.glob("step-*") if (p / TRAINER_STATE).is_file())
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(out: Path) -> Path | None:
    """The newest complete checkpoint in `out` (by `latest`, else by name), or None."""
    root = out / CHECKPOINTS
    pointer = root / LATEST
    if pointer.is_file():
        candidate = root / pointer.read_text().strip()
        if (candidate / TRAINER_STATE).is_file():
            return candidate
    steps = sorted(p for p in root.glob("step-*") if (p / TRAINER_STATE).is_file())
    return steps[-1] if steps else None


def load_trainer_state(path: Path) -> dict[str, Any]:
    """The trainer state of checkpoint `path` (written by this module, so trusted)."""
    try:
        return torch.load(path / TRAINER_STATE, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated or foreign file
        raise UserError(f"cannot read checkpoint {path}: {str(err).splitlines()[0]}") from None


def load_checkpoint_config(path: Path) -> DistillConfig:
    """The settings the checkpoint was trained with (compared on resume)."""
    return from_dict(json.loads((path / CONFIG).read_text()))


def resume_point(out: Path) -> Path:
    """The checkpoint `--resume` continues from; a one-line error when there is none."""
    found = latest_checkpoint(out)
    if found is None:
        raise UserError(f"--resume: no checkpoint in {out / CHECKPOINTS}")
    return found


def export_student(checkpoint: Path, out: Path) -> Path:
    """`out/student`: the checkpoint's model files, hard-linked (copied across filesystems)."""
    tmp = out / f".tmp-{STUDENT}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for pattern in _MODEL_FILES:
        for file in checkpoint.glob(pattern):
            if file.name in (CONFIG,) or file.name.startswith("reference"):
                continue
            try:
                os.link(file, tmp / file.name)
            except OSError:
                shutil.copy2(file, tmp / file.name)
    _publish(tmp, out / STUDENT)
    return out / STUDENT
