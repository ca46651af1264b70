"""Hostile solutions against the sandbox: each contained, the grader alive, nothing written outside, no secret out.

The cases are in hostile_cases.py (harmless if they escaped: see there). For each one the
test sets up a host directory with a secret file, a secret in the grader's environment,
listening AF_UNIX (path and abstract) and TCP sockets, and a token that any process the
case leaves behind carries in its command line; then it runs the case and checks:

- the verdict: passed for a right solution whose attack failed, never passed for a wrong one;
- nothing new in the host directory, nothing received by any listener;
- no secret in any field of the result (status, error, failing test, stdout, stderr);
- no process left with the token; no cgroup of the sample left.
"""

from __future__ import annotations

import dataclasses
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest

from t3d.dllm.scoring import sandbox
from t3d.dllm.scoring.sandbox import Limits, run_python


def _load_cases():
    import importlib.util

    spec = importlib.util.spec_from_file_location("hostile_cases", Path(__file__).with_name("hostile_cases.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("hostile_cases", module)
    spec.loader.exec_module(module)
    return module


CASES, Case = _load_cases().CASES, _load_cases().Case

LIMITS = Limits(timeout_s=3.0, memory_mb=256, max_processes=8)


@dataclasses.dataclass
class Host:
    """What a case may aim at, all made by the test in its own temporary directory."""

    dir: Path
    secret: str
    secret_file: Path
    unix: str
    abstract: str
    port: int
    token: str
    grader_pid: int
    received: list[bytes]

    def fields(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "received"}


def _listen(server: socket.socket, received: list[bytes]) -> None:
    server.listen(8)
    server.settimeout(0.2)

    def accept() -> None:
        while server.fileno() >= 0:
            try:
                conn, _ = server.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                received.append(conn.recv(1024) or b"<connected>")

    threading.Thread(target=accept, daemon=True).start()


@pytest.fixture
def host(tmp_path, monkeypatch):
    secret = "t3d-secret-" + secrets.token_hex(8)
    monkeypatch.setenv("T3D_TEST_SECRET", secret)  # in the grader's environment
    (tmp_path / "secret.txt").write_text(secret)
    received: list[bytes] = []
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(tmp_path / "host.sock"))
    abstract_name = "t3d-test-" + secrets.token_hex(6)
    abstract = socket.socket(socket.AF_UNIX)
    abstract.bind("\0" + abstract_name)
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    for server in (unix, abstract, tcp):
        _listen(server, received)
    yield Host(tmp_path, secret, tmp_path / "secret.txt", str(tmp_path / "host.sock"), abstract_name,
               tcp.getsockname()[1], "t3d-token-" + secrets.token_hex(6), os.getpid(), received)  # fmt: skip
    for server in (unix, abstract, tcp):
        server.close()


def processes_with(token: str) -> list[int]:
    """Host processes whose command line holds `token` (what a case left behind)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if token.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                continue
    return found


def scratch_dirs() -> set[str]:
    return {p.name for p in Path(tempfile.gettempdir()).glob("t3d-sandbox*")}


def sample_cgroups() -> list[Path]:
    return [p for parent in sandbox.box().cgroups for p in parent.glob(f"t3d-sandbox-{os.getpid()}-*")]


def check_contained(case: Case, host: Host, result) -> None:
    leftovers = processes_with(host.token)
    for pid in leftovers:  # clean up before failing: these are the case's own sleepers
        os.kill(pid, 9)
    assert not leftovers, f"{case.name}: processes outlived the verdict"
    assert sorted(p.name for p in host.dir.iterdir()) == ["host.sock", "secret.txt"], f"{case.name}: wrote outside"
    assert host.received == [], f"{case.name}: a host socket received {host.received}"
    for field in ("status", "error", "failed_test", "stdout", "stderr"):
        assert host.secret not in (getattr(result, field) or ""), f"{case.name}: the secret reached {field}"
    assert sample_cgroups() == [], f"{case.name}: its cgroup was left behind"


IN_PROCESS = [c for c in CASES if c.name != "kill the parent"]


@pytest.mark.parametrize("case", IN_PROCESS, ids=[c.name for c in IN_PROCESS])
def test_a_hostile_solution_is_contained(case: Case, host: Host):
    if case.limit == "memory" and not sandbox.box().cgroups:
        pytest.skip("aggregate memory is bounded only by a cgroup, and none can be made here")
    if case.limit == "processes" and not sandbox.box().cgroups and os.geteuid() == 0:
        pytest.skip("as root without a cgroup the process count is not enforced (a root-mapped sandbox is exempt from RLIMIT_NPROC)")
    before = scratch_dirs()
    result = run_python(case.program.format(**host.fields()), case.tests, LIMITS)
    check_contained(case, host, result)
    assert scratch_dirs() <= before, f"{case.name}: a scratch directory was left on the host"
    if case.correct:
        assert result.passed, (case.name, result)
    else:
        assert not result.passed, (case.name, result)
        assert result.status in sandbox.STATUSES


def test_killing_its_parent_leaves_the_grader_alive(host: Host):
    """The grader is a child process here, so that a sandbox that let the signal through fails the test, not pytest."""
    case = next(c for c in CASES if c.name == "kill the parent")
    grader = (
        "import sys\n"
        "from t3d.dllm.scoring.sandbox import Limits, run_python\n"
        "r = run_python(sys.argv[1], ['assert f() == 1'], Limits(timeout_s=3.0))\n"
        "print('verdict', r.status)\n"
    )
    done = subprocess.run([sys.executable, "-c", grader, case.program.format(**host.fields())], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "verdict passed" in done.stdout, done.stderr[-2000:]


def test_inside_the_sandbox_there_is_no_privilege_and_no_host():
    program = (
        "import ctypes, os, socket\n"
        "status = dict(l.split(':', 1) for l in open('/proc/self/status'))\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "print('uid', os.getuid(), os.getgid())\n"
        "print('caps', status['CapEff'].strip(), status['CapBnd'].strip())\n"
        "print('pids', sorted(int(p) for p in os.listdir('/proc') if p.isdigit()))\n"
        "print('root', sorted(os.listdir('/')))\n"
        "print('net', [n for _, n in socket.if_nameindex()])\n"
        "print('userns', libc.unshare(0x10000000))\n"
        "print('mount', libc.mount(b'none', b'/tmp', b'tmpfs', 0, None))\n"
        "print('usr_writable', os.access('/usr', os.W_OK))\n"
        "print('hostname', socket.gethostname())\n"
        "print('env', sorted(os.environ))\n"
    )
    out = dict(line.split(" ", 1) for line in run_python(program, [], Limits(timeout_s=5.0)).stdout.splitlines())
    assert out["uid"] == "65534 65534"
    assert out["caps"] == "0000000000000000 0000000000000000"
    assert max(eval(out["pids"])) < 10, "only the sandbox's own few processes are visible"
    assert not {"home", "etc", "run", "var", "work", "sys", "mnt", "opt"} & set(eval(out["root"]))
    prefix = Path(os.path.realpath(sys.base_prefix)).parts
    assert "root" not in eval(out["root"]) or prefix[1] == "root", "/root only when the interpreter lives there"
    assert eval(out["net"]) == ["lo"]
    assert out["userns"] == "-1" and out["mount"] == "-1"
    assert out["usr_writable"] == "False"
    assert out["hostname"] == "sandbox"
    assert "T3D_TEST_SECRET" not in out["env"]


def test_every_process_of_a_sample_is_gone_when_its_verdict_returns():
    """Children, setsid grandchildren and threads: the PID namespace dies with its init, before run_python returns."""
    token = "t3d-token-" + secrets.token_hex(6)
    program = (
        "import os, subprocess, sys\n"
        f"code = 'import time; time.sleep(60)  # {token}'\n"
        "kids = [subprocess.Popen([sys.executable, '-c', code], start_new_session=s) for s in (False, True, True)]\n"
        "def f():\n"
        "    return len(kids)\n"
    )
    result = run_python(program, ["assert f() == 3"], LIMITS)
    assert result.passed
    assert processes_with(token) == []
