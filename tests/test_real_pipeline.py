"""The whole pipeline on SDAR, LLaDA and Dream checkpoints laid out like a user's download.

On each *pristine* fixture of ../shared/realckpt (the families' files as published, whose own
.py files do not even import here), without --trust-remote-code, as a user runs it:
t3d-collect -> t3d-inspect -> t3d-distill (a few steps) -> t3d-eval; then the student, saved
in its teacher's format, is loaded by the family's own code (the `-compat` variant's .py files,
import shims only) and must compute the logits t3d computes (fp32, max |diff| <= 1e-5).
Skipped, with the reason, where ../shared/realckpt is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from t3d.dllm import load_model
from t3d.storage_schemas import Dataset

REALCKPT = Path(__file__).parents[1].parent / "shared" / "realckpt"
BLOCK, LENGTH = 4, 8
PROMPTS = ["hello world", "a b c d e", "the quick brown fox jumps", "x"]  # chat-wrapped: several lengths mod B

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not REALCKPT.is_dir(), reason=f"the real-checkpoint fixtures need {REALCKPT} (shared/ beside the repo)"),
]


def cli(name: str, *args, timeout: float = 300) -> subprocess.CompletedProcess:
    """An installed console script in a subprocess, as a user runs it; fails the test with its stderr."""
    script = Path(sys.executable).parent / name
    result = subprocess.run([str(script), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                            env=os.environ.copy())  # fmt: skip
    assert result.returncode == 0, f"{name} exited {result.returncode}:\n{result.stderr[-3000:]}"
    assert "Traceback" not in result.stderr
    return result


def check_alignment(data: Path, teacher) -> None:
    """Absolute blocks: row i decoded [0, L - r_i) (r_i = prompt length mod B), the rest is padding."""
    rows = Dataset.open(data).scan().collect()
    assert rows.height == len(PROMPTS) * 2
    lengths = {len(p) % BLOCK for p in rows["prompt_ids"].to_list()}
    assert len(lengths) > 1, f"the prompts should end at several offsets in a block, got {lengths}"
    for prompt, reveal in zip(rows["prompt_ids"].to_list(), rows["reveal_step"].to_list()):
        tail = len(prompt) % BLOCK if teacher.family.absolute_blocks else 0
        assert all(s < 0 for s in reveal[LENGTH - tail :]), (len(prompt), reveal)


@pytest.mark.parametrize("name", ["sdar", "llada", "dream"])
def test_collect_inspect_distill_eval_and_the_student_runs_in_its_familys_own_code(
    real_fixtures, ray_session, upstream, tmp_path, name
):
    teacher_dir = real_fixtures / name
    teacher = load_model(teacher_dir)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    data, run = tmp_path / "data", tmp_path / "run"
    cli("t3d-collect", "--model", teacher_dir, "--prompts", prompts, "--out", data, "--max-new-tokens", LENGTH,
        "--block-size", BLOCK, "--rollouts-per-prompt", 2, "--shard-size", 2, "--address", ray_session.address,
        "--num-workers", 1, "--cpus-per-worker", 1, "--no-progress")  # fmt: skip
    check_alignment(data, teacher)
    inspected = cli("t3d-inspect", data).stdout
    assert f"({name}, fingerprint" in inspected and "rows        8" in inspected
    distilled = cli("t3d-distill", "--data", data, "--model", teacher_dir, "--out", run, "--max-steps", 2,
                    "--batch-size", 4, "--global-batch", 4, "--device", "cpu", "--no-progress", "--lr", "1e-3").stdout  # fmt: skip
    assert f"({name}, float32," in distilled
    assert "preset auto: paper-2b" in distilled  # a published family's checkpoint gets the paper recipe of its size
    student = run / "student"
    assert (student / "config.json").read_bytes() == (teacher_dir / "config.json").read_bytes()
    assert json.loads((student / "t3d.json").read_text())["family"] == name
    report = tmp_path / "eval.json"
    evaluated = cli("t3d-eval", "--model", f"teacher={teacher_dir}", "--model", f"student={student}",
                    "--prompts", prompts, "--limit", 2, "--max-new-tokens", LENGTH, "--block-size", BLOCK,
                    "--steps-per-block", "4,1", "--samples-per-prompt", 1, "--json", report)  # fmt: skip
    assert f"teacher ({name}, float32), student ({name}, float32)" in evaluated.stderr
    assert {r["model"] for r in json.loads(report.read_text())["records"]} == {"teacher", "student"}
    reloaded = load_model(student)
    assert reloaded.family.name == name and reloaded.native
    own = upstream.net(student, real_fixtures / f"{name}-compat", tmp_path / "own")
    worst = upstream.parity(reloaded, own, lengths=(5, 9, 12))
    print(f"{name}: student logits, t3d vs the family's own code: max |diff| {worst:.3g}")
    assert worst <= 1e-5, f"{name}: max |diff| {worst}"
