"""One writer per output: the lock every command takes on what it writes.

Two runs writing one output directory destroy each other quietly (issue #20: one run's
checkpoint pruning deleted the other's temporary, a student from seed 1 beside a
`metrics.jsonl` of seeds 0 and 1). So t3d-collect, t3d-distill and t3d-run lock their
output directory, and t3d-eval each file it writes, with `claim` before they read a
model: a second run is refused at once with one line naming the holder.

The lock is a POSIX record lock (`fcntl.lockf`, F_SETLK) on `.t3d.lock` inside the
directory (beside the file, as `.<name>.t3d.lock`, for a file output). POSIX locks
because they are the ones NFS implements (NLM for v3, in the protocol for v4), and the
user's shared filesystem is where runs collide; Linux turns `flock` on NFS into the same
POSIX lock anyway, so `lockf` behaves the same on local disks and NFS, where `flock`
would not. POSIX locks belong to a process, not a descriptor: a second lock by the same
process succeeds silently, and closing any descriptor of the file drops the lock. Hence
a registry of the locks this process holds (a second claim of one output is refused)
and the holder never opens its lock file twice.

The lock file holds a JSON record of its holder (command, pid, host, since, argv).
When the holder dies (SIGKILL included) the kernel drops its lock (NFS: the server, once
a dead client's lease runs out), so the next run takes the file over and says in one
line whose stale lock it was; the record left behind is how it knows. A clean release
deletes the file while still holding the lock; a run that locked a file which has been
deleted meanwhile sees that the path no longer names it and tries again, so deleting
never lets two holders in. A directory this claim created is removed again at release
when it is still empty (an input error leaves no file behind).

A filesystem that refuses locks (ENOLCK, EOPNOTSUPP) gets a one-line warning and runs
unlocked; NFS mounted `nolock` keeps locks per client (runs on two hosts are not kept apart).

Nesting: each command locks its own output. t3d-run locks the run directory, its stages
lock their own subdirectories (round-N/trajectories, round-N/distill, round-N/eval): all
different files, so no stage waits for, or is refused by, the run above it. Ray Train
workers take no lock: the driver (`t3d.trainer.distill.run`) holds it for them.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from t3d.dllm.errors import UserError

LOCK_NAME = ".t3d.lock"
_UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)
_HELD: dict[str, dict[str, Any]] = {}  # lock file (real path) -> our record, for every lock this process holds


@dataclass(frozen=True, kw_only=True)
class Output:
    """Something a command writes, and the option that named it (for the messages)."""

    path: Path
    """The output directory, or the output file when `is_file`."""
    option: str
    """The option or config key that named it, e.g. `--out`, `--run.out`, `--json`."""
    is_file: bool = False
    """A single file (t3d-eval's --json, --plot, --samples): locked beside it, not its directory."""

    @property
    def directory(self) -> Path:
        """The directory that must exist (and is created) for the output to be written."""
        return self.path.parent if self.is_file else self.path

    @property
    def lock_file(self) -> Path:
        return self.path.parent / f".{self.path.name}{LOCK_NAME}" if self.is_file else self.path / LOCK_NAME


def is_lock_file(name: str) -> bool:
    """Whether a directory entry is one of these lock files (not part of any output)."""
    return name.endswith(LOCK_NAME)


@contextlib.contextmanager
def claim(command: str, *outputs: Output) -> Iterator[None]:
    """Hold an exclusive lock on every output for the block; a held one is a one-line UserError.

    Checks each path first (a regular file where a directory is wanted, a directory where
    a file is wanted, a file on the way, no permission): one-line errors before any model
    is read. `command` (`t3d-distill`) names this run in its lock record.
    """
    with contextlib.ExitStack() as stack:
        seen = set()
        for output in outputs:
            output = Output(path=Path(output.path).expanduser(), option=output.option, is_file=output.is_file)
            if output.lock_file in seen:
                continue
            seen.add(output.lock_file)
            check_path(output)
            created = _make_directory(output)
            stack.callback(_remove_if_empty, created)
            stack.enter_context(_lock(output, command))
        yield


def check_path(output: Output) -> None:
    """One-line errors for an output path that cannot be written, before anything is created."""
    path, option = output.path, output.option
    if output.is_file and path.is_dir():
        raise UserError(f"{option} {path} is a directory; it names the file to write")
    if not output.is_file and path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} exists and is not a directory")
    above = path.absolute().parent
    while not above.exists():
        above = above.parent
    if not above.is_dir():
        raise UserError(f"{option} {path}: {above} is a file, not a directory")


