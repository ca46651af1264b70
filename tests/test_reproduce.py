"""benchmarks/reproduce.py: the target verdicts and RESULTS.md from known numbers, and one tiny end-to-end run."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reproduce = load_script("reproduce")


def record(model: str, spb: int, quality: float, *, gap=None, distinct_valid=4.0, speed=None, strategy="static") -> dict:
    return {
        "model": model, "setting": f"{strategy} B=4 spb={spb}", "strategy": strategy, "block_size": 4,
        "steps_per_block": spb if strategy == "static" else None, "tokens_per_step": 4 / spb,
        "measured_tokens_per_step": 4 / spb, "quality": quality, "gap_closure": gap, "distinct_valid": distinct_valid,
        "truth_extra": {"marker_first_rate": 0.8}, "agreement": 0.1, "log_likelihood": -18.0,
        "nfe_per_response": 16 / (4 / spb), "tokens_per_second": 1000.0, "prompts": 72, "samples_per_prompt": 8,
        "speedup": None if speed is None else speed * 4, "nfe_reduction": None if speed is None else 4.0,
        "speedup_to_nfe_reduction": speed,
    }  # fmt: skip


RECORDS = [
    record("teacher", 4, 0.98, distinct_valid=7.8),
    record("teacher", 2, 0.47),
    record("teacher", 1, 0.30),
    record("t3d", 1, 0.70, gap=(0.70 - 0.30) / (0.98 - 0.30), distinct_valid=5.6, speed=0.9),
    record("t3d", 2, 0.90, gap=(0.90 - 0.47) / (0.98 - 0.47)),
    record("ce", 1, 0.75, gap=(0.75 - 0.30) / (0.98 - 0.30)),
    record("ce", 2, 0.80, gap=(0.80 - 0.47) / (0.98 - 0.47)),
]


def test_verdicts_state_each_target_with_its_number():
    lines = reproduce.verdicts(RECORDS, "teacher", 4)
    text = "\n".join(lines)
    assert "met: gap closure of t3d at 4 tokens/step = 0.59" not in text  # 0.588 is below 0.60
    assert "MISSED: gap closure of t3d at 4 tokens/step = 0.59 (target >= 0.85" in text
    assert "MISSED: t3d beats ce at 4 tokens/step on every seed: validity 0.700 vs 0.750" in text
    assert "met: t3d beats ce at 2 tokens/step on every seed: validity 0.900 vs 0.800" in text
    assert "met: no collapse: t3d distinct valid responses per prompt at 4 tokens/step 5.60 (lowest seed) >= half" in text
    assert "met: t3d tokens/s speed-up over the teacher at full steps = 3.60x for 4.00x fewer network evaluations: ratio 0.90" in text


def test_a_met_gap_closure_and_a_slow_student_read_as_such():
    records = [dict(r) for r in RECORDS]
    records[3] = record("t3d", 1, 0.80, gap=0.87, distinct_valid=3.0, speed=0.5)
    text = "\n".join(reproduce.verdicts(records, "teacher", 4))
    assert "met: gap closure of t3d at 4 tokens/step = 0.87 (target >= 0.85, stretch 0.9: missed)" in text
    assert "MISSED: no collapse" in text and "3.00 (lowest seed) >= half the teacher's at full steps (7.80 / 2 = 3.90)" in text
    assert "MISSED: t3d tokens/s speed-up" in text


def test_training_seeds_are_averaged_and_listed():
    records = RECORDS + [record("t3d_s1", 1, 0.80, gap=0.74, distinct_valid=6.0, speed=0.85), record("ce_s1", 1, 0.70, gap=0.59)]
    text = "\n".join(reproduce.verdicts(records, "teacher", 4))
    assert "gap closure of t3d at 4 tokens/step = 0.66, spread 0.59-0.74; per seed 0.59, 0.74" in text  # mean of the two seeds
    assert "MISSED: t3d beats ce at 4 tokens/step on every seed: validity 0.750 vs 0.725; per seed 0.700 vs 0.750, 0.800 vs 0.700: t3d ahead in 1 of 2" in text
    assert "speed-up over the teacher at full steps = 3.40x" in text and "ratio 0.85 (lowest seed" in text
    table = reproduce.seeds_table(records, 4)
    assert "| t3d_s1 | 0.800 / - / - | 0.74 / - |" in table  # validity at 4 / 2 / 1 tokens per step
    assert "| ce | 0.750 / 0.800 / - | 0.66 / 0.65 |" in table
    assert "| t3d: mean over 2 seeds | | 0.66 (sd 0.11, 0.59-0.74) / |" in table


def test_results_md_holds_the_table_commands_and_sweep(tmp_path):
    sweep = tmp_path / "sweep.jsonl"
    val = {"spb=1": {"quality": 0.7, "gap_closure": 0.55, "truth_extra": {"marker_first_rate": 0.99}},
           "spb=2": {"quality": 0.9, "gap_closure": 0.8}, "spb=4": {"quality": 0.97}}  # fmt: skip
    line = {"name": "trialA", "options": {"loss": "t3d", "beta": 1.0}, "train_seconds": 12.0,
            "last_metrics": {"real_log_ratio": 0.25, "fake_log_ratio": -2.0}, "val": val}  # fmt: skip
    sweep.write_text(json.dumps(line) + "\n")
    options = {"budget": reproduce.BUDGET, "tuned": reproduce.TUNED, "common": reproduce.COMMON, "eval": reproduce.EVAL}
    results = {"records": RECORDS, "teacher": "teacher", "commands": [{"command": "t3d-collect --out x --seed 0", "seconds": 50.0}],
               "total_seconds": 600.0, "written_at": "2026-11-28 23:00 UTC", "machine_line": "a test box", "options": options}  # fmt: skip
    path = reproduce.write_results(tmp_path, results, sweep)
    text = path.read_text()
    assert "t3d-collect --out x --seed 0    # 50 s" in text
    table = [row for row in text.splitlines() if row.startswith("| t3d | static B=4 spb=1 |")]
    assert len(table) == 1 and "| 0.700 | 0.59 | 5.60 |" in table[0]
    assert "| trialA | loss=t3d, beta=1.0 | 0.700 / 0.900 / 0.970 | 0.55 / 0.80 | 0.990 | 0.25 / -2.00 | 12.0 |" in text
    assert "MISSED: t3d beats ce at 4 tokens/step" in text and "in 10.0 minutes" in text and "a test box" in text
    assert '"preset": "builtin"' in text  # the options that ran are in the report
    assert "## The `paper` preset" in text and "--fixed-states" in text


@pytest.mark.slow
@pytest.mark.ray
def test_the_whole_script_runs_small(tmp_path, ray_session):
    """Collect 4 prompts, three 2-step students, evaluate 2 test prompts: every output exists and agrees."""
    docs = tmp_path / "docs"
    argv = [sys.executable, str(REPO / "benchmarks" / "reproduce.py"), "--out", str(tmp_path / "work"), "--docs", str(docs),
            "--limit", "4", "--max-steps", "2", "--eval-limit", "2", "--train-seeds", "0", "--no-paper", "--address", ray_session.address]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((docs / "results.json").read_text())
    models = {r["model"] for r in data["records"]}
    assert models == {"teacher", "t3d", "ce", "ddo"}
    assert [c["command"].split()[0] for c in data["commands"]] == ["t3d-collect", "t3d-distill", "t3d-distill", "t3d-distill", "t3d-eval"]
    assert {r["steps_per_block"] for r in data["records"] if r["strategy"] == "static"} == {1, 2, 4}
    assert any(r["strategy"] == "threshold" for r in data["records"])
    assert (docs / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (docs / "RESULTS.md").read_text()
    assert "| t3d | static B=4 spb=1 |" in text and "--loss ce" in text and "## Targets" in text
    (docs / "RESULTS.md").unlink()
    again = subprocess.run([*argv, "--report-only"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and (docs / "RESULTS.md").read_text() == text  # same numbers, same document
