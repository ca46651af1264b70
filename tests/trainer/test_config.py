"""DistillConfig: one source of defaults and help; file and flags fill the same dataclass."""

import dataclasses
import os
import re
import subprocess
import sys

import pytest

from t3d.dllm.errors import UserError
from t3d.dllm.options import field_docs
from t3d.trainer.config import (
    TREE,
    DistillConfig,
    build_config,
    describe_changes,
    from_dict,
    load_config,
    presets,
    preset_values,
    differences_from_preset,
    to_dict,
)


def test_defaults_match_the_design():
    cfg = build_config()
    assert (cfg.loss.kind, cfg.loss.alpha, cfg.loss.beta, cfg.loss.lambda_path) == ("t3d", 0.5, 0.1, 0.2)
    assert (cfg.data.path, cfg.model.path, cfg.train.out) == ("./runs/trajectories", "builtin", "./runs/student")
    assert cfg.states.state_order == "trajectory" and cfg.states.random_ratio == 0.1
    assert cfg.rows_per_step == cfg.train.batch_size * cfg.train.grad_accum * cfg.dist.num_workers


def _leaf_fields(cls, path=()):
    for f in dataclasses.fields(cls):
        sub = getattr(cls(), f.name)
        if dataclasses.is_dataclass(sub):
            yield from _leaf_fields(type(sub), (*path, f.name))
        else:
            yield cls, ".".join((*path, f.name)), f.name


def test_every_field_has_a_one_line_doc_and_an_option():
    routes = {".".join(o.route) for o in TREE.options}  # attribute paths (inline fields: model.load.dtype is --dtype)
    for cls, key, name in _leaf_fields(DistillConfig):
        assert field_docs(cls).get(name), f"{key} has no docstring"
        assert key in routes, f"{key} has no command-line option"
    assert {TREE.by_key[k].name for k in ("data.path", "model.path", "loss.kind")} == {"data", "model", "loss"}


def help_entries(*args: str) -> dict[str, str]:
    """`t3d-distill ARGS --help` as {flag: its help on one line}."""
    result = subprocess.run([sys.executable, "-m", "t3d.trainer.distill", *args, "--help"], capture_output=True, text=True,
                            env=os.environ | {"COLUMNS": "200"})  # fmt: skip
    assert result.returncode == 0, result.stderr
    entries = {}  # flag -> its help text on one line
    for entry in re.split(r"\n(?=  --)", result.stdout):
        words = entry.split()
        entries[words[0]] = " ".join(words)
    entries["epilog"] = " ".join(result.stdout.split("Defaults shown:")[-1].split())
    return entries


def test_help_shows_every_option_with_the_default_of_the_preset_in_force():
    entries = help_entries()  # no --model: the built-in teacher, whose preset is builtin
    builtin = preset_values("builtin")
    for opt in TREE.options:
        entry = entries.get(opt.flag) or entries.get(f"{opt.flag}/--no-{opt.flag[2:]}")
        assert entry is not None, opt.flag
        assert " ".join(opt.help.split()[:4]) in entry, (opt.flag, entry)  # the field's docstring is the help
        if opt.name == "preset":  # its default depends on --model: said in words
            assert "default: builtin for --model builtin" in entry
        elif opt.name in builtin:  # what a no-flag run trains with, not the dataclass default
            assert f"[default: ({builtin[opt.name]}, preset builtin)]" in entry, (opt.flag, entry)
        else:
            assert f"[default: ({opt.shown_default})]" in entry, (opt.flag, entry)
    assert "[default: (800, preset builtin)]" in entries["--max-steps"] and "[default: (1.0, preset builtin)]" in entries["--beta"]
    assert entries["epilog"].startswith("preset builtin (the default for --model builtin)")


