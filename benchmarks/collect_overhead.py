"""What t3d-collect costs beyond the sampler, and how it scales from 1 to 2 workers.

    python benchmarks/collect_overhead.py [--prompts 384]

Builds a random teacher from a config (no download), then times
1. the bare sampler: the same batches of the same prompts, in this process, one torch
   thread (what one worker gets), no Ray and no storage;
2. t3d-collect with 1 worker and with 2 workers, each on a fresh private Ray.
Prints one JSON object:
- `ray_start_s`: starting the private Ray (reported apart, as the issue asks);
- `overhead_excl_ray_start`: (collect time - bare sampling time) / bare sampling time at
  1 worker, where collect time runs from pool creation to the last commit and so counts
  the worker's process start and teacher load, the shard writes and the manifest saves
  (`collect_1_worker_breakdown_s` splits it); the bare loop runs before and after the
  Ray runs and their mean is used, since a shared machine's load drifts;
- `overhead_steady_state`: the same without the worker start (first actor ready);
- `overhead_beyond_sampling_in_run`: within the 1-worker run, the steady-state time that is
  not the actor's sampling (shard builds, commits, manifest, driver, scheduling) over the
  actor's sampling time: what collect adds, free of the drift between separate runs (but
  blind to the sampler itself running slower beside Ray's daemons, which the two above see);
- `bytes_per_response_token`: on disk, per stored array (and Parquet), from the 1-worker run;
- `throughput_*`: response tokens per second, and the 2-vs-1 speed-up;
- `collect_1_worker_cpu_s_by_process`: CPU seconds of the driver and of every process
  Ray started during the 1-worker run (actor vs raylet, GCS, dashboard, ...), which is
  what tells whether the actor was slower or merely shared the cores.
Targets (issue 3): overhead <= 10 %, top-k at k=8 <= 40 B/token, speed-up >= 1.6 on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import torch

from t3d.dllm import load_model
from t3d.dllm.tiny import build_checkpoint
from t3d.dllm.tokenizer import build_tokenizer
from t3d.pipeline.collect import collect, plan_run
from t3d.pipeline.config import build_config
from t3d.pipeline.rollout import sample_rows
from t3d.pipeline.units import unit_rows
from t3d.storage_schemas import Dataset

VOCAB_WORDS = 500
SETTINGS = dict(
    rollouts_per_prompt=2, max_new_tokens=32, block_size=8, steps_per_block=8, logits_top_k=8, shard_size=32,
    batch_size=64, seed=0, progress=False,
)


def build_teacher(root: Path) -> Path:
    """A ~3M-parameter bidirectional model with a word-level tokenizer."""
    words = [f"w{i}" for i in range(VOCAB_WORDS)]
    return build_checkpoint(
        root / "teacher", "bidirectional", vocab_size=VOCAB_WORDS + 4, hidden_size=256, num_layers=4, num_heads=4,
        intermediate_size=512, max_position_embeddings=128, pad_id=0, mask_id=2, eos_id=3,
        tokenizer=build_tokenizer(words, model_max_length=128),
    )


def write_prompts(path: Path, count: int) -> Path:
    rng = torch.Generator().manual_seed(0)
    lines = []
    for _ in range(count):
        n = int(torch.randint(4, 24, (1,), generator=rng))
        lines.append(json.dumps({"prompt": " ".join(f"w{int(i)}" for i in torch.randint(0, VOCAB_WORDS, (n,), generator=rng))}))
    path.write_text("\n".join(lines) + "\n")
    return path


def bare_sampler_seconds(cfg) -> float:
    """The sampler loop alone over exactly the batches collect runs (one thread, like one worker)."""
    plan = plan_run(cfg)
    model = load_model(cfg.teacher.model)
    torch.set_num_threads(1)
    seconds = 0.0
    for unit in plan.units:
        rows = unit_rows(unit, cfg.rollout.rollouts_per_prompt, cfg.seed)
        _, spent = sample_rows(model, [p.ids for p, _, _ in rows], [s for _, _, s in rows], cfg.rollout)
        seconds += spent
    torch.set_num_threads(os.cpu_count() or 1)
    return seconds


class ProcessCpu:
    """CPU seconds of every process started under this one while it runs, by name (polls /proc).

    Answers where a collect run's CPU went on a small machine: the actors' own sampling,
    or Ray's daemons (raylet, GCS, dashboard, log monitor) and the driver competing with them.
    """

    def __init__(self, interval: float = 0.25) -> None:
        self.seen: dict[int, tuple[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, args=(interval,), daemon=True)
        self._tick = os.sysconf("SC_CLK_TCK")

    def __enter__(self) -> ProcessCpu:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self, interval: float) -> None:
        while not self._stop.is_set():
            parents = {}
            for entry in os.listdir("/proc"):
                if entry.isdigit():
                    info = self._read(int(entry))
                    if info:
                        parents[int(entry)] = info
            mine = {os.getpid()}
            for _ in range(8):  # descendants, a few generations deep
                mine |= {pid for pid, (ppid, _, _) in parents.items() if ppid in mine}
            for pid in mine - {os.getpid()}:
                _, name, cpu = parents[pid]
                self.seen[pid] = (name, cpu)
            time.sleep(interval)

    def _read(self, pid: int):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        fields = stat[stat.rindex(")") + 2 :].split()
        name = " ".join(c.decode(errors="replace") for c in cmd[:2] if c)[-60:] or stat[stat.index("(") + 1 : stat.rindex(")")]
        return int(fields[1]), name, (int(fields[11]) + int(fields[12])) / self._tick

    def by_name(self) -> dict[str, float]:
        totals: dict[str, float] = defaultdict(float)
        for name, cpu in self.seen.values():
            totals[_short(name)] += cpu
        return {k: round(v, 1) for k, v in sorted(totals.items(), key=lambda kv: -kv[1]) if v >= 0.1}


def _short(name: str) -> str:
    for key in ("UnitRunner", "Actor", "raylet", "gcs_server", "dashboard", "log_monitor", "monitor", "runtime_env", "agent"):
        if key in name:
            return key
    return name.split("/")[-1][:40]


def run_collect(teacher: Path, prompts: Path, out: Path, workers: int):
    cfg = build_config({}, {**SETTINGS, "model": str(teacher), "prompts": str(prompts), "out": str(out), "num_workers": workers})
    tic = time.process_time()
    with ProcessCpu() as cpu:
        result = collect(cfg)
    return cfg, result, {"driver_process": round(time.process_time() - tic, 1), **cpu.by_name()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=384, help="prompts to roll out (2 rollouts each)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="t3d-bench-") as tmp:
        root = Path(tmp)
        os.environ.setdefault("RAY_TMPDIR", str(root))  # Ray's files stay in the temp dir
        teacher = build_teacher(root)
        prompts = write_prompts(root / "prompts.jsonl", args.prompts)
        real_stdout, sys.stdout = sys.stdout, sys.stderr  # collect's report goes to stderr; JSON to stdout
        try:  # bare before and after the Ray runs: the machine's load drifts
            cfg = build_config({}, {**SETTINGS, "model": str(teacher), "prompts": str(prompts), "out": str(root / "x")})
            bare_runs = [bare_sampler_seconds(cfg)]
            _, one, one_cpu = run_collect(teacher, prompts, root / "one", workers=1)
            _, two, _ = run_collect(teacher, prompts, root / "two", workers=2)
            bare_runs.append(bare_sampler_seconds(cfg))
            bytes_per_token = Dataset.open(root / "one").bytes_per_response_token()
        finally:
            sys.stdout = real_stdout
        bare = sum(bare_runs) / len(bare_runs)
        steady = one.seconds - one.worker_start_seconds
        result = {
            "machine": {"cpus": os.cpu_count(), "torch_threads_per_worker": 1, "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
            "workload": {"prompts": args.prompts, "rows": one.rows, "response_tokens": one.response_tokens,
                         "units": one.units_total, **{k: SETTINGS[k] for k in ("max_new_tokens", "block_size", "steps_per_block", "logits_top_k", "batch_size")}},
            "bare_sampler_s": round(bare, 2),
            "bare_sampler_runs_s": [round(b, 2) for b in bare_runs],
            "collect_1_worker_s": round(one.seconds, 2),
            "collect_1_worker_breakdown_s": {
                "worker_start": round(one.worker_start_seconds, 2),
                "sampling_in_actor": round(one.sample_seconds, 2),
                "shard_build_and_commit": round(one.unit_seconds - one.sample_seconds, 2),
                "driver_and_scheduling": round(one.seconds - one.worker_start_seconds - one.unit_seconds, 2),
            },
            "collect_1_worker_cpu_s_by_process": one_cpu,
            "ray_start_s": round(one.ray_start_seconds, 2),
            "overhead_excl_ray_start": round((one.seconds - bare) / bare, 4),
            "overhead_steady_state": round((steady - bare) / bare, 4),
            "overhead_beyond_sampling_in_run": round((steady - one.sample_seconds) / one.sample_seconds, 4),
            "bytes_per_response_token": {k: round(v, 2) for k, v in bytes_per_token.items()},
            "topk_bytes_per_response_token": round(bytes_per_token.get("topk_logprobs", 0) + bytes_per_token.get("topk_ids", 0), 2),
            "throughput_1_worker_tok_s": round(one.response_tokens / one.seconds, 1),
            "throughput_2_workers_tok_s": round(two.response_tokens / two.seconds, 1),
            "speedup_2_vs_1": round(one.seconds / two.seconds, 3),
            "speedup_2_vs_1_steady_state": round(steady / (two.seconds - two.worker_start_seconds), 3),
            "ray_start_2_workers_s": round(two.ray_start_seconds, 2),
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
