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
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

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


def _rope_fix(net: torch.nn.Module, config: dict) -> None:
    """transformers 5 leaves remote code's RoPE inv_freq uninitialised: give it its analytic value."""
    heads = config.get("num_attention_heads") or config.get("n_heads")
    head_dim = config.get("head_dim") or (config.get("hidden_size") or config["d_model"]) // heads
    true = 1.0 / float(config["rope_theta"]) ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
    for module in net.modules():
        if hasattr(module, "inv_freq"):
            module.inv_freq = true
            if hasattr(module, "original_inv_freq"):
                module.original_inv_freq = true


def own_code(student: Path, compat: Path, work: Path) -> torch.nn.Module:
    """The student loaded by its family's own code: a copy with the `-compat` .py files, fp32, eval mode."""
    from transformers import AutoModel, AutoModelForCausalLM

    shutil.copytree(student, work)
    for file in compat.glob("*.py"):
        shutil.copy2(file, work / file.name)
    config = json.loads((work / "config.json").read_text())
    cls = AutoModelForCausalLM if "AutoModelForCausalLM" in config.get("auto_map", {}) else AutoModel
    net = cls.from_pretrained(work, trust_remote_code=True, dtype=torch.float32, local_files_only=True).eval()
    _rope_fix(net, config)
    return net


def parity(model, net: torch.nn.Module, lengths=(5, 9, 12)) -> float:
    """Max |t3d - own code| logits over unpadded rows; a block-causal family's code gets its 0/1 keep-mask."""
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for n in lengths:
        ids = torch.randint(0, 300, (1, n), generator=g)
        kwargs = {}
        if model.family.block_causal:
            blocks = torch.arange(n) // BLOCK
            kwargs = {"attention_mask": (blocks[None, :] <= blocks[:, None])[None, None],
                      "position_ids": torch.arange(n)[None]}  # fmt: skip
        with torch.no_grad():
            ours = model.logits(ids, prompt_len=n, block_size=BLOCK)[0]
            theirs = model.family.align(net(input_ids=ids, **kwargs).logits)[0]
        first = 1 if model.family.shifted else 0
        worst = max(worst, float((ours[first:] - theirs[first:]).abs().max()))
    return worst


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
    real_fixtures, ray_session, tmp_path, name
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
                    "--batch-size", 4, "--device", "cpu", "--no-progress", "--lr", "1e-3").stdout  # fmt: skip
    assert f"({name}, float32," in distilled
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
    worst = parity(reloaded, own_code(student, real_fixtures / f"{name}-compat", tmp_path / "own"))
    print(f"{name}: student logits, t3d vs the family's own code: max |diff| {worst:.3g}")
    assert worst <= 1e-5, f"{name}: max |diff| {worst}"
