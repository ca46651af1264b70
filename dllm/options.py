"""One mechanism from nested frozen dataclasses to command-line options and config files.

Every command (t3d-collect, t3d-eval, t3d-pretrain, t3d-run, and t3d-distill once it
moves over) describes what it does as a tree of frozen dataclasses. `OptionTree` turns
every leaf field into one option:

- the flag is the field name (`max_new_tokens` -> `--max-new-tokens`) unless the tree
  renames it (`data.path` -> `--data`); flat names are unique across the tree;
- its help is the one-line docstring written under the field (the one source of help),
  its default the field's default, shown in `--help`;
- a dataclass embedded with `inline(Cls)` lends its fields to the section that embeds it:
  they are that section's options and config-file keys, and `as_dict` writes them there,
  so one dataclass (`PromptEncoding`, `LoadConfig`) serves several commands unchanged;
- values come from defaults < config file < flags; a flag that was not given is None;
- a config file (TOML or YAML, `t3d.dllm.cli.load_config_file`) holds the same keys,
  flat or grouped in tables named after the dataclass sections (`[rollout] batch_size`;
  a renamed field also under its field name, `[data] path`), with `-` or `_`; a key the
  tree does not know, or a value of the wrong type, is a one-line `UserError` naming
  the key and the file.

`t3d-run` reads one file with a table per command: each table is exactly what that
command's `--config` file holds, parsed by the same tree.
"""

from __future__ import annotations

import ast
import copy
import dataclasses
import inspect
import textwrap
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Optional

from t3d.dllm.errors import UserError

SCALARS = (int, float, str, bool, Path)


@dataclass(frozen=True)
class Option:
    """A leaf field seen as a command-line option and config-file key."""

    name: str  # flat option name (the field name unless renamed), also the config-file key
    field: str  # the dataclass field
    path: tuple[str, ...]  # sections from the root down to the field's dataclass
    kind: type  # int | float | str | bool | Path (the element type when `repeated`)
    default: Any
    help: str
    repeated: bool = False  # a tuple of values: a repeatable flag, a list in a file
    route: tuple[str, ...] = ()  # attributes from the root config down to the value (with inline fields)

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def key(self) -> str:
        """Dotted place in the tree (`rollout.sampler.temperature`)."""
        return ".".join((*self.path, self.field))

    @property
    def shown_default(self) -> str:
        if self.default is None:
            return "none"
        if self.repeated:
            return ", ".join(str(v) for v in self.default) or "none"
        if isinstance(self.default, bool):
            return str(self.default).lower()
        return str(self.default)


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (the one source of help)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, after in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant) and isinstance(after.value.value, str):
                docs[node.target.id] = " ".join(after.value.value.split())
    return docs


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """`int | None` -> (int, False); `tuple[str, ...]` -> (str, True); a dataclass as is."""
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        (annotation,) = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (tuple, list):
        return typing.get_args(annotation)[0], True
    return annotation, False


INLINE = "t3d.options.inline"


def inline(cls: type) -> Any:
    """A field embedding dataclass `cls` whose fields count as the embedding section's own.

    Flags, config-file keys (`[prompts] chat_template`) and `as_dict` see them as if they
    were written in the embedding dataclass; the code reads them through the field
    (`cfg.prompts.encoding.chat_template`).
    """
    return field(default_factory=cls, metadata={INLINE: True})


def is_inline(f: dataclasses.Field) -> bool:
    return bool(f.metadata.get(INLINE))


