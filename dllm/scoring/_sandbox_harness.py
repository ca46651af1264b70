"""The trusted side of `t3d.dllm.scoring.sandbox`: runs the tests and decides the verdict.

Run as `python -I -S this_file REQUEST_FD REPLY_FD` outside the solution's sandbox,
with the spec (a `_sandbox_wire` dict) on stdin; writes one verdict (the same) on stdout. The tests run here, in
a namespace where every name the solution should define is a `Remote`: calling it sends
the plain-data arguments to the call server in the sandbox and returns its decoded
plain-data result (or raises the builtin exception it named). The solution never sees
the tests, this process or the verdict; all it can do is answer calls.

Every read of the reply pipe waits at most until the deadline and takes at most
`MAX_FRAME` bytes; writes to the request pipe are non-blocking with the same deadline.
"""

import builtins
import os
import select
import sys
import time

sys.path.append(os.path.dirname(os.path.abspath(__file__)))  # after the stdlib: only _sandbox_wire comes from here
import _sandbox_wire as wire  # noqa: E402

MAX_FRAME = 16 * 1024 * 1024
"""Largest reply accepted from the sandbox, in bytes."""
KEPT = 500
"""Characters of a failing test kept in the verdict."""
BUILTIN_ERRORS = {n for n, v in vars(builtins).items() if isinstance(v, type) and issubclass(v, BaseException)}


class ChannelClosed(BaseException):
    """The sandbox stopped answering: it exited, was killed, or wrote something that is not a frame.

    A BaseException, so a test's `except Exception` cannot swallow it, and sticky: the
    channel stays broken and `judge` reports it whatever the tests did after.
    """


class Timeout(BaseException):
    """The deadline passed while waiting for the sandbox (a BaseException, sticky, as ChannelClosed)."""


class SolutionError(Exception):
    """The solution raised an exception of a class that is not a builtin one."""


class Channel:
    """Frames to and from the sandbox, each bounded in time and size."""

    def __init__(self, request_fd, reply_fd, deadline):
        self.request_fd, self.reply_fd, self.deadline = request_fd, reply_fd, deadline
        self.broken = None
        os.set_blocking(request_fd, False)
        os.set_blocking(reply_fd, False)

    def _wait(self, fd, writing):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Timeout
        ready = select.select([], [fd], [], left) if writing else select.select([fd], [], [], left)
        if not any(ready):
            raise Timeout

    def send(self, message):
        data = memoryview(wire.frame(message))
        while data:
            self._wait(self.request_fd, writing=True)
            try:
                data = data[os.write(self.request_fd, data):]
            except BlockingIOError:
                continue
            except OSError:
                raise ChannelClosed from None

    def _read(self, size):
        chunks = []
        while size:
            self._wait(self.reply_fd, writing=False)
            try:
                chunk = os.read(self.reply_fd, min(size, 1 << 20))
            except BlockingIOError:
                continue
            if not chunk:
                raise ChannelClosed
            chunks.append(chunk)
            size -= len(chunk)
        return b"".join(chunks)

    def receive(self):
        size = int.from_bytes(self._read(4), "big")
        if size > MAX_FRAME:
            raise ChannelClosed
        try:
            reply = wire.decode(self._read(size))
        except wire.NotPlainData:
            raise ChannelClosed from None
        if type(reply) is not dict or type(reply.get("ok")) is not bool:
            raise ChannelClosed
        return reply

    def ask(self, message):
        if self.broken is not None:
            raise self.broken
        try:
            self.send(message)
            return self.receive()
        except (Timeout, ChannelClosed) as err:
            self.broken = err
            raise


def raise_named(reply):
    """Raise the solution's exception: its builtin class when it named one, else SolutionError."""
    name = reply.get("error")
    if type(name) is str and name in BUILTIN_ERRORS and name not in ("SystemExit", "KeyboardInterrupt", "GeneratorExit"):
        raise getattr(builtins, name)()
    if name == "NotPlainData":
        raise wire.NotPlainData()
    raise SolutionError()


