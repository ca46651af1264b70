"""t3d-eval compares Dream's schedule and the entropy-bounded strategy, ranked by any confidence measure, from its flags."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from t3d.dllm.task import BuiltinTask
from t3d.dllm.tiny import build_checkpoint
from t3d.trainer.eval_cli import app


def test_the_flags_reach_every_setting(tmp_path):
    task = BuiltinTask()
    model = build_checkpoint(tmp_path / "m", vocab_size=len(task.vocabulary), mask_id=task.mask_id, pad_id=task.pad_id,
                             eos_id=task.eos_id, tokenizer=task.tokenizer())  # fmt: skip
    args = ["--model", f"teacher={model}", "--prompts", "builtin:test", "--limit", "2", "--samples-per-prompt", "1",
            "--no-warmup", "--strategy", "dream,entropy_bounded", "--steps-per-block", "2", "--confidence", "margin",
            "--entropy-budget", "0", "--json", tmp_path / "e.json"]  # fmt: skip
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.stderr + str(result.exception)
    records = {r["setting"]: r for r in json.loads((tmp_path / "e.json").read_text())["records"]}
    assert set(records) >= {"dream B=4 steps=2 by=margin", "entropy_bounded B=4 eb=0 by=margin"}
    eb = records["entropy_bounded B=4 eb=0 by=margin"]
    assert eb["tokens_per_forward"] == 1.0, "a budget of 0 nats reveals one token per forward"
    dream = records["dream B=4 steps=2 by=margin"]
    assert dream["tokens_per_forward"] == 2.0  # Dream's 2 steps over 4 tokens reveal 1 then 3
