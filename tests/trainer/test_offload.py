"""`--offload`: FSDP2 with torch's CPUOffloadPolicy trains the same weights as FSDP2 without it,
and an interrupted offloaded run resumes exactly (2 gloo workers, spawned, no Ray); on one
worker (FSDP2 over a process group of one, in this process) it trains the plain loop's weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from gloo_workers import run_workers

from t3d.trainer import checkpoint as ckpt
from t3d.trainer.build import Dist
from t3d.trainer.config import build_config
from t3d.trainer.loop import train
from t3d.trainer.sharding import is_offloaded

LOSS_KEYS = ("loss", "ddo", "path", "grad_norm")


def _truncate(out: Path, part: Path, step: int) -> None:
    """`part`: `out` as a run interrupted right after the checkpoint of `step`."""
    shutil.copytree(out, part)
    for later in (p for p in (part / "checkpoints").glob("step-*") if p.name != ckpt.step_name(step)):
        shutil.rmtree(later)
    shutil.rmtree(part / "student")
    (part / "checkpoints" / ckpt.LATEST).write_text(ckpt.step_name(step) + "\n")
    lines = (part / "metrics.jsonl").read_text().splitlines()
    (part / "metrics.jsonl").write_text("\n".join(lines[:step]) + "\n")


def runs_on_a_worker(rank: int, world: int, flags: dict) -> bool:
    """In a spawned gloo worker: FSDP2, FSDP2 with offload, and the offloaded run resumed at step 2."""
    dist = Dist(rank=rank, world=world)
    out = Path(flags["out"])
    train(build_config(flags | {"out": str(out / "plain")}), dist, log=lambda *a: None)
    offload = flags | {"out": str(out / "offload"), "offload": True}
    result = train(build_config(offload), dist, log=lambda *a: None)
    offloaded = is_offloaded(result.model.net)
    if rank == 0:
        _truncate(out / "offload", out / "part", step=2)
    torch.distributed.barrier()
    train(build_config(offload | {"out": str(out / "part"), "resume": True}), dist, log=lambda *a: None)
    return offloaded


def _curve(out: Path) -> list[dict]:
    return [{k: json.loads(line)[k] for k in LOSS_KEYS} for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_offload_is_refused_over_ddp_workers(kit, teachers, datasets, tmp_path):
    from t3d.dllm.errors import UserError

    flags = kit.flags(datasets["block_causal"], teachers["block_causal"], tmp_path, offload=True, num_workers=2)
    with pytest.raises(UserError, match="--offload needs --strategy fsdp with 2 workers"):
        build_config(flags)
    assert build_config(flags | {"strategy": "fsdp"}).dist.offload
    assert build_config(flags | {"num_workers": 1}).dist.offload  # one worker: FSDP2 over itself, whatever is named


def test_offload_on_one_worker_trains_the_plain_loops_weights_and_resumes(kit, teachers, datasets, tmp_path):
    flags = kit.flags(datasets["block_causal"], teachers["block_causal"], tmp_path, batch_size=2, max_steps=4,
                      save_every=2, warmup_steps=1)  # fmt: skip
    train(build_config(flags | {"out": str(tmp_path / "plain")}), log=lambda *a: None)
    offload = flags | {"out": str(tmp_path / "offload"), "offload": True}
    result = train(build_config(offload), log=lambda *a: None)
    assert is_offloaded(result.model.net)
    assert not torch.distributed.is_initialized()  # the group of one is gone with the run
    _truncate(tmp_path / "offload", tmp_path / "part", step=2)
    train(build_config(offload | {"out": str(tmp_path / "part"), "resume": True}), log=lambda *a: None)
    plain, offloaded, resumed = (kit.weights(tmp_path / name / "student") for name in ("plain", "offload", "part"))
    worst = max(float(np.abs(plain[k] - offloaded[k]).max()) for k in plain)
    print(json.dumps({"one_worker_offload_vs_plain_max_abs_weight_diff": worst}))
    assert worst <= 1e-6, worst  # fp32; FSDP2 over one process reduces nothing, only where the shards live differs
    assert any(not np.array_equal(plain[k], kit.weights(teachers["block_causal"])[k]) for k in plain)  # it trained
    for a, b in zip(_curve(tmp_path / "plain"), _curve(tmp_path / "offload")):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-6)
    assert _curve(tmp_path / "part") == _curve(tmp_path / "offload")  # resumed == uninterrupted, bit for bit
    assert all(np.array_equal(offloaded[k], resumed[k]) for k in offloaded)


@pytest.mark.slow
def test_offload_trains_the_same_weights_and_resumes_exactly(kit, teachers, datasets, tmp_path):
    flags = kit.flags(datasets["block_causal"], teachers["block_causal"], tmp_path, batch_size=2, num_workers=2,
                      strategy="fsdp", max_steps=4, save_every=2, warmup_steps=1)  # fmt: skip
    assert run_workers(__file__, "runs_on_a_worker", (flags,), tmp_path / "store") == [True, True]
    plain, offload, resumed = (kit.weights(tmp_path / name / "student") for name in ("plain", "offload", "part"))
    worst = max(float(np.abs(plain[k] - offload[k]).max()) for k in plain)
    print(json.dumps({"offload_vs_fsdp_max_abs_weight_diff": worst}))
    assert worst <= 1e-6, worst  # fp32; the same reductions on the same shards, only where they run differs
    assert any(not np.array_equal(plain[k], kit.weights(teachers["block_causal"])[k]) for k in plain)  # it trained
    for a, b in zip(_curve(tmp_path / "plain"), _curve(tmp_path / "offload")):
        assert b == pytest.approx(a, rel=1e-5, abs=1e-6)
    assert _curve(tmp_path / "part") == _curve(tmp_path / "offload")  # resumed == uninterrupted, bit for bit
    assert all(np.array_equal(offload[k], resumed[k]) for k in offload)


@pytest.mark.parametrize("family", ["sdar", "llada", "dream"])
def test_offload_on_one_worker_matches_the_plain_loop_on_the_real_layouts(family, real_fixtures, kit, tmp_path):
    teacher = real_fixtures / family
    data = kit.collect(tmp_path / "data", teacher, prompts=4, shards=1)
    flags = {"data": str(data), "model": str(teacher), "max_steps": 2, "save_every": 0, "batch_size": 2, "device": "cpu",
             "progress": False, "warmup_steps": 0, "lr": 1e-3}  # fmt: skip
    train(build_config(flags | {"out": str(tmp_path / "plain")}), log=lambda *a: None)
    result = train(build_config(flags | {"out": str(tmp_path / "offload"), "offload": True}), log=lambda *a: None)
    assert is_offloaded(result.model.net)
    plain, offloaded = (kit.weights(tmp_path / name / "student") for name in ("plain", "offload"))
    start = kit.weights(teacher)
    assert plain.keys() == offloaded.keys() == start.keys()  # the family's own tensor names
    assert any(not np.array_equal(plain[k], start[k]) for k in plain)  # it trained
    assert max(float(np.abs(plain[k] - offloaded[k]).max()) for k in plain) <= 1e-6

