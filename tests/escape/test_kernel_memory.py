"""Kernel memory a box can hold besides its own pages: socket buffers (and pipe buffers).

A memory cgroup charges them to the box; the RLIMIT_AS fallback cannot see them at all (a box
held 1 GiB in unix socket buffers under --memory 64M, exit 0), and no seccomp rule can bound a
total. So the verdict must say which it was: enforcement["kernel_buffers"] is "cgroup" or
"none" — never implied by memory="rlimit".
"""

from __future__ import annotations

import textwrap

import sandbox
from sandbox import Limits, SandboxConfig, Status

HOLD = textwrap.dedent("""
    import socket
    held, keep = 0, []
    while held < 256 << 20:
        a, b = socket.socketpair()
        a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 30)
        a.setblocking(False)
        try:
            while True:
                held += a.send(b"x" * 65536)
        except BlockingIOError:
            pass
        keep.append((a, b))
    print("held", held >> 20, "MiB")
""")


def test_the_verdict_says_whether_socket_buffers_were_bounded(no_leftovers):
    r = sandbox.run_sync(["python3", "-c", HOLD], SandboxConfig(limits=Limits.parse(
        memory="64M", wall_time="20s")))
    if r.enforcement["memory"] == "cgroup":
        assert r.enforcement["kernel_buffers"] == "cgroup" and r.status == Status.ML, r
    else:  # the fallback: the hold succeeds, and the verdict does not pretend otherwise
        assert r.enforcement["memory"] == "rlimit"
        assert r.enforcement["kernel_buffers"] == "none", r.enforcement
        assert r.status == Status.OK and r.stdout.startswith(b"held 25"), r
