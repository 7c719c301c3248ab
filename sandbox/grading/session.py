"""An interactive box: a worker inside answers calls into a submission's code, one at a time.

The worker is a fresh Python interpreter exec'd in the box (``sandbox._worker``): it has seen
nothing of the (trusted) caller — no heap, no frames, no modules, no argv, no environment
block — and imports the submission's modules *inside* the box. Requests and replies are
length-prefixed tagged JSON (``sandbox._codec``) over a socketpair: never pickle, every frame
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
import time
from collections.abc import Sequence
from typing import Any

from sandbox import Result, SandboxConfig, _codec, _pyprefix, _spawn, _statusline, _verdict, _worker
from sandbox import _syscalls as sc
from sandbox._boxlife import BoxError, BoxLife, xx_result

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sandbox.grading.zygote import Zygote

MAX_FRAME = _worker.MAX_FRAME
START_TIMEOUT = 60.0  # for the worker's start-up when the box has no wall time


def crossing_error(value: Any) -> str | None:
    """Why ``value`` cannot cross into a box (as tagged JSON: ``sandbox._codec``), or None when
    it can: a caller checks its arguments before it makes a box for them."""
    try:
        _codec.tag(value)
    except _codec.CodecError as e:
        return str(e)
    return None


class SessionError(Exception):
    """The box could not answer: timeout, death, or a malformed reply (message says which)."""


class InvalidReply(SessionError):
    """The box answered something that is not a well-formed reply (it was killed)."""


def _send(sock: socket.socket, data: bytes) -> None:
    sock.sendall(struct.pack("!I", len(data)) + data)


class CpuSpent(Exception):
    """The box's CPU-time budget ran out while we waited for its worker."""


def _recv_exact(sock: socket.socket, n: int, deadline: float | None, watch: Any = None) -> bytes:
    """``watch``: the box's CPU-time watch (``BoxLife.watch``), checked on its own schedule
    while we wait: the same box-wide budget as a one-shot box's."""
    buf = bytearray()
    while len(buf) < n:
        while deadline is not None or watch is not None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError
            if watch is not None:
                wait = watch()
                if wait is None:
                    raise CpuSpent
                left = wait if left is None else min(left, wait)
            if select.select([sock], [], [], left)[0]:
                break
        chunk = sock.recv(min(65536, n - len(buf)))
        if not chunk:
            raise EOFError
        buf += chunk
    return bytes(buf)


def _recv(sock: socket.socket, deadline: float | None, watch: Any = None) -> bytes:
    (n,) = struct.unpack("!I", _recv_exact(sock, 4, deadline, watch))
    if n > MAX_FRAME:
        raise _codec.CodecError(f"reply of {n} bytes exceeds the {MAX_FRAME}-byte limit")
    return _recv_exact(sock, n, deadline, watch)


