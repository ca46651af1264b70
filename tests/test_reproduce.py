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


def test_round_students_get_their_own_verdicts_and_rows():
    records = RECORDS + [record("t3d_r2", 1, 0.95, gap=0.93), record("t3d_r2", 2, 0.97), record("ce_r2", 1, 0.96, gap=0.97),
                         record("ce_r2", 2, 0.96), record("t3d_r2_s1", 1, 0.90, gap=0.88), record("ce_r2_s1", 1, 0.80, gap=0.75)]  # fmt: skip
    assert reproduce.last_round(records) == 2 and reproduce.last_round(RECORDS) == 1
    assert [reproduce.round_label("ce", r, s, 0) for r, s in ((1, 0), (1, 2), (2, 0), (3, 1))] == ["ce", "ce_s2", "ce_r2", "ce_r3_s1"]
    text = "\n".join(reproduce.verdicts(records, "teacher", 4))
    assert "met: gap closure of t3d_r2 at 4 tokens/step = 0.91, spread 0.88-0.93; per seed 0.93, 0.88" in text
    assert "MISSED: t3d_r2 beats ce_r2 at 4 tokens/step on every seed: validity 0.925 vs 0.880; per seed 0.950 vs 0.960, " \
           "0.900 vs 0.800: t3d_r2 ahead in 1 of 2" in text
    assert "MISSED: gap closure of t3d at 4 tokens/step = 0.59" in text  # round 1 keeps its own lines
    table = reproduce.seeds_table(records, 4)
    assert "| t3d_r2_s1 | 0.900 / - / - | 0.88 / - |" in table and "| ce_r2: mean over 2 seeds | | 0.86 (sd 0.16" in table


def test_word_faults_count_words_at_one_step_per_block(tmp_path):
    rows = [("t3d", "static B=4 spb=1", "c0 c1", "M0 a b d M1 d f g <eos>"),
            ("t3d", "static B=4 spb=1", "c0 c1", "a b b d M1 M1 f g <eos>"),
            ("t3d", "static B=4 spb=1", "c0 c0 c1", "M0 a b d M0 a b"),
            ("t3d", "static B=4 spb=4", "c0 c1", "a b b d a b b d <eos>"),
            ("ce", "static B=4 spb=1", "c0 c1", "M0 c b d M1 d f g <eos>")]  # fmt: skip
    from t3d.dllm.task import BuiltinTask

    task = BuiltinTask()
    lines = [json.dumps({"model": m, "setting": s, "prompt": p, "tokens": task.encode(r)}) for m, s, p, r in rows]
    (tmp_path / "samples.jsonl").write_text("\n".join(lines) + "\n")
    faults = reproduce.word_faults(tmp_path / "samples.jsonl")
    assert faults["t3d"] == {"length": round(1 / 7, 4), "no marker": round(1 / 7, 4), "two markers": round(1 / 7, 4),
                             "foreign token": 0.0, "words": 7}  # fmt: skip
    assert faults["ce"]["foreign token"] == 0.5 and faults["ce"]["words"] == 2
    assert "| ce | 0.0% | 0.0% | 0.0% | 50.0% | 2 |" in reproduce.faults_table(faults)


def test_results_md_holds_the_table_commands_and_sweep(tmp_path):
    sweep = tmp_path / "sweep.jsonl"
    val = {"spb=1": {"quality": 0.7, "gap_closure": 0.55, "truth_extra": {"marker_first_rate": 0.99}},
           "spb=2": {"quality": 0.9, "gap_closure": 0.8}, "spb=4": {"quality": 0.97}}  # fmt: skip
    line = {"name": "trialA", "options": {"loss": "t3d", "beta": 1.0}, "train_seconds": 12.0,
            "last_metrics": {"real_log_ratio": 0.25, "fake_log_ratio": -2.0}, "val": val}  # fmt: skip
    sweep.write_text(json.dumps(line) + "\n")
    options = {"budget": reproduce.BUDGET, "tuned": reproduce.TUNED, "common": reproduce.COMMON, "eval": reproduce.EVAL}
    results = {"records": RECORDS, "teacher": "teacher", "commands": [{"command": "t3d-collect --out x --seed 0", "seconds": 50.0}],
               "total_seconds": 600.0, "written_at": "2026-11-28 23:00 UTC", "machine_line": "a test box", "options": options,
               "faults": {"t3d": {"length": 0.0, "no marker": 0.05, "two markers": 0.0, "foreign token": 0.02, "words": 100}}}  # fmt: skip
    path = reproduce.write_results(tmp_path, results, sweep)
    text = path.read_text()
    assert "t3d-collect --out x --seed 0    # 50 s" in text
    table = [row for row in text.splitlines() if row.startswith("| t3d | static B=4 spb=1 |")]
    assert len(table) == 1 and "| 0.700 | 0.59 | 5.60 |" in table[0]
    assert "| trialA | loss=t3d, beta=1.0 | 0.700 / 0.900 / 0.970 | 0.55 / 0.80 | 0.990 | 0.25 / -2.00 | 12.0 |" in text
    assert "MISSED: t3d beats ce at 4 tokens/step" in text and "in 10.0 minutes" in text and "a test box" in text
    assert '"preset": "builtin"' in text  # the options that ran are in the report
    assert "| t3d | 0.0% | 5.0% | 0.0% | 2.0% | 100 |" in text
    assert "(30% invalid for t3d; the faults table below): no marker in 5.0% of words, foreign token in 2.0% of words." in text
    assert "## The `paper` preset" in text and "--fixed-states" in text


