"""`t3d-pretrain` (t3d.tools.pretrain): the built-in teacher's noise, its options, and a run that writes a loadable checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from t3d.dllm import load_model
from t3d.dllm.task import BuiltinTask
from t3d.tools.pretrain import TREE as PRETRAIN
from t3d.tools.pretrain import (
    PretrainConfig,
    TeacherNetConfig,
    TeacherTrainConfig,
    _app,
    block_masking,
    random_masking,
    run,
)


@pytest.fixture(scope="module")
def task():
    return BuiltinTask(seed=0)


def test_block_shaped_noise_matches_sampler_states():

    rng = np.random.default_rng(0)
    words = rng.integers(2, 4, size=500)
    masked, weights = block_masking(words, block=4, length=16, rng=rng)
    for row in range(500):
        blocks = masked[row].reshape(4, 4).sum(axis=1)  # masked tokens per block
        current = int(np.argmax(weights[row].reshape(4, 4).sum(axis=1) > 0))
        assert current <= words[row], "the current block is a word block or the <eos> block"
        assert (blocks[:current] == 0).all() and (blocks[current + 1 :] == 4).all()
        k = blocks[current]
        assert 1 <= k <= 4 and np.allclose(weights[row][masked[row]][:k], 1 / k)  # weight 1/t with t = k/B
        assert weights[row].sum() == pytest.approx(1.0), "loss on the current block only, a per-example mean"


def test_random_noise_is_unbiased_per_token():

    masked, weights = random_masking(20_000, 16, 1e-3, np.random.default_rng(0))
    assert (weights[~masked] == 0).all()
    # E[sum of weights] = 1: the 1/(t L) weighting estimates the mean per-token loss.
    assert weights.sum(axis=1).mean() == pytest.approx(1.0, abs=0.05)


def test_pretrain_writes_a_loadable_checkpoint(tmp_path, task):

    cfg = PretrainConfig(
        out_dir=tmp_path / "teacher", eval_samples=1, threads=1,
        model=TeacherNetConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64),
        train=TeacherTrainConfig(steps=3, batch_size=8, warmup_steps=1),
    )
    rows = run(cfg)
    assert [r["steps_per_block"] for r in rows] == [4, 2, 1, 4, 1]
    model = load_model(cfg.out_dir)
    assert model.family.name == "bidirectional" and model.mask_id == task.mask_id
    card = (cfg.out_dir / "MODEL_CARD.md").read_text()
    assert "t3d-pretrain" in card and "| 1 step/block, greedy |" in card


def _pretrain_config(args: list[str]):

    params = dict(typer.main.get_command(_app()).make_context("t3d-pretrain", args).params)
    return PRETRAIN.load(params.pop("config"), params)


def test_pretrain_defaults_file_flags(tmp_path):

    assert _pretrain_config([]) == PretrainConfig()
    cfg_file = tmp_path / "p.toml"
    cfg_file.write_text('steps = 5\nminutes = 1\nout-dir = "from-file"\n[model]\nhidden_size = 64\n')
    cfg = _pretrain_config(["--config", str(cfg_file), "--steps", "7"])
    assert (cfg.train.steps, cfg.train.time_limit_minutes, cfg.out_dir, cfg.model.hidden_size) == (7, 1.0, Path("from-file"), 64)
    assert cfg.train.lr == PretrainConfig().train.lr


def test_pretrain_help_shows_the_dataclass_defaults():

    text = CliRunner().invoke(_app(), ["--help"], env={"COLUMNS": "250"}).output
    d = PretrainConfig()
    for flag, default in (("--steps", d.train.steps), ("--minutes", d.train.time_limit_minutes), ("--lr", d.train.lr),
                          ("--hidden-size", d.model.hidden_size), ("--out-dir", d.out_dir), ("--threads", d.threads)):  # fmt: skip
        line = next(line for line in text.splitlines() if f" {flag} " in line)
        assert f"[default: ({default})]" in line, (flag, line)
