"""Trainer throughput: is the data path fast enough, and what does the loop cost over a bare step?

Prints one JSON object:
- `data_path_samples_per_s`: shard reading + batching + training-state construction
  alone (everything before the forward pass), samples (rows) per second;
- `train_step_samples_per_s`: the full `t3d-distill` step (data, states, student and
  reference forward, loss, backward, clipping, AdamW, schedule);
- `loop_s_per_step` vs `bare_s_per_step`: `loop.run_steps` with the metrics log
  against a bare forward + backward + optimizer step of the same model on the same,
  pre-built batch (student and reference forward, loss, backward, AdamW), and the
  overhead `loop / bare - 1`.
- `trainer_over_plain_ce` (issue 21): the bare step against a plain masked-CE step on
  the same supervised rows (the student's trunk, full logits of those rows only, cross-
  entropy to x0, backward, AdamW): what the objective, its reference forward and the
  chunked head cost over the least a step on those rows does; steps alternate, medians.
Targets: data path >= 5x a training step; loop overhead <= 10%; trainer step <= 1.5x
the plain masked-CE step at the Qwen3-0.6B shape (`--ce-only --vocab 151936 --hidden
1024 --heads 16 --layers 28 --batch-size 8 --length 64`).

The dataset is synthetic (random tokens, semi-autoregressive reveal orders) written
through `t3d.storage_schemas`, so reading it costs what real shards cost. Loop and
bare steps alternate one by one and the medians are reported, which keeps a busy
machine from favouring either. Usage:

    python benchmarks/train_throughput.py                      # CPU, small model
    python benchmarks/train_throughput.py --device cuda --hidden 1024 --layers 16 --vocab 32000
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from t3d.dllm.sampling import SampleOutput, SamplerConfig
from t3d.dllm.tiny import build_checkpoint
from t3d.storage_schemas import Manifest, shard_arrays, shard_columns, write_shard
from t3d.trainer.config import build_config
from t3d.trainer.build import build_trainer
from t3d.trainer.loop import run_steps
from t3d.trainer.objectives.base import response_inputs
from t3d.trainer.reporting import METRICS_FILE, MetricsLog
from t3d.trainer.step import make_states, micro_loss, step_normalizers, train_step


def synthetic_rows(n: int, length: int, block: int, vocab: int, seed: int) -> dict:
    """Rows shaped like a sampler's: 2 tokens per step within each block, some EOS padding."""
    rng = np.random.default_rng(seed)
    prompts = [rng.integers(3, vocab - 1, rng.integers(8, 33)).tolist() for _ in range(n)]
    x0 = rng.integers(3, vocab - 1, (n, length))
    reveal = np.zeros((n, length), dtype=np.int16)
    per_block = block // 2
    for b in range(length // block):
        order = rng.random((n, block)).argsort(axis=1)
        reveal[:, b * block : (b + 1) * block] = b * per_block + order // 2
    ends = rng.integers(length // 2, length + 1, n)
    for i, end in enumerate(ends):
        if end < length:
            x0[i, end - 1], x0[i, end:], reveal[i, end:] = 2, 1, -1
    return {"prompts": prompts, "x0": x0, "reveal": reveal}


def write_dataset(out: Path, model_identity: dict, *, rows: int, shards: int, length: int, block: int, vocab: int) -> Path:
    manifest = Manifest(collect_config={"benchmark": True}, teacher=model_identity)
    per = rows // shards
    for s in range(shards):
        r = synthetic_rows(per, length, block, vocab, seed=s)
        k = 8
        decoded = SampleOutput(
            tokens=r["x0"], reveal_step=r["reveal"], confidence=np.full((per, length), 0.5, np.float32),
            topk_logprobs=-np.random.default_rng(s).random((per, length, k)).astype(np.float32) * 5,
            topk_ids=np.random.default_rng(s).integers(0, vocab, (per, length, k)), states=None,
            num_steps=r["reveal"].max(axis=1) + 1, finish_reason=["eos"] * per, nfe=0,
        )  # fmt: skip
        columns = shard_columns(
            prompt_index=list(range(s * per, (s + 1) * per)), rollout=[0] * per, prompt=[""] * per,
            prompt_ids=r["prompts"], seed=list(range(per)), decoded=decoded, response_text=[""] * per,
            sampler=SamplerConfig(max_new_tokens=length, block_size=block, steps_per_block=block // 2),
            teacher={"name": "bench", "fingerprint": "0" * 16},
        )  # fmt: skip
        manifest = manifest.with_shard(write_shard(out, s, columns, shard_arrays(decoded)))
    manifest.save(out)
    return out


def bare_step(trainer, states, batch) -> None:
    """Forward (student + reference) + loss + backward + AdamW on pre-built states: no data, no logging."""
    trainer.optimizer.zero_grad(set_to_none=True)
    loss, _ = micro_loss(trainer, states, batch, step_normalizers([states], trainer.dist, trainer.objective))
    loss.backward()
    trainer.optimizer.step()


def plain_ce_step(trainer, states) -> None:
    """Masked CE on the supervised rows with their full logits, backward, AdamW: the least a step on those rows costs."""
    trainer.optimizer.zero_grad(set_to_none=True)
    select = states.supervised  # (B, L)
    rows = trainer.student.response_rows(*response_inputs(states, select))  # (N, H) and the head
    logits = F.linear(rows.rows, rows.weight, rows.bias)  # (N, V)
    F.cross_entropy(logits.float(), states.targets[select]).backward()
    trainer.optimizer.step()


def compare_trainer_and_ce(trainer, pairs: int) -> tuple[float, float]:
    """Median seconds of the bare trainer step and of `plain_ce_step`, alternating on one pre-built batch.

    Process CPU seconds on CPU (with one torch thread, what other processes on a shared
    machine disturb least), wall seconds on an accelerator."""
    clock = time.process_time if trainer.device.type == "cpu" else time.perf_counter
    batch = trainer.loader.next_batch()
    states = make_states(batch, trainer.states, trainer.device)
    steps, ces = [], []
    for _ in range(pairs):
        for fn, out in ((lambda: bare_step(trainer, states, batch), steps), (lambda: plain_ce_step(trainer, states), ces)):
            start = clock()
            fn()
            _sync(trainer.device)
            out.append(clock() - start)
    return statistics.median(steps), statistics.median(ces)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_data_path(trainer, batches: int) -> float:
    """Samples per second of loading batches and building their states."""
    start = time.perf_counter()
    rows = 0
    for _ in range(batches):
        batch = trainer.loader.next_batch()
        make_states(batch, trainer.states, trainer.device)
        rows += len(batch)
    _sync(trainer.device)
    return rows / (time.perf_counter() - start)


def time_train_steps(trainer, steps: int) -> float:
    start = time.perf_counter()
    for _ in range(steps):
        train_step(trainer, [trainer.loader.next_batch() for _ in range(trainer.cfg.train.grad_accum)])
    _sync(trainer.device)
    return steps * trainer.cfg.rows_per_step / (time.perf_counter() - start)


def compare_loop_and_bare(trainer, out: Path, steps: int) -> tuple[float, float]:
    """Median seconds per step of run_steps (with its metrics log) and of a bare step.

    One loop step, then one bare step, `steps` times: tightly interleaved, so a load
    spike from another process hits both sides alike and the medians drop it.
    """
    batch = trainer.loader.next_batch()
    states = make_states(batch, trainer.states, trainer.device)
    log = MetricsLog(out / METRICS_FILE, 0, True)
    loop_times, bare_times = [], []
    for _ in range(steps):
        one_more = dataclasses.replace(trainer.cfg.train, max_steps=trainer.step + 1)
        trainer.cfg = dataclasses.replace(trainer.cfg, train=one_more)
        start = time.perf_counter()
        run_steps(trainer, log.write)
        _sync(trainer.device)
        loop_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        bare_step(trainer, states, batch)
        _sync(trainer.device)
        bare_times.append(time.perf_counter() - start)
    log.close()
    return statistics.median(loop_times), statistics.median(bare_times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--family", default="block_causal")
    parser.add_argument("--vocab", type=int, default=512)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--length", type=int, default=64, help="response length L")
    parser.add_argument("--block", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rows", type=int, default=2048)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="steps timed for each throughput figure")
    parser.add_argument("--pairs", type=int, default=30, help="interleaved loop/bare step pairs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ce-pairs", type=int, default=5, help="alternating trainer / plain masked-CE step pairs")
    parser.add_argument("--ce-only", action="store_true", help="only the trainer vs plain masked-CE comparison (large shapes)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="t3d-bench-") as tmp:
        print(json.dumps(run(Path(tmp), args), indent=2))


def run(tmp: Path, args) -> dict:
    model_dir = build_checkpoint(
        tmp / "model", args.family, vocab_size=args.vocab, hidden_size=args.hidden, num_layers=args.layers,
        num_heads=args.heads, intermediate_size=4 * args.hidden, max_position_embeddings=2 * args.length + 64,
        block_size=args.block,
    )  # fmt: skip
    from t3d.dllm import load_model

    identity = load_model(model_dir).identity()
    data = write_dataset(tmp / "data", identity, rows=args.rows, shards=args.shards, length=args.length,
                         block=args.block, vocab=args.vocab)  # fmt: skip
    cfg = build_config({"data": str(data), "model": str(model_dir), "out": str(tmp / "out"), "batch_size": args.batch_size,
                        "max_steps": 10_000, "device": args.device, "progress": False, "save_every": 0})  # fmt: skip
    trainer = build_trainer(cfg, log=lambda *a: None)
    params = sum(p.numel() for p in trainer.student.net.parameters())
    shape = {"device": str(trainer.device), "family": args.family, "params_M": round(params / 1e6, 3), "vocab": args.vocab,
             "hidden": args.hidden, "layers": args.layers, "batch_size": args.batch_size, "response_len": args.length,
             "objective": cfg.loss.kind, "torch_threads": torch.get_num_threads()}  # fmt: skip
    compare_trainer_and_ce(trainer, 1)  # warm-up
    step_s, ce_s = compare_trainer_and_ce(trainer, args.ce_pairs)
    ce = {"clock": "process CPU" if trainer.device.type == "cpu" else "wall",
          "trainer_s_per_step": round(step_s, 4), "plain_ce_s_per_step": round(ce_s, 4),
          "trainer_over_plain_ce": round(step_s / ce_s, 3)}  # fmt: skip
    if args.ce_only:
        return shape | ce | {"targets": {"trainer_over_plain_ce": "<= 1.5"}}
    time_train_steps(trainer, 3)  # warm-up
    data_sps = time_data_path(trainer, 4 * args.steps)
    step_sps = time_train_steps(trainer, args.steps)
    loop_s, bare_s = compare_loop_and_bare(trainer, tmp / "out", args.pairs)
    return shape | ce | {
        "data_path_samples_per_s": round(data_sps, 1), "train_step_samples_per_s": round(step_sps, 1),
        "data_path_over_train_step": round(data_sps / step_sps, 2),
        "loop_s_per_step": round(loop_s, 5), "bare_s_per_step": round(bare_s, 5),
        "loop_overhead": round(loop_s / bare_s - 1, 4),
        "targets": {"data_path_over_train_step": ">= 5", "loop_overhead": "<= 0.10", "trainer_over_plain_ce": "<= 1.5"},
    }  # fmt: skip


if __name__ == "__main__":
    main()
