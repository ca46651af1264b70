"""Two Ray Train workers on CPU (DDP over gloo): disjoint data, identical weights."""

import json

import numpy as np
import pytest

from t3d.dllm import load_model
from t3d.trainer.config import build_config
from t3d.trainer.ray_train import WORKERS, run_distributed, weights_digest


@pytest.mark.ray
@pytest.mark.slow
def test_two_workers_read_disjoint_rows_and_agree(ray_session, kit, teachers, datasets, tmp_path):
    out = tmp_path / "out"
    flags = kit.flags(datasets["bidirectional"], teachers["bidirectional"], out, max_steps=4, batch_size=2,
                      grad_accum=2, num_workers=2, address=ray_session.address)  # fmt: skip
    result = run_distributed(build_config(flags))
    assert result.step == 4
    reports = [json.loads((out / WORKERS / f"rank-{r}.json").read_text()) for r in (0, 1)]
    rows = [np.load(out / WORKERS / f"rank-{r}-rows.npy") for r in (0, 1)]
    assert [r["rows_read"] for r in reports] == [16, 16]  # 4 steps x 2 micro-batches x 2 rows
    assert not {tuple(x) for x in rows[0]} & {tuple(x) for x in rows[1]}  # disjoint
    assert reports[0]["weights_sha256"] == reports[1]["weights_sha256"]  # DDP kept them identical
    student = load_model(result.student)
    assert weights_digest(student.net) == reports[0]["weights_sha256"]  # and that is what was saved
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 4 and json.loads(lines[0])["rows"] == 8  # the global batch, both workers