class Remote:
    """Stands for a function of the solution: calls cross the boundary as plain data."""

    def __init__(self, channel, name):
        self._channel, self.__name__ = channel, name

    def __call__(self, *args, **kwargs):
        wire.encode([args, kwargs])  # NotPlainData here, in the test, before anything is sent
        reply = self._channel.ask({"op": "call", "name": self.__name__, "args": list(args), "kwargs": kwargs})
        if not reply["ok"]:
            raise_named(reply)
        return reply.get("value")

    def __repr__(self):
        return f"<the solution's {self.__name__}>"


def error_name(err):
    """What the verdict says about an exception: its class name, never its message (solution-controlled)."""
    if isinstance(err, SolutionError):
        return "an exception of a class the solution defined"
    if isinstance(err, wire.NotPlainData):
        return "NotPlainData: a result or argument is not plain data"
    return type(err).__name__


def trusted_namespace(spec):
    """The reference's own code (setup, the prompt's imports and helpers), run here beside the tests."""
    namespace = {"__name__": "__main__"}
    try:
        exec(compile(spec["trusted"], "reference.py", "exec"), namespace)
    except Exception:  # noqa: BLE001 - a prompt that is not a program alone: keep its import lines
        namespace = {"__name__": "__main__"}
        imports = "\n".join(line for line in spec["trusted"].splitlines() if line.lstrip().startswith(("import ", "from ")))
        exec(compile(imports, "reference.py", "exec"), namespace)
    return namespace


def add_remotes(namespace, spec, defines, channel):
    """Each name the tests read that the reference does not define, and is not a builtin the solution left alone,
    stands for the solution's; so does every name of `calls` (the entry point), whatever the reference defines."""
    defines = {name for name in defines if type(name) is str} if type(defines) is list else set()
    for name in spec["names"]:  # what the tests read (found by the grader, which has `ast` loaded)
        if name not in namespace and (name in defines or not hasattr(builtins, name)):
            namespace[name] = Remote(channel, name)
    for name in spec["calls"]:
        namespace[name] = Remote(channel, name)


def judge(spec, channel):
    """The verdict: load the solution, then run each test; the first failure decides."""
    try:
        namespace = trusted_namespace(spec)
    except Exception as err:  # noqa: BLE001
        return {"status": "error", "error": f"the reference's own code failed: {type(err).__name__}"}
    reply = channel.ask({"op": "load", "program": spec["program"]})
    if not reply["ok"]:
        name = reply.get("error")
        status = "memory" if name == "MemoryError" else "error"
        return {"status": status, "error": f"{name if name in BUILTIN_ERRORS else 'an exception'} in the solution"}
    add_remotes(namespace, spec, reply.get("defines"), channel)
    for test in spec["tests"]:
        try:
            exec(compile(test, "test.py", "exec"), namespace)
        except (Timeout, ChannelClosed):
            raise
        except MemoryError:
            return {"status": "memory", "failed_test": test[:KEPT], "error": "MemoryError"}
        except BaseException as err:  # noqa: BLE001 - any failure of a test is the verdict
            return {"status": "failed", "failed_test": test[:KEPT], "error": error_name(err)}
        if channel.broken is not None:  # a test that caught it still fails
            raise channel.broken
    return {"status": "passed"}


def main():
    spec = wire.decode(sys.stdin.buffer.read())
    channel = Channel(int(sys.argv[1]), int(sys.argv[2]), time.monotonic() + spec["timeout_s"])
    try:
        verdict = judge(spec, channel)
    except Timeout:
        verdict = {"status": "timeout", "error": f"no answer within {spec['timeout_s']:g} s"}
    except ChannelClosed:
        verdict = {"status": "died", "error": "the solution's process ended or broke the protocol"}
    sys.stdout.buffer.write(wire.encode(verdict))
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
