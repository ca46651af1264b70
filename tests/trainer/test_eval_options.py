"""t3d-eval's options: one dataclass tree, defaults < --config file < flags, defaults shown in --help."""

from pathlib import Path

import typer
from typer.testing import CliRunner

from t3d.dllm import SamplerConfig
from t3d.trainer import evaluate as ev
from t3d.trainer.eval_cli import TREE, EvalCommandConfig, app


def parse(args: list[str]) -> EvalCommandConfig:
    """The config `t3d-eval ARGS` would run, parsed by the command itself."""
    params = dict(typer.main.get_command(app).make_context("t3d-eval", [str(a) for a in args]).params)
    return TREE.load(params.pop("config"), params)


def test_defaults_come_from_the_dataclasses_once():
    cfg = parse([])
    assert cfg == EvalCommandConfig()
    assert cfg.decode.threshold == SamplerConfig().threshold and cfg.decode.cache == SamplerConfig().cache
    assert cfg.run == ev.EvalConfig() and cfg.models.model == ()  # none given: teacher=builtin, or none with --grade


def test_file_then_flags(tmp_path):
    file = tmp_path / "eval.toml"
    file.write_text('model = ["teacher=builtin", "t3d=runs/s"]\nthreshold = 0.5\nlimit = 3\n[run]\nsamples_per_prompt = 2\n')
    cfg = parse(["--config", file, "--limit", "5", "--json", tmp_path / "e.json"])
    assert cfg.models.model == ("teacher=builtin", "t3d=runs/s") and cfg.decode.threshold == 0.5
    assert cfg.prompts.limit == 5 and cfg.run.samples_per_prompt == 2 and cfg.output.json == tmp_path / "e.json"
    cfg = parse(["--config", file, "--model", "x=builtin", "--threshold", "0.7"])
    assert cfg.models.model == ("x=builtin",) and cfg.decode.threshold == 0.7


def test_help_shows_every_option_with_its_default():
    text = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "250"}).output
    flags = ["--model", "--teacher", "--prompts", "--limit", "--block-size", "--max-new-tokens", "--steps-per-block",
             "--strategy", "--threshold", "--temperature", "--cache", "--samples-per-prompt", "--seed", "--batch-size",
             "--timing-repeats", "--device", "--trust-remote-code", "--family", "--dtype", "--json", "--plot",
             "--samples", "--scorer", "--like", "--chat-template", "--system-prompt", "--code-timeout", "--grade",
             "--user-template"]  # fmt: skip
    assert {o.flag for o in TREE.options} >= set(flags)
    for flag, default in (("--threshold", SamplerConfig().threshold), ("--samples-per-prompt", 4), ("--device", "cpu"),
                          ("--model", "none"), ("--code-timeout", 10.0)):  # fmt: skip
        line = next(line for line in text.splitlines() if f" {flag} " in line)
        assert f"[default: ({default})]" in line, (flag, line)


def test_unknown_key_in_the_file_is_one_line(tmp_path):
    file = tmp_path / "eval.yaml"
    file.write_text("treshold: 0.5\n")
    result = CliRunner().invoke(app, ["--config", str(file)])
    assert result.exit_code == 2 and result.stderr.strip() == f"error: unknown option 'treshold' in {file}"
    assert isinstance(parse([]).output.json, (Path, type(None)))
