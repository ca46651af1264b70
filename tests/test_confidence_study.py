"""benchmarks/confidence_study.py: reveals classed by the task's rule, and the finding worded from known numbers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from t3d.dllm.task import BuiltinTask

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("bench_confidence_study", REPO / "benchmarks" / "confidence_study.py")
study = importlib.util.module_from_spec(spec)
spec.loader.exec_module(study)


def test_a_reveal_is_classed_by_what_its_word_already_shows():
    task = BuiltinTask()
    prompt = [task.prompt_ids([0, 1])[0], task.prompt_ids([0, 1])[1]]  # two words: categories 0 and 1
    m0, m1 = (int(task.marker_ids[c]) for c in (0, 1))
    s0, s1 = int(task.alphabets[0][0]), int(task.alphabets[1][0])
    # word 0: marker first (step 0), then its partner (step 1): a symbol after the marker.
    # word 1: a symbol first (step 4, at the second position while both were masked), then the marker (step 5).
    tokens = np.array([m0, s0, s0, s0, m1, s1, s1, s1, task.eos_id] + [task.eos_id] * 7)
    step = np.array([0, 1, 2, 3, 5, 4, 6, 7, 8] + [-1] * 7)
    got = {i: (kind, round(p, 3)) for i, kind, p in study.reveal_classes(task, prompt, tokens, step)}
    assert got[0] == ("pair", 0.8) and got[1] == ("symbol", 0.125) and got[2] == ("symbol", 0.125)
    assert got[5] == ("pair", 0.2) and got[4] == ("one", 1.0)  # the marker once its partner shows a symbol
    assert got[8] == ("one", 1.0) and 9 not in got  # <eos>; padding is no reveal


def model(name: str, one: float, pair: float, symbol: float, letters: float = 0.13) -> dict:
    """letters: the median confidence on the symbols (a calibrated model's is 0.125)."""

    def cls(at: float) -> dict:
        return {"reveals": 10, "at_threshold": at, "median": 0.5, "p90": 0.9, "mean": 0.5}

    calibrated = {"one": cls(1.0), "pair": cls(0.0), "symbol": cls(0.0) | {"median": 0.125}}
    return {"model": name, "validity": 0.99, "share": {"one": 0.1, "pair": 0.2, "symbol": 0.7},
            "confidence": {"one": cls(one), "pair": cls(pair), "symbol": cls(symbol) | {"median": letters}},
            "calibrated": calibrated}  # fmt: skip


def test_the_finding_names_the_task_or_the_objective_from_the_numbers(tmp_path):
    task_like = {"threshold": 0.9, "models": [model("teacher", 1.0, 0.0, 0.0), model("t3d", 1.0, 0.5, 0.01)]}
    text = study.finding(task_like)
    assert "So the ceiling is the task's" in text and "Sharper than the teacher on the marker's position: t3d" in text
    assert "on the letters" not in text  # t3d's letters at 0.13: calibrated
    sharp = {**task_like, "models": [*task_like["models"], model("certainty", 1.0, 0.9, 0.0, letters=0.53)]}
    assert "on the letters, though under the threshold: median confidence certainty 0.530 where it is 0.125" in study.finding(sharp)
    collapsed = {"threshold": 0.9, "models": [model("teacher", 1.0, 0.0, 0.0), model("ce", 0.5, 0.0, 0.2)]}
    text = study.finding(collapsed)
    assert "So the ceiling is the task's" not in text and "ce pass 0.9 on more than 5% of the symbols" in text
    assert "What the objective changes: ce stay under 0.9 on more than 10% of the one-valid reveals" in text
    path = tmp_path / "RESULTS.md"
    path.write_text("# Results\n")
    for _ in range(2):
        study.write_section(path, {**task_like, "prompts": 2, "split": "test", "samples_per_prompt": 1}, "python x")
    assert path.read_text().count("## Why confidences stay under the threshold") == 1 and path.read_text().startswith("# Results\n")
