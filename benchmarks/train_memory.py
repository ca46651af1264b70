"""Peak memory and time of one training step where the LM head dominates: t3d / CE / DDO vs a plain masked-CE step.

The shape of a real distillation batch at a small model: vocabulary 151,936 (Qwen3 /
SDAR), 1,024 response tokens per row, batch 4, hidden 64 (so the (B, L, V) logits, not
the trunk, decide the peak), the block-causal [prompt | clean | noisy] layout. Each
variant runs in its own fresh process on the same batch and the same starting weights:

- `plain`: the step everyone writes first, written here: trunk forward, LM head over the
  L response columns ((B, L, V) float32 logits), `F.cross_entropy(..., ignore_index)` on
  the supervised positions, backward, AdamW;
- `ce`, `ddo`, `t3d`: `loop.train_step` of t3d-distill with that objective (LM head and
  log-probs only on supervised positions, chunked over V; DDO and t3d also run the
  reference's forward).

Memory on CPU: the kernel's peak resident set size of the process (VmHWM in
/proc/self/status), reset right before the timed steps by writing 5 to
/proc/self/clear_refs, so it is the high-water mark of the steps alone, weights,
optimizer state and the batch included (they are resident). On CUDA:
torch.cuda.max_memory_allocated after reset_peak_memory_stats. Target: t3d's peak <=
1.3x the plain step's. Prints one JSON object. Usage:

    python benchmarks/train_memory.py                 # CPU, the sizes above (~8 GB for `plain`)
    python benchmarks/train_memory.py --device cuda
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import write_dataset  # noqa: E402  (same synthetic rows, written as real shards)

VARIANTS = ("plain", "ce", "ddo", "t3d")


def _kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1))


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        Path("/proc/self/clear_refs").write_text("5")


def peak_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    return _kib("VmHWM") * 1024


def current_bytes(device: torch.device) -> int:
    return torch.cuda.memory_allocated() if device.type == "cuda" else _kib("VmRSS") * 1024


def plain_step(trainer, states) -> None:
    """Masked CE the plain way: full (B, L, V) float32 logits of the response copy."""
    net = trainer.student.net
    length = states.targets.shape[1]
    trainer.optimizer.zero_grad(set_to_none=True)
    hidden = net.model(input_ids=states.input_ids, attention_mask=states.attention_bias,
                       position_ids=states.position_ids, use_cache=False).last_hidden_state  # fmt: skip
    logits = net.get_output_embeddings()(hidden[:, -length:]).float()  # (B, L, V)
    labels = torch.where(states.supervised, states.targets, -100)  # (B, L)
    loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1), ignore_index=-100)
    loss.backward()
    trainer.optimizer.step()


def child(args) -> dict:
    """One variant in this (fresh) process: build, warm up, then the measured steps."""
    from t3d.trainer.config import build_config
    from t3d.trainer.build import build_trainer
    from t3d.trainer.step import make_states, train_step

    torch.set_num_threads(args.threads)
    work = Path(args.work)
    kind = "ce" if args.variant == "plain" else args.variant
    cfg = build_config({"data": str(work / "data"), "model": str(work / "model"), "out": str(work / f"out-{args.variant}"),
                        "loss": kind, "batch_size": args.batch_size, "max_steps": 1000, "device": args.device,
                        "progress": False, "save_every": 0, "verify": False, "path_k_steps": args.block})  # fmt: skip
    trainer = build_trainer(cfg, log=lambda *a: None)
    batch = trainer.loader.next_batch()
    states = make_states(batch, trainer.states, trainer.device)

    def step():
        if args.variant == "plain":
            plain_step(trainer, states)
        else:
            train_step(trainer, [batch])

    step()  # warm-up: AdamW allocates its state on the first step
    before = current_bytes(trainer.device)
    reset_peak(trainer.device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if trainer.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    return {"variant": args.variant, "peak_bytes": peak_bytes(trainer.device), "resident_before_bytes": before,
            "s_per_step": seconds, "supervised_tokens": int(states.supervised.sum()),
            "params": sum(p.numel() for p in trainer.student.net.parameters())}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--length", type=int, default=1024, help="response tokens per row")
    parser.add_argument("--block", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--steps", type=int, default=1, help="measured steps per variant (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # internal: one child
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(child(args)))
        return
    with tempfile.TemporaryDirectory(prefix="t3d-mem-") as tmp:
        print(json.dumps(run(Path(tmp), args), indent=2))


def run(tmp: Path, args) -> dict:
    from t3d.dllm import load_model
    from t3d.dllm.tiny import build_checkpoint

    build_checkpoint(tmp / "model", "block_causal", vocab_size=args.vocab, hidden_size=args.hidden,
                     num_layers=args.layers, num_heads=2, intermediate_size=4 * args.hidden,
                     max_position_embeddings=2 * args.length + 64, block_size=args.block)  # fmt: skip
    identity = load_model(tmp / "model").identity()
    write_dataset(tmp / "data", identity, rows=4 * args.batch_size, shards=1, length=args.length, block=args.block,
                  vocab=args.vocab)  # fmt: skip
    results = {}
    for variant in VARIANTS:
        cmd = [sys.executable, __file__, "--variant", variant, "--work", str(tmp), "--device", args.device,
               "--block", str(args.block), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
               "--threads", str(args.threads)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    plain = results["plain"]["peak_bytes"]
    gib = 1 << 30
    return {
        "device": args.device, "vocab": args.vocab, "hidden": args.hidden, "layers": args.layers,
        "response_tokens": args.length, "batch_size": args.batch_size, "layout": "block_causal (P + 2L columns)",
        "memory": "peak RSS of the step's process (VmHWM, reset before the step)" if args.device == "cpu"
        else "torch.cuda.max_memory_allocated",
        "full_logits_float32_gib": round(args.batch_size * args.length * args.vocab * 4 / gib, 2),
        "variants": {
            name: {"peak_gib": round(r["peak_bytes"] / gib, 3), "peak_over_plain": round(r["peak_bytes"] / plain, 3),
                   "step_increase_gib": round((r["peak_bytes"] - r["resident_before_bytes"]) / gib, 3),
                   "s_per_step": round(r["s_per_step"], 2), "supervised_tokens": r["supervised_tokens"]}
            for name, r in results.items()
        },
        "target": "t3d peak_over_plain <= 1.3",
        "met": results["t3d"]["peak_bytes"] <= 1.3 * plain,
    }  # fmt: skip


if __name__ == "__main__":
    main()
