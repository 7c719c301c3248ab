"""An interactive box: a worker inside answers calls into a submission's code, one at a time.

The worker is a function cloned into the box from the (trusted) grader process; it imports the
submission's modules *inside* the box and runs calls there. Requests and replies are
length-prefixed tagged JSON (``sandbox.codec``) over a socketpair: never pickle, every frame
bounded, every reply awaited with a time limit. When a call times out or the box dies, the
box is killed and the session is over; the verdict comes from the kernel as for any box.

The worker shares its process with the submission's code, so every reply is treated as hostile
input: it is size-checked and decoded strictly, and may only be a value or an error description.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import sys
import time
from typing import Any

from sandbox import _syscalls as sc
from sandbox import codec, contain, spawn, statusline, verdict
from sandbox.config import SandboxConfig
from sandbox.result import Result

MAX_FRAME = 8 * 1024 * 1024
FORBIDDEN_NAMES = ("__",)  # no dunder traversal: only the submission's own public names


class SessionError(Exception):
    """The box could not answer: timeout, death, or a malformed reply (message says which)."""


def _send(sock: socket.socket, data: bytes) -> None:
    sock.sendall(struct.pack("!I", len(data)) + data)


def _recv_exact(sock: socket.socket, n: int, deadline: float | None) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        if deadline is not None:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([sock], [], [], left)[0]:
                raise TimeoutError
        chunk = sock.recv(min(65536, n - len(buf)))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def _recv(sock: socket.socket, deadline: float | None) -> bytes:
    (n,) = struct.unpack("!I", _recv_exact(sock, 4, deadline))
    if n > MAX_FRAME:
        raise SessionError(f"reply of {n} bytes exceeds the {MAX_FRAME}-byte limit")
    return _recv_exact(sock, n, deadline)


def worker_loop(fd: int, workdir: str) -> int:
    """Runs INSIDE the box: serve import/call requests until the socket closes."""
    import importlib
    import traceback

    sock = socket.socket(fileno=fd)
    # The grader's sys.stdout/stderr are pytest's capture objects, whose fds are not in the box:
    # give the submission plain ones on the box's own 1 and 2 (they go to bounded memfds).
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stdin = open(os.devnull)  # noqa: SIM115
    sys.path.insert(0, workdir)
    os.chdir(workdir)
    modules: dict[str, Any] = {}
    while True:
        try:
            req = codec.decode(_recv(sock, None))
        except (EOFError, OSError):
            return 0
        try:
            name = req["module"]
            if name not in modules:
                modules[name] = importlib.import_module(name)
            obj = modules[name]
            for part in req.get("path", []):
                if part.startswith(FORBIDDEN_NAMES):
                    raise AttributeError(f"access to {part!r} is not allowed")
                obj = getattr(obj, part)
            if req["op"] == "import":
                value = None
            elif req["op"] == "call":
                value = obj(*req.get("args", ()), **req.get("kwargs", {}))
            else:
                value = obj
            reply = codec.encode({"ok": value})
        except BaseException as e:  # noqa: BLE001 - described, never shipped as an object
            reply = codec.encode({"error": {"type": type(e).__name__, "message": str(e)[:10000],
                                            "traceback": traceback.format_exc()[-20000:]}})
        _send(sock, reply)


class BoxSession:
    """One box with a worker; ``request()`` round trips; ``close()`` → the box's verdict."""

    def __init__(self, config: SandboxConfig, workdir: str) -> None:
        self.config = config.validate()
        host, box = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock = host
        self._out = os.memfd_create("box-stdout", os.MFD_CLOEXEC)
        self._err = os.memfd_create("box-stderr", os.MFD_CLOEXEC)
        self._st_r, st_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        box_fd = box.fileno()
        self._prep = contain.prepare(self.config, lambda: worker_loop(box_fd, workdir))
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._t0 = time.monotonic()
        try:
            self._box = spawn.spawn_box(self._prep, stdin=null, stdout=self._out, stderr=self._err,
                                        status_w=st_w, pass_fds=[box_fd])
        finally:
            os.close(null)
            os.close(st_w)
            box.close()
        self._killed_for: str | None = None
        self.result: Result | None = None

    def request(self, msg: dict[str, Any], timeout: float) -> Any:
        if self.result is not None:
            raise SessionError(f"the submission's box is gone ({self.result.reason or self.result.status})")
        try:
            _send(self._sock, codec.encode(msg))
            reply = codec.decode(_recv(self._sock, time.monotonic() + timeout))
        except TimeoutError:
            self._kill("wall")
            raise SessionError(f"call did not return within {timeout:g}s (time limit)") from None
        except (EOFError, OSError):
            res = self.close()
            raise SessionError(f"the submission's box died ({res.reason or res.error or res.status})") from None
        except codec.CodecError as e:
            self._kill(None)
            raise SessionError(f"invalid reply from the submission's box: {e}") from None
        if isinstance(reply, dict) and set(reply) <= {"ok", "error"} and len(reply) == 1:
            return reply
        self._kill(None)
        raise SessionError("invalid reply from the submission's box")

    def _kill(self, reason: str | None) -> None:
        if self._killed_for is None:
            self._killed_for = reason
        try:
            sc.pidfd_send_signal(self._box.pidfd, signal.SIGKILL)
        except OSError:
            pass

    def close(self) -> Result:
        if self.result is not None:
            return self.result
        self._sock.close()  # the worker sees EOF and exits; a stuck one is killed
        if not select.select([self._box.pidfd], [], [], 1.0)[0]:
            self._kill(None)
        status, cpu_time, max_rss = sc.wait4(self._box.pid)
        lim = self.config.limits
        facts = verdict.Facts(lim, self._prep.enforcement, time.monotonic() - self._t0,
                              init_wait_status=status, cpu_time=cpu_time,
                              max_rss=max_rss, killed_for=self._killed_for,
                              seccomp_policy=self._prep.seccomp_desc)
        facts.status_line = statusline.read(self._st_r)
        out = _read_memfd(self._out, lim.output_limit)
        err = _read_memfd(self._err, lim.output_limit)
        self.result = verdict.build_result(facts, out, err)
        for fd in (self._box.pidfd, self._out, self._err, self._st_r):
            os.close(fd)
        return self.result


def _read_memfd(fd: int, cap: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    data = bytearray()
    while len(data) < cap and (chunk := os.read(fd, min(65536, cap - len(data)))):
        data += chunk
    return bytes(data)
