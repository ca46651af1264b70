"""The child side of `t3d.dllm.scoring.sandbox` (run as a script: `python -I this_file SPEC.json`).

Sets the resource limits, installs the audit hook, runs the program and then each test
on its own, and writes one JSON result to the file descriptor the parent passed. Only
the standard library, imported before the solution runs.
"""

import json
import os
import resource
import sys
import traceback

MB = 1024 * 1024


def set_limits(limits):
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_s"], limits["cpu_s"]))
    resource.setrlimit(resource.RLIMIT_AS, (limits["memory_mb"] * MB, limits["memory_mb"] * MB))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limits["file_size_mb"] * MB, limits["file_size_mb"] * MB))
    if limits.get("nproc") is not None:
        resource.setrlimit(resource.RLIMIT_NPROC, (limits["nproc"], limits["nproc"]))


def install_audit_hook(root):
    """Refuse writes outside `root` and sockets to non-loopback addresses (a guard, not a boundary)."""
    root = os.path.realpath(root)
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC

    def inside(path):
        if isinstance(path, int):
            return True  # an already open descriptor
        try:
            full = os.path.realpath(os.fsdecode(path))
        except (TypeError, ValueError):
            return False
        return full == root or full.startswith(root + os.sep) or full == os.devnull

    def loopback(address):
        host = address[0] if isinstance(address, tuple) and address else address
        if isinstance(host, (bytes, str)) and not isinstance(address, tuple):
            return True  # AF_UNIX path
        host = str(host)
        return host in ("localhost", "::1", "") or host.startswith("127.")

    def hook(event, args):
        if event == "open" and len(args) >= 3:
            path, mode, flags = args[0], args[1] or "", args[2] or 0
            writing = any(c in str(mode) for c in "wax+") or bool(flags & write_flags)
            if writing and not inside(path):
                raise PermissionError(f"sandbox: writing outside its directory is refused: {path}")
        elif event in ("os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.truncate",
                       "os.symlink", "os.link", "shutil.rmtree", "shutil.move", "os.utime"):
            paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
            if not all(inside(p) for p in paths):
                raise PermissionError(f"sandbox: {event} outside its directory is refused: {paths[0]}")
        elif event in ("socket.connect", "socket.sendto", "socket.bind") and len(args) >= 2:
            if not loopback(args[1]):
                raise PermissionError(f"sandbox: network beyond loopback is refused: {args[1]!r}")

    sys.addaudithook(hook)


def run(spec):
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    try:
        exec(compile(spec["program"], "solution.py", "exec"), namespace)
    except MemoryError:
        return {"status": "memory", "error": "MemoryError in the solution"}
    except BaseException as err:  # noqa: BLE001 - any failure of the solution is its verdict
        return {"status": "error", "error": f"{type(err).__name__}: {err}"[:500], "where": "solution"}
    for test in spec["tests"]:
        try:
            exec(compile(test, "test.py", "exec"), namespace)
        except MemoryError:
            return {"status": "memory", "error": "MemoryError in a test", "failed_test": test[:500]}
        except AssertionError as err:
            return {"status": "failed", "failed_test": test[:500], "error": f"AssertionError: {err}"[:500]}
        except BaseException as err:  # noqa: BLE001
            return {"status": "failed", "failed_test": test[:500], "error": f"{type(err).__name__}: {err}"[:500]}
    return {"status": "passed"}


def main():
    with open(sys.argv[1]) as fh:
        spec = json.load(fh)
    out = os.fdopen(spec["result_fd"], "w")
    set_limits(spec["limits"])
    install_audit_hook(spec["root"])
    try:
        result = run(spec)
    except BaseException:  # noqa: BLE001 - the runner itself must always answer
        result = {"status": "error", "error": traceback.format_exc(limit=2)[-500:]}
    out.write(json.dumps(result))
    out.flush()
    sys.stdout.flush()
    os._exit(0)  # no atexit handlers or lingering threads of the solution


if __name__ == "__main__":
    main()
