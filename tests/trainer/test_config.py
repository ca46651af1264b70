"""DistillConfig: one source of defaults and help; file and flags fill the same dataclass."""

import dataclasses

import pytest

from t3d.dllm.errors import UserError
from t3d.trainer.config import (
    OPTIONS,
    SECTIONS,
    DistillConfig,
    build_config,
    field_docs,
    from_dict,
    load_config,
    option_help,
    presets,
    differences_from_preset,
    to_dict,
)


def test_defaults_match_the_design():
    cfg = build_config()
    assert (cfg.loss.kind, cfg.loss.alpha, cfg.loss.beta, cfg.loss.lambda_path) == ("t3d", 0.5, 0.1, 0.2)
    assert (cfg.data.path, cfg.model.path, cfg.train.out) == ("./runs/trajectories", "builtin", "./runs/student")
    assert cfg.states.state_order == "trajectory" and cfg.states.random_ratio == 0.1
    assert cfg.rows_per_step == cfg.train.batch_size * cfg.train.grad_accum * cfg.dist.num_workers


def test_every_field_has_a_one_line_doc_and_an_option():
    mapped = set(OPTIONS.values())
    for section, cls in SECTIONS.items():
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            assert docs.get(f.name), f"{section}.{f.name} has no docstring"
            assert (section, f.name) in mapped, f"{section}.{f.name} has no command-line option"
    assert "[default: 1000]" in option_help("max_steps")


@pytest.mark.parametrize("suffix", [".toml", ".yaml"])
def test_flags_override_the_file_which_overrides_defaults(tmp_path, suffix):
    if suffix == ".toml":
        text = 'max-steps = 7\nlr = 1\nloss = "ce"\n[optim]\nwarmup_steps = 3\n'
    else:
        text = "max-steps: 7\nlr: 1\nloss: ce\noptim:\n  warmup_steps: 3\n"
    path = tmp_path / f"run{suffix}"
    path.write_text(text)
    cfg = load_config(path, {"max_steps": 9, "batch_size": None})  # None = flag not given
    assert cfg.train.max_steps == 9  # flag wins
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)  # file, coerced to the field type
    assert cfg.loss.kind == "ce" and cfg.optim.warmup_steps == 3
    assert cfg.train.batch_size == DistillConfig().train.batch_size  # default


@pytest.mark.parametrize(
    "values, words",
    [
        ({"max_steps": 0}, "--max-steps"),
        ({"lr": -1}, "--lr"),
        ({"random_ratio": 1.5}, "--random-ratio"),
        ({"state_order": "backwards"}, "--state-order"),
        ({"loss": "mse"}, "mse"),
        ({"beta": 0}, "beta"),
        ({"max_stepz": 3}, "unknown option"),
        ({"max_steps": "many"}, "expects int"),
        ({"optim": {"learning_rate": 1}}, "unknown option optim.learning_rate"),
    ],
)
def test_bad_values_are_one_line_user_errors(values, words):
    with pytest.raises(UserError, match=words) as info:
        build_config(values)
    assert "\n" not in str(info.value)


def test_dict_round_trip_is_exact():
    cfg = build_config({"filter": "correct == true", "address": "auto", "lr": 3e-5, "resume": True})
    assert from_dict(to_dict(cfg)) == cfg


def test_presets_load_and_flags_override_them():
    assert {"none", "builtin", "paper"} <= set(presets())
    cfg = load_config(None, {"preset": None})  # no flags: the built-in teacher's tuned recipe
    assert cfg.preset == "builtin"
    assert (cfg.train.max_steps, cfg.optim.lr, cfg.loss.beta, cfg.loss.lambda_path) == (800, 3e-4, 1.0, 1.0)
    assert (cfg.states.path_k_steps, cfg.states.state_order) == (4, "reference")
    cfg = load_config(None, {"preset": "builtin", "lr": 1e-3, "max_steps": None})
    assert cfg.optim.lr == 1e-3 and cfg.train.max_steps == 800  # the flag wins, the rest is the preset's
    assert differences_from_preset(cfg) == ["lr 0.001 (preset: 0.0003)"]
    other = load_config(None, {"model": "/some/checkpoint"})  # another model: no preset unless asked
    assert other.preset == "none" and other.loss.beta == DistillConfig().loss.beta
    paper = load_config(None, {"model": "/some/checkpoint", "preset": "paper"})
    assert paper.preset == "paper" and paper.optim.lr == 1e-5 and paper.reference.round_every == 10
    assert from_dict(to_dict(cfg)) == cfg  # the checkpoint's record of the resolved options


def test_a_preset_in_the_config_file_and_the_file_over_the_preset(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('preset = "paper"\nlr = 2e-5\n')
    cfg = load_config(path, {})
    assert cfg.preset == "paper" and cfg.optim.lr == 2e-5 and cfg.optim.weight_decay == 0.01


def test_unknown_preset_or_preset_key_is_a_one_line_error(tmp_path, monkeypatch):
    from t3d.trainer import config as config_module

    with pytest.raises(UserError, match="unknown preset 'fast'.*builtin") as info:
        load_config(None, {"preset": "fast"})
    assert "\n" not in str(info.value)
    (tmp_path / "typo.toml").write_text("learning_rate = 1\n")
    monkeypatch.setattr(config_module, "PRESETS_DIR", tmp_path)
    with pytest.raises(UserError, match="preset typo: unknown option 'learning_rate'") as info:
        load_config(None, {"preset": "typo"})
    assert "\n" not in str(info.value)
