"""File-system plumbing of an atomic commit: temporary names, fsync, checksums.

Temporary names are hidden and never end in `.parquet`: polars' `scan_parquet("*.parquet")`
also reads hidden files, so a name like `.shard-00012.parquet` would leak a partial
shard into a plain-polars reader. The pattern is `.{final name}.tmp-{pid}-{8 hex}`.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
from pathlib import Path

_TEMPORARY = re.compile(r"^\.(?:shard-\d{5,}\.(?:parquet|zarr)|manifest\.json)\.tmp-\d+-[0-9a-f]+$")
_BLOCK = 1 << 20


def temp_path(final: Path) -> Path:
    """A fresh hidden sibling of `final`, unique per process and call."""
    return final.with_name(f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def is_temporary(name: str) -> bool:
    """Whether a directory entry is a leftover of an unfinished commit (see `temp_path`)."""
    return _TEMPORARY.match(name) is not None


def fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(path: Path) -> None:
    """Make renames and new entries in `path` durable (POSIX needs the directory synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file, then every directory (deepest first) under `root`."""
    for folder, _, names in os.walk(root, topdown=False):
        for name in names:
            fsync_file(Path(folder) / name)
        fsync_dir(Path(folder))


def remove_path(path: Path) -> None:
    """Remove a file or directory tree; a missing path is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _tree_files(root: Path) -> list[tuple[str, Path]]:
    """(relative posix path, path) of every file under root, sorted by relative path."""
    found = [(p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file()]
    return sorted(found)


def sha256_tree(root: Path) -> str:
    """sha256 over a directory: for each file in sorted relative-path order, the path,
    a NUL, the size as 8 bytes, then the bytes. Independent of the directory's own name,
    so a temporary and its renamed final agree."""
    digest = hashlib.sha256()
    for relative, path in _tree_files(root):
        digest.update(relative.encode() + b"\0" + path.stat().st_size.to_bytes(8, "little"))
        with open(path, "rb") as handle:
            while block := handle.read(_BLOCK):
                digest.update(block)
    return digest.hexdigest()


def tree_bytes(root: Path) -> int:
    """On-disk size of a file or of all files under a directory (0 if missing)."""
    if root.is_file():
        return root.stat().st_size
    return sum(path.stat().st_size for _, path in _tree_files(root)) if root.is_dir() else 0
