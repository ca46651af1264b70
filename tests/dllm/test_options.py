"""t3d.dllm.options: one option per leaf field, help from the field's docstring, defaults < file < flags."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from t3d.dllm.errors import UserError
from t3d.dllm.options import OptionTree


@dataclass(frozen=True, kw_only=True)
class Inner:
    """A nested section."""

    path: str = "here"
    """Where it goes."""
    rate: float = 0.5
    """How fast."""
    hidden: int = 3
    """Set by the command itself."""

    def __post_init__(self) -> None:
        if self.rate < 0:
            raise ValueError(f"rate must be >= 0, got {self.rate}")


@dataclass(frozen=True, kw_only=True)
class Root:
    """The tree under test."""

    steps: int = 10
    """Steps to run."""
    name: str | None = None
    """An optional name."""
    verbose: bool = False
    """Say more."""
    models: tuple[str, ...] = ("a=builtin",)
    """Repeatable."""
    out: Path = Path("out")
    """A path."""
    inner: Inner = field(default_factory=Inner)
    """The section."""


TREE = OptionTree(Root, rename={"inner.path": "where"}, exclude={"inner.hidden"})


def test_one_option_per_leaf_with_its_docstring_and_default():
    assert [(o.name, o.key) for o in TREE.options] == [
        ("steps", "steps"), ("name", "name"), ("verbose", "verbose"), ("models", "models"), ("out", "out"),
        ("where", "inner.path"), ("rate", "inner.rate"),
    ]  # fmt: skip
    assert TREE.by_name["rate"].help == "How fast." and TREE.by_name["rate"].default == 0.5
    assert TREE.by_name["models"].repeated and TREE.by_name["models"].shown_default == "a=builtin"


def test_defaults_then_file_then_flags():
    assert TREE.build() == Root()
    file = TREE.flatten({"steps": 20, "inner": {"rate": 1, "where": "file"}, "name": None}, "cfg.toml")
    assert file == {"steps": 20, "rate": 1.0, "where": "file"}  # an int is accepted for a float; null = not set
    cfg = TREE.build(file, {"steps": 30, "where": None, "models": ()})
    assert (cfg.steps, cfg.inner.path, cfg.inner.rate, cfg.models) == (30, "file", 1.0, ("a=builtin",))
    assert TREE.values(cfg)["where"] == "file" and TREE.build(TREE.values(cfg)) == cfg


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"stpes": 1}, "unknown option 'stpes' in cfg.toml"),
        ({"inner": {"steps": 1}}, "unknown option 'inner.steps' in cfg.toml"),  # a key outside its section
        ({"other": {"rate": 1}}, "unknown option 'other' in cfg.toml"),  # an unknown section
        ({"hidden": 1}, "unknown option 'hidden' in cfg.toml"),  # excluded fields are not options
        ({"steps": "ten"}, "option 'steps' in cfg.toml must be int, got 'ten'"),
        ({"steps": True}, "must be int"),
        ({"verbose": 1}, "option 'verbose' in cfg.toml must be bool"),
        ({"models": 3}, "option 'models' in cfg.toml must be a list of str"),
    ],
)
def test_bad_file_keys_and_types_are_one_line_errors_naming_key_and_file(values, message):
    with pytest.raises(UserError, match=message):
        TREE.flatten(values, "cfg.toml")


def test_range_errors_of_any_kind_are_user_errors():
    with pytest.raises(UserError, match="rate must be >= 0"):
        TREE.build({"rate": -1.0})


def test_names_must_be_unique():
    @dataclass(frozen=True, kw_only=True)
    class Clash:
        a: Inner = field(default_factory=Inner)
        b: Inner = field(default_factory=Inner)

    with pytest.raises(TypeError, match="unique"):
        OptionTree(Clash)


def _app(seen: list) -> typer.Typer:
    app = typer.Typer(add_completion=False)
    app.command()(TREE.command(seen.append))
    return app


def test_the_command_layers_config_file_and_flags_and_shows_defaults(tmp_path):
    seen: list[Root] = []
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text("steps: 20\ninner:\n  rate: 2\nmodels: [x=1, y=2]\nverbose: true\n")
    result = CliRunner().invoke(_app(seen), ["--config", str(cfg), "--steps", "30", "--where", "flag", "--no-verbose"])
    assert result.exit_code == 0, result.output
    assert seen[-1] == Root(steps=30, verbose=False, models=("x=1", "y=2"), inner=Inner(path="flag", rate=2.0))
    result = CliRunner().invoke(_app(seen), ["--models", "p=q", "--models", "r=s", "--out", "o2"])
    assert seen[-1].models == ("p=q", "r=s") and seen[-1].out == Path("o2")
    help_text = CliRunner().invoke(_app(seen), ["--help"], env={"COLUMNS": "200"}).output
    for text in ("--steps", "Steps to run.", "10", "--where", "Where it goes.", "here", "--no-verbose", "a=builtin"):
        assert text in help_text, text


def test_bad_config_file_is_one_line_exit_2(tmp_path):
    cfg = tmp_path / "cfg.toml"
    cfg.write_text("stpes = 3\n")
    result = CliRunner().invoke(_app([]), ["--config", str(cfg)])
    assert result.exit_code == 2 and result.stderr.strip() == f"error: unknown option 'stpes' in {cfg}"