class BoxSession:
    """One box with a worker; ``request()`` round trips; ``close()`` → the box's verdict.

    The worker is never a copy of the caller: with ``factory`` (grading) the box is cloned by
    that submission's zygote, a clean interpreter with the worker loaded
    (``sandbox.grading.zygote``); without (the fixture's ``call``) the box execs a fresh
    interpreter and is sent the worker's code (``sandbox._worker``). ``path``: directories (as
    the box sees them) put first on the worker's ``sys.path``; the caller's site-packages
    directories follow. The box starts at once; its first request waits for the worker's
    "ready" under the box's wall time, not under the call's time limit.

    The box gets its own cgroup leaf from *this* process's subtree, like every other box
    (``sandbox._boxlife.BoxLife``): the zygote clones the box straight into it
    (``CLONE_INTO_CGROUP`` with the leaf's fd we send), so the memory, pids and CPU limits hold
    the whole box, not one process of it; we read its counters and remove it at ``close``."""

    def __init__(self, config: SandboxConfig, path: Sequence[str], factory: Zygote | None = None) -> None:
        self.config = config.validate()
        self.result: Result | None = None
        self._t0 = time.monotonic()
        self._watched, self._watch = False, None  # the CPU-time watch: once the box is known (_started)
        host, box = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:  # its leaf, its plan (unless the zygote plans it) and its end: BoxLife
            self._life = BoxLife(self.config, None if factory is not None else
                                 _worker.command(box.fileno(), self.config.expose_python))
        except BoxError as e:  # require_cgroup without one: no box at all, the verdict says why
            host.close()
            box.close()
            self.result = e.result
            return
        self._sock = host
        self._out = self._err = self._st_r = st_w = -1
        self._factory = factory
        self._box: _spawn.BoxProcess | None = None
        try:
            self._out = os.memfd_create("box-stdout", os.MFD_CLOEXEC)
            self._err = os.memfd_create("box-stderr", os.MFD_CLOEXEC)
            self._st_r, st_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
            if factory is not None:  # cloned by the zygote: its worker is already loaded
                cg_fd = self._life.cg.dir_fd() if self._life.cg is not None else None
                try:
                    factory.spawn(self.config, [box.fileno(), self._out, self._err, st_w],
                                  cgroup_fd=cg_fd, cgroup_enforced=sorted(self._life.enforced))
                finally:
                    if cg_fd is not None:
                        os.close(cg_fd)
            else:  # a fresh interpreter exec'd in the box, sent its code first
                self._spawn_here(box.fileno(), st_w)
        except BaseException:  # EMFILE, a failed clone, Ctrl-C: no fd of the box left behind
            self._life.end()
            host.close()
            for fd in (self._out, self._err, self._st_r):
                if fd >= 0:
                    os.close(fd)
            raise
        finally:
            if st_w >= 0:
                os.close(st_w)
            box.close()
        self._killed_for: str | None = None
        self._ready = False
        try:  # fits in the socket's buffer: read by the worker as it starts
            if factory is None:
                host.sendall(_worker.boot_frame())
            site = _pyprefix.box_paths(_worker.site_dirs(), self.config.expose_python)
            _send(host, _codec.encode({"path": [*path, *site]}))
        except OSError:
            pass  # the box died already: the first request reports how

    def _spawn_here(self, box_fd: int, st_w: int) -> None:
        null = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self._box = self._life.spawn(stdin=null, stdout=self._out, stderr=self._err,
                                         status_w=st_w, pass_fds=[box_fd])
        except BoxError as e:
            err = e.result.errno if e.result is not None else None
            raise OSError(err or 0, str(e)) from None
        finally:
            os.close(null)

    def _started(self) -> _spawn.BoxProcess:
        """The box, once the zygote said it cloned it (OSError: it could not)."""
        if self._box is None:
            assert self._factory is not None
            pid, pidfd, reply = self._factory.spawned()
            self._box = _spawn.BoxProcess(pid, pidfd)
            self._life.adopt(self._box, dict(reply["enforcement"]), str(reply["seccomp"]),
                             self._factory.wait)
        if not self._watched:  # once: the box's CPU-time watch (the one-shot runners' own)
            self._watched = True
            self._watch = self._life.watch(self.config.limits.cpu_time)
        return self._box

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def request(self, msg: dict[str, Any], timeout: float) -> Any:
        if self.result is not None:
            raise SessionError(f"the submission's box is gone ({self.result.reason or self.result.status})")
        try:
            self._started()
        except OSError:
            res = self.close()
            raise SessionError(f"the submission's box did not start ({res.reason})") from None
        if not self._ready:
            wall = self.config.limits.wall_time
            self._exchange(None, self._t0 + (START_TIMEOUT if wall is None else wall),
                           "the worker did not start within the box's wall time")
            self._ready = True
        return self._exchange(msg, time.monotonic() + timeout,
                              f"call did not return within {timeout:g}s (time limit)")

    def _exchange(self, msg: dict[str, Any] | None, deadline: float, late: str) -> Any:
        """Send ``msg`` (None: only wait for the worker's "ready") and return the reply."""
        data = None if msg is None else _codec.encode(msg)  # the caller's values: its own error
        try:
            if data is not None:
                _send(self._sock, data)
            reply = _codec.decode(_recv(self._sock, deadline, self._watch or None))
        except TimeoutError:
            self._kill("wall")
            raise SessionError(late) from None
        except CpuSpent:
            self._kill("cpu")
            raise SessionError(f"CPU time {self.config.limits.cpu_time:g}s exceeded") from None
        except (EOFError, OSError):
            res = self.close()
            raise SessionError(f"the submission's box died ({res.reason or res.error or res.status})") from None
        except _codec.CodecError as e:
            self._kill(None)
            raise InvalidReply(f"invalid reply from the submission's box: {e}") from None
        if msg is None and reply == {"ready": True}:
            return reply
        if msg is not None and isinstance(reply, dict) and set(reply) <= {"ok", "error"} and len(reply) == 1:
            return reply
        self._kill(None)
        raise InvalidReply("invalid reply from the submission's box")

    def _kill(self, reason: str | None) -> None:
        if self._killed_for is None:
            self._killed_for = reason
        try:
            sc.pidfd_send_signal(self._started().pidfd, signal.SIGKILL)
        except OSError:
            pass

    def close(self) -> Result:
        if self.result is not None:
            return self.result
        self._sock.close()  # the worker sees EOF and exits; a stuck one is killed
        try:
            box = self._started()
        except OSError as e:
            self.result = xx_result("clone", e)
            for fd in (self._out, self._err, self._st_r):
                os.close(fd)
            self._life.end()
            return self.result
        if not select.select([box.pidfd], [], [], 1.0)[0]:
            self._kill(None)
        facts = self._life.facts()
        facts.init_wait_status, facts.cpu_time, facts.max_rss = self._life.reap()
        facts.wall_time, facts.killed_for = time.monotonic() - self._t0, self._killed_for
        facts.status_line = _statusline.read(self._st_r)
        facts.cgroup = self._life.stats()  # an OOM kill takes init too: only the cgroup tells ML
        self._life.end()
        lim = self.config.limits
        out = _read_memfd(self._out, lim.output_limit)
        err = _read_memfd(self._err, lim.output_limit)
        self.result = _verdict.build_result(facts, out, err)
        for fd in (self._out, self._err, self._st_r):
            os.close(fd)
        return self.result


def _read_memfd(fd: int, cap: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    data = bytearray()
    while len(data) < cap and (chunk := os.read(fd, min(65536, cap - len(data)))):
        data += chunk
    return bytes(data)
