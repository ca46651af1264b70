"""Reproduce the headline result on the built-in task, from the shipped teacher, in one command.

    python benchmarks/reproduce.py            # ~27 min on a 2-core CPU; writes docs/RESULTS.md
    python benchmarks/reproduce.py --compare  # the objectives side by side (issue 22): results_compare.json,
                                              # RESULTS.md's last section

1. `t3d-collect`: the shipped teacher decodes the task's *train* prompts at one token per
   step (`--rollouts-per-prompt` samples each), with a collect seed (5) different from the
   one the options were tuned on (0).
2. `t3d-distill`: three students from that one dataset under the same budget, once per
   training seed (0, 1, 2): `--loss t3d` with no other flag (the default `builtin` preset,
   what `t3d-distill` alone runs), `ce` (naive trajectory distillation) and `ddo` (DDO
   alone), both on the same preset's budget. Also `--preset paper` (the official recipe)
   on a dataset collected the official way (1 rollout per prompt at temperature 0.1).
   Then a second on-policy round of t3d and of CE per training seed (`--rounds`, what
   `t3d-run --run.rounds 2` does): each round-1 student collects the train prompts again and
   starts a second distillation on its own trajectories.
3. `t3d-eval`: teacher and students on the held-out *test* prompts at 1, 2 and 4 tokens
   per step and with the threshold sampler.
4. `docs/RESULTS.md` (table, plot, what the invalid answers are, exact commands, seeds,
   machine, the validation sweep that chose the options) and `docs/results.json` (every number).
   The prose around the numbers, findings included, is `docs/RESULTS.template.md`.

The distillation options (`TUNED`) were chosen on the *val* split with
`benchmarks/sweep.py` (its results: `docs/sweep_val.jsonl`); the test prompts were never
used to choose anything. Every step is the public CLI, run as a subprocess, so the
commands written into RESULTS.md are exactly what ran.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import string
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS_TEMPLATE = REPO / "docs" / "RESULTS.template.md"
"""RESULTS.md's prose (what the sweep found, the paper preset's quirks); `write_results` fills in the numbers."""

# Chosen on the val split (docs/sweep_val.jsonl, grid benchmarks/grids/val_sweep.json).
# Shared by every student, so the budgets match; only `--loss` and its own weights differ.
# path-k-steps 4 = B: the path loss fuses a whole block of teacher steps into the one
# student step that decodes it at one step per block.
# The budget and weights are the `builtin` preset's (trainer/presets/builtin.toml): no flag here
# changes them, so the t3d row is exactly what `t3d-distill` with no flags trains.
BUDGET: dict[str, Any] = {}  # --seed: one run per --train-seeds value; --max-steps only when given
TUNED = {
    "t3d": {},
    "ce": {},
    "ddo": {},
}
COMMON = {"preset": "builtin", "save-every": 0}
COLLECT = {"rollouts-per-prompt": 8, "seed": 5}
# The official recipe end to end: its data (1 rollout per prompt at T = 0.1) and `--preset paper`.
PAPER_COLLECT = {"rollouts-per-prompt": 1, "temperature": 0.1, "seed": 5}
PAPER = {"preset": "paper", "save-every": 0}
# On-policy rounds, what `t3d-run --run.rounds N` does: round r's student collects round r+1's
# trajectories (COLLECT, the same prompts and seed) and starts round r+1's training (the same
# loss, preset and training seed). Run for these losses, each from its own round-1 student.
ROUND_LOSSES = ("t3d", "ce")
EVAL = {"steps-per-block": "4,2,1", "strategy": "static,threshold", "threshold": 0.9, "temperature": 1.0,
        "samples-per-prompt": 8, "seed": 0, "timing-repeats": 2}  # fmt: skip

# The issue's targets, checked in RESULTS.md (at one step per block unless named).
GAP_CLOSURE_TARGET, GAP_CLOSURE_STRETCH = 0.85, 0.90
SPEED_TARGET = 0.8


# The comparison (`--compare`, issue 22 item 5): every objective on the same collected data, the
# same budget (the `builtin` preset, COMMON) and the same scorer; only `--loss` differs, each at
# its own defaults (docs/OBJECTIVES.md: certainty and d3llm at dParallel's w = 2, T = 0.5; cap at λ = 2, dFactory's docs' value).
COMPARE_LOSSES = ("t3d", "ce", "ddo", "certainty", "cap", "d3llm")
COMPARE_EVAL = {"steps-per-block": "4,2,1", "strategy": "static,threshold,entropy_bounded", "threshold": 0.9,
                "temperature": 1.0, "samples-per-prompt": 8, "seed": 0, "timing-repeats": 1}  # fmt: skip
# The entropy_bounded budget is chosen on the *val* split with the teacher: these (nats per step) in
# order up to the first whose validity falls more than BUDGET_TOLERANCE below the teacher's at one
# token per step; the largest before it is chosen.
# A symbol uniform over the task's 8 has log 8 = 2.08 nats: 2.5 lets one symbol through with
# near-certain tokens, 4.5 two, 6.5 three.
BUDGET_GRID = (0.5, 2.5, 4.5, 6.5)
VAL_EVAL = {"temperature": 1.0, "samples-per-prompt": 8, "seed": 0, "timing-repeats": 1}
BUDGET_TOLERANCE = 0.01
STUDY_JSON = "confidence_study.json"
"""benchmarks/confidence_study.py --json's output, beside results.json: RESULTS.md's section after the comparison's."""
COMPARE_JSON = "results_compare.json"
"""The comparison's numbers, beside results.json (the headline run's); RESULTS.md's last section is written from it."""