def _make_directory(output: Output) -> list[Path]:
    """Create the output's directory (and missing parents); the ones created, deepest first."""
    created = []
    directory = output.directory.absolute()
    while not directory.exists():
        created.append(directory)
        directory = directory.parent
    try:
        output.directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {output.option} {output.directory}: {err.strerror or err}") from None
    return created


def _remove_if_empty(created: list[Path]) -> None:
    for directory in created:  # deepest first
        try:
            directory.rmdir()
        except OSError:  # not empty (the run wrote into it), or gone
            return


@contextlib.contextmanager
def _lock(output: Output, command: str) -> Iterator[None]:
    lock_file = output.lock_file
    key = os.path.realpath(lock_file)
    if key in _HELD:
        raise UserError(f"{output.path} is already in use by this process: {_describe(_HELD[key])}")
    fd = _acquire(output, command)
    if fd is None:  # a filesystem without locks: said so on stderr, run unlocked
        yield
        return
    _HELD[key] = record = _record(command, output)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        yield
    finally:
        _HELD.pop(key, None)
        with contextlib.suppress(OSError):
            os.unlink(lock_file)  # while still locked: see the module docstring
        os.close(fd)


def _acquire(output: Output, command: str, attempts: int = 20) -> int | None:
    """Open and lock the lock file; the locked descriptor, or None where the filesystem has no locks."""
    lock_file = output.lock_file
    for _ in range(attempts):
        fd = _open(output)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EACCES, errno.EAGAIN):
                raise UserError(_busy(output, read_holder(lock_file))) from None
            if err.errno in _UNSUPPORTED:
                print(f"warning: cannot lock {lock_file} ({err.strerror}): a second run writing {output.path} "
                      f"would not be detected", file=sys.stderr)  # fmt: skip
                return None
            raise UserError(f"cannot lock {lock_file}: {err.strerror or err}") from None
        if _same_file(fd, lock_file):
            _report_stale(fd, output)
            return fd
        os.close(fd)  # the holder we waited on deleted this file as it released it: lock the new one
    raise UserError(f"cannot lock {lock_file}: it keeps being replaced; is another run starting and stopping there?")


def _open(output: Output) -> int:
    try:
        return os.open(output.lock_file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as err:
        raise UserError(f"cannot write to {output.option} {output.directory}: {err.strerror or err}") from None


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _report_stale(fd: int, output: Output) -> None:
    """A record in a file we could lock: its holder died without releasing it (a clean release deletes it)."""
    text = os.pread(fd, 1 << 16, 0).decode(errors="replace")
    if not text.strip():
        return
    print(f"note: taking over the stale lock of {output.path}: {_describe(_parse(text))} is gone", file=sys.stderr)


def read_holder(lock_file: Path, tries: int = 10) -> dict[str, Any]:
    """The record in a lock file another process holds ({} when it has written none yet)."""
    for _ in range(tries):  # the holder writes its record just after taking the lock
        try:
            record = _parse(Path(lock_file).read_text())
        except OSError:
            record = {}
        if record:
            return record
        time.sleep(0.05)
    return {}


def _parse(text: str) -> dict[str, Any]:
    try:
        record = json.loads(text)
    except ValueError:
        return {}
    return record if isinstance(record, dict) else {}


def _record(command: str, output: Output) -> dict[str, Any]:
    return {"command": command, "pid": os.getpid(), "host": socket.gethostname(),
            "since": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "output": str(output.path.absolute()), "argv": sys.argv}  # fmt: skip


def _describe(record: dict[str, Any]) -> str:
    """`t3d-distill (pid 1234 on host h, since 2026-12-07 06:10:03 UTC)`."""
    if not record:
        return "another run (its lock file names no holder yet)"
    since = str(record.get("since", "?")).replace("T", " ").replace("Z", " UTC")
    return f"{record.get('command', 'a t3d command')} (pid {record.get('pid', '?')} on host {record.get('host', '?')}, since {since})"


def _busy(output: Output, record: dict[str, Any]) -> str:
    what = "is being written" if output.is_file else "is in use"
    return f"{output.path} {what} by {_describe(record)}; wait for it or choose another {output.option}"
