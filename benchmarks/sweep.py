"""Tune the distillation on the built-in task's *validation* prompts (never the test split).

Each trial distils a student from one trajectory dataset with one set of options, then
decodes the val prompts at one step per block (B tokens per step), 2 tokens per step and
full steps, and prints one JSON line: the options, the last training metrics (with the
DDO real/fake log-ratios) and, per setting, validity, distinct valid responses per prompt
and the gap closure against the teacher at the same setting.

    python benchmarks/sweep.py --data runs/trajectories --grid benchmarks/grids/main.json --out runs/sweep

The grid file is a JSON list of trials, each a dict of `t3d-distill` option names
(underscored) to values, plus an optional `name`. Trials whose result line is already in
`--out/results.jsonl` are skipped, so an interrupted sweep resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from t3d.dllm import load_model
from t3d.dllm.reveal import get_strategy
from t3d.dllm.task import BuiltinTask
from t3d.trainer.config import load_config
from t3d.trainer.evaluate import EvalConfig, builtin_prompts, evaluate, sampler_settings
from t3d.trainer.loop import train

SUMMARY_FIELDS = ("quality", "distinct_valid", "gap_closure", "agreement", "log_likelihood", "truth_extra")


def scheduled(strategy: str) -> bool:
    """Whether a reveal strategy follows the steps-per-block schedule (the registry says; no name is compared)."""
    return get_strategy(strategy).scheduled


def teacher_records(prompts, settings, config: EvalConfig) -> dict[int, dict[str, Any]]:
    """The teacher's numbers at every setting, decoded once for the whole sweep."""
    report = evaluate({"teacher": load_model("builtin")}, prompts, settings, config)
    return {r.steps_per_block: {k: getattr(r, k) for k in SUMMARY_FIELDS} for r in report.records if scheduled(r.strategy)}


def trial(options: dict[str, Any], data: str, out: Path, prompts, settings, config: EvalConfig) -> dict[str, Any]:
    """Distil one student with `options` and score it on the val prompts against the teacher."""
    flags = {"data": data, "model": "builtin", "out": str(out), "progress": False, "save_every": 0, **options}
    cfg = load_config(None, flags)
    start = time.perf_counter()
    result = train(cfg, log=lambda *_: None)
    seconds = time.perf_counter() - start
    models = {"teacher": load_model("builtin"), "student": load_model(str(result.student))}
    report = evaluate(models, prompts, settings, config)
    scores = {}
    for r in report.records:
        if r.model == "student" and scheduled(r.strategy):
            scores[f"spb={r.steps_per_block}"] = {k: getattr(r, k) for k in SUMMARY_FIELDS}
    keep = ("loss", "ddo", "path", "ce", "real_log_ratio", "fake_log_ratio", "real_margin", "fake_margin")
    last = {k: round(v, 4) for k, v in result.metrics.items() if k in keep or k.endswith("log_ratio")}
    return {"train_seconds": round(seconds, 1), "last_metrics": last, "val": scores}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="trajectory dataset from t3d-collect (train split prompts)")
    parser.add_argument("--grid", required=True, help="JSON list of trials (dicts of t3d-distill options)")
    parser.add_argument("--out", default="runs/sweep", help="directory for the students and results.jsonl")
    parser.add_argument("--samples-per-prompt", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="use only the first N val prompts (smoke runs)")
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 1)))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results_path = out / "results.jsonl"
    done = set()
    if results_path.exists():
        done = {json.loads(line)["name"] for line in results_path.read_text().splitlines() if line.strip()}
    grid = json.loads(Path(args.grid).read_text())

    prompts = builtin_prompts("val", limit=args.limit)
    block = BuiltinTask().config.word_length
    settings = sampler_settings(block_size=block, max_new_tokens=BuiltinTask().config.max_new_tokens,
                                steps_per_block=[1, 2, block])  # fmt: skip
    config = EvalConfig(samples_per_prompt=args.samples_per_prompt, seed=1234, warmup=False)
    teacher_path = out / "teacher.json"
    if not teacher_path.exists():
        teacher_path.write_text(json.dumps(teacher_records(prompts, settings, config)))
    print(json.dumps({"teacher_val": json.loads(teacher_path.read_text())}), flush=True)

    for options in grid:
        options = dict(options)
        name = options.pop("name", None) or ",".join(f"{k}={v}" for k, v in sorted(options.items()))
        if name in done:
            continue
        line = {"name": name, "options": options, **trial(options, args.data, out / name, prompts, settings, config)}
        with results_path.open("a") as f:
            f.write(json.dumps(line) + "\n")
        print(json.dumps(line), flush=True)


if __name__ == "__main__":
    sys.exit(main())