def test_the_committed_results_md_is_the_template_filled_from_results_json(tmp_path):
    """The findings live in docs/RESULTS.template.md, the numbers in docs/results.json; together they are docs/RESULTS.md."""
    docs = REPO / "docs"
    for name in (reproduce.COMPARE_JSON, reproduce.STUDY_JSON):  # the comparison's and the study's sections end RESULTS.md
        if (docs / name).is_file():
            (tmp_path / name).write_text((docs / name).read_text())
    path = reproduce.write_results(tmp_path, json.loads((docs / "results.json").read_text()), docs / "sweep_val.jsonl")
    assert path.read_text() == (docs / "RESULTS.md").read_text()
    assert "${" not in path.read_text() and "${verdicts}" in reproduce.RESULTS_TEMPLATE.read_text()


def compare_record(model: str, spb: int | None, quality: float, tpf: float | None = None, strategy: str = "static") -> dict:
    r = record(model, spb or 4, quality, strategy=strategy)
    return r | {"tokens_per_forward": tpf if tpf is not None else 4 / (spb or 4)} | (
        {} if strategy == "static" else {"setting": f"{strategy} B=4 t=0.9", "steps_per_block": None})


# Two objectives over two seeds: ce leads at one step per block on both seeds, t3d at two tokens
# per step on one seed only (its mean ahead); under the threshold t3d keeps its validity, ce loses 0.05.
COMPARE = [
    compare_record("teacher", 4, 0.98), compare_record("teacher", 1, 0.30), compare_record("teacher", None, 0.98, 1.0, "threshold"),
    compare_record("t3d", 4, 0.95), compare_record("t3d", 1, 0.60), compare_record("t3d", 2, 0.90),
    compare_record("t3d", None, 0.945, 1.5, "threshold"),
    compare_record("t3d_s1", 4, 0.95), compare_record("t3d_s1", 1, 0.62), compare_record("t3d_s1", 2, 0.70),
    compare_record("t3d_s1", None, 0.95, 1.3, "threshold"),
    compare_record("ce", 4, 0.96), compare_record("ce", 1, 0.70), compare_record("ce", 2, 0.80),
    compare_record("ce", None, 0.91, 1.2, "threshold"),
    compare_record("ce_s1", 4, 0.96), compare_record("ce_s1", 1, 0.72), compare_record("ce_s1", 2, 0.78),
    compare_record("ce_s1", None, 0.91, 1.2, "threshold"),
]  # fmt: skip
COMPARE_AUP = {"teacher": 120.0, "t3d": 150.0, "t3d_s1": 140.0, "ce": 130.0, "ce_s1": 100.0}


def test_compare_verdicts_rank_by_the_seed_means_and_say_when_a_lead_is_not_on_every_seed():
    table = reproduce.compare_rows(COMPARE, ["t3d", "ce"])
    assert [r["model"] for r in table["t3d"]["static B=4 spb=1"]] == ["t3d", "t3d_s1"]
    text = "\n".join(reproduce.compare_verdicts(table, COMPARE_AUP, 4))
    assert "Validity at one step per block (4 tokens per step): ce first, ahead of t3d on every seed (means: ce 0.710, t3d 0.610)" in text
    assert "Validity at two tokens per step: t3d first, ahead of ce on 1 of 2 seeds only: not a clear lead" in text
    assert "AUP: t3d first, ahead of ce on every seed (means: t3d 145.0, ce 115.0)" in text
    assert "threshold B=4 t=0.9: tokens per forward where validity stays within 0.01 of the same objective's at one token " \
           "per step: teacher 1.00, t3d 1.40; validity fell more for: ce 1.20 (-0.050)" in text
    no_own = [r for r in COMPARE if r["model"] == "teacher" or r["steps_per_block"] != 4]  # students not at one token per step
    text = "\n".join(reproduce.compare_verdicts(reproduce.compare_rows(no_own, ["t3d", "ce"]), COMPARE_AUP, 4))
    assert "within 0.01 of the teacher's at one token per step: teacher 1.00; validity fell more for: t3d 1.40 (-0.032), ce 1.20 (-0.070)" in text


