"""t3d.dllm.options.inline: an embedded dataclass whose fields are its section's own options and keys."""

from __future__ import annotations

from dataclasses import dataclass, field

from t3d.dllm.options import OptionTree, as_dict, inline


@dataclass(frozen=True, kw_only=True)
class Loading:
    """Shared by several commands."""

    dtype: str = "auto"
    """Weights dtype."""
    remote: bool = False
    """Run remote code."""


@dataclass(frozen=True, kw_only=True)
class Model:
    """A section embedding `Loading` inline between two fields of its own."""

    path: str = "builtin"
    """Where the model is."""
    load: Loading = inline(Loading)
    """How it loads."""
    device: str = "cpu"
    """Where it runs."""


@dataclass(frozen=True, kw_only=True)
class Root:
    """The tree under test."""

    steps: int = 1
    """Steps."""
    model: Model = field(default_factory=Model)
    """The model."""


TREE = OptionTree(Root, rename={"model.path": "model"})


def test_inline_fields_are_options_of_the_embedding_section_in_place():
    assert [(o.name, o.key, o.route) for o in TREE.options] == [
        ("steps", "steps", ("steps",)),
        ("model", "model.path", ("model", "path")),
        ("dtype", "model.dtype", ("model", "load", "dtype")),
        ("remote", "model.remote", ("model", "load", "remote")),
        ("device", "model.device", ("model", "device")),
    ]
    assert TREE.by_name["dtype"].help == "Weights dtype." and TREE.by_name["remote"].default is False


def test_config_files_and_flags_fill_the_embedded_dataclass():
    cfg = TREE.build(TREE.flatten({"model": {"dtype": "bfloat16", "path": "m"}}), {"remote": True})
    assert cfg.model == Model(path="m", load=Loading(dtype="bfloat16", remote=True))
    assert TREE.values(cfg) == {"steps": 1, "model": "m", "dtype": "bfloat16", "remote": True, "device": "cpu"}
    assert TREE.build(TREE.flatten({"dtype": "float16"})).model.load.dtype == "float16"  # flat keys too


def test_as_dict_writes_inline_fields_in_their_section_and_reads_back():
    cfg = Root(steps=3, model=Model(path="m", load=Loading(dtype="float16")))
    written = as_dict(cfg)
    assert written == {"steps": 3, "model": {"path": "m", "dtype": "float16", "remote": False, "device": "cpu"}}
    assert TREE.build(TREE.flatten(written)) == cfg
