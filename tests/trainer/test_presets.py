"""Recipes per checkpoint: `auto` picks the size class from the safetensors headers; warm-ups fit the run."""

import json

import pytest
from typer.testing import CliRunner

from t3d.dllm import load_model
from t3d.dllm.weights import parameter_count, weight_files
from t3d.trainer import config as config_module
from t3d.trainer.config import build_config, effective_warmup, load_config, preset_values, size_preset
from t3d.trainer.distill import app


def test_parameter_count_is_read_from_the_headers_and_equals_the_loaded_model(real_fixtures):
    sdar = real_fixtures / "sdar"
    net = load_model(sdar).net
    assert parameter_count(weight_files(sdar)) == sum(p.numel() for p in net.state_dict().values())


def test_a_real_checkpoint_without_a_preset_gets_its_size_class(real_fixtures, capsys):
    cfg = load_config(None, {"model": str(real_fixtures / "sdar")})
    assert cfg.preset == "paper-2b"  # the tiny fixture is far below 3B parameters
    assert (cfg.optim.lr, cfg.loss.beta, cfg.loss.lambda_path, cfg.reference.round_every) == (1.5e-5, 0.1, 0.2, 10)
    assert (cfg.train.global_batch, cfg.train.epochs, cfg.optim.min_lr_ratio) == (256, 30.0, 0.1)
    assert "preset auto: paper-2b (0.00B parameters in" in capsys.readouterr().out
    assert load_config(None, {"model": str(real_fixtures / "sdar"), "preset": "none"}).preset == "none"  # asked for
    assert load_config(None, {}).preset == "builtin"  # the built-in model keeps its tuned recipe


@pytest.mark.parametrize("count, name", [(2.03e9, "paper-2b"), (4.41e9, "paper-4b"), (7.6e9, "paper-8b"), (8.2e9, "paper-8b")])
def test_size_classes_of_the_published_checkpoints(real_fixtures, monkeypatch, count, name):
    # SDAR-1.7B / 4B / 8B-Chat and Dream-7B's parameter counts (their configs' shapes), in place of the tiny fixture's
    monkeypatch.setattr(config_module, "parameter_count", lambda files: int(count))
    assert size_preset(str(real_fixtures / "sdar"))[0] == name


def test_size_presets_are_the_paper_recipe_with_only_the_lr_scaled():
    paper = preset_values("paper")
    for name, lr in (("paper-2b", 1.5e-5), ("paper-4b", 1e-5), ("paper-8b", 7e-6)):
        values = preset_values(name)
        assert values["lr"] == lr
        # everything else is the official recipe but the training block (left to the rollouts')
        assert {k: v for k, v in values.items() if k != "lr"} == {k: v for k, v in paper.items() if k not in ("lr", "block_size")}


def test_auto_on_a_missing_directory_is_one_line():
    from t3d.dllm.errors import UserError

    with pytest.raises(UserError, match="--preset auto reads the model's size, but the model directory is not found"):
        build_config({"model": "/no/such/model", "preset": "auto"})


def test_the_builtin_recipe_keeps_its_warmup():
    cfg = load_config(None, {})
    assert (cfg.preset, cfg.optim.warmup_steps, cfg.train.max_steps) == ("builtin", 20, 800)
    assert effective_warmup(cfg) == (20, None)


def test_a_warmup_longer_than_the_run_is_shortened_with_a_note(teachers, datasets, tmp_path):
    out = tmp_path / "run"
    args = ["--data", str(datasets["bidirectional"]), "--model", str(teachers["bidirectional"]), "--out", str(out),
            "--max-steps", "5", "--warmup-steps", "20", "--lr", "1e-3", "--batch-size", "4", "--no-progress",
            "--device", "cpu", "--preset", "none"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.output.splitlines() if line.startswith("warm-up shortened")]
    assert notes == ["warm-up shortened from 20 to 0 steps: 20 is more than a quarter of this 5-step run (the lr would "
                     "never reach its peak 0.001); --warmup-steps up to 1 is kept as given"]  # fmt: skip
    lrs = [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lrs[0] == pytest.approx(1e-3) and lrs == sorted(lrs, reverse=True)  # from the peak down, no warm-up


def test_max_steps_given_over_a_presets_epochs_is_the_run_length():
    cfg = build_config({"model": "/x", "preset": "paper", "max_steps": 7})
    assert (cfg.train.max_steps, cfg.train.epochs) == (7, 0.0)  # else --epochs 30 would silently replace it
    cfg = build_config({"model": "/x", "preset": "paper", "max_steps": 7, "epochs": 2})
    assert cfg.train.epochs == 2.0  # both given: epochs decide, as documented
    assert build_config({"model": "/x", "preset": "paper"}).train.epochs == 30.0
