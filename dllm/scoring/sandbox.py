"""Run untrusted Python (a model's solution and its tests) in a child process with limits.

Each run gets its own temporary directory (its cwd, HOME and TMPDIR, deleted after), a
new session (so its process group is its own), and these limits, set in the child
before the solution runs:

| limit | how | on breach |
|---|---|---|
| wall clock `timeout_s` | the parent waits that long, then kills the group | `timeout` |
| CPU seconds `cpu_s` | RLIMIT_CPU | SIGXCPU/SIGKILL: `timeout` |
| memory `memory_mb` | RLIMIT_AS (address space) | MemoryError: `memory` |
| file size `file_size_mb` | RLIMIT_FSIZE (stdout and stderr are files too) | the write fails |
| processes `max_processes` | RLIMIT_NPROC = the user's tasks now + this | fork fails |
| core dumps | RLIMIT_CORE = 0 | - |

At the end, whatever the outcome, SIGKILL goes to the whole process group: children
and grandchildren the solution left running die with it.

Network: when the kernel lets this user create one (`unshare --net` as root, `unshare
--map-root-user --net` otherwise; probed once), the child runs in a new network
namespace with no interface up, so no network at all, loopback included. Either way a
Python audit hook refuses `socket.connect` / `sendto` / `bind` to non-loopback
addresses and file writes, renames and deletions outside the run's directory.

What this does NOT give, stated plainly: the audit hook is a guard against accidents,
not a security boundary (ctypes, a spawned shell or `os.system` get past it), so
without the namespace there is no network isolation beyond it, and the file system
is otherwise the user's own (reads anywhere the user can read; writes anywhere the
user can write, by any route the hook does not see). RLIMIT_NPROC counts every
process of the user, and the kernel does not apply it to root. A child that calls
`setsid()` leaves the process group and outlives the kill. The verdict is written by
the child itself, so code written to forge it can. For hostile code use a container
or VM per run (gVisor, firejail, nsjail); this sandbox is for grading honest models
on a machine you do not want them to damage by mistake.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

RUNNER = Path(__file__).with_name("_sandbox_runner.py")
OUTPUT_KEPT = 4096  # characters of stdout / stderr kept in the result


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Resource limits of one sandboxed run."""

    timeout_s: float = 10.0
    """Wall-clock seconds before the process group is killed."""
    cpu_s: int | None = None
    """CPU seconds (RLIMIT_CPU); default: the timeout rounded up, plus one."""
    memory_mb: int = 1024
    """Address space in MiB (RLIMIT_AS)."""
    file_size_mb: int = 16
    """Largest file the child may write, in MiB (RLIMIT_FSIZE)."""
    max_processes: int = 16
    """Processes (threads count) the child may add to the user's current count (RLIMIT_NPROC)."""

    def __post_init__(self) -> None:
        if self.timeout_s <= 0 or self.memory_mb < 64 or self.file_size_mb < 1 or self.max_processes < 1:
            raise ValueError(f"sandbox limits out of range: {self}")

    def cpu_seconds(self) -> int:
        return self.cpu_s if self.cpu_s is not None else math.ceil(self.timeout_s) + 1


@dataclass(frozen=True)
class RunResult:
    """The outcome of one run: `status` is passed, failed, error, timeout or memory."""

    status: str
    failed_test: str | None = None
    error: str | None = None
    stdout: str = ""
    stderr: str = ""
    seconds: float = 0.0
    isolation: str = ""

    @property
    def passed(self) -> bool:
        return self.status == "passed"


@cache
def network_wrapper() -> tuple[str, ...]:
    """The command prefix that puts the child in a new network namespace, or () when the kernel refuses."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return ()
    for prefix in ((unshare, "--net"), (unshare, "--map-root-user", "--net")):
        try:
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0:
                return prefix
        except (OSError, subprocess.SubprocessError):
            continue
    return ()


def isolation() -> str:
    """One line saying what isolation runs get on this machine."""
    net = "network namespace (no network)" if network_wrapper() else "no network namespace (audit hook only)"
    root = " as root (RLIMIT_NPROC not enforced)" if os.geteuid() == 0 else ""
    return f"{net}; rlimits; own temp dir; process group killed{root}"


def _user_tasks() -> int:
    """Tasks (processes and threads) of this real user now: RLIMIT_NPROC counts them all."""
    uid, count = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                continue
    return count


def run_python(program: str, tests: Sequence[str] = (), limits: Limits = Limits()) -> RunResult:
    """Run `program`, then each of `tests` in its namespace, in a sandboxed child; stop at the first failure."""
    began = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="t3d-sandbox-"))
    read_end, write_end = os.pipe()
    try:
        spec = {
            "program": program, "tests": list(tests), "root": str(root), "result_fd": write_end,
            "limits": asdict(limits) | {"cpu_s": limits.cpu_seconds(), "nproc": _user_tasks() + limits.max_processes},
        }  # fmt: skip
        (root / "spec.json").write_text(json.dumps(spec))
        command = [*network_wrapper(), sys.executable, "-I", str(RUNNER), str(root / "spec.json")]
        result, streams = _run(command, root, write_end, read_end, limits)
    finally:
        for fd in (read_end, write_end):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(root, ignore_errors=True)
    return RunResult(**result, **streams, seconds=time.perf_counter() - began, isolation=isolation())


def _environment(root: Path) -> dict[str, str]:
    keep = {k: os.environ[k] for k in ("PATH", "LANG", "LC_ALL") if k in os.environ}
    threads = {k: "1" for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    return keep | threads | {"HOME": str(root), "TMPDIR": str(root), "PYTHONDONTWRITEBYTECODE": "1"}


def _run(command: list[str], root: Path, write_end: int, read_end: int, limits: Limits) -> tuple[dict, dict]:
    """Start the child, wait at most the timeout, kill its group, read its verdict and output."""
    with open(root / "stdout", "wb") as out, open(root / "stderr", "wb") as err:
        child = subprocess.Popen(
            command, cwd=root, env=_environment(root), stdin=subprocess.DEVNULL, stdout=out, stderr=err,
            pass_fds=(write_end,), start_new_session=True,
        )  # fmt: skip
        os.close(write_end)
        try:
            child.wait(timeout=limits.timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill_group(child)
    with os.fdopen(os.dup(read_end), "rb") as pipe:
        os.set_blocking(pipe.fileno(), False)
        raw = pipe.read() or b""
    streams = {name: _tail(root / name) for name in ("stdout", "stderr")}
    return _verdict(raw, child.returncode, timed_out, limits), streams


def _kill_group(child: subprocess.Popen) -> None:
    try:
        os.killpg(child.pid, signal.SIGKILL)  # the session leader's pid is the group id
    except (ProcessLookupError, PermissionError):
        pass
    child.wait()


def _verdict(raw: bytes, returncode: int, timed_out: bool, limits: Limits) -> dict:
    try:
        result = json.loads(raw.decode("utf-8", "replace")) if raw else None
    except json.JSONDecodeError:
        result = None
    if isinstance(result, dict) and result.get("status") in ("passed", "failed", "error", "memory"):
        return {k: result.get(k) for k in ("status", "failed_test", "error")}
    if timed_out or returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return {"status": "timeout", "error": f"no verdict within {limits.timeout_s:g} s wall / {limits.cpu_seconds()} s CPU"}
    return {"status": "error", "error": f"the child exited with code {returncode} and no verdict"}


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, path.stat().st_size - OUTPUT_KEPT))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""
