"""manifest.json: the list of finished shards. Only the driver writes it.

A shard on disk is not part of the dataset until the manifest lists it with its row
count and checksums; readers scan the manifest's shards only, never a glob.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from t3d.storage_schemas.errors import DatasetError, first_line
from t3d.storage_schemas.files import fsync_dir, temp_path
from t3d.storage_schemas.schema import SCHEMA_VERSION, check_version, shard_index

FORMAT = "t3d-trajectories"
MANIFEST_NAME = "manifest.json"


@dataclass(frozen=True, kw_only=True)
class ShardInfo:
    """What the manifest records of one committed shard."""

    name: str
    """`shard-NNNNN`."""
    rows: int
    """Parquet rows (= Zarr rows)."""
    response_tokens: int
    """Sum of `response_length`: the denominator of bytes per response token."""
    parquet_sha256: str
    """sha256 of the Parquet file."""
    zarr_sha256: str
    """sha256 over the Zarr directory (see `files.sha256_tree`)."""
    bytes: dict[str, int]
    """On-disk bytes: `parquet` and one entry per stored Zarr array."""

    @property
    def index(self) -> int:
        return shard_index(self.name)

    def to_json(self) -> dict[str, Any]:
        return {key: value for key, value in dataclasses.asdict(self).items() if key != "name"}

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> ShardInfo:
        return cls(name=name, **data)


@dataclass(frozen=True, kw_only=True)
class Manifest:
    """The dataset's table of contents; update with `with_shard` and `save`."""

    schema_version: int = SCHEMA_VERSION
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    """UTC time the dataset was started, ISO 8601."""
    collect_config: dict[str, Any] = field(default_factory=dict)
    """The collect run's settings (JSON-serialisable), to reproduce or resume it."""
    teacher: dict[str, Any] = field(default_factory=dict)
    """Teacher identity, e.g. {"name": ..., "fingerprint": ...}."""
    shards: dict[str, ShardInfo] = field(default_factory=dict)
    """Committed shards by name."""
    skipped: dict[str, int] = field(default_factory=dict)
    """Counts of inputs left out, by reason (e.g. {"prompt_too_long": 3})."""

    def with_shard(self, info: ShardInfo) -> Manifest:
        """A copy that lists `info` (replacing an older entry of the same name)."""
        return dataclasses.replace(self, shards={**self.shards, info.name: info})

    def without_shards(self, names: set[str] | list[str]) -> Manifest:
        return dataclasses.replace(self, shards={k: v for k, v in self.shards.items() if k not in set(names)})

    def with_skipped(self, counts: dict[str, int]) -> Manifest:
        """A copy with `counts` added to the skipped counts."""
        merged = dict(self.skipped)
        for reason, count in counts.items():
            merged[reason] = merged.get(reason, 0) + int(count)
        return dataclasses.replace(self, skipped=merged)

    @property
    def num_rows(self) -> int:
        return sum(info.rows for info in self.shards.values())

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "schema_version": self.schema_version,
            "created": self.created,
            "collect_config": self.collect_config,
            "teacher": self.teacher,
            "shards": {name: self.shards[name].to_json() for name in sorted(self.shards)},
            "skipped": self.skipped,
        }

    def save(self, dataset_dir: str | Path) -> Path:
        """Atomically replace manifest.json: temp file, fsync, rename, fsync the directory."""
        dataset_dir = Path(dataset_dir)
        dataset_dir.mkdir(parents=True, exist_ok=True)
        final = dataset_dir / MANIFEST_NAME
        tmp = temp_path(final)
        try:
            with open(tmp, "w") as handle:
                json.dump(self.to_json(), handle, indent=1)
                handle.write("\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, final)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(dataset_dir)
        return final

    @classmethod
    def load(cls, dataset_dir: str | Path, *, check_schema: bool = True) -> Manifest:
        """Read manifest.json; DatasetError if missing, corrupt, or (by default) of another version."""
        path = Path(dataset_dir) / MANIFEST_NAME
        if not path.is_file():
            raise DatasetError(f"no {MANIFEST_NAME} in {dataset_dir}: not a t3d dataset, or collect never committed")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DatasetError(f"corrupt manifest {path}: {first_line(err)}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise DatasetError(f"corrupt manifest {path}: format is not {FORMAT!r}")
        if check_schema:
            check_version(data.get("schema_version"), f"dataset {dataset_dir}")
        return cls._from_json(data, path)

    @classmethod
    def _from_json(cls, data: dict[str, Any], path: Path) -> Manifest:
        try:
            shards = {name: ShardInfo.from_json(name, entry) for name, entry in data["shards"].items()}
            for name in shards:
                shard_index(name)
            return cls(
                schema_version=int(data["schema_version"]),
                created=str(data["created"]),
                collect_config=dict(data["collect_config"]),
                teacher=dict(data["teacher"]),
                shards=shards,
                skipped={str(k): int(v) for k, v in data["skipped"].items()},
            )
        except (KeyError, TypeError, ValueError, AttributeError, DatasetError) as err:
            raise DatasetError(f"corrupt manifest {path}: {first_line(err)}") from None
