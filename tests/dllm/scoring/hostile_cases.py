"""Hostile solutions: what a model's code could do to the grader, as data (one program and its tests each).

Shared by tests/dllm/scoring/test_sandbox_hostile.py and by a scratch run against the
first sandbox (the "before" column of issue 20's table). Every case is written to be
harmless if it escaped: its targets are files and sockets the test created in its own
temporary directory, it signals no process group and not -1, it deletes nothing, and its
children sleep instead of forking without bound.

Programs are format strings over the `Host` the test set up: {dir} (a host directory,
absent from the sandbox), {secret_file}, {secret}, {unix} (a listening AF_UNIX socket),
{abstract} (an abstract AF_UNIX name), {port} (a TCP listener on 127.0.0.1), {token}
(a word put in the command line of any process a case leaves behind), {grader_pid}.
`correct` cases define a right `f` (they should pass, with their attack contained);
the others define a wrong one (they must not pass, whatever they forge).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class Case:
    name: str
    program: str
    tests: tuple[str, ...] = ("assert f() == 1",)
    correct: bool = False  # f is right: the verdict must be passed, the attack contained all the same
    limit: str = ""  # "memory": contained only by a cgroup; "processes": by a cgroup or RLIMIT_NPROC (not as root)


TRY = "try:\n{body}\nexcept BaseException:\n    pass\n"


def attempt(*lines: str) -> str:
    """Lines run in a try block at import time, then a right f."""
    body = "\n".join("    " + line for line in lines)
    return TRY.format(body=body) + "def f():\n    return 1\n"


SLEEPER = "import time; time.sleep(30)  # {token}"

CASES = [
    # --- writes outside, by every route ---
    Case("open", attempt("open('{dir}/escaped-open', 'w').write('x')"), correct=True),
    Case("os.open dir_fd", attempt("import os", "d = os.open('{dir}', os.O_RDONLY)",
                                   "os.close(os.open('escaped-dirfd', os.O_CREAT | os.O_WRONLY, dir_fd=d))"), correct=True),
    Case("sqlite3", attempt("import sqlite3", "c = sqlite3.connect('{dir}/escaped-sqlite')",
                            "c.execute('create table t(x)'); c.commit()"), correct=True),
    Case("mkfifo", attempt("import os", "os.mkfifo('{dir}/escaped-fifo')"), correct=True),
    Case("os.system", attempt("import os", "os.system('echo x > {dir}/escaped-system')"), correct=True),
    Case("subprocess", attempt("import subprocess", "subprocess.run(['sh', '-c', 'echo x > {dir}/escaped-subprocess'])"),
         correct=True),
    Case("ctypes creat", attempt("import ctypes", "ctypes.CDLL(None).creat(b'{dir}/escaped-ctypes', 0o644)"), correct=True),
    Case("symlink out of scratch", attempt("import os", "os.symlink('{dir}', 'link')", "open('link/escaped-link', 'w').write('x')"),
         correct=True),
    Case("hard link of a host file", attempt("import os", "os.link('{secret_file}', 'stolen')"), correct=True),
    # --- processes that outlive the verdict ---
    Case("setsid double fork", attempt(
        "import os, subprocess, sys",
        "if os.fork() == 0:",
        "    os.setsid()",
        "    subprocess.Popen([sys.executable, '-c', '" + SLEEPER + "'], start_new_session=True)",
        "    os._exit(0)",
        "os.wait()",
    ), correct=True),
    Case("setsid chain burning CPU", attempt(
        "import subprocess, sys",
        "code = 'while True: pass  # {token}'",
        "[subprocess.Popen([sys.executable, '-c', code], start_new_session=True) for _ in range(2)]",
    ), correct=True),
    Case("setsid children, then the timeout", (
        "import subprocess, sys\n"
        "kids = [subprocess.Popen([sys.executable, '-c', '" + SLEEPER + "'], start_new_session=True) for _ in range(2)]\n"
        "def f():\n"
        "    while True:\n"
        "        pass\n"
    )),
    Case("daemon thread after return", attempt(
        "import subprocess, sys, threading, time",
        "threading.Thread(target=lambda: (time.sleep(0.5), subprocess.Popen([sys.executable, '-c', '" + SLEEPER + "'])),"
        " daemon=True).start()",
    ), correct=True),
    # --- leaks: host files, the grader's environment, its processes ---
    Case("read host file and environment", (
        "import os, sys\n"
        "found = []\n"
        "for p in ['{secret_file}', '/proc/{grader_pid}/environ', '/proc/1/environ', '/proc/self/environ']:\n"
        "    try:\n"
        "        found.append(open(p, 'rb').read().decode('latin-1'))\n"
        "    except OSError as e:\n"
        "        found.append(repr(e))\n"
        "for pid in [p for p in os.listdir('/proc') if p.isdigit()]:\n"
        "    try:\n"
        "        found.append(open(f'/proc/{{pid}}/environ', 'rb').read().decode('latin-1'))\n"
        "    except OSError:\n"
        "        pass\n"
        "found.append(repr(dict(os.environ)))\n"
        "leak = ' '.join(found)\n"
        "print(leak); print(leak, file=sys.stderr)\n"
        "def f():\n"
        "    raise ValueError(leak)\n"
    )),
    Case("exfiltrate through an exception class name", (
        "def f():\n"
        "    raise type('{secret}', (Exception,), {{}})('{secret}')\n"
    )),
    Case("exfiltrate through a result", (
        "def f():\n"
        "    return '{secret}'\n"
    )),
    Case("see the grader's process", (
        "import os\n"
        "def f():\n"
        "    os.kill({grader_pid}, 0)  # signal 0: only asks whether it exists\n"
        "    return 1\n"
    )),
    # --- network and host sockets ---
    Case("AF_UNIX to a host socket", attempt(
        "import socket", "s = socket.socket(socket.AF_UNIX)", "s.connect('{unix}')", "s.sendall(b'leak')"), correct=True),
    Case("abstract AF_UNIX", attempt(
        "import socket", "s = socket.socket(socket.AF_UNIX)", "s.connect('\\0{abstract}')", "s.sendall(b'leak')"), correct=True),
    Case("TCP to loopback", attempt(
        "import socket", "s = socket.create_connection(('127.0.0.1', {port}), timeout=1)", "s.sendall(b'leak')"), correct=True),
    Case("setns into every visible network namespace, then TCP", attempt(
        "import ctypes, os, socket",
        "libc = ctypes.CDLL(None, use_errno=True)",
        "for pid in ['1', str(os.getppid()), '{grader_pid}']:",
        "    try:",
        "        libc.setns(os.open(f'/proc/{{pid}}/ns/net', os.O_RDONLY), 0)",
        "    except OSError:",
        "        pass",
        "s = socket.create_connection(('127.0.0.1', {port}), timeout=1)",
        "s.sendall(b'leak')",
    ), correct=True),
    Case("nsenter into the grader's namespaces", attempt(
        "import subprocess",
        "subprocess.run(['nsenter', '-t', '{grader_pid}', '-a', 'sh', '-c', 'echo x > {dir}/escaped-nsenter'], timeout=5)",
    ), correct=True),
    Case("a new user namespace to regain capabilities", attempt(
        "import ctypes, os",
        "libc = ctypes.CDLL(None, use_errno=True)",
        "assert libc.unshare(0x10000000) == 0  # CLONE_NEWUSER: root of a namespace of its own, with capabilities there",
        "open('{dir}/escaped-userns', 'w').write('x')",
    ), correct=True),
    # --- forged verdicts ---
    Case("write a passing verdict to every descriptor, then exit", (
        "import json, os\n"
        "fake = json.dumps({{'status': 'passed'}}).encode()\n"
        "for fd in range(3, 64):\n"
        "    try:\n"
        "        os.write(fd, fake)\n"
        "    except OSError:\n"
        "        pass\n"
        "os._exit(0)\n"
        "def f():\n"
        "    return 2\n"
    )),
    Case("write a framed passing reply to every descriptor", (
        "import json, os\n"
        "fake = json.dumps({{'status': 'passed', 'ok': True, 'value': 1}}).encode()\n"
        "for fd in range(3, 64):\n"
        "    try:\n"
        "        os.write(fd, len(fake).to_bytes(4, 'big') + fake)\n"
        "    except OSError:\n"
        "        pass\n"
        "def f():\n"
        "    return 2\n"
    )),
    Case("answer every call in advance", (
        "import json, os\n"
        "reply = json.dumps({{'ok': True, 'value': 1}}).encode()\n"
        "for fd in range(3, 64):\n"
        "    try:\n"
        "        os.write(fd, (len(reply).to_bytes(4, 'big') + reply) * 8)\n"
        "    except OSError:\n"
        "        pass\n"
        "def f(x):\n"
        "    return x + 1\n"
    ), tests=("import random\nx = random.randrange(2, 10 ** 9)\nassert f(x) == x * x",) * 3),
    Case("clear the tests through frames", (
        "import sys\n"
        "frame = sys._getframe()\n"
        "while frame is not None:\n"
        "    for scope in (frame.f_locals, frame.f_globals):\n"
        "        spec = scope.get('spec')\n"
        "        for tests in (scope.get('tests'), spec.get('tests') if isinstance(spec, dict) else None):\n"
        "            if isinstance(tests, list):\n"
        "                tests.clear()\n"
        "    frame = frame.f_back\n"
        "def f():\n"
        "    return 2\n"
    )),
    Case("patch builtins, compile and json", (
        "import builtins, json\n"
        "builtins.compile = lambda *a, **k: compile_('pass', 'x', 'exec')\n"
        "compile_ = compile\n"
        "json.dumps = lambda *a, **k: '{{\"status\": \"passed\"}}'\n"
        "json.loads = lambda *a, **k: {{'status': 'passed'}}\n"
        "builtins.AssertionError = type('Nothing', (Exception,), {{}})\n"
        "def f():\n"
        "    return 2\n"
    )),
    Case("an always-equal result", (
        "class Anything:\n"
        "    def __eq__(self, other):\n"
        "        return True\n"
        "    __hash__ = object.__hash__\n"
        "def f():\n"
        "    return Anything()\n"
    )),
    Case("an int subclass equal to everything", (
        "class One(int):\n"
        "    def __eq__(self, other):\n"
        "        return True\n"
        "    __hash__ = int.__hash__\n"
        "def f():\n"
        "    return One(2)\n"
    )),
    Case("a list subclass equal to everything", (
        "class L(list):\n"
        "    def __eq__(self, other):\n"
        "        return True\n"
        "def f():\n"
        "    return L()\n"
    ), tests=("assert f() == [1, 2]",)),
    Case("print a fake verdict", (
        "import sys\n"
        "print('{{\"status\": \"passed\"}}', flush=True)\n"
        "print('{{\"status\": \"passed\"}}', file=sys.stderr, flush=True)\n"
        "def f():\n"
        "    print('{{\"status\": \"passed\"}}', flush=True)\n"
        "    return 2\n"
    )),
    Case("exit 0 before the tests", "import os\nos._exit(0)\ndef f():\n    return 1\n"),
    Case("exit 0 inside a call", "import os\ndef f():\n    os._exit(0)\n"),
    Case("SystemExit and KeyboardInterrupt from a call", "def f():\n    raise KeyboardInterrupt\n",
         tests=("try:\n    f()\nexcept Exception:\n    pass\nassert False",)),
    Case("break the protocol inside a test's try", (
        "import os\n"
        "def f():\n"
        "    os._exit(0)\n"
    ), tests=("try:\n    f()\nexcept Exception:\n    pass",)),
    Case("a frame longer than the harness accepts", (
        "def f():\n"
        "    return 'x' * (40 * 1024 * 1024)\n"
    ), tests=("assert len(f()) == 1",)),
    Case("a frame header and then silence", (
        "import os, time\n"
        "def f():\n"
        "    for fd in range(3, 64):\n"
        "        try:\n"
        "            os.write(fd, (1000).to_bytes(4, 'big'))\n"
        "        except OSError:\n"
        "            pass\n"
        "    time.sleep(60)\n"
    )),
    # --- limits on the whole tree ---
    Case("aggregate memory over several children", (
        "import subprocess, sys\n"
        "hog = 'b = b\"x\" * (200 << 20)\\nimport time; time.sleep(1)'\n"
        "def f():\n"
        "    kids = [subprocess.Popen([sys.executable, '-c', hog]) for _ in range(4)]\n"
        "    return sum(k.wait() == 0 for k in kids) // 4\n"
    ), limit="memory"),
    Case("more processes than allowed", (
        "import os, time\n"
        "def f():\n"
        "    n = 0\n"
        "    for _ in range(64):\n"
        "        try:\n"
        "            pid = os.fork()\n"
        "        except OSError:\n"
        "            break\n"
        "        if pid == 0:\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "    return n // 64\n"
    ), limit="processes"),
    Case("threads beyond the limit", (
        "import threading, time\n"
        "def f():\n"
        "    n = 0\n"
        "    for _ in range(64):\n"
        "        try:\n"
        "            threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
        "        except RuntimeError:\n"
        "            break\n"
        "        n += 1\n"
        "    return n // 64\n"
    ), limit="processes"),
    # --- the grader's files and descriptors ---
    Case("FIFOs in place of the grader's files", attempt(
        "import os",
        "for name in ('stdout', 'stderr', 'spec.json', 'result'):  # in its own directory only",
        "    try:",
        "        os.remove(name)",
        "    except OSError:",
        "        pass",
        "    try:",
        "        os.mkfifo(name)",
        "    except OSError:",
        "        pass",
        "fd = os.open('stdout', os.O_RDWR)",
        "os.dup2(fd, 1); os.dup2(fd, 2)",
    ), correct=True),
    Case("close every descriptor", "import os\nos.closerange(0, 1024)\ndef f():\n    return 1\n"),
    Case("flood stdout", attempt("import sys", "sys.stdout.write('y' * (64 << 20))"), correct=True),
    Case("lock the scratch directory", attempt(
        "import os", "os.makedirs('a/b/c')", "open('a/b/c/x', 'w').write('x')",
        "for p in ('a/b/c', 'a/b', 'a', '.'):", "    os.chmod(p, 0)"), correct=True),
    Case("kill the parent", attempt("import os, signal", "os.kill(os.getppid(), signal.SIGKILL)"), correct=True),
]
