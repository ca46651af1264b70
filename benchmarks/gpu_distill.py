"""GPU distillation check (issue 11): t3d-distill on an SDAR-1.7B-shaped student, FSDP and DDP, bf16.

    python benchmarks/gpu_distill.py [--out /tmp/t3d-gpu-distill] [--steps 100] [--batch-size 2]

Prepared for a lent GPU (about 6-8 minutes on one H200 at the defaults; never run by the tests):
1. writes a random-weight checkpoint in SDAR's layout at Qwen3-1.7B's shape (hidden 2048,
   28 layers, 16 / 8 heads, intermediate 6144, vocab 151,936, tied embeddings), bf16, and a
   synthetic trajectory dataset of 1,024 response tokens per row (blocks of 4) through
   t3d.storage_schemas, as t3d-collect leaves it;
2. in this process (a one-worker process group, NCCL), for `--strategy fsdp` (fully_shard,
   bf16 compute, float32 reduce) and `ddp` (the plain one-worker loop under bf16 autocast):
   `--steps` t3d-distill steps (`loop.run_steps`: data, states, reference and student
   forward, chunked log-probs, loss, backward, clipping, AdamW, metrics), then the same
   number of bare steps on one pre-built batch (forward + backward + optimizer step of the
   same objective, no data, no logging): tokens/s, peak GPU memory (max_memory_allocated),
   and the loop's overhead over the bare step.
Prints one JSON object. Nothing else to install; weights and data are made here.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from train_throughput import write_dataset  # noqa: E402

from t3d.dllm import load_model  # noqa: E402
from t3d.dllm.tiny import build_real_layout  # noqa: E402

QWEN3_1_7B = dict(vocab_size=151936, hidden_size=2048, num_layers=28, num_heads=16, num_kv_heads=8, intermediate_size=6144)
LENGTH, BLOCK = 1024, 4


def _process_group() -> None:
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29561")
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl", rank=0, world_size=1)


def run_strategy(strategy: str, ckpt: Path, data: Path, out: Path, args) -> dict:
    from t3d.trainer import build, sharding, step
    from t3d.trainer.config import build_config
    from t3d.trainer.build import Dist, build_trainer
    from t3d.trainer.step import make_states, micro_loss, step_normalizers

    cfg = build_config({"data": str(data), "model": str(ckpt), "out": str(out / strategy), "batch_size": args.batch_size,
                        "max_steps": 10 * args.steps, "device": "cuda", "progress": False, "save_every": 0, "lr": 1e-5,
                        "path_k_steps": BLOCK, "verify": False, "gradient_checkpointing": args.checkpointing,
                        "strategy": strategy, "num_workers": 1, "dtype": "float32"})  # fmt: skip  (float32 masters, bf16 compute)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    trainer = build_trainer(cfg, Dist(), log=lambda *a: None)
    sharding.STRATEGIES[strategy].shard(trainer, build._rebuild_optimizer)  # the loop shards with > 1 worker; one GPU here, the same code
    tokens = []

    def one_step():
        batch = [trainer.loader.next_batch()]
        metrics = step.train_step(trainer, batch)
        tokens.append(metrics["input_tokens"])

    one_step()  # warm-up (allocator, kernels)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        one_step()
    torch.cuda.synchronize()
    loop_s = (time.perf_counter() - start) / args.steps
    peak = torch.cuda.max_memory_allocated()
    batch = trainer.loader.next_batch()
    states = make_states(batch, trainer.states, trainer.device, step._state_dtype(trainer))
    norms = step_normalizers([states], trainer.dist, trainer.objective)
    times = []
    for _ in range(args.steps):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.optimizer.zero_grad(set_to_none=True)
        loss, _ = micro_loss(trainer, states, batch, norms)
        loss.backward()
        trainer.optimizer.step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    bare_s = statistics.median(times)
    result = {
        "strategy": strategy, "s_per_step": round(loop_s, 4), "tokens_per_s": round(statistics.mean(tokens) / loop_s, 1),
        "peak_gib": round(peak / (1 << 30), 2), "bare_s_per_step": round(bare_s, 4),
        "loop_overhead": round(loop_s / bare_s - 1, 4), "input_tokens_per_step": statistics.mean(tokens),
    }  # fmt: skip
    del trainer
    torch.cuda.empty_cache()
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="/tmp/t3d-gpu-distill")
    parser.add_argument("--steps", type=int, default=100, help="timed loop steps and bare steps per strategy")
    parser.add_argument("--batch-size", type=int, default=2, help="rows per step (1,024 response tokens each)")
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--strategies", default="fsdp,ddp")
    parser.add_argument("--checkpointing", action="store_true", help="activation checkpointing")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_distill: needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = True
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    ckpt = root / "sdar-1.7b"
    if not (ckpt / "config.json").is_file():
        build_real_layout(ckpt, "sdar", device="cuda", **QWEN3_1_7B)
    model = load_model(ckpt, device="cpu")
    data = root / "data"
    if not (data / "manifest.json").is_file():
        write_dataset(data, model.identity(), rows=args.rows, shards=4, length=LENGTH, block=BLOCK,
                      vocab=QWEN3_1_7B["vocab_size"])  # fmt: skip
    del model
    setup_s = time.perf_counter() - start
    _process_group()
    results = [run_strategy(s, ckpt, data, root, args) for s in args.strategies.split(",")]
    print(json.dumps({
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "shape": "Qwen3-1.7B (SDAR-1.7B)",
        "dtype": "float32 master weights, bfloat16 compute", "response_tokens": LENGTH, "batch_size": args.batch_size, "steps": args.steps,
        "setup_s": round(setup_s, 1), "results": results,
    }, indent=2))  # fmt: skip
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
