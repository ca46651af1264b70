"""The output lock (`t3d.dllm.outdir`): one holder across processes, its record, stale takeover, nesting.

The other holder is always a real process (a child running `claim`), since a POSIX lock
never conflicts with its own process: an in-process second holder would prove nothing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from t3d_test_support import HOLD, Holder

from t3d.dllm.errors import UserError
from t3d.dllm.outdir import LOCK_NAME, Output, claim


def out_dir(path: Path) -> Output:
    return Output(path=path, option="--out")


def try_to_hold(out: Path) -> subprocess.CompletedProcess:
    """Another process claims `out` and lets go at once; its stderr says why it could not."""
    return subprocess.run([sys.executable, "-c", HOLD, "t3d-x", str(out), "dir", "--out"], input="", capture_output=True, text=True)


def test_a_second_process_is_refused_with_one_line_naming_the_holder(tmp_path):
    out = tmp_path / "runs" / "x"
    holder = Holder(out, "t3d-distill")
    try:
        with pytest.raises(UserError) as err, claim("t3d-distill", out_dir(out)):
            pass
        message = str(err.value)
        assert "\n" not in message
        assert message.startswith(f"{out} is in use by t3d-distill (pid {holder.proc.pid} on host {socket.gethostname()}, since ")
        assert message.endswith(" UTC); wait for it or choose another --out")
        record = json.loads((out / LOCK_NAME).read_text())  # what the message was read from
        assert record["pid"] == holder.proc.pid and record["command"] == "t3d-distill"
    finally:
        holder.release()
    with claim("t3d-distill", out_dir(out)):  # released: the next run proceeds
        assert (out / LOCK_NAME).is_file()
    assert not (out / LOCK_NAME).exists(), "a clean release deletes the lock file"


def test_the_lock_of_a_killed_run_is_taken_over_and_said_so(tmp_path, capfd):
    out = tmp_path / "x"
    holder = Holder(out, "t3d-collect")
    holder.kill()
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == holder.proc.pid  # left behind by the dead run
    capfd.readouterr()
    with claim("t3d-collect", out_dir(out)):
        stderr = capfd.readouterr().err
        assert stderr.count("\n") == 1 and "stale lock" in stderr and f"pid {holder.proc.pid}" in stderr, stderr
        assert json.loads(os.pread(_lock_fd(out / LOCK_NAME), 1 << 16, 0))["pid"] == os.getpid()
        taker = try_to_hold(out)
        assert taker.returncode != 0 and f"in use by t3d-collect (pid {os.getpid()}" in taker.stderr  # and it is held


def _lock_fd(path: Path) -> int:
    """This process's descriptor of the lock file: reading through it keeps the lock (opening and
    closing the file anew would drop it: POSIX locks belong to the process)."""
    for fd in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path):
                return int(fd)
        except OSError:
            continue
    raise AssertionError(f"no descriptor of {path} in this process")


def test_a_second_claim_in_one_process_is_refused_and_keeps_the_first(tmp_path):
    out = tmp_path / "x"
    with claim("t3d-run", out_dir(out)):
        with pytest.raises(UserError, match="already in use by this process: t3d-run"), claim("t3d-run", out_dir(out)):
            pass
        other = try_to_hold(out)
        assert other.returncode != 0 and "in use by t3d-run" in other.stderr, other.stderr  # still held


def test_nested_outputs_lock_apart_in_one_process_and_across_processes(tmp_path):
    """t3d-run holds the run directory; its collect (same process) and distill (a Ray task) hold their own."""
    root = tmp_path / "run"
    with claim("t3d-run", out_dir(root)):
        with claim("t3d-collect", out_dir(root / "round-1" / "trajectories")):
            stage = Holder(root / "round-1" / "distill", "t3d-distill")
            stage.release()
        assert (root / LOCK_NAME).is_file() and not (root / "round-1" / "trajectories" / LOCK_NAME).exists()


def test_file_outputs_lock_the_file_not_its_folder(tmp_path):
    a, b = tmp_path / "results" / "a.json", tmp_path / "results" / "b.json"
    holder = Holder(a, "t3d-eval", is_file=True)
    try:
        with claim("t3d-eval", Output(path=b, option="--json", is_file=True)):  # a neighbour: fine
            pass
        with pytest.raises(UserError, match=f"{a} is being written by t3d-eval .*choose another --json"):
            with claim("t3d-eval", Output(path=a, option="--json", is_file=True)):
                pass
    finally:
        holder.release()


def test_an_input_error_leaves_no_directory_behind(tmp_path):
    existing = tmp_path / "old"
    existing.mkdir()
    (existing / "keep.txt").write_text("user data")
    for out in (tmp_path / "new" / "deep", existing):
        with pytest.raises(ValueError), claim("t3d-distill", out_dir(out)):
            raise ValueError("a bad option found after the lock was taken")
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in existing.iterdir()) == ["keep.txt"]


@pytest.mark.parametrize("case", ["file_as_dir", "dir_as_file", "file_on_the_way", "cannot_create"])
def test_unwritable_outputs_are_one_line_errors(tmp_path, case):
    regular = tmp_path / "regular"
    regular.write_text("not a directory")
    output, words = {
        "file_as_dir": (out_dir(regular), "--out " + str(regular) + " exists and is not a directory"),
        "dir_as_file": (Output(path=tmp_path, option="--json", is_file=True), "is a directory"),
        "file_on_the_way": (Output(path=regular / "sub" / "x.json", option="--json", is_file=True), f"{regular} is a file"),
        "cannot_create": (out_dir(Path("/proc/t3d-no-such-dir/x")), "cannot create --out"),
    }[case]
    with pytest.raises(UserError) as err, claim("t3d-eval", output):
        pass
    assert words in str(err.value) and "\n" not in str(err.value)
    assert regular.read_text() == "not a directory"
