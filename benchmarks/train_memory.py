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
1.3x the plain step's.

`--lora-vs-full`: a LoRA student (`--lora-r`, default 16, the family's default targets)
against full fine-tuning, both with the t3d objective, at the Qwen3-0.6B shape (hidden
1,024, 28 layers, 16 query / 8 KV heads of dim 128, intermediate 3,072, vocabulary
151,936, tied embeddings) in SDAR's published layout, float32 on CPU; batch 2 and 64
response tokens unless given. Full fine-tuning holds weights, gradients, two AdamW moments
and the reference's copy (~20 bytes per parameter); LoRA the weights once (the reference
is the base with the adapters off). Target: LoRA peak <= 0.4x full. Prints one JSON object.
Usage:

    python benchmarks/train_memory.py                 # CPU, the sizes above (~8 GB for `plain`)
    python benchmarks/train_memory.py --device cuda
    python benchmarks/train_memory.py --lora-vs-full  # ~13 GB for `full`, a few minutes on 2 cores
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
LORA_VARIANTS = ("full", "lora")  # --lora-vs-full: the t3d objective, full fine-tuning or a LoRA student
QWEN3_0_6B = {"vocab_size": 151_936, "hidden_size": 1024, "num_layers": 28, "num_heads": 16, "num_kv_heads": 8,
              "intermediate_size": 3072}  # fmt: skip


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
    kind = {"plain": "ce", "full": "t3d", "lora": "t3d"}.get(args.variant, args.variant)
    lora = {"lora_r": args.lora_r} if args.variant == "lora" else {}
    cfg = build_config({"data": str(work / "data"), "model": str(work / "model"), "out": str(work / f"out-{args.variant}"),
                        "loss": kind, "batch_size": args.batch_size, "max_steps": 1000, "device": args.device,
                        "progress": False, "save_every": 0, "verify": False, "path_k_steps": args.block} | lora)  # fmt: skip
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
            "params": sum(p.numel() for p in trainer.student.net.parameters()),
            "trainable": sum(p.numel() for p in trainer.student.net.parameters() if p.requires_grad)}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--vocab", type=int, default=151_936)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--length", type=int, help="response tokens per row (default 1024; 64 with --lora-vs-full)")
    parser.add_argument("--block", type=int, default=4)
    parser.add_argument("--batch-size", type=int, help="rows per step (default 4; 2 with --lora-vs-full)")
    parser.add_argument("--lora-vs-full", action="store_true", help="LoRA against full fine-tuning at the Qwen3-0.6B shape")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--steps", type=int, default=1, help="measured steps per variant (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variant", choices=VARIANTS + LORA_VARIANTS, help=argparse.SUPPRESS)  # internal: one child
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.length = args.length or (64 if args.lora_vs_full else 1024)
    args.batch_size = args.batch_size or (2 if args.lora_vs_full else 4)
    if args.variant:
        print(json.dumps(child(args)))
        return
    with tempfile.TemporaryDirectory(prefix="t3d-mem-") as tmp:
        print(json.dumps(run_lora(Path(tmp), args) if args.lora_vs_full else run(Path(tmp), args), indent=2))


def _children(tmp: Path, args, variants: tuple[str, ...]) -> dict[str, dict]:
    """Each variant's measurements, from its own fresh process."""
    results = {}
    for variant in variants:
        cmd = [sys.executable, __file__, "--variant", variant, "--work", str(tmp), "--device", args.device,
               "--block", str(args.block), "--batch-size", str(args.batch_size), "--steps", str(args.steps),
               "--threads", str(args.threads), "--length", str(args.length), "--lora-r", str(args.lora_r)]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


def run_lora(tmp: Path, args) -> dict:
    """--lora-vs-full: the same t3d step, full fine-tuning and a LoRA student, at the Qwen3-0.6B shape."""
    from t3d.dllm import load_model

    build_qwen3_shape(tmp / "model", args.block)
    identity = load_model(tmp / "model").identity()  # float32 on CPU, as the trainer loads it
    write_dataset(tmp / "data", identity, rows=4 * args.batch_size, shards=1, length=args.length, block=args.block,
                  vocab=QWEN3_0_6B["vocab_size"])  # fmt: skip
    results = _children(tmp, args, LORA_VARIANTS)
    full, gib = results["full"]["peak_bytes"], 1 << 30
    return {
        "device": args.device, "shape": "Qwen3-0.6B (SDAR layout, tied embeddings, head dim 128)", **QWEN3_0_6B,
        "response_tokens": args.length, "batch_size": args.batch_size, "lora_r": args.lora_r, "objective": "t3d",
        "memory": "peak RSS of the step's process (VmHWM, reset before the step)" if args.device == "cpu"
        else "torch.cuda.max_memory_allocated",
        "variants": {
            name: {"peak_gib": round(r["peak_bytes"] / gib, 3), "peak_over_full": round(r["peak_bytes"] / full, 3),
                   "s_per_step": round(r["s_per_step"], 2), "params": r["params"], "trainable": r["trainable"]}
            for name, r in results.items()
        },
        "target": "lora peak_over_full <= 0.4",
        "met": results["lora"]["peak_bytes"] <= 0.4 * full,
    }  # fmt: skip


def build_qwen3_shape(out: Path, block: int) -> Path:
    """A random-weight checkpoint of Qwen3-0.6B's shape in SDAR's published layout (bf16 on disk)."""
    import transformers

    from t3d.dllm.families import get_family
    from t3d.dllm.tiny import real_layout_config
    from t3d.dllm.weights import state_dict_for_export, write_shards

    raw = real_layout_config("sdar", dtype="bfloat16", **QWEN3_0_6B) | {
        "head_dim": 128, "tie_word_embeddings": True, "block_size": block}  # fmt: skip
    arch = get_family("sdar").architecture
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    net = getattr(transformers, arch.model_class)(arch.build_config(dict(raw), out))
    write_shards(state_dict_for_export(net, arch.checkpoint_name, torch.bfloat16), out, 1)
    (out / "config.json").write_text(json.dumps(raw, indent=2) + "\n")
    return out


def run(tmp: Path, args) -> dict:
    from t3d.dllm import load_model
    from t3d.dllm.tiny import build_checkpoint

    build_checkpoint(tmp / "model", "block_causal", vocab_size=args.vocab, hidden_size=args.hidden,
                     num_layers=args.layers, num_heads=2, intermediate_size=4 * args.hidden,
                     max_position_embeddings=2 * args.length + 64, block_size=args.block)  # fmt: skip
    identity = load_model(tmp / "model").identity()
    write_dataset(tmp / "data", identity, rows=4 * args.batch_size, shards=1, length=args.length, block=args.block,
                  vocab=args.vocab)  # fmt: skip
    results = _children(tmp, args, VARIANTS)
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
