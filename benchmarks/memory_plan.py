"""The memory plan (trainer/memory_plan.py) against measured peaks of real training steps on CPU.

For each setup, a tiny Llama-layout checkpoint (t3d.dllm.tiny) and synthetic trajectories of
its vocabulary are written once; a fresh process then imports the trainer, opens the
dataset and trains one step of a negligible model of the same vocabulary (so library code and kernels
are resident: ~50 MiB of code pages that no tensor accounts for), takes its resident set size
as the baseline, builds the trainer (`build.build_trainer`: student, reference, optimizer)
and runs a few optimizer steps (`step.train_step`). Measured: the kernel's peak resident
set size (VmHWM, reset at the baseline) minus the baseline. glibc's mmap threshold is fixed
at 64 KiB (MALLOC_MMAP_THRESHOLD_) so that freed tensors go back to the kernel at once and the
resident set follows the live tensors instead of the allocator's cache. Planned: `plan()` of
the same options and the dataset's lengths (`check_run`'s own path, without the budget). With
--num-workers 2 (`t3d-fsdp2-b4`) the workers are spawned gloo processes (tests/gloo_workers.py),
each measured the same way, and the larger peak is the measured one.

Prints one JSON object: per setup, planned and measured MiB and the error in %. Usage:

    python benchmarks/memory_plan.py            # every setup below (a few minutes on 2 busy cores)
    python benchmarks/memory_plan.py --only ce-b4 t3d-ckpt-b8
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

MODEL = {"vocab_size": 32000, "hidden_size": 256, "num_layers": 4, "num_heads": 4, "intermediate_size": 1024}
"""20.6 M parameters: large enough that weights, optimizer and activations (not Python) decide the peak."""
WARM = {"hidden_size": 16, "num_layers": 1, "num_heads": 2, "intermediate_size": 32}
"""The same vocabulary at a negligible size: one step of it before the baseline pages in the kernels' code."""
RESPONSE, BLOCK = 128, 4

SETUPS: dict[str, dict] = {
    "ce-b4": {"loss": "ce", "batch_size": 4},
    "t3d-b4": {"loss": "t3d", "batch_size": 4},
    "t3d-ckpt-b8": {"loss": "t3d", "batch_size": 8, "gradient_checkpointing": True},
    "t3d-b8": {"loss": "t3d", "batch_size": 8},
    "t3d-accum2-b4": {"loss": "t3d", "batch_size": 4, "grad_accum": 2},
    "t3d-lora8-b4": {"loss": "t3d", "batch_size": 4, "lora_r": 8},
    "t3d-fsdp2-b4": {"loss": "t3d", "batch_size": 4, "num_workers": 2, "strategy": "fsdp"},
}
"""name -> the option values that differ from the common ones (`flags`)."""


def flags(work: Path, setup: dict) -> dict:
    return {"data": str(work / "data"), "model": str(work / "model"), "out": str(work / "out"), "max_steps": 100,
            "device": "cpu", "progress": False, "save_every": 0, "verify": False, "path_k_steps": 4,
            **setup}  # fmt: skip


def prepare(work: Path) -> Path:
    """The checkpoint and 32 synthetic rows of its vocabulary (once per directory)."""
    from t3d.dllm import load_model
    from t3d.dllm.tiny import build_checkpoint
    from train_throughput import write_dataset

    if not (work / "data" / "manifest.json").is_file():
        shape = {"max_position_embeddings": 2 * RESPONSE + 64, "block_size": BLOCK}
        build_checkpoint(work / "model", "block_causal", **shape, **MODEL)
        build_checkpoint(work / "warm", "block_causal", **shape, **(MODEL | WARM))
        write_dataset(work / "data", load_model(work / "model").identity(), rows=32, shards=1, length=RESPONSE,
                      block=BLOCK, vocab=MODEL["vocab_size"])  # fmt: skip
    return work


def planned(work: Path, setup: dict) -> int:
    from t3d.trainer.config import build_config
    from t3d.trainer.memory_plan import ModelShape, data_lengths, plan_run

    cfg = build_config(flags(work, setup))
    return plan_run(cfg, ModelShape.read(cfg.model.path), data_lengths(cfg.data), "cpu").peak


def measured(work: Path, setup: dict, steps: int = 3) -> int:
    """Peak resident bytes above the warmed baseline, in a fresh process (the largest of the workers' with
    --num-workers > 1: spawned gloo workers, no Ray)."""
    env = os.environ | {"MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    if setup.get("num_workers", 1) > 1:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
        from gloo_workers import run_workers

        saved = dict(os.environ)
        os.environ.update(env)  # the spawned workers' glibc reads it at start
        try:
            peaks = run_workers(__file__, "worker_peak", (flags(work, setup), steps), work / "store",
                                world=setup["num_workers"])  # fmt: skip
        finally:
            os.environ.clear()
            os.environ.update(saved)
        return max(peaks)
    cmd = [sys.executable, __file__, "--child", json.dumps(flags(work, setup)), "--steps", str(steps)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(f"measuring {setup} failed:\n{done.stderr[-3000:]}")
    return int(done.stdout.strip().splitlines()[-1])


def _status(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def worker_peak(rank: int, world: int, values: dict, steps: int) -> int:
    """On a spawned gloo worker: `child` with this worker's rank."""
    return child(values, steps, rank, world)


def child(values: dict, steps: int, rank: int = 0, world: int = 1) -> int:
    import polars  # noqa: F401
    import torch
    import transformers.models.llama.modeling_llama  # noqa: F401  (imported when the model builds)

    from t3d.trainer.build import Dist, build_trainer
    from t3d.trainer.config import build_config
    from t3d.trainer.step import train_step

    torch.set_num_threads(1)
    cfg = build_config(values)
    if cfg.lora.enabled:
        import peft  # noqa: F401
    warm = build_trainer(build_config(values | {"model": str(Path(cfg.model.path).parent / "warm"), "batch_size": 1,
                                                "grad_accum": 1}), Dist(rank, world), log=lambda *a: None)  # fmt: skip
    train_step(warm, [warm.loader.next_batch()])  # library code and kernels resident, then freed
    del warm
    gc.collect()
    base = _status("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    trainer = build_trainer(cfg, Dist(rank, world), log=lambda *a: None)
    for _ in range(steps):
        train_step(trainer, [trainer.loader.next_batch() for _ in range(cfg.train.grad_accum)])
    return _status("VmHWM") - base


def compare(work: Path, names: list[str], steps: int = 3) -> dict[str, dict]:
    prepare(work)
    out = {}
    for name in names:
        plan, real = planned(work, SETUPS[name]), measured(work, SETUPS[name], steps)
        out[name] = {"planned_mib": round(plan / 2**20, 1), "measured_mib": round(real / 2**20, 1),
                     "error_pct": round(100 * (plan - real) / real, 1)}  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=sorted(SETUPS), help="setups to run (default: all)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(child(json.loads(args.child), args.steps))
        return
    with tempfile.TemporaryDirectory(prefix="t3d-plan-") as tmp:
        rows = compare(Path(tmp), args.only or list(SETUPS), args.steps)
    print(json.dumps({"model": MODEL, "response_tokens": RESPONSE, "memory": "peak RSS above the warmed baseline "
                      "(VmHWM, glibc mmap threshold 64 KiB)", "setups": rows}, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