def test_compare_section_is_written_into_results_md_and_replaced_on_a_rewrite(tmp_path):
    (tmp_path / "RESULTS.md").write_text("# Results\n\nthe headline run\n")
    budget = {"grid": [0.5, 2.5], "val_validity": {"0.5": 0.98, "2.5": 0.9}, "val_full_steps": 0.98, "tolerance": 0.01, "chosen": 0.5}
    results = {"records": COMPARE, "aup": {"models": {k: {"aup": v} for k, v in COMPARE_AUP.items()}},
               "commands": [{"command": "t3d-distill --loss ce", "seconds": 30.0}], "total_seconds": 120.0,
               "written_at": "2026-12-07 12:00 UTC", "machine_line": "a test box",
               "options": {"losses": ["t3d", "ce"], "budget": {"max-steps": 400, "seed": [0, 1]}, "common": reproduce.COMMON,
                           "collect": reproduce.COLLECT, "eval": reproduce.COMPARE_EVAL, "entropy_budget": budget}}  # fmt: skip
    reproduce.write_compare(tmp_path, results)
    text = reproduce.write_compare(tmp_path, results).read_text()  # twice: one section
    assert text.startswith("# Results\n\nthe headline run\n") and text.count("## The objectives compared") == 1
    assert "| t3d | static B=4 spb=1 | 4.00 | 0.610 (0.600-0.620) | - | 4.00 |  |" in text  # seed means (range)
    assert "| t3d | static B=4 spb=4 | 1.00 | 0.950 | - | 4.00 | 145.0 (140.0-150.0) |" in text  # AUP on the first row
    assert "(0.980; grid 0.5 nats: 0.980, 2.5 nats: 0.900)" in text and "t3d-distill --loss ce    # 30 s" in text


def test_rounds_below_one_are_refused_before_anything_runs(tmp_path):
    argv = [sys.executable, str(REPO / "benchmarks" / "reproduce.py"), "--out", str(tmp_path / "work"), "--rounds", "0"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--rounds must be >= 1, got 0" in done.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "work").exists()


@pytest.mark.slow
@pytest.mark.ray
def test_the_whole_script_runs_small(tmp_path, ray_session):
    """Collect 4 prompts, three 2-step students, evaluate 2 test prompts: every output exists and agrees."""
    docs = tmp_path / "docs"
    argv = [sys.executable, str(REPO / "benchmarks" / "reproduce.py"), "--out", str(tmp_path / "work"), "--docs", str(docs),
            "--limit", "4", "--max-steps", "2", "--eval-limit", "2", "--train-seeds", "0", "--no-paper", "--rounds", "2",
            "--address", ray_session.address]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    data = json.loads((docs / "results.json").read_text())
    models = {r["model"] for r in data["records"]}
    assert models == {"teacher", "t3d", "ce", "ddo", "t3d_r2", "ce_r2"}
    commands = [c["command"] for c in data["commands"]]
    assert [c.split()[0] for c in commands] == ["t3d-collect", *["t3d-distill"] * 3, *["t3d-collect", "t3d-distill"] * 2, "t3d-eval"]
    assert all("work/students/t3d/student --" in commands[i] for i in (4, 5))  # round 2 collects from and starts at round 1
    assert set(data["faults"]) == models and data["faults"]["t3d"]["words"] > 0
    assert {r["steps_per_block"] for r in data["records"] if r["strategy"] == "static"} == {1, 2, 4}
    assert any(r["strategy"] == "threshold" for r in data["records"])
    assert (docs / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = (docs / "RESULTS.md").read_text()
    assert "| t3d | static B=4 spb=1 |" in text and "--loss ce" in text and "## Targets" in text
    (docs / "RESULTS.md").unlink()
    again = subprocess.run([*argv, "--report-only"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0 and (docs / "RESULTS.md").read_text() == text  # same numbers, same document