def tool(name: str) -> str:
    """The console script `name` of this environment (beside the running Python), else from PATH."""
    local = Path(sys.executable).parent / name
    found = str(local) if local.exists() else shutil.which(name)
    if found is None:
        sys.exit(f"reproduce: `{name}` is not installed; run `pip install -e .` first")
    return found


def flags(options: dict[str, Any]) -> list[str]:
    return [part for key, value in options.items() for part in (f"--{key}", str(value))]


class Runner:
    """Runs the CLI steps, echoing each command, and keeps (command, seconds) for the report."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.steps: list[dict[str, Any]] = []

    def reused(self, name: str, argv: list[str]) -> None:
        """A step whose output an earlier run left (`--reuse`): listed with the commands, not run."""
        self.steps.append({"command": " ".join(shlex.quote(_relative(a)) for a in [name, *argv]) + "  # output reused", "seconds": 0.0})

    def __call__(self, name: str, argv: list[str]) -> None:
        shown = " ".join(shlex.quote(_relative(a)) for a in [name, *argv])
        print(f"\n$ {shown}", flush=True)
        start = time.perf_counter()
        done = subprocess.run([tool(name), *argv], cwd=self.cwd)
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            sys.exit(f"reproduce: `{shown}` failed with exit code {done.returncode}")
        self.steps.append({"command": shown, "seconds": round(seconds, 1)})


def _relative(arg: str) -> str:
    """An absolute path under the working directory, shown relative to it (commands stay portable)."""
    here = str(Path.cwd()) + os.sep
    return arg.replace(here, "") if here in arg else arg


def machine_line() -> str:
    from t3d.trainer.evaluate import machine  # what t3d-eval records in its JSON

    m = machine()
    return (f"{m['platform']}, {os.cpu_count()} CPU cores ({m['processor']}), {m['cuda'] or 'no GPU'}, "
            f"Python {m['python']}, torch {m['torch']}")  # fmt: skip


# --- the report ----------------------------------------------------------------------------------


def _f(value: Any, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def results_table(records: list[dict[str, Any]], teacher: str) -> str:
    """Markdown table: one row per (model, setting), teacher first."""
    head = ["model", "setting", "tokens/step (measured)", "validity", "gap closure", "distinct valid / prompt",
            "marker-first rate", "agreement w/ teacher@full", "log-lik (valid)", "NFE / response", "tokens/s",
            "speed-up / NFE reduction"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    models = list(dict.fromkeys([teacher] + [r["model"] for r in records]))
    for r in sorted(records, key=lambda r: (models.index(r["model"]), not scheduled(r["strategy"]), r["tokens_per_step"])):
        extra = r.get("truth_extra") or {}
        lines.append("| " + " | ".join([
            r["model"], r["setting"], _f(r["measured_tokens_per_step"], ".2f"), _f(r["quality"]), _f(r["gap_closure"], ".2f"),
            _f(r["distinct_valid"], ".2f"), _f(extra.get("marker_first_rate")), _f(r["agreement"]),
            _f(r["log_likelihood"], ".2f"), _f(r["nfe_per_response"], ".1f"), _f(r["tokens_per_second"], ".0f"),
            _f(r["speedup_to_nfe_reduction"], ".2f"),
        ]) + " |")  # fmt: skip
    return "\n".join(lines)


def scheduled(strategy: str) -> bool:
    """Whether a reveal strategy follows the steps-per-block schedule (the registry says; no name is compared)."""
    from t3d.dllm.reveal import get_strategy

    return get_strategy(strategy).scheduled


def find(records: list[dict[str, Any]], model: str, spb: int | None = None) -> dict | None:
    """The first record of `model` at a scheduled strategy (at `spb` steps per block, if given)."""
    for r in records:
        if r["model"] == model and scheduled(r["strategy"]) and (spb is None or r["steps_per_block"] == spb):
            return r
    return None


def round_label(loss: str, r: int, seed: int, first_seed: int) -> str:
    """A student's label: `t3d` (round 1, first training seed), `t3d_s1`, `t3d_r2`, `t3d_r2_s1`, ..."""
    name = loss if r == 1 else f"{loss}_r{r}"
    return name if seed == first_seed else f"{name}_s{seed}"


def last_round(records: list[dict[str, Any]]) -> int:
    """The highest round with students in `records` (1 when there are no on-policy rounds)."""
    found = (re.fullmatch(r".+_r(\d+)(_s\d+)?", r["model"]) for r in records)
    return max((int(m.group(1)) for m in found if m), default=1)


def word_faults(samples: Path) -> dict[str, dict[str, float]]:
    """Per model, at one step per block: the share of words with each `BuiltinTask.faults` kind, and the words counted."""
    from t3d.dllm.task import FAULTS, BuiltinTask

    task, counts = BuiltinTask(), {}
    for line in samples.read_text().splitlines():
        row = json.loads(line)
        if not (scheduled(row["setting"].split()[0]) and row["setting"].endswith(" spb=1")):  # label: strategy first
            continue
        count = counts.setdefault(row["model"], dict.fromkeys(FAULTS, 0) | {"words": 0})
        prompt = task.encode(row["prompt"])
        count["words"] += len(task.categories(prompt))
        for fault in task.faults(prompt, row["tokens"]):
            count[fault] += 1
    return {model: {k: (v if k == "words" else round(v / max(c["words"], 1), 4)) for k, v in c.items()} for model, c in counts.items()}


def faults_table(faults: dict[str, dict[str, float]]) -> str:
    """Markdown: what the invalid answers at one step per block are, per model."""
    from t3d.dllm.task import FAULTS

    lines = ["| model | " + " | ".join(FAULTS) + " | words |", "|---|" + "---|" * (len(FAULTS) + 1)]
    for model, share in faults.items():
        lines.append(f"| {model} | " + " | ".join(f"{share[f]:.1%}" for f in FAULTS) + f" | {share['words']} |")
    return "\n".join(lines)


