"""``Worker``: a clean Python interpreter in a held ``Box`` that imports modules and answers calls.

The host half of ``sandbox._worker`` (the box half). Untrusted Python must never run in a copy
of the trusted caller: a fork keeps the caller's heap, frames, modules, argv and environment
block (a graded submission read the teacher's expected values that way). So the worker is a
program the box's init execs like any other (``Box.start``: ``python -I -S -B -c BOOT``, our
interpreter as the box sees it), sent its code on its stdin. It has seen nothing of us.

An interpreter's start-up is most of a small call, so the worker is a *fork server*: it imports
nothing of the code it serves, and each ``fresh()`` — a grader's next test — gets a fork of it,
with fresh module state, for the price of a fork. Forks run one at a time; each reports how it
ended. What that report says comes from inside the box (the fork server shares the box, and so
the trust domain, with the code it served): it can only misstate its own fork's end. The host's
own findings decide everything else: a call that misses its time limit kills the worker (its
verdict is then the box's, TO), EOF means it died (its verdict says how: ML when the box's memory
limit ended the box), and a malformed reply kills it.

Protocol: 4-byte big-endian length + tagged JSON (``sandbox._codec``), never pickle; every
frame is bounded (``MAX_FRAME``) and every wait has a deadline.
  → boot frame (our code, marshal), ``{"path": [...]}``     ← ``{"ready": true}``
  → ``{"op": "fork"}``      ← ``{"ready": true}`` (the fork) or ``{"exited": -1, "error": E}``
  → ``{"op": "import"|"get"|"call", "module", "path", "args", "kwargs"}``
                            ← ``{"ok": value}`` | ``{"error": {type, message, traceback}}``
  → ``{"op": "end"}``       ← ``{"exited": wait_status, "cpu_time", "max_rss"}`` (also sent,
                              instead of a reply, when the fork dies during a call)
  EOF on stdin: the worker exits.
"""

from __future__ import annotations

import os
import select
import struct
import time
from collections.abc import Sequence
from typing import Any

from sandbox import _codec, _pyprefix, _statusline, _verdict, _worker
from sandbox._box import Box
from sandbox._box_proc import Process
from sandbox._result import Result

MAX_FRAME = _worker.MAX_FRAME
START_TIMEOUT = 60.0  # the worker's start-up, when the box has no wall time
END_TIMEOUT = 2.0  # a fork told to end that does not: the worker is killed


class WorkerError(Exception):
    """The worker could not answer: a call's time limit, its death (or the box's), or a malformed
    reply (``invalid``). ``result``: the worker process's verdict, once it ended."""

    def __init__(self, message: str, result: Result | None = None, invalid: bool = False) -> None:
        super().__init__(message)
        self.result, self.invalid = result, invalid


class CallError(Exception):
    """The code in the box raised: its type name, message and traceback, as text only."""

    def __init__(self, message: str, type_name: str = "", traceback_text: str = "") -> None:
        super().__init__(message)
        self.type_name, self.traceback_text = type_name, traceback_text


