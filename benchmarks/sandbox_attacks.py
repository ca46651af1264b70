"""The hostile cases of tests/dllm/scoring/hostile_cases.py against the first sandbox and this one (issue 20's table).

    python benchmarks/sandbox_attacks.py [old] [new]     # both by default

The first sandbox is read from git history (f1eacf9) into a temporary directory, as in
sandbox_cost.py. Each case is graded in a child grader process (so a case that kills or
hangs the grader costs that child: 30 s at most), against a host directory holding a
secret file, a secret in the grader's environment, listening AF_UNIX (path, abstract) and
TCP sockets, and a token in the command line of anything the case leaves running.
Prints one JSON line per case: the verdict of each sandbox and what was not contained
(files written outside, data at a listener, processes left (then killed by their
token), the secret in the result, a scratch directory left, the grader killed or hung).
The cases are harmless if they escape (see hostile_cases.py); what the first sandbox
leaves in the temporary directory is removed at the end.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sandbox_cost import old_sandbox  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
LIMITS = "Limits(timeout_s=3.0, memory_mb=256, max_processes=8)"
GRADER = """import json, sys
sys.path.insert(0, {old_dir!r})
from {module} import Limits, run_python
r = run_python(sys.argv[1], json.loads(sys.argv[2]), {limits})
print(json.dumps(r.__dict__))
"""


def hostile_cases():
    spec = importlib.util.spec_from_file_location("hostile_cases", REPO / "tests/dllm/scoring/hostile_cases.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["hostile_cases"] = module
    spec.loader.exec_module(module)
    return module.CASES


def listen(server: socket.socket, received: list[bytes]) -> None:
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


def processes_with(token: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                if token.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                continue
    return found


def scratch_dirs() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("t3d-sandbox-*"))


def attack(case, module: str, old_dir: Path) -> dict:
    """One case against one sandbox, graded in a child process; its verdict and what was not contained."""
    host = Path(tempfile.mkdtemp(prefix="t3d-attack-"))
    secret = "t3d-secret-" + secrets.token_hex(8)
    (host / "secret.txt").write_text(secret)
    received: list[bytes] = []
    unix, abstract, tcp = socket.socket(socket.AF_UNIX), socket.socket(socket.AF_UNIX), socket.socket()
    abstract_name = "t3d-attack-" + secrets.token_hex(6)
    unix.bind(str(host / "host.sock"))
    abstract.bind("\0" + abstract_name)
    tcp.bind(("127.0.0.1", 0))
    for server in (unix, abstract, tcp):
        listen(server, received)
    token = "t3d-token-" + secrets.token_hex(6)
    program = case.program.format(dir=host, secret=secret, secret_file=host / "secret.txt", unix=str(host / "host.sock"),
                                  abstract=abstract_name, port=tcp.getsockname()[1], token=token, grader_pid=os.getpid())  # fmt: skip
    grader = GRADER.format(old_dir=str(old_dir), module=module, limits=LIMITS)
    before = scratch_dirs()
    try:
        done = subprocess.run([sys.executable, "-c", grader, program, json.dumps(list(case.tests))], capture_output=True,
                              text=True, timeout=30, env=os.environ | {"T3D_TEST_SECRET": secret})  # fmt: skip
        result = json.loads(done.stdout.splitlines()[-1]) if done.returncode == 0 else None
        status = result["status"] if result else f"grader died (exit {done.returncode})"
    except subprocess.TimeoutExpired:
        result, status = None, "grader hung (killed after 30 s)"
    time.sleep(0.3)
    left = processes_with(token)
    for pid in left:  # the case's own processes, found by their token
        os.kill(pid, 9)
    problems = [status] if status.startswith("grader") else []
    problems += [f"wrote {p.name}" for p in host.iterdir() if p.name not in ("host.sock", "secret.txt")]
    problems += ["a listener received data"] * bool(received)
    problems += [f"{len(left)} process(es) left"] * bool(left)
    if result and any(secret in (result.get(k) or "") for k in ("error", "failed_test", "stdout", "stderr")):
        problems.append("the secret in the result")
    problems += ["scratch directory left"] * bool(scratch_dirs() - before)
    if status == "passed" and not case.correct:
        problems.append("a wrong solution passed")
    for server in (unix, abstract, tcp):
        server.close()
    shutil.rmtree(host, ignore_errors=True)
    return {"status": status, "not_contained": problems}


def main() -> None:
    which = sys.argv[1:] or ["old", "new"]
    old_dir = Path(tempfile.mkdtemp(prefix="t3d-first-sandbox-"))
    old_sandbox(old_dir)  # writes sandbox.py and _sandbox_runner.py of f1eacf9 there
    at_start = scratch_dirs()
    try:
        for case in hostile_cases():
            row = {name: attack(case, "sandbox" if name == "old" else "t3d.dllm.scoring.sandbox", old_dir) for name in which}
            print(json.dumps({"case": case.name} | row), flush=True)
    finally:
        for left in scratch_dirs() - at_start:  # the first sandbox's, left by the graders it let hang or die
            shutil.rmtree(left, ignore_errors=True)
        shutil.rmtree(old_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
