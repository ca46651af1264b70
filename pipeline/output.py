"""The output directory of a collect run: start it, or resume it, or refuse it.

A run writes `manifest.json` before any unit starts, recording the full collect config
and a `dataset_key` (the settings and prompt digest that decide the rows). Re-running
into the same directory with the same key resumes: `reconcile` drops temporaries and
adopts shards that were committed after the last manifest save, and only the units
without a shard run. A directory whose manifest disagrees (schema version, teacher,
settings, prompts) is refused unless `--overwrite`, which deletes the dataset's own
files and nothing else.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from t3d.dllm.errors import UserError
from t3d.dllm.outdir import is_lock_file
from t3d.storage_schemas import MANIFEST_NAME, DatasetError, Manifest, reconcile, shard_index
from t3d.storage_schemas.files import is_temporary, remove_path

SKIPPED_TOO_LONG = "prompt_too_long"


@dataclass(frozen=True)
class OutputState:
    """A dataset directory ready for units to be written into."""

    manifest: Manifest
    resumed: bool
    reconcile_note: str | None  # what reconcile repaired, when it did anything


def open_output(
    out: str | Path,
    *,
    collect_config: dict[str, Any],
    teacher: dict[str, Any],
    skipped: dict[str, int],
    overwrite: bool,
) -> OutputState:
    """Resume the dataset in `out` if it was collected with the same key, else start one."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    existing = _dataset_entries(out)
    if existing:
        problem = _incompatibility(out, collect_config["dataset_key"], teacher)
        if problem is None:
            return _resume(out)
        if not overwrite:
            raise UserError(f"--out {out} {problem}: pass --overwrite to replace it, or choose another --out")
        for entry in sorted(existing, key=lambda name: name == MANIFEST_NAME):  # the manifest last
            remove_path(out / entry)
    elif out.is_dir() and any(not is_lock_file(p.name) for p in out.iterdir()) and overwrite:
        raise UserError(f"--out {out} holds files that are not a t3d dataset; refusing to delete them")
    out.mkdir(parents=True, exist_ok=True)
    manifest = Manifest(collect_config=collect_config, teacher=teacher, skipped=skipped)
    manifest.save(out)
    return OutputState(manifest=manifest, resumed=False, reconcile_note=None)


@contextlib.contextmanager
def discard_if_unstarted(out: str | Path, state: OutputState) -> Iterator[None]:
    """On a failure, remove the dataset this run started if not one shard reached the directory.

    A teacher that cannot load fails every actor after `open_output` wrote the manifest;
    an empty manifest left behind would look like a dataset. Only a dataset this run
    created is removed (never a resumed one), and only while its manifest is all there
    is: a shard part or a unit's temporary is left for the next run to resume.
    """
    try:
        yield
    except Exception:
        out = Path(out)
        if not state.resumed and _dataset_entries(out) == [MANIFEST_NAME]:
            remove_path(out / MANIFEST_NAME)
        raise


def _dataset_entries(out: Path) -> list[str]:
    """Names in `out` that belong to a dataset: manifest, shard parts, temporaries."""
    if not out.is_dir():
        return []
    return [
        name
        for name in os.listdir(out)
        if name == MANIFEST_NAME or is_temporary(name) or _is_shard_part(name)
    ]


def _is_shard_part(name: str) -> bool:
    stem, _, suffix = name.rpartition(".")
    try:
        return suffix in ("parquet", "zarr") and shard_index(stem) >= 0
    except DatasetError:
        return False


def _incompatibility(out: Path, key: dict[str, Any], teacher: dict[str, Any]) -> str | None:
    """Why the dataset in `out` cannot be resumed by this run, or None if it can."""
    if not (out / MANIFEST_NAME).is_file():
        return "holds shard files but no manifest.json"
    try:
        manifest = Manifest.load(out)
    except DatasetError as err:
        return f"holds a dataset this run cannot extend ({err})"
    theirs = manifest.teacher.get("fingerprint")
    if theirs != teacher["fingerprint"]:
        return f"holds a dataset of another teacher ({manifest.teacher.get('name')} {theirs}, this run: {teacher['name']} {teacher['fingerprint']})"
    difference = first_difference(manifest.collect_config.get("dataset_key", {}), key)
    if difference is not None:
        return f"holds a dataset collected with other settings ({difference})"
    return None


def first_difference(old: Any, new: Any, prefix: str = "") -> str | None:
    """`rollout.sampler.temperature: 1.0 there, 0.5 now`, or None when equal (JSON-wise)."""
    old, new = json.loads(json.dumps(old)), json.loads(json.dumps(new))  # tuples vs lists
    if isinstance(old, dict) and isinstance(new, dict):
        for name in sorted(set(old) | set(new)):
            found = first_difference(old.get(name), new.get(name), f"{prefix}{name}.")
            if found is not None:
                return found
        return None
    if old != new:
        return f"{prefix.rstrip('.')}: {old!r} there, {new!r} now"
    return None


def _resume(out: Path) -> OutputState:
    result = reconcile(out, Manifest.load(out))
    if result.changed:
        result.manifest.save(out)
    return OutputState(manifest=result.manifest, resumed=True, reconcile_note=result.summary() if result.changed else None)