def seed_labels(records: list[dict[str, Any]], loss: str) -> list[str]:
    """The students of one loss, one per training seed: `t3d` (first seed), `t3d_s1`, ..."""
    return list(dict.fromkeys(r["model"] for r in records if r["model"] == loss or r["model"].startswith(f"{loss}_s")))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def verdicts(records: list[dict[str, Any]], teacher: str, block: int) -> list[str]:
    """The issue's targets, each with its measured number and met / missed (means over training seeds)."""
    out = []

    def line(ok: bool | None, text: str) -> None:
        out.append(f"- {'met' if ok else 'MISSED' if ok is not None else 'n/a'}: {text}")

    def at(loss: str, spb: int, key: str) -> list[float]:
        rows = [find(records, label, spb=spb) for label in seed_labels(records, loss)]
        return [r[key] for r in rows if r is not None and r[key] is not None]

    def each(values: list[float], spec: str = ".2f") -> str:
        return "" if len(values) < 2 else f"; per seed {', '.join(format(v, spec) for v in values)}"

    def fidelity(t3d: str, ce: str) -> None:
        gaps = at(t3d, 1, "gap_closure")
        if gaps:
            g = _mean(gaps)
            spread = f", spread {min(gaps):.2f}-{max(gaps):.2f}" if len(gaps) > 1 else ""
            line(g >= GAP_CLOSURE_TARGET, f"gap closure of {t3d} at {block} tokens/step = {g:.2f}{spread}{each(gaps)} "
                 f"(target >= {GAP_CLOSURE_TARGET}, stretch {GAP_CLOSURE_STRETCH}: {'met' if g >= GAP_CLOSURE_STRETCH else 'missed'})")  # fmt: skip
        for spb in (1, 2):
            a, b = at(t3d, spb, "quality"), at(ce, spb, "quality")
            if a and b:
                seeds, wins = "", sum(x > y for x, y in zip(a, b))
                if len(a) > 1:
                    seeds = f"; per seed {', '.join(f'{x:.3f} vs {y:.3f}' for x, y in zip(a, b))}: {t3d} ahead in {wins} of {len(a)}"
                line(wins == min(len(a), len(b)), f"{t3d} beats {ce} at {block // spb} tokens/step on every seed: validity "
                     f"{_mean(a):.3f} vs {_mean(b):.3f}{seeds}")  # fmt: skip

    fidelity("t3d", "ce")
    rounds = last_round(records)
    if rounds > 1:
        fidelity(f"t3d_r{rounds}", f"ce_r{rounds}")
    full = find(records, teacher, spb=block)
    distinct = at("t3d", 1, "distinct_valid")
    if distinct and full:
        half = full["distinct_valid"] / 2
        line(min(distinct) >= half, f"no collapse: t3d distinct valid responses per prompt at {block} tokens/step "
             f"{min(distinct):.2f} (lowest seed) >= half the teacher's at full steps ({full['distinct_valid']:.2f} / 2 = {half:.2f})")  # fmt: skip
    speed = [r for r in (find(records, label, spb=1) for label in seed_labels(records, "t3d")) if r and r.get("speedup_to_nfe_reduction")]
    if speed:
        t3d = min(speed, key=lambda r: r["speedup_to_nfe_reduction"])
        s_ = t3d["speedup_to_nfe_reduction"]
        line(s_ >= SPEED_TARGET, f"t3d tokens/s speed-up over the teacher at full steps = {t3d['speedup']:.2f}x for "
             f"{t3d['nfe_reduction']:.2f}x fewer network evaluations: ratio {s_:.2f} (lowest seed; target >= {SPEED_TARGET})")  # fmt: skip
    return out


def seeds_table(records: list[dict[str, Any]], block: int) -> str:
    """Validity and gap closure of every student, one row per (loss, training seed)."""
    lines = [f"| student | validity @{block} / @2 / @1 tok/step | gap closure @{block} / @2 |", "|---|---|---|"]
    rounds = [f"{loss}_r{r}" for r in range(2, last_round(records) + 1) for loss in ROUND_LOSSES]
    for loss in [*TUNED, *rounds, "paper"]:
        for label in seed_labels(records, loss):
            rows = {spb: find(records, label, spb=spb) for spb in (1, 2, block)}
            q = " / ".join(_f(r["quality"] if r else None) for r in rows.values())
            g = " / ".join(_f(rows[spb]["gap_closure"] if rows[spb] else None, ".2f") for spb in (1, 2))
            lines.append(f"| {label} | {q} | {g} |")
        gaps = [r["gap_closure"] for r in (find(records, x, spb=1) for x in seed_labels(records, loss)) if r and r["gap_closure"] is not None]
        if len(gaps) > 1:
            mean = _mean(gaps)
            std = (sum((x - mean) ** 2 for x in gaps) / (len(gaps) - 1)) ** 0.5
            lines.append(f"| {loss}: mean over {len(gaps)} seeds | | {mean:.2f} (sd {std:.2f}, {min(gaps):.2f}-{max(gaps):.2f}) / |")
    return "\n".join(lines)