@pytest.mark.slow
def test_help_for_a_real_checkpoint_shows_its_size_preset(real_fixtures):
    entries = help_entries("--model", str(real_fixtures / "sdar"))
    assert "[default: (0.2, preset paper-2b)]" in entries["--lambda-path"] and "(1.5e-05, preset paper-2b)" in entries["--lr"]
    assert entries["epilog"].startswith("preset paper-2b (auto: 0.00B parameters in")
    assert "(1e-05, preset paper)" in help_entries("--preset", "paper")["--lr"]


def test_precedence_default_then_preset_then_file_then_flag(tmp_path):
    # builtin preset: max_steps 800, lr 3e-4, beta 1.0, path_k_steps 4 (defaults 1000, 1e-4, 0.1, 1)
    path = tmp_path / "run.toml"
    path.write_text('preset = "builtin"\nlr = 2e-4\nbeta = 0.5\n[states]\npath_k_steps = 2\n')
    cfg = load_config(path, {"beta": 0.7, "lr": None})
    assert cfg.train.batch_size == DistillConfig().train.batch_size == 8  # default (no layer sets it)
    assert cfg.train.max_steps == 800  # preset over default
    assert cfg.optim.lr == 2e-4 and cfg.states.path_k_steps == 2  # file over preset
    assert cfg.loss.beta == 0.7  # flag over file
    assert differences_from_preset(cfg) == ["path-k-steps 2 (preset: 4)", "beta 0.7 (preset: 1.0)", "lr 0.0002 (preset: 0.0003)"]
    assert describe_changes(load_config(None, {}), cfg) == [
        "states.path_k_steps: 4 -> 2", "loss.beta: 1.0 -> 0.7", "optim.lr: 0.0003 -> 0.0002"]  # fmt: skip


def test_a_section_table_may_name_a_renamed_field_by_its_own_name(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("data:\n  path: /d\nmodel:\n  path: /m\nloss:\n  kind: ce\npreset: none\n")
    cfg = load_config(path, {})
    assert (cfg.data.path, cfg.model.path, cfg.loss.kind, cfg.preset) == ("/d", "/m", "ce", "none")


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
        ({"max_steps": "many"}, "must be int"),
        ({"optim": {"learning_rate": 1}}, "unknown option 'optim.learning_rate'"),
        ({"max_steps": 2.5}, "must be int"),
    ],
)
def test_bad_values_are_one_line_user_errors(values, words):
    with pytest.raises(UserError, match=words) as info:
        build_config(values)
    assert "\n" not in str(info.value)


def test_dict_round_trip_is_exact():
    cfg = build_config({"filter": "correct == true", "address": "auto", "lr": 3e-5, "resume": True, "dtype": "bfloat16"})
    assert from_dict(to_dict(cfg)) == cfg
    assert to_dict(cfg)["model"] == {"path": "builtin", "family": None, "dtype": "bfloat16", "trust_remote_code": False,
                                     "gradient_checkpointing": False, "block_size": 0, "force_block_size": False}  # fmt: skip
    assert cfg.model.dtype == cfg.model.load.dtype == "bfloat16"  # the trainer reads the load settings as the model's


def test_presets_load_and_flags_override_them():
    assert {"none", "builtin", "paper"} <= set(presets())
    cfg = load_config(None, {"preset": None})  # no flags: the built-in teacher's tuned recipe
    assert cfg.preset == "builtin"
    assert (cfg.train.max_steps, cfg.optim.lr, cfg.loss.beta, cfg.loss.lambda_path) == (800, 3e-4, 1.0, 1.0)
    assert (cfg.states.path_k_steps, cfg.states.state_order) == (4, "reference")
    cfg = load_config(None, {"preset": "builtin", "lr": 1e-3, "max_steps": None})
    assert cfg.optim.lr == 1e-3 and cfg.train.max_steps == 800  # the flag wins, the rest is the preset's
    assert differences_from_preset(cfg) == ["lr 0.001 (preset: 0.0003)"]
    other = load_config(None, {"model": "/some/checkpoint", "preset": "none"})  # the dataclass defaults alone
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