class Worker:
    """A fresh interpreter in ``box`` answering ``call``/``get``/``import_module``. ``path``:
    directories (as the box sees them) put first on its ``sys.path``; our Python's
    site-packages follow. ``cpu_time``: RLIMIT_CPU of the worker, which every fork gets anew.
    ``alone``: each fork starts alone in the box — every other process in it (what an earlier
    fork left running: a daemon could otherwise tamper with the next test) is killed first.
    Starting returns at once; the first request waits for the worker under ``start_timeout``."""

    def __init__(self, box: Box, path: Sequence[str] = (), *, cpu_time: float | str | None = None,
                 start_timeout: float | None = None, alone: bool = False) -> None:
        self.box, self.alone = box, alone
        self.fork_result: Result | None = None  # how the last fork ended (``fresh``)
        self.started = time.monotonic()
        wall = box.config.limits.wall_time
        self._start_by = self.started + (start_timeout or (START_TIMEOUT if wall is None else wall))
        self._ready = False
        self._fork = "none"  # → "live" (serving) → "ended" (died or ended: ``fresh`` resets)
        self._fork_t0 = 0.0
        self.result: Result | None = None  # the worker process's verdict, once it ended
        self._proc: Process = box.start(_worker.command(box.config.expose_python), stdout="pipe",
                                        cpu_time=cpu_time)
        self._out = self._proc.stdout.fileno()
        self._in = self._proc.stdin.fileno()
        try:
            os.set_blocking(self._in, False)
            site = _pyprefix.box_paths(_worker.site_dirs(), box.config.expose_python)
            boot = _worker.boot_frame() + _frame({"path": [*path, *site]})
        except BaseException:  # EMFILE reading our sources, Ctrl-C: no process, no pipe left
            self._proc.kill()
            self._finish()
            raise
        try:  # read by the worker as it starts (a dead one: the first request says how)
            self._write(boot, self._start_by)
        except WorkerError:
            pass

    @staticmethod
    def crossing_error(value: Any) -> str | None:
        """Why ``value`` cannot cross into a box (as tagged JSON: None, bool, int, float, str,
        bytes, list, tuple, dict), or None when it can: check arguments before making a box."""
        try:
            _codec.tag(value)
        except _codec.CodecError as e:
            return str(e)
        return None

    @property
    def alive(self) -> bool:
        return self.result is None

    # ------------------------------------------------------------------ requests --
    def call(self, module: str, name: str, args: Sequence[Any] = (),
             kwargs: dict[str, Any] | None = None, *, timeout: float | None = None) -> Any:
        """``module.name(*args, **kwargs)`` in the box (``name`` may be dotted: ``"Cls.meth"``):
        its return value, decoded. ``CallError`` if it raised, ``WorkerError`` if no answer
        came within ``timeout`` seconds (the worker is then killed)."""
        return self._ok(self.request({"op": "call", "module": module, "path": name.split("."),
                                      "args": list(args), "kwargs": dict(kwargs or {})}, timeout))

    def get(self, module: str, name: str, *, timeout: float | None = None) -> Any:
        """The value of ``module.name`` (a constant), decoded like a call's result."""
        return self._ok(self.request({"op": "get", "module": module, "path": name.split(".")}, timeout))

    def import_module(self, module: str, *, timeout: float | None = None) -> None:
        """Import ``module`` in the box (``CallError`` with its exception if that fails)."""
        self._ok(self.request({"op": "import", "module": module, "path": []}, timeout))

    def request(self, msg: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
        """One raw request (see the protocol above): ``{"ok": v}`` or ``{"error": {...}}``."""
        data = _codec.encode(msg)  # the caller's values: its own error, before anything is sent
        if self.result is not None:
            raise WorkerError(f"the worker is gone ({_why(self.result)})", self.result)
        if self._fork == "ended":
            raise WorkerError(f"the worker's fork died ({_why(self.fork_result)})", self.fork_result)
        if self._fork == "none":
            self._start_fork()
        deadline = None if timeout is None else time.monotonic() + timeout
        self._write(_head(data) + data, deadline)
        reply = self._read(deadline, f"call did not return within {timeout:g}s (time limit)")
        if isinstance(reply, dict) and len(reply) == 1 and set(reply) <= {"ok", "error"}:
            return reply
        if isinstance(reply, dict) and "exited" in reply:
            self._forked_end(reply)
            raise WorkerError(f"the worker's fork died ({_why(self.fork_result)})", self.fork_result)
        raise self._invalid("invalid reply from the worker")

    def _start_fork(self) -> None:
        if not self._ready:
            if self._read(self._start_by, "the worker did not start within the box's wall time") != {"ready": True}:
                raise self._invalid("invalid start-up message from the worker")
            self._ready = True
        self._write(_frame({"op": "fork", "alone": self.alone}), time.monotonic() + END_TIMEOUT)
        self._fork_t0 = time.monotonic()
        reply = self._read(time.monotonic() + START_TIMEOUT, "the worker did not fork")
        if isinstance(reply, dict) and reply.get("exited") == -1:
            raise WorkerError(f"the worker could not fork: {str(reply.get('error'))[:200]}")
        if reply != {"ready": True}:
            raise self._invalid("invalid reply from the worker's fork")
        self._fork = "live"

    def fresh(self) -> Result | None:
        """End the current fork (if any): the next request gets a new one, with fresh module
        state. Returns how the ended fork ended (None: there was none, or the worker is gone)."""
        if self._fork == "live" and self.result is None:
            try:
                self._write(_frame({"op": "end"}), time.monotonic() + END_TIMEOUT)
                reply = self._read(time.monotonic() + END_TIMEOUT, "the worker's fork did not end")
                if not (isinstance(reply, dict) and "exited" in reply):
                    raise self._invalid("invalid end report from the worker")
                self._forked_end(reply)
            except WorkerError:
                pass  # killed: its verdict is the worker's (self.result)
        ended = self.fork_result if self._fork != "none" and self.result is None else None
        self._fork, self.fork_result = "none", None
        return ended

    def close(self) -> Result:
        """End the worker: its process's verdict (how the box saw it end)."""
        if self.result is None:
            self._proc._close_stdin()  # EOF: the fork, then the worker, exit
            if self._proc.wait(END_TIMEOUT) is None:
                self._proc.kill()
            self._finish()
        assert self.result is not None
        return self.result

    # ------------------------------------------------------------------ plumbing --
    def _ok(self, reply: dict[str, Any]) -> Any:
        if "error" in reply:
            err = reply["error"] if isinstance(reply["error"], dict) else {}
            raise CallError(f"{err.get('type', 'Error')}: {err.get('message', '')}",
                            str(err.get("type", "")), str(err.get("traceback", "")))
        return reply["ok"]

    def _forked_end(self, reply: dict[str, Any]) -> None:
        """The fork ended (its report, from the box): its verdict, built as any process's."""
        try:
            status, cpu, rss = int(reply["exited"]), float(reply["cpu_time"]), int(reply["max_rss"])
        except (KeyError, TypeError, ValueError):
            raise self._invalid("invalid end report from the worker") from None
        facts = _verdict.Facts(self._proc.limits, self.box._enforcement(),
                               time.monotonic() - self._fork_t0,
                               status_line=_statusline.encode_exit(status), cpu_time=cpu,
                               max_rss=rss or None, init_wait_status=0,
                               fallback_reasons=self.box._fallback,
                               seccomp_policy=self.box._prep.seccomp_desc,
                               landlock=self.box._prep.landlock)
        self.fork_result = _verdict.build_result(facts)
        self._fork = "ended"

    def _invalid(self, why: str) -> WorkerError:
        self._proc.kill()
        self._finish()
        return WorkerError(why, self.result, invalid=True)

    def _finish(self) -> None:
        """The worker process has ended (or was killed): take its verdict."""
        if self.result is None:
            self.result = self._proc.wait()
            self._proc.stdout.close()
            self._fork = "ended"

    def _gone(self, late: str | None) -> WorkerError:
        if late is not None:  # our time limit: killed, and the box's verdict says TO
            self._proc.kill("wall")
        self._finish()
        assert self.result is not None
        return WorkerError(late or f"the worker died ({_why(self.result)})", self.result)

    def _write(self, data: bytes, deadline: float | None) -> None:
        view = memoryview(data)
        while view:
            if self._proc.stdin is None:  # the box died (its processes' pipes are closed)
                raise self._gone(None)
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise self._gone("the worker did not read its request in time")
            if not select.select([], [self._in], [], left)[1]:
                continue
            try:
                view = view[os.write(self._in, view):]
            except BlockingIOError:
                continue
            except OSError:  # EPIPE: it died
                raise self._gone(None) from None

    def _read(self, deadline: float | None, late: str) -> Any:
        (n,) = struct.unpack("!I", self._read_exact(4, deadline, late))
        if n > MAX_FRAME:
            raise self._invalid(f"reply of {n} bytes exceeds the {MAX_FRAME}-byte limit")
        try:
            return _codec.decode(self._read_exact(n, deadline, late))
        except _codec.CodecError as e:
            raise self._invalid(f"invalid reply from the worker: {e}") from None

    def _read_exact(self, n: int, deadline: float | None, late: str) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            left = None if deadline is None else deadline - time.monotonic()
            if (left is not None and left <= 0) or not self._proc.wait_stdout(left):
                raise self._gone(late)
            chunk = os.read(self._out, min(65536, n - len(buf)))
            if not chunk:
                raise self._gone(None)
            buf += chunk
        return bytes(buf)


def _frame(msg: Any) -> bytes:
    data = _codec.encode(msg)
    return _head(data) + data


def _head(data: bytes) -> bytes:
    return struct.pack("!I", len(data))


def _why(r: Result | None) -> str:
    return "unknown" if r is None else str(r.reason or r.error or r.status)
