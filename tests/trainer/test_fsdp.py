"""`--strategy fsdp`: FSDP2 on 2 Ray Train CPU workers (gloo) against 1 worker, and exact resume."""

import json
import shutil

import numpy as np
import pytest

from t3d.trainer import checkpoint as ckpt
from t3d.trainer.config import build_config
from t3d.trainer.loop import train
from t3d.trainer.ray_train import WORKERS, run_distributed

LOSS_KEYS = ("loss", "ddo", "path", "grad_norm", "real_log_ratio", "fake_log_ratio")


def _curve(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.ray
@pytest.mark.slow
def test_fsdp_on_two_workers_equals_one_worker_and_resumes_exactly(ray_session, kit, teachers, datasets, tmp_path):
    family = "block_causal"
    common = dict(max_steps=4, save_every=2, grad_accum=2, warmup_steps=1, round_every=2, random_ratio=0.2)
    one = train(build_config(kit.flags(datasets[family], teachers[family], tmp_path / "one", batch_size=4, **common)),
                log=lambda *a: None)  # fmt: skip
    fsdp = kit.flags(datasets[family], teachers[family], tmp_path / "fsdp", batch_size=2, num_workers=2,
                     strategy="fsdp", address=ray_session.address, **common)  # fmt: skip
    two = run_distributed(build_config(fsdp))
    a, b = _curve(tmp_path / "one"), _curve(tmp_path / "fsdp")
    assert [r["rows"] for r in b] == [8] * 4  # the same global batch: 2 rows x 2 micro-batches x 2 workers
    for x, y in zip(a, b):
        for key in LOSS_KEYS:
            assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-6), (x["step"], key)
    w1, w2 = kit.weights(one.student), kit.weights(two.student)
    worst = max(float(np.abs(w1[k] - w2[k]).max()) for k in w1)
    loss_diff = max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b))
    print(json.dumps({"fsdp_vs_one_worker": {"max_abs_weight_diff": worst, "max_abs_loss_diff": loss_diff}}))
    assert worst < 1e-5, worst  # fp32, only the order of the gradient sums differs
    reports = [json.loads((tmp_path / "fsdp" / WORKERS / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert reports[0]["weights_sha256"] == reports[1]["weights_sha256"]
    assert (tmp_path / "fsdp" / "checkpoints" / ckpt.step_name(4) / "reference.safetensors").is_file()

    part = tmp_path / "part"  # interrupted after step 2: resume on FSDP workers
    shutil.copytree(tmp_path / "fsdp", part)
    shutil.rmtree(part / "checkpoints" / ckpt.step_name(4))
    shutil.rmtree(part / "student")
    (part / "checkpoints" / ckpt.LATEST).write_text(ckpt.step_name(2))
    lines = (part / "metrics.jsonl").read_text().splitlines()
    (part / "metrics.jsonl").write_text("\n".join(lines[:2]) + "\n")
    resumed = run_distributed(build_config(fsdp | {"out": str(part), "resume": True}))
    assert resumed.step == 4
    c = _curve(part)
    assert [{k: r[k] for k in LOSS_KEYS} for r in c] == [{k: r[k] for k in LOSS_KEYS} for r in b]
    w3 = kit.weights(resumed.student)
    assert all(np.array_equal(w2[k], w3[k]) for k in w2)