def as_dict(cfg: Any) -> dict[str, Any]:
    """`dataclasses.asdict` with inline fields merged into their section (the keys config files use)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value) and is_inline(f):
            out.update(as_dict(value))
        else:
            out[f.name] = as_dict(value) if dataclasses.is_dataclass(value) else copy.deepcopy(value)
    return out


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return None


class OptionTree:
    """The options of one dataclass tree: parse, layer, build, and the typer parameters.

    rename: dotted field -> flat option name (`{"data.path": "data"}`).
    exclude: dotted fields that are not options (set by the command itself).
    """

    def __init__(
        self, root: type, *, rename: Mapping[str, str] | None = None, exclude: Iterable[str] = (),
        metavars: Mapping[str, str] | None = None,
    ) -> None:  # fmt: skip
        self.root = root
        self.rename = dict(rename or {})
        self.exclude = frozenset(exclude)
        self.metavars = dict(metavars or {})  # option name -> metavar shown in --help (e.g. PATH)
        self.options = self._walk(root, (), ())
        self.by_name = {o.name: o for o in self.options}
        self.by_key = {o.key: o for o in self.options}
        if len(self.by_name) != len(self.options):
            names = [o.name for o in self.options]
            raise TypeError(f"{root.__name__}: option names must be unique: {sorted({n for n in names if names.count(n) > 1})}")
        self.sections = {o.path[: i + 1] for o in self.options for i in range(len(o.path))}

    def _walk(self, cls: type, path: tuple[str, ...], route: tuple[str, ...]) -> list[Option]:
        found: list[Option] = []
        docs, hints = field_docs(cls), typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            kind, repeated = _unwrap(hints[f.name])
            key = ".".join((*path, f.name))
            if key in self.exclude:
                continue
            if dataclasses.is_dataclass(kind):
                found += self._walk(kind, path if is_inline(f) else (*path, f.name), (*route, f.name))
            elif kind in SCALARS:
                default, name = _default(f), self.rename.get(key, f.name)
                found.append(Option(name, f.name, path, kind, default, docs.get(f.name, ""), repeated, (*route, f.name)))
            else:
                raise TypeError(f"{cls.__name__}.{f.name}: options are int, float, str, bool, Path or tuples of them")
        return found

    # --- values ------------------------------------------------------------------------

    def flatten(self, values: Mapping[str, Any], source: str = "config file") -> dict[str, Any]:
        """A config file's table (flat keys and section tables) -> {option name: checked value}.

        `key: null` means "not set", like an absent flag.
        """
        flat: dict[str, Any] = {}
        self._flatten_into(flat, values, (), source)
        return flat

    def _flatten_into(self, flat: dict[str, Any], values: Mapping[str, Any], section: tuple[str, ...], source: str) -> None:
        for raw_key, value in values.items():
            key = str(raw_key).replace("-", "_")
            where = ".".join((*section, key))
            if isinstance(value, Mapping) and (*section, key) in self.sections:
                self._flatten_into(flat, value, (*section, key), source)
                continue
            opt = self.by_name.get(key)
            if opt is None or opt.path[: len(section)] != section:
                opt = self.by_key.get(where)  # a renamed field under its own name: `[data] path`
            if opt is None:
                raise UserError(f"unknown option {where!r} in {source}")
            if value is not None:
                flat[opt.name] = coerce(opt, value, f"{where!r} in {source}")

    def build(self, *layers: Mapping[str, Any]) -> Any:
        """The root config from flat layers of option values, later layers winning; None = not given."""
        values: dict[str, Any] = {}
        for layer in layers:
            for name, value in layer.items():
                if value is None or (isinstance(value, (tuple, list)) and not value):
                    continue  # a flag not given (typer gives None, or () for a repeatable one)
                opt = self.by_name.get(name)
                if opt is None:
                    raise UserError(f"unknown option {name!r}")
                values[name] = coerce(opt, value, repr(name))
        try:
            return self._assemble(self.root, (), values)
        except ValueError as err:  # some configs check ranges with ValueError
            raise UserError(str(err).splitlines()[0]) from None

    def _assemble(self, cls: type, path: tuple[str, ...], values: dict[str, Any]) -> Any:
        hints = typing.get_type_hints(cls)
        kwargs: dict[str, Any] = {}
        by_key = self.by_key
        for f in dataclasses.fields(cls):
            kind, _ = _unwrap(hints[f.name])
            key = ".".join((*path, f.name))
            if dataclasses.is_dataclass(kind) and key not in self.exclude:
                kwargs[f.name] = self._assemble(kind, path if is_inline(f) else (*path, f.name), values)
            elif key in by_key and by_key[key].name in values:
                kwargs[f.name] = values[by_key[key].name]
        return cls(**kwargs)

    def load(self, config_file: str | Path | None, flags: Mapping[str, Any]) -> Any:
        """defaults < config file < flags (None = not given)."""
        from t3d.dllm.cli import load_config_file

        return self.build(self.flatten(load_config_file(config_file), str(config_file)), flags)

    def values(self, cfg: Any) -> dict[str, Any]:
        """The flat option values of a config (the inverse of `build`)."""
        out = {}
        for opt in self.options:
            node = cfg
            for part in opt.route:
                node = getattr(node, part)
            out[opt.name] = node
        return out

    # --- the command line ----------------------------------------------------------------

    def parameters(
        self, prefix: str = "", panel: Callable[[Option], str] | None = None, skip: Iterable[str] = (),
        shown: Mapping[str, str] | None = None,
    ) -> list[inspect.Parameter]:  # fmt: skip
        """One keyword-only typer parameter per option (but those in `skip`), default None ("not given").

        prefix: `distill.` gives `--distill.max-steps` (parameter `distill__max_steps`).
        shown: option name -> the default `--help` shows instead of the field's (a preset's value).
        """
        shown = shown or {}
        import typer

        params = []
        for opt in (o for o in self.options if o.name not in set(skip)):
            flag = f"--{prefix}{opt.name.replace('_', '-')}"
            decls = [f"{flag}/--{prefix}no-{opt.name.replace('_', '-')}"] if opt.kind is bool else [flag]
            annotation = Optional[list[_flag_type(opt)]] if opt.repeated else Optional[_flag_type(opt)]
            info = typer.Option(
                None, *decls, help=opt.help, show_default=shown.get(opt.name, opt.shown_default),
                metavar=self.metavars.get(opt.name, _metavar(opt)),
                rich_help_panel=panel(opt) if panel else None,
            )  # fmt: skip
            name = parameter_name(prefix, opt.name)
            params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=info, annotation=annotation))
        return params

    def command(self, body: Callable[[Any], Any], panel: Callable[[Option], str] | None = None) -> Callable[..., Any]:
        """A typer command: `--config FILE` plus one option per field; runs `body(config)` under `run_cli`."""
        from t3d.dllm.cli import run_cli

        params = [config_parameter(), *self.parameters(panel=panel)]

        def command(**values: Any) -> Any:
            path = values.pop("config")
            return run_cli(lambda: body(self.load(path, values)))

        return with_signature(command, params)


def parameter_name(prefix: str, name: str) -> str:
    return (prefix.rstrip(".") + "__" if prefix else "") + name


def config_parameter(help: str = "TOML or YAML file with the same keys as the options; flags override it.") -> inspect.Parameter:
    import typer

    info = typer.Option(None, "--config", metavar="PATH", help=help)
    return inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=info, annotation=Optional[str])


def with_signature(function: Callable[..., Any], params: list[inspect.Parameter]) -> Callable[..., Any]:
    """Give `function(**values)` the parameters typer reads."""
    function.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    function.__annotations__ = {p.name: p.annotation for p in params}
    return function


def coerce(opt: Option, value: Any, where: str) -> Any:
    """A value as the option's type; TOML/YAML ints are accepted for floats, strings for paths."""
    if opt.repeated:
        items = [value] if isinstance(value, (str, Path)) else value
        if not isinstance(items, (list, tuple)):
            raise UserError(f"option {where} must be a list of {opt.kind.__name__}, got {value!r}")
        scalar = dataclasses.replace(opt, repeated=False)
        return tuple(coerce(scalar, item, where) for item in items)
    if opt.kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if opt.kind is Path and isinstance(value, (str, Path)):
        return Path(value)
    if not isinstance(value, opt.kind) or isinstance(value, bool) != (opt.kind is bool):
        raise UserError(f"option {where} must be {opt.kind.__name__}, got {value!r}")
    return value


def _flag_type(opt: Option) -> type:
    return str if opt.kind is Path else opt.kind


def _metavar(opt: Option) -> str | None:
    if opt.kind is bool:
        return None
    if opt.kind is Path:
        return "PATH"
    return {int: "N", float: "F"}.get(opt.kind, "TEXT")
