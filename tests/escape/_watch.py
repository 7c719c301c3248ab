"""A box that watches paths with inotify while the host touches them (the inotify tests' helper).

The box sets its watches, says it is ready, and waits on stdin; the host then does what any
host process does there (``touch``) and lets it go on; the box counts the bytes of events it
got (the host's), then touches the paths itself and counts again (its own: the watch works).
inotify queues an event before the call that made it returns, so the box reads what is queued
when it is told to, without waiting: no timing is involved.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Callable

import sandbox
from sandbox import SandboxConfig

CLI = [sys.executable, "-m", "sandbox._cli"]

WATCH = """
    import ctypes, errno, os, sys
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK)
    if fd < 0:
        print("refused", errno.errorcode[ctypes.get_errno()], flush=True)
        sys.exit()
    mask = 0x1 | 0x2 | 0x8 | 0x10 | 0x20  # IN_ACCESS|IN_MODIFY|IN_CLOSE_WRITE|_NOWRITE|IN_OPEN
    for p in sys.argv[1:]:
        assert libc.inotify_add_watch(fd, p.encode(), mask) >= 0, (p, ctypes.get_errno())
    def drain():  # what is queued now (a watch on /dev/null never goes quiet on a busy host)
        n = 0
        for _ in range(1000):
            try:
                n += len(os.read(fd, 65536))
            except BlockingIOError:
                break
        return n
    print("ready", flush=True)
    open("/tmp/ready", "w").close()
    sys.stdin.readline()  # the host has been busy there
    seen_host = drain()
    for p in sys.argv[1:]:  # control: our own accesses are seen, so the watch works
        if os.path.isdir(p):
            os.listdir(p)
        else:
            with open(p, "rb") as f:
                f.read(1)
    print(seen_host, drain(), flush=True)
    """


def watch(inside: list[str], touch: Callable[[], None], config: SandboxConfig | None = None) -> str:
    """The box's last line: ``refused ERRNO`` or ``HOST_BYTES OWN_BYTES``. With ``config`` a
    held ``Box`` of it watches, else a ``sandbox run`` box (the CLI's defaults)."""
    argv = ["python3", "-c", textwrap.dedent(WATCH), *inside]
    if config is None:
        box = subprocess.Popen([*CLI, "run", "--", *argv], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            assert box.stdout is not None and box.stdin is not None
            first = box.stdout.readline()
            if first == b"ready\n":
                touch()
                box.stdin.write(b"go\n")
            out, err = box.communicate(timeout=60)
        finally:
            if box.poll() is None:
                box.kill()
                box.wait()
        assert box.returncode == 0, (first, out, err)
        return (first + out).decode().splitlines()[-1]
    with sandbox.Box(config) as held:
        proc = held.start(argv)
        for _ in range(2000):  # until the box is ready (or the program ended)
            if proc.poll() is not None:
                break
            try:
                held.get("/tmp/ready")
                break
            except FileNotFoundError:
                time.sleep(0.01)
        else:
            raise AssertionError("the watching box never became ready")
        if proc.result is None:
            touch()
            proc.stdin.write(b"go\n")
        r = proc.communicate()
    assert r.status == "OK", r
    return r.stdout.decode().splitlines()[-1]
