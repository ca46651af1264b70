"""Nothing outside a registry compares a registry's names (STYLE.md: capabilities, not names).

The registries are read at run time (their keys as they are now, so a new entry is
covered without editing this file); every Python file of the package is scanned for a
key in a comparison (`== "static"`, `"fsdp" !=`, `in ("share", "exact")`, `not in [...]`)
outside the modules that own a registry with that key. A name compared elsewhere is a
branch a new entry would have to find: it should be a field or method of the entry
(`Family.column_blocks`, `RevealStrategy.scheduled`, `Runner.selectable`, ...).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("dllm", "pipeline", "trainer", "storage_schemas", "tools", "scheduler")

# (module, registry attribute, the files that own it: paths relative to the repository root, a folder ending in /)
REGISTRIES = (
    ("t3d.dllm.families", "FAMILIES", ("dllm/families/",)),
    ("t3d.dllm.families", "MODEL_TYPES", ("dllm/families/",)),
    ("t3d.dllm.training_layouts", "TRAINING_LAYOUTS", ("dllm/training_layouts.py",)),
    ("t3d.dllm.runners", "RUNNERS", ("dllm/runners.py",)),
    ("t3d.dllm.reveal", "STRATEGIES", ("dllm/reveal.py",)),
    ("t3d.dllm.scoring", "TEXT_SCORERS", ("dllm/scoring/",)),
    ("t3d.trainer.sharding", "STRATEGIES", ("trainer/sharding.py",)),
    ("t3d.trainer.states", "CHOICES", ("trainer/states.py",)),
    ("t3d.trainer.tracking", "BACKENDS", ("trainer/tracking.py",)),
)


def registry_keys() -> dict[str, set[str]]:
    """Every registered name -> the files allowed to compare it (the owners of the registries holding it).

    The states' settings (`CHOICES`: "eos", "share", ...) are common words, so their names are keyed
    `setting:name` and count only on a line that names the setting (`padding_shows == "eos"`, not a
    finish reason's `== "eos"`).
    """
    owners: dict[str, set[str]] = {}
    for module, attr, files in REGISTRIES:
        value = getattr(importlib.import_module(module), attr)
        names = [f"{k}:{n}" for k, v in value.items() for n in v] if attr == "CHOICES" else list(value)
        for name in names:
            owners.setdefault(str(name), set()).update(files)
    return owners


def comparisons(text: str, name: str) -> list[int]:
    """Line numbers where `name` (as a string literal) is compared: ==, !=, in / not in a literal tuple, list or set.

    `setting:name`: only on lines that also name the setting (as `setting` or `--setting`)."""
    setting, _, name = name.rpartition(":")
    lit = rf"""(['"]){re.escape(name)}\1"""
    patterns = (
        rf"[!=]=\s*{lit}",  # x == "name"
        rf"{lit}\s*[!=]=",  # "name" == x
        rf"\bin\s*[\(\[\{{][^\)\]\}}]*{lit}",  # x in ("a", "name"), x not in {...}
    )
    lines = text.splitlines()
    found = set()
    for pattern in patterns:
        for match in re.finditer(pattern, text):
            line = text.count("\n", 0, match.start()) + 1
            named = not setting or setting in lines[line - 1] or setting.replace("_", "-") in lines[line - 1]
            if named:
                found.add(line)
    return sorted(found)


def _owned(path: str, owners: set[str]) -> bool:
    return any(path == o or (o.endswith("/") and path.startswith(o)) for o in owners)


def violations(files: dict[str, str], owners: dict[str, set[str]]) -> list[str]:
    """`path:line: "name"` for each comparison of a registered name outside the registries that hold it."""
    found = []
    for path, text in files.items():
        for name, allowed in owners.items():
            if not _owned(path, allowed):
                found += [f"{path}:{line}: {name!r}" for line in comparisons(text, name)]
    return sorted(found)


def package_files() -> dict[str, str]:
    return {
        str(p.relative_to(ROOT)): p.read_text()
        for folder in PACKAGE_DIRS for p in sorted((ROOT / folder).rglob("*.py"))
    }  # fmt: skip


def test_the_scan_finds_names_compared_outside_their_registry():
    """The scanner itself: these are the shapes the issue found in the code (eval_decode, loop, config, states)."""
    owners = {"static": {"dllm/reveal.py"}, "fsdp": {"trainer/sharding.py"}, "random_count:exact": {"trainer/states.py"},
              "padding_shows:eos": {"trainer/states.py"}}  # fmt: skip
    snippet = (
        'if setting.strategy == "static":\n'
        "    pass\n"
        "fsdp = 'fsdp' == cfg.strategy\n"
        'ok = cfg.random_count in ("share", "exact")\n'
        'label = "static"  # an assignment is not a comparison\n'
        'eos_rate = rate(f == "eos" for f in finish_reason)  # another meaning of the word: not this setting\n'
    )
    assert violations({"trainer/x.py": snippet}, owners) == [
        "trainer/x.py:1: 'static'", "trainer/x.py:3: 'fsdp'", "trainer/x.py:4: 'random_count:exact'",
    ]  # fmt: skip
    assert violations({"dllm/reveal.py": snippet.splitlines()[0]}, owners) == []  # the owner may


def test_no_registry_name_is_compared_outside_its_registry():
    owners = registry_keys()
    assert {"static", "threshold", "ddp", "fsdp", "sdar", "block_causal", "semi_ar", "none", "random_count:exact"} <= set(owners)
    found = violations(package_files(), owners)
    assert not found, "registry names compared outside their registries (make it a capability):\n" + "\n".join(found)
