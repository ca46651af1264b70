"""The untrusted side of `t3d.dllm.scoring.sandbox`: a call server, run inside the sandbox.

Run as `python -I -S -c <_sandbox_wire.py + this file> REQ_FD REP_FD LIMITS` by
bubblewrap. It sets the per-process limits, then answers the trusted harness's
requests, one frame each on REQ_FD, one reply frame each on REP_FD:

- `{"op": "load", "program": ...}`: run the solution's program in a fresh namespace,
  reply with the names of what it defined that can be called;
- `{"op": "call", "name": ..., "args": ..., "kwargs": ...}`: call one of its names
  with decoded plain-data arguments and reply with the encoded result.

Nothing here is trusted by the other side: the solution shares this interpreter and can
rewrite any of it. All it can do with that is send data, and the harness decodes only
plain data and decides the verdict itself. Errors are replied as an exception's type
name; the harness keeps the name only when it is a builtin exception's.
"""

import os
import resource
import sys

# encode, decode, frame and NotPlainData come from _sandbox_wire.py, pasted above this file

MB = 1024 * 1024


def set_limits(cpu_s, memory_mb, file_size_mb, nproc):
    """Per-process limits, set before the solution runs (what no cgroup gives); nproc 0: none."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 1))  # SIGXCPU at cpu_s (a timeout), SIGKILL a second later
    resource.setrlimit(resource.RLIMIT_AS, (memory_mb * MB, memory_mb * MB))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_mb * MB, file_size_mb * MB))
    if nproc:  # counted per user namespace: this sandbox's own tasks (init included)
        resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))


def read_exactly(fd, size):
    chunks = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def receive(fd):
    head = read_exactly(fd, 4)
    body = read_exactly(fd, int.from_bytes(head, "big")) if head else None
    return decode(body) if body is not None else None


def answer(message, namespace):
    if message["op"] == "load":
        exec(compile(message["program"], "solution.py", "exec"), namespace)
        return {"ok": True, "defines": [name for name, value in namespace.items() if type(name) is str and callable(value)]}
    function = namespace[message["name"]] if message["name"] in namespace else _missing(message["name"])
    return {"ok": True, "value": function(*message["args"], **message["kwargs"])}


def _missing(name):
    raise NameError(name)


def serve(request_fd, reply_fd):
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    while True:
        message = receive(request_fd)
        if message is None:
            break
        try:
            reply = answer(message, namespace)
        except BaseException as err:  # noqa: BLE001 - any failure of the solution is its answer
            reply = {"ok": False, "error": type(err).__name__}
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except BaseException:  # noqa: BLE001, S110 - the solution may have replaced or closed them
                pass
        try:
            data = frame(reply)
        except NotPlainData:
            data = frame({"ok": False, "error": "NotPlainData"})
        while data:
            data = data[os.write(reply_fd, data) :]
    os._exit(0)


def main():
    set_limits(*(int(n) for n in sys.argv[3].split(",")))
    serve(int(sys.argv[1]), int(sys.argv[2]))


if __name__ == "__main__":
    main()
