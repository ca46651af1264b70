"""benchmarks/sweep.py: one tiny trial on the val split, its result line, and resuming a finished sweep."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from t3d.dllm import SamplerConfig
from t3d.dllm.task import BuiltinTask

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "sweep.py"


@pytest.mark.slow
def test_a_trial_is_scored_on_val_and_not_rerun(tmp_path, kit):
    prompts = [list(p) for p in BuiltinTask().prompts("train")[:8]]
    cfg = SamplerConfig(max_new_tokens=16, block_size=4, steps_per_block=4, temperature=1.0, logits_top_k=4)
    data = kit.collect(tmp_path / "data", "builtin", prompts=prompts, shards=2, cfg=cfg)
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps([{"name": "tiny", "loss": "t3d", "max_steps": 2, "batch_size": 4, "beta": 1.0}]))
    argv = [sys.executable, str(SCRIPT), "--data", str(data), "--grid", str(grid), "--out", str(tmp_path / "sweep"),
            "--limit", "3", "--samples-per-prompt", "2", "--threads", "1"]  # fmt: skip
    first = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    lines = (tmp_path / "sweep" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    assert result["name"] == "tiny" and result["options"]["beta"] == 1.0
    assert set(result["val"]) == {"spb=1", "spb=2", "spb=4"}
    assert all(0.0 <= v["quality"] <= 1.0 for v in result["val"].values())
    assert result["val"]["spb=4"]["gap_closure"] is None  # full steps: no gap to close
    assert "real_log_ratio" in result["last_metrics"] and "fake_log_ratio" in result["last_metrics"]
    teacher = json.loads(first.stdout.splitlines()[0])["teacher_val"]
    assert set(teacher) == {"1", "2", "4"}

    again = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and len((tmp_path / "sweep" / "results.jsonl").read_text().splitlines()) == 1