def sweep_table(path: Path) -> str:
    """The validation sweep as a markdown table (val split; the numbers that chose TUNED)."""
    if not path.exists():
        return f"(no sweep results at `{path.relative_to(REPO)}`)"
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    head = ["trial", "options", "val validity @4 / @2 / @1 tok/step", "gap closure @4 / @2", "marker-first @4",
            "real / fake log-ratio", "train s"]  # fmt: skip
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        val = row["val"]
        q = " / ".join(_f(val.get(f"spb={s}", {}).get("quality")) for s in (1, 2, 4))
        g = " / ".join(_f(val.get(f"spb={s}", {}).get("gap_closure"), ".2f") for s in (1, 2))
        mf = _f((val.get("spb=1", {}).get("truth_extra") or {}).get("marker_first_rate"))
        last = row.get("last_metrics", {})
        ratios = f"{_f(last.get('real_log_ratio'), '.2f')} / {_f(last.get('fake_log_ratio'), '.2f')}"
        opts = ", ".join(f"{k}={v}" for k, v in row["options"].items())
        if row.get("data"):
            opts += f"{'; ' if opts else ''}data: {row['data']}"
        lines.append(f"| {row['name']} | {opts} | {q} | {g} | {mf} | {ratios} | {row.get('train_seconds', '-')} |")
    teacher = path.with_name(f"{path.stem}_teacher.json")  # sweep.py's teacher.json, copied beside the results
    if teacher.exists():
        t = json.loads(teacher.read_text())
        q = " / ".join(_f(t.get(str(s), {}).get("quality")) for s in (1, 2, 4))
        lines.append(f"| teacher (the anchor) | - | {q} | - | - | - | - |")
    return "\n".join(lines)


def true_marker_first_rate() -> float:
    from t3d.dllm.task import BuiltinTask

    return 1 - BuiltinTask().config.marker_second_prob


def observations(records: list[dict[str, Any]], teacher: str, block: int, faults: dict[str, dict[str, float]]) -> str:
    """What the table says beyond the targets, with its numbers (computed, not written by hand)."""
    def rate(label: str, spb: int) -> str:
        r = find(records, label, spb=spb)
        return _f(((r or {}).get("truth_extra") or {}).get("marker_first_rate"), ".2f")

    truth_first = true_marker_first_rate()
    threshold = [r for r in records if not scheduled(r["strategy"]) and r["model"] == teacher]  # EVAL's threshold
    t3d = find(records, "t3d", spb=1)
    parts = [
        f"- Diversity against the task's truth: among words with exactly one marker in their first two positions, "
        f"the truth puts it first in {truth_first:.2f} of words; the teacher's own full-step decoding does at "
        f"{rate(teacher, block)} (its confidence-ordered reveal favours the mode), and the students at one step per block "
        f"at {rate('t3d', 1)} (t3d), {rate('ce', 1)} (ce), {rate('ddo', 1)} (ddo). A per-position sampler makes the first "
        "two positions agree by always writing the marker first; that costs diversity against the truth on this one "
        "feature, while distinct valid responses per prompt stay high (column above).",
        "- Agreement with the teacher's full-step output is near 0 for every sampled setting: with thousands of valid "
        "answers per prompt, two temperature-1 samples almost never coincide. It is meaningful for greedy decoding only.",
    ]
    if threshold:
        parts.append(f"- The threshold sampler (confidence >= {threshold[0]['threshold']:g}) reveals "
                     f"{threshold[0]['measured_tokens_per_step']:.2f} tokens per step for the teacher: on this task the symbols "
                     "are uniform over 8, so confidence rarely passes the threshold and it behaves like full steps.")  # fmt: skip
    one_step = [r["tokens_per_second"] for r in records if scheduled(r["strategy"]) and r["steps_per_block"] == 1]
    if len(one_step) > 1:
        parts.append(f"- Every model here has the same architecture, so at one step per block their tokens per second "
                     f"differ only by timing noise: {min(one_step):.0f} to {max(one_step):.0f} on this machine. Read the "
                     "speed-up ratio to about +-0.2.")  # fmt: skip
    if t3d:
        teacher_first = ((find(records, teacher, spb=block) or {}).get("truth_extra") or {}).get("marker_first_rate")
        share = {k: v for k, v in faults.get("t3d", {}).items() if k != "words" and v > 0}
        kinds = ", ".join(f"{k} in {v:.1%} of words" for k, v in sorted(share.items(), key=lambda kv: -kv[1])) or "none"
        parts.append(f"- What is left at one step per block ({1 - t3d['quality']:.0%} invalid for t3d; the faults table "
                     f"below): {kinds}. A one-round student samples the first "
                     "position of a fully masked block from a marginal learnt from its trajectories, where the marker "
                     f"comes first in {_f(teacher_first, '.2f')} of the teacher's words: the rest are words it starts with "
                     "a symbol and (having learnt that the second position is not the marker) leaves without one. "
                     "An on-policy round trains on the student's own trajectories, whose marker always comes first.")  # fmt: skip
    return "\n".join(parts)


COMPARE_START, COMPARE_END = "<!-- compare: written by benchmarks/reproduce.py --compare -->", "<!-- compare end -->"


def compare_rows(records: list[dict[str, Any]], losses: list[str]) -> dict[str, dict[str, list[dict]]]:
    """{loss or teacher: {setting: [record per training seed]}}, settings in the eval's order."""
    table: dict[str, dict[str, list[dict]]] = {}
    for loss in ["teacher", *losses]:
        labels = ["teacher"] if loss == "teacher" else seed_labels(records, loss)
        for r in records:
            if r["model"] in labels:
                table.setdefault(loss, {}).setdefault(r["setting"], []).append(r)
    return table


def _stat(rows: list[dict], key: str, spec: str = ".3f") -> str:
    values = [r[key] for r in rows if r.get(key) is not None]
    if not values:
        return "-"
    if len(set(values)) == 1:
        return format(values[0], spec)
    return f"{_mean(values):{spec}} ({min(values):{spec}}-{max(values):{spec}})"


