"""Checkpoints that load as models in their base checkpoint's own format, and resume exactly.

Layout of `--out`:

    checkpoints/step-0000200/   the base model's files (config.json untouched, tokenizer,
                                generation config, chat template, upstream .py files),
                                the weights under the base's own tensor names and shard
                                layout but in the *training* dtype (exact resume),
                                t3d.json (family, block size, provenance),
                                trainer_state.pt (optimizer, scheduler, data position,
                                RNG states, step), distill_config.json,
                                reference.safetensors once the reference has been refreshed;
                                with LoRA (--lora-r): the weights are the merged student,
                                adapter/ the PEFT adapter directory (training dtype) and
                                reference_adapter.safetensors the refreshed reference adapter
    checkpoints/latest          name of the newest complete checkpoint
    student/                    the final student: the newest checkpoint's model files with
                                the weights cast to the base's own dtype (and adapter/ as is)
    metrics.jsonl               one line per optimizer step

The base is `--model` (the starting student, usually the teacher). Writing the student
exactly as the base is laid out (same config.json, weight names, dtype, sharding) makes
it a drop-in for the tools users already load the base with (SDAR's generate, LLaDA's
generate, JetEngine, lmdeploy); t3d's own fields live in `t3d.json`, which those tools
never read. `t3d.dllm.load_model` reads every checkpoint and the student natively.

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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from t3d.dllm import weights
from t3d.dllm.errors import UserError
from t3d.dllm.loading import resolve_model_path, weights_fingerprint
from t3d.dllm.prompt_encoding import dataset_encoding
from t3d.trainer import sharding
from t3d.trainer.config import DistillConfig, describe_changes, from_dict, save_config, to_dict
from t3d.trainer.lora import ADAPTER_DIR, REFERENCE_ADAPTER
from t3d.trainer.reference import REFERENCE_WEIGHTS

if TYPE_CHECKING:
    from t3d.dllm.model import DiffusionLM
    from t3d.trainer.build import Trainer
    from t3d.trainer.lora import Adapters
    from t3d.trainer.reference import Reference

CHECKPOINTS = "checkpoints"
LATEST = "latest"
STUDENT = "student"
TRAINER_STATE = "trainer_state.pt"
CONFIG = "distill_config.json"
T3D_JSON = "t3d.json"
# Files of the base never copied: its weights (written anew), and t3d's own bookkeeping.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack")
_NOT_MODEL_FILES = frozenset({weights.INDEX, TRAINER_STATE, CONFIG, T3D_JSON})


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
    meta: dict[str, Any] | None = None,
    reference_state: dict[str, torch.Tensor] | None = None,
    write_more: Callable[[Path], None] | None = None,
) -> Path:
    """Write checkpoint `step` (rank 0 only), point `latest` at it, prune old ones.

    model: the student `DiffusionLM` (unwrapped network); trainer_state: optimizer,
    scheduler, data and RNG states from the loop; reference: a `Reference` or None;
    meta: extra t3d.json fields (block size, the dataset's teacher); reference_state: the
    gathered weights of a sharded reference (FSDP), written in its place; write_more:
    writes further files into the checkpoint before it is published (the LoRA adapter).
    """
    root = out / CHECKPOINTS
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{step_name(step)}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    base = base_dir(cfg)
    copy_model_files(base, tmp)
    write_weights(model, tmp, layout_of=base, dtype=model.dtype)
    _write_t3d_json(tmp, t3d_fields(model, cfg, step, base) | (meta or {}))
    torch.save(trainer_state | {"step": step}, tmp / TRAINER_STATE)
    save_config(cfg, tmp / CONFIG)
    if reference is not None:
        reference.save(tmp, reference_state)
    if write_more is not None:
        write_more(tmp)
    final = root / step_name(step)
    _publish(tmp, final)
    _write_text_atomic(root / LATEST, final.name + "\n")
    prune_checkpoints(root, cfg.train.keep_checkpoints)
    return final


def base_dir(cfg: DistillConfig) -> Path:
    """The checkpoint whose format the student takes: `--model` (the shipped teacher for `builtin`)."""
    return resolve_model_path(cfg.model.path).resolve()


def copy_model_files(base: Path, dest: Path) -> None:
    """Every file of `base` but its weights, as is: config.json (model_type, architectures,
    auto_map untouched), tokenizer files, generation_config.json, chat template, upstream .py."""
    for file in sorted(base.iterdir()):
        if not file.is_file() or file.name.startswith(".") or file.name in _NOT_MODEL_FILES:
            continue
        if file.name.endswith(_WEIGHT_SUFFIXES):
            continue
        shutil.copy2(file, dest / file.name)


def write_weights(model: DiffusionLM, dest: Path, layout_of: Path, dtype: torch.dtype) -> None:
    """The network's weights under the base checkpoint's tensor names and shard layout, in `dtype`."""
    architecture = model.family.architecture
    rename = architecture.checkpoint_name if model.native and architecture is not None else _same_name
    weights.save_like(weights.state_dict_for_export(model.net, rename, dtype), dest, layout_of)


def _same_name(name: str) -> str:
    return name


def t3d_fields(model: DiffusionLM, cfg: DistillConfig, step: int, base: Path) -> dict[str, Any]:
    """What t3d knows about a checkpoint that the base's config.json has no place for."""
    return {
        "family": model.family.name,
        "step": step,
        "weights_dtype": str(model.dtype).removeprefix("torch."),
        "base": {"path": str(base), "fingerprint": weights_fingerprint(base), "dtype": _dtype_name(base)},
        "t3d_version": _version(),
        "distill": to_dict(cfg),
    }


def _dtype_name(path: Path) -> str:
    return str(weights.checkpoint_dtype(path)).removeprefix("torch.")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("t3d")
    except PackageNotFoundError:
        return "unknown"


def _write_t3d_json(dest: Path, fields: dict[str, Any]) -> None:
    (dest / T3D_JSON).write_text(json.dumps(fields, indent=2, sort_keys=True, default=str) + "\n")


def read_t3d_json(path: Path) -> dict[str, Any]:
    """A checkpoint's or student's t3d.json ({} when absent)."""
    file = Path(path) / T3D_JSON
    return json.loads(file.read_text()) if file.is_file() else {}


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
    """`out/student`: the checkpoint's model files, its weights cast to the base's own dtype.

    Shard by shard (the checkpoint already has the base's names and layout), so exporting
    never holds more than one shard in memory; a shard already in that dtype is hard-linked.
    """
    tmp = out / f".tmp-{STUDENT}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for file in sorted(checkpoint.iterdir()):
        skipped = (TRAINER_STATE, CONFIG, weights.INDEX)  # the index is rewritten with the cast sizes
        if file.is_file() and file.name not in skipped and not file.name.endswith(_WEIGHT_SUFFIXES):
            _link_or_copy(file, tmp / file.name)
    if (checkpoint / ADAPTER_DIR).is_dir():  # a LoRA student's PEFT adapter, as trained
        shutil.copytree(checkpoint / ADAPTER_DIR, tmp / ADAPTER_DIR, copy_function=_link_or_copy)
    base = read_t3d_json(checkpoint).get("base", {})  # a checkpoint of an older t3d has none: keep its dtype
    dtype = getattr(torch, base["dtype"]) if "dtype" in base else weights.checkpoint_dtype(checkpoint)
    _cast_shards(checkpoint, tmp, dtype)
    _publish(tmp, out / STUDENT)
    return out / STUDENT


def _cast_shards(checkpoint: Path, dest: Path, dtype: torch.dtype) -> None:
    """Each weight file of `checkpoint` into `dest` with floating tensors in `dtype`; index sizes updated."""
    from safetensors.torch import load_file, save_file

    total = 0
    for file in weights.weight_files(checkpoint):
        if file.name in (REFERENCE_WEIGHTS, REFERENCE_ADAPTER):  # found by the *.safetensors fallback: not the model
            continue
        tensors = load_file(str(file))
        if all(t.dtype == dtype or not t.is_floating_point() for t in tensors.values()):
            _link_or_copy(file, dest / file.name)
        else:
            tensors = {n: t.to(dtype) if t.is_floating_point() else t for n, t in tensors.items()}
            save_file(tensors, str(dest / file.name), metadata={"format": "pt"})
        total += sum(t.numel() * t.element_size() for t in tensors.values())
    index = checkpoint / weights.INDEX
    if index.is_file():
        data = json.loads(index.read_text())
        data["metadata"] = {**data.get("metadata", {}), "total_size": total}
        (dest / weights.INDEX).write_text(json.dumps(data, indent=2) + "\n")


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


# ---- a trainer's checkpoint: save every worker's part, restore exactly ----


def save(trainer: Trainer) -> Path | None:
    """Checkpoint the current step (rank 0 writes; every worker waits for it)."""
    path = None
    student, optimizer_state, reference_state, write_more = trainer.student, None, None, None
    net_state = None  # the student network's whole state dict, when it has to be gathered or merged
    sharded = sharding.is_sharded(trainer.student.net)
    if sharded:  # every worker joins in gathering the full states (to rank 0)
        net_state = sharding.full_state(trainer.student.net)
        optimizer_state = sharding.full_optimizer_state(trainer.student.net, trainer.optimizer)
        if trainer.reference is not None and trainer.reference.refreshed_at and not trainer.reference.shares_student:
            reference_state = sharding.full_state(trainer.reference.net)
    if trainer.dist.is_main and trainer.adapters is not None:  # LoRA: the merged student, and the adapters' files
        net_state = net_state if net_state is not None else trainer.student.net.state_dict()
        student = sharding.export_model(trainer.student, trainer.adapters.merged_state(net_state))
        reference_state = net_state  # the reference adapter's weights live in the student's network
        write_more = _adapter_writer(trainer.adapters, net_state)
    elif sharded:
        student = sharding.export_model(trainer.student, net_state) if trainer.dist.is_main else None
    if trainer.dist.is_main:
        state = {
            "optimizer": optimizer_state or trainer.optimizer.state_dict(), "scheduler": trainer.scheduler.state_dict(),
            "data": trainer.loader.state_dict(), "rng": rng_state(),
            "reference_refreshed_at": trainer.reference.refreshed_at if trainer.reference else 0,
        }  # fmt: skip
        out = Path(trainer.cfg.train.out)
        meta = {"block_size": trainer.states.block_size, "absolute_blocks": trainer.states.absolute_blocks,
                "teacher": trainer.loader.manifest.teacher, "data": str(Path(trainer.cfg.data.path).resolve()),
                "prompt_encoding": dataset_encoding(trainer.loader.manifest.collect_config).to_dict()}  # fmt: skip
        path = save_checkpoint(out, trainer.step, student, state, trainer.cfg, trainer.reference, meta,
                               reference_state=reference_state, write_more=write_more)  # fmt: skip
    trainer.dist.barrier()
    trainer.saved_step = trainer.step
    trainer.last_checkpoint = path or trainer.last_checkpoint
    return path


def _adapter_writer(adapters: Adapters, state: dict[str, torch.Tensor]) -> Callable[[Path], None]:
    """Writes the student's PEFT adapter directory into a checkpoint."""
    return lambda directory: adapters.save(directory / ADAPTER_DIR, state)


def restore(trainer: Trainer, path: Path, log: Callable = print) -> None:
    """Continue exactly where checkpoint `path` stopped (the student weights are already loaded)."""
    state = load_trainer_state(path)
    changes = describe_changes(load_checkpoint_config(path), trainer.cfg)
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
    set_rng_state(state["rng"])
    log(f"resumed from {path} at step {trainer.step}")