def compare_table(table: dict[str, dict[str, list[dict]]], aup: dict[str, float | None]) -> str:
    """Markdown: one row per (objective, setting), means over training seeds with their range."""
    head = ["objective", "setting", "tokens / forward", "validity", "gap closure", "distinct valid / prompt", "AUP"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for loss, settings in table.items():
        for setting, rows in settings.items():
            scores = [aup.get(r["model"]) for r in rows]
            scores = [x for x in scores if x is not None]
            a = "-" if not scores else f"{_mean(scores):.1f}" + (f" ({min(scores):.1f}-{max(scores):.1f})" if len(scores) > 1 else "")
            gap = _stat(rows, "gap_closure", ".2f") if scheduled(rows[0]["strategy"]) else "-"  # teacher ~ full there: 0 / 0
            lines.append(f"| {loss} | {setting} | {_stat(rows, 'tokens_per_forward', '.2f')} | {_stat(rows, 'quality')} | "
                         f"{gap} | {_stat(rows, 'distinct_valid', '.2f')} | {a if setting == next(iter(settings)) else ''} |")  # fmt: skip
    return "\n".join(lines)


def _pick(settings: dict[str, list[dict]], want) -> list[dict]:
    return next((rows for rows in settings.values() if want(rows[0])), [])


def compare_verdicts(table: dict[str, dict[str, list[dict]]], aup: dict[str, float | None], block: int) -> list[str]:
    """What the comparison says, each line from its numbers: the best objective per setting and AUP, and whether it
    leads on every training seed; adaptive decoding's tokens per forward where validity holds."""
    losses = [loss for loss in table if loss != "teacher"]
    spb = {f"one step per block ({block} tokens per step)": 1, "two tokens per step": block // 2}
    out = []

    def ranking(name: str, per_loss: dict[str, list[float]], spec: str) -> None:
        per_loss = {k: v for k, v in per_loss.items() if v}
        if len(per_loss) < 2:
            return
        order = sorted(per_loss, key=lambda k: -_mean(per_loss[k]))
        best, runner = order[0], order[1]
        seeds = min(len(per_loss[best]), len(per_loss[runner]))
        wins = sum(a > b for a, b in zip(per_loss[best], per_loss[runner]))
        means = ", ".join(f"{k} {_mean(per_loss[k]):{spec}}" for k in order)
        sure = "on every seed" if wins == seeds else f"on {wins} of {seeds} seeds only: not a clear lead"
        rank = f"; t3d is {order.index('t3d') + 1} of {len(order)}" if "t3d" in order and best != "t3d" else ""
        out.append(f"- {name}: {best} first, ahead of {runner} {sure} (means: {means}){rank}.")

    for name, k in spb.items():
        rows = {loss: _pick(table[loss], lambda r, k=k: scheduled(r["strategy"]) and r["steps_per_block"] == k) for loss in losses}
        ranking(f"Validity at {name}", {loss: [r["quality"] for r in v] for loss, v in rows.items()}, ".3f")
    ranking("AUP", {loss: [aup[r["model"]] for r in next(iter(table[loss].values())) if aup.get(r["model"]) is not None]
                    for loss in losses}, ".1f")  # fmt: skip
    for strategy in dict.fromkeys(r[0]["strategy"] for s in table.values() for r in s.values() if not scheduled(r[0]["strategy"])):
        held, fell = [], []
        full = _pick(table.get("teacher", {}), lambda r: scheduled(r["strategy"]) and r["steps_per_block"] == block)
        own = all(_pick(table[loss], lambda r: scheduled(r["strategy"]) and r["steps_per_block"] == block) for loss in table)
        for loss in table:
            one = _pick(table[loss], lambda r: scheduled(r["strategy"]) and r["steps_per_block"] == block) if own else full
            ada = _pick(table[loss], lambda r, s=strategy: r["strategy"] == s)
            if not one or not ada:
                continue
            drop = _mean([r["quality"] for r in one]) - _mean([r["quality"] for r in ada])
            tpf = _mean([r["tokens_per_forward"] for r in ada])
            (held if drop <= BUDGET_TOLERANCE else fell).append(f"{loss} {tpf:.2f}" + ("" if drop <= BUDGET_TOLERANCE else f" (-{drop:.3f})"))
        setting = _pick(next(iter(table.values())), lambda r, s=strategy: r["strategy"] == s)[0]["setting"]
        anchor = "the same objective's" if own else "the teacher's"
        out.append(f"- {setting}: tokens per forward where validity stays within {BUDGET_TOLERANCE} of {anchor} at one "
                   f"token per step: {', '.join(held) or 'none'}; validity fell more for: {', '.join(fell) or 'none'}.")  # fmt: skip
    return out


def reductions(options: dict[str, Any], first: dict[str, Any]) -> str:
    """What this run cut from the defaults (the preset's steps, every test prompt, 8 samples), said plainly."""
    import tomllib

    preset = tomllib.loads((REPO / "trainer" / "presets" / f"{options['common']['preset']}.toml").read_text())
    cut = []
    steps = options["budget"].get("max-steps")
    if steps is not None and steps < preset.get("max_steps", steps):
        cut.append(f"{steps} optimizer steps per student for every objective (the preset's {preset['max_steps']})")
    if options.get("eval_limit"):
        cut.append(f"the first {options['eval_limit']} test prompts")
    if first["samples_per_prompt"] < COMPARE_EVAL["samples-per-prompt"]:
        cut.append(f"{first['samples_per_prompt']} samples per prompt (not {COMPARE_EVAL['samples-per-prompt']})")
    if options["eval"].get("steps-per-block") != COMPARE_EVAL["steps-per-block"]:
        cut.append(f"static settings spb={options['eval']['steps-per-block']} only (the teacher also at one token per step)")
    if options.get("val_limit"):
        cut.append(f"the first {options['val_limit']} val prompts for the budget")
    if not cut:
        return "Nothing was reduced from the defaults."
    return ("Reduced to finish on this machine (2 shared cores, heavily loaded): " + "; ".join(cut) + ". Students this short "
            "stay close to the teacher they start from, and with these few responses a validity differs by about 0.05 "
            "by chance: read the per-seed ranges and the every-seed checks, not the means alone.")  # fmt: skip


def write_compare(docs: Path, results: dict[str, Any]) -> Path:
    """RESULTS.md's comparison section (between COMPARE_START and COMPARE_END, appended if absent) from `results`."""
    records, options = results["records"], results["options"]
    block = records[0]["block_size"]
    aup = {label: (s or {}).get("aup") for label, s in ((results.get("aup") or {}).get("models") or {}).items()}
    table = compare_rows(records, options["losses"])
    budget = options["entropy_budget"]
    grid = ", ".join(f"{b} nats: {v:.3f}" for b, v in budget["val_validity"].items())
    first = records[0]
    body = "\n".join([
        COMPARE_START,
        "## The objectives compared (issue 22)",
        "",
        f"Written {results['written_at']} by `python benchmarks/reproduce.py --compare` on {results['machine_line']}; its last "
        f"invocation took {results['total_seconds'] / 60:.1f} minutes (commands marked `output reused` ran before it, same command). Every objective trains on the same collected data "
        f"({json.dumps(options['collect'])}), from the teacher, with the same budget ({json.dumps(options['budget'])}, "
        f"{json.dumps(options['common'])}): only `--loss` differs, each at its own defaults (docs/OBJECTIVES.md); nothing "
        f"of the objectives was tuned. Test split: {first['prompts']} prompts x {first['samples_per_prompt']} samples, "
        f"eval options {json.dumps(options['eval'])}. The entropy budget ({budget['chosen']:g} nats) was chosen on the "
        f"*val* split with the teacher: the largest of the grid whose validity stays within {budget['tolerance']} of its "
        f"validity at one token per step ({budget['val_full_steps']:.3f}; grid {grid}).",
        "",
        reductions(options, first),
        "",
        "Means over the training seeds, the range over seeds in brackets; AUP (d3LLM's, over each model's settings) on "
        "each objective's first row. Tokens per forward: revealed tokens per denoising forward.",
        "",
        compare_table(table, aup),
        "",
        "What the numbers say (written by the script from them):",
        "",
        *compare_verdicts(table, aup, block),
        "",
        "Commands:",
        "",
        "```",
        *(s["command"] if s["command"].endswith("output reused") else f"{s['command']}    # {s['seconds']:.0f} s"
          for s in results["commands"]),
        "```",
        COMPARE_END,
    ])  # fmt: skip
    path = docs / "RESULTS.md"
    confidence_study().replace_section(path, COMPARE_START, COMPARE_END, body)
    return path


def write_results(docs: Path, results: dict[str, Any], sweep: Path) -> Path:
    """docs/RESULTS.md from `results` (what main writes to results.json): the prose of
    `RESULTS_TEMPLATE` with this run's numbers, verdicts and tables in its `${...}` slots."""
    records, teacher, options = results["records"], results["teacher"], results["options"]
    block, first, faults = records[0]["block_size"], records[0], results.get("faults", {})
    teacher_full, teacher_k = find(records, teacher, spb=block), find(records, teacher, spb=1)
    values = {
        "written_at": results["written_at"], "minutes": f"{results['total_seconds'] / 60:.1f}",
        "machine": results["machine_line"], "timing_repeats": options["eval"]["timing-repeats"], "block": block,
        "teacher_full": _f(teacher_full["quality"] if teacher_full else None),
        "teacher_one_step": _f(teacher_k["quality"] if teacher_k else None),
        "prompts": first["prompts"], "samples": first["samples_per_prompt"], "last_seed": first["samples_per_prompt"] - 1,
        "verdicts": "\n".join(verdicts(records, teacher, block)), "true_marker_first": f"{true_marker_first_rate():.2f}",
        "results_table": results_table(records, teacher), "seeds_table": seeds_table(records, block),
        "faults_table": faults_table(faults), "observations": observations(records, teacher, block, faults),
        "commands": "\n".join(f"{s['command']}    # {s['seconds']:.0f} s" for s in results["commands"]),
        "budget": json.dumps(options["budget"]), "tuned": json.dumps(options["tuned"]), "common": json.dumps(options["common"]),
        "sweep_table": sweep_table(sweep),
    }  # fmt: skip
    path = docs / "RESULTS.md"
    path.write_text(string.Template(RESULTS_TEMPLATE.read_text()).substitute(values))
    if (docs / COMPARE_JSON).is_file():  # the comparison's section outlives a rewrite of the rest
        write_compare(docs, json.loads((docs / COMPARE_JSON).read_text()))
    if (docs / STUDY_JSON).is_file():  # and so does the confidence study's, after it
        study = json.loads((docs / STUDY_JSON).read_text())
        confidence_study().write_section(path, study, study["command"])
    return path


def confidence_study():
    """benchmarks/confidence_study.py as a module (its section writer)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("confidence_study", Path(__file__).with_name("confidence_study.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def val_budget(run: Runner, out: Path, limit: list[str], reuse: bool = False) -> dict[str, Any]:
    """The entropy budget, chosen on the val split with the teacher: one t3d-eval per BUDGET_GRID value."""
    validity: dict[float, float] = {}
    full = None
    for budget in BUDGET_GRID:
        path = out / f"val_budget_{budget:g}.json"
        strategy = "static,entropy_bounded" if full is None else "entropy_bounded"  # the teacher's anchor comes with either
        argv = ["--model", "teacher=builtin", "--prompts", "builtin:val", "--steps-per-block", "4", "--strategy", strategy,
                "--entropy-budget", str(budget), *flags(VAL_EVAL), *limit, "--json", str(path)]  # fmt: skip
        (run.reused if reuse and path.is_file() else run)("t3d-eval", argv)
        records = json.loads(path.read_text())["records"]
        full = next(r["quality"] for r in records if scheduled(r["strategy"]))
        validity[budget] = next(r["quality"] for r in records if not scheduled(r["strategy"]))
        if validity[budget] < full - BUDGET_TOLERANCE:  # a larger budget reveals more at once: stop at the first that loses
            break
    return {"grid": list(BUDGET_GRID), "val_validity": {f"{b:g}": v for b, v in validity.items()}, "val_full_steps": full,
            "tolerance": BUDGET_TOLERANCE, "chosen": choose_budget(validity, full)}  # fmt: skip


def choose_budget(validity: dict[float, float], full: float) -> float:
    """The largest budget whose validity is within BUDGET_TOLERANCE of one token per step's (else the smallest)."""
    kept = [b for b, v in validity.items() if v >= full - BUDGET_TOLERANCE]
    return max(kept) if kept else min(validity)


def compare(args: argparse.Namespace, run: Runner, out: Path, docs: Path, data: Path, start: float) -> None:
    """Every COMPARE_LOSSES student per training seed on `data`, each seed's students then scored with the teacher
    by one t3d-eval on test (seeds run side by side with --jobs); the reports merged into one."""
    seeds = [int(x) for x in args.train_seeds.split(",")]
    steps = {"max-steps": args.max_steps} if args.max_steps else {}
    budget = val_budget(run, out, ["--limit", str(args.val_limit)] if args.val_limit else [], args.reuse)
    evals = {**COMPARE_EVAL, "samples-per-prompt": args.eval_samples, "steps-per-block": args.eval_steps_per_block}
    eval_limit = ["--limit", str(args.eval_limit)] if args.eval_limit else []

    def one_seed(seed: int) -> dict[str, Any]:
        students = {}
        for loss in COMPARE_LOSSES:
            label = round_label(loss, 1, seed, seeds[0])
            students[label] = out / "students" / label
            argv = ["--data", str(data), "--out", str(students[label]), "--loss", loss, *flags({**steps, "seed": seed}),
                    *flags(COMMON), "--no-progress"]  # fmt: skip
            if args.reuse and (students[label] / "student").is_dir():
                run.reused("t3d-distill", argv)
                continue
            shutil.rmtree(students[label], ignore_errors=True)
            run("t3d-distill", argv)
        report = out / f"eval_compare_seed{seed}.json"
        models = ["--model", "teacher=builtin"] + [a for label, p in students.items() for a in ("--model", f"{label}={p / 'student'}")]
        run("t3d-eval", [*models, *flags(evals), "--entropy-budget", str(budget["chosen"]), *eval_limit, "--json", str(report),
                         "--samples", str(out / f"samples_compare_seed{seed}.jsonl")])  # fmt: skip
        return json.loads(report.read_text())

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        reports = list(pool.map(one_seed, seeds))
    results = {
        **merge_reports(reports),
        "commands": run.steps, "total_seconds": round(time.perf_counter() - start, 1),
        "written_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine_line": machine_line(),
        "options": {"losses": list(COMPARE_LOSSES), "budget": {**steps, "seed": seeds}, "common": COMMON, "collect": COLLECT,
                    "eval": evals, "eval_limit": args.eval_limit, "val_limit": args.val_limit, "entropy_budget": budget},
    }  # fmt: skip
    (docs / COMPARE_JSON).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {docs / COMPARE_JSON}")
    path = write_compare(docs, results)
    print(f"\nwrote {path} in {results['total_seconds'] / 60:.1f} min")


def merge_reports(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """One t3d-eval report from several over the same prompts and settings, each with the teacher: the first's
    teacher (the teacher decodes the same with the same seeds in each), every report's students and their AUP."""
    merged = {**reports[0], "records": list(reports[0]["records"])}
    for report in reports[1:]:
        merged["records"] += [r for r in report["records"] if r["model"] != report["teacher"]]
        for key in ("aup", "aup_kept_tokens"):
            if (report.get(key) or {}).get("models"):
                merged[key] = {**merged[key], "models": {**report[key]["models"], **merged[key]["models"]}}
    return merged


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/reproduce", help="work directory (trajectories, students, eval outputs)")
    parser.add_argument("--docs", default=str(REPO / "docs"), help="where RESULTS.md, results.json and results.png go")
    parser.add_argument("--max-steps", type=int, default=None, help="optimizer steps per student (default: the preset's)")
    parser.add_argument("--train-seeds", default="0,1,2", help="comma list: every student is distilled once per seed")
    parser.add_argument("--no-paper", action="store_true", help="skip the `--preset paper` student")
    parser.add_argument("--rounds", type=int, default=2,
                        help=f"on-policy rounds of {' and '.join(ROUND_LOSSES)} (1: none; each round collects from the last round's student)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N train prompts (smoke runs)")
    parser.add_argument("--eval-limit", type=int, default=None, help="use only the first N test prompts (smoke runs)")
    parser.add_argument("--sweep", default=str(REPO / "docs" / "sweep_val.jsonl"), help="val sweep results to report")
    parser.add_argument("--address", default=None, help="Ray cluster for t3d-collect to join (default: a local Ray)")
    parser.add_argument("--report-only", action="store_true", help="rewrite RESULTS.md from an existing results.json, run nothing")
    parser.add_argument("--compare", action="store_true",
                        help=f"the objectives' comparison instead ({', '.join(COMPARE_LOSSES)}): writes {COMPARE_JSON} and RESULTS.md's last section")
    parser.add_argument("--reuse", action="store_true", help="--compare: keep the students and val runs already in --out (a rerun of the eval)")
    parser.add_argument("--eval-samples", type=int, default=COMPARE_EVAL["samples-per-prompt"], help="--compare: samples per test prompt")
    parser.add_argument("--jobs", type=int, default=1, help="--compare: training seeds run side by side (each its students, then its eval)")
    parser.add_argument("--eval-steps-per-block", default=COMPARE_EVAL["steps-per-block"],
                        help="--compare: the static settings (the teacher is always decoded at one token per step too)")
    parser.add_argument("--val-limit", type=int, default=None, help="--compare: use only the first N val prompts to choose the entropy budget")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be >= 1, got {args.rounds}")

    if args.report_only and args.compare:
        source = Path(args.docs) / COMPARE_JSON
        if not source.is_file():
            sys.exit(f"reproduce: no {source} to report from; run --compare without --report-only first")
        print(f"wrote {write_compare(Path(args.docs), json.loads(source.read_text()))}")
        return
    if args.report_only:
        source = Path(args.docs) / "results.json"
        if not source.is_file():
            sys.exit(f"reproduce: no {source} to report from; run without --report-only first")
        print(f"wrote {write_results(Path(args.docs), json.loads(source.read_text()), Path(args.sweep))}")
        return
    start = time.perf_counter()
    out, docs = Path(args.out).resolve(), Path(args.docs).resolve()
    out.mkdir(parents=True, exist_ok=True)
    docs.mkdir(parents=True, exist_ok=True)
    run = Runner(out)
    data = out / "trajectories"
    limit = ["--limit", str(args.limit)] if args.limit else []
    address = ["--address", args.address] if args.address else []
    collect = ["--out", str(data), *flags(COLLECT), *limit, *address, "--overwrite", "--no-progress"]
    (run.reused if args.compare and args.reuse and (data / "manifest.json").is_file() else run)("t3d-collect", collect)
    if args.compare:
        return compare(args, run, out, docs, data, start)

    students = {}
    seeds = [int(x) for x in args.train_seeds.split(",")]
    steps = {"max-steps": args.max_steps} if args.max_steps else {}

    def distil(label: str, source: Path, loss: str, seed: int, start: Path | None = None) -> None:
        """A fresh student `label` (not a resume of an older one) of `loss` on `source`, from `start` (None: the teacher)."""
        students[label] = out / "students" / label
        shutil.rmtree(students[label], ignore_errors=True)
        model = ["--model", str(start)] if start is not None else []
        run("t3d-distill", ["--data", str(source), *model, "--out", str(students[label]), "--loss", loss,
                            *flags({**BUDGET, **steps, "seed": seed}), *flags(COMMON), *flags(TUNED[loss]), "--no-progress"])  # fmt: skip

    for seed in seeds:
        for loss in TUNED:
            distil(round_label(loss, 1, seed, seeds[0]), data, loss, seed)
    for r in range(2, args.rounds + 1):
        for seed in seeds:
            for loss in ROUND_LOSSES:
                label, teacher = round_label(loss, r, seed, seeds[0]), students[round_label(loss, r - 1, seed, seeds[0])] / "student"
                round_data = out / f"trajectories_{label}"
                run("t3d-collect", ["--out", str(round_data), "--model", str(teacher), *flags(COLLECT), *limit, *address,
                                    "--overwrite", "--no-progress"])  # fmt: skip
                distil(label, round_data, loss, seed, start=teacher)
    if not args.no_paper:
        paper_data = out / "trajectories_paper"
        run("t3d-collect", ["--out", str(paper_data), *flags(PAPER_COLLECT), *limit, *address, "--overwrite", "--no-progress"])
        students["paper"] = out / "students" / "paper"
        shutil.rmtree(students["paper"], ignore_errors=True)
        paper_steps = ["--epochs", "0", *flags(steps)] if steps else []  # a smoke run's --max-steps replaces the epochs
        run("t3d-distill", ["--data", str(paper_data), "--out", str(students["paper"]), *flags(PAPER), *paper_steps,
                            "--seed", str(seeds[0]), "--no-progress"])  # fmt: skip

    report_path, plot, samples = out / "eval.json", docs / "results.png", out / "samples.jsonl"
    models = ["--model", "teacher=builtin"] + [a for loss, p in students.items() for a in ("--model", f"{loss}={p / 'student'}")]
    eval_limit = ["--limit", str(args.eval_limit)] if args.eval_limit else []
    run("t3d-eval", [*models, *flags(EVAL), *eval_limit, "--json", str(report_path), "--plot", str(plot), "--samples", str(samples)])

    total = time.perf_counter() - start
    results = {
        **json.loads(report_path.read_text()),
        "faults": word_faults(samples),
        "commands": run.steps,
        "total_seconds": round(total, 1),
        "written_at": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine_line": machine_line(),
        "options": {"budget": {**BUDGET, **steps, "seed": seeds}, "tuned": TUNED, "common": COMMON, "collect": COLLECT,
                    "eval": EVAL, "paper": {"collect": PAPER_COLLECT, "distill": PAPER},
                    "rounds": {"rounds": args.rounds, "losses": list(ROUND_LOSSES)}},
    }
    (docs / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    path = write_results(docs, results, Path(args.sweep))
    print(f"\nwrote {path}, {docs / 'results.json'}, {plot} in {total / 60:.1f} min")

if __name__ == "__main__":
    main()
