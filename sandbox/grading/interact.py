"""Interactive tasks: the submission's program and the teacher's interactor talk through pipes,
each in its own box with its own limits (``Submission.interact``).

We relay the bytes ourselves (submission stdout → interactor stdin, interactor stdout →
submission stdin) rather than joining the two boxes' pipes directly, so that nothing can hang:
every read and write is non-blocking, what one side has not read yet is bounded (past it we
stop reading the writer, which then blocks in its own box, where its wall time holds), each
side's wall time is held by its own ``Process`` while we relay, a side that closes its end
gives the other EOF, and once the interactor has ended the submission gets a short grace to end
on its own before it is killed. The interactor decides, with testlib's exit codes: 0 accepted,
1 (or 2, presentation) wrong answer (its stderr says why); anything else — 3 (testlib's FAIL), a
signal, its own limits, or a Python traceback on its stderr (an uncaught exception also exits
1) — is the judge's own failure (JE), never the student's.
"""

from __future__ import annotations

import os
import select
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sandbox import Box, Limits, Process, Result, SandboxConfig, Status

PENDING_MAX = 1 << 20  # bytes relayed but not yet read by the other side, per direction
GRACE = 1.0  # seconds the submission has to end after the interactor did
CHUNK = 65536
JUDGE_DIR = "/judge"


@dataclass
class Interaction:
    """How an interactive run ended. ``verdict``: AC (the interactor accepted), WA (it did not:
    ``message`` is its stderr), the submission's own TO/ML/OL/SG/RE, or JE (the interactor
    itself failed: the teacher's problem). ``bytes_to``/``bytes_from``: what was relayed to
    and from the submission."""

    verdict: str
    message: str
    submission: Result
    interactor: Result
    bytes_to: int = 0
    bytes_from: int = 0
    transcript: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.verdict == "AC"

    def __bool__(self) -> bool:
        return self.ok


class _Pipe:
    """One direction: a source process's stdout into a destination process's stdin."""

    def __init__(self, src: Process, dst: Process) -> None:
        self.src, self.dst = src, dst
        self.rfd = src.stdout.fileno()  # ours until the end (the caller closes it)
        os.set_blocking(self.rfd, False)
        os.set_blocking(dst.stdin.fileno(), False)
        self.buf = bytearray()
        self.eof = self.closed = False  # source ended / destination's stdin closed
        self.moved = 0
        self.eof_at = float("inf")

    def read(self) -> None:
        try:
            chunk = os.read(self.rfd, CHUNK)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self.eof, self.eof_at = True, time.monotonic()
        elif not self.closed:  # (closed: the reader is gone; the writer's bytes are dropped)
            self.buf += chunk
        if self.eof and not self.buf:
            self.close_dst()

    @property
    def wfd(self) -> int:
        """The destination's stdin, while open: its Process closes it when it ends or is
        killed, so the number is looked up each time (never a stale, reused fd)."""
        f = self.dst.stdin
        return -1 if self.closed or f is None or f.closed else f.fileno()

    def write(self) -> None:
        if self.wfd < 0:
            self.close_dst()
            return
        try:
            n = os.write(self.wfd, self.buf)
        except BlockingIOError:
            return
        except OSError:  # EPIPE: the reader closed its stdin or ended
            self.buf.clear()
            self.close_dst()
            return
        del self.buf[:n]
        self.moved += n
        if self.eof and not self.buf:
            self.close_dst()

    def close_dst(self) -> None:
        if not self.closed:
            self.closed = True
            self.buf.clear()
            if self.dst.stdin is not None:
                self.dst.stdin.close()

    def wants_read(self) -> bool:
        return not self.eof and len(self.buf) < PENDING_MAX

    def wants_write(self) -> bool:
        return bool(self.buf) and self.wfd >= 0


def run_interactive(box: Box, argv: Sequence[str], interactor: Sequence[str], *,
                    files: Mapping[str, Any] | None, limits: dict[str, Any],
                    sub_limits: dict[str, Any]) -> Interaction:
    """The submission's ``argv`` in ``box`` (its held box), the ``interactor`` in a fresh box
    of its own (``files`` put under /judge, its cwd; ``limits`` its box's), relayed to the end."""
    judge = Box(SandboxConfig(limits=Limits.parse(**limits))).open()
    procs: list[Process] = []
    try:
        judge.put(f"{JUDGE_DIR}/.keep", b"")
        for name, data in (files or {}).items():
            judge.put(f"{JUDGE_DIR}/{name.lstrip('/')}", data, mode=0o755)
        inter = judge.start(list(interactor), cwd=JUDGE_DIR, stdout="pipe")
        procs.append(inter)
        sub = box.start(list(argv), stdout="pipe", **sub_limits)
        procs.append(sub)
        return _relay(sub, inter)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()
        judge.close()


def _relay(sub: Process, inter: Process) -> Interaction:
    to_inter, to_sub = _Pipe(sub, inter), _Pipe(inter, sub)
    pipes = (to_inter, to_sub)
    ended: dict[str, float] = {}
    killed = False
    while True:
        for name, p in (("inter", inter), ("sub", sub)):
            if name not in ended and p.poll() is not None:
                ended[name] = time.monotonic()
        if "inter" in ended and "sub" not in ended and time.monotonic() - ended["inter"] > GRACE \
                and not killed:
            sub.kill()
            killed = True
        if len(ended) == 2 and not any(p.wants_read() for p in pipes):
            break
        if len(ended) == 2 and not select.select([p.rfd for p in pipes if p.wants_read()], [], [], 0)[0]:
            break  # both ended and nothing more can be read: done (a pipe's writer lives no more)
        rd = [p.rfd for p in pipes if p.wants_read()]
        for p in pipes:
            if p.buf and p.wfd < 0:  # the reader's stdin was closed with it (it ended)
                p.close_dst()
        wr = [p.wfd for p in pipes if p.wants_write()]
        r, w, _ = select.select(rd, wr, [], 0.02)
        for p in pipes:
            if p.rfd in r:
                p.read()
            if p.wants_write() and p.wfd in w:
                p.write()
    rs, ri = sub.wait(), inter.wait()
    assert rs is not None and ri is not None
    # The submission failed first if its output ended (it died) before the interactor's did:
    # after that it was given EOF (and may well fail on it), which is the interactor's judgement.
    sub_first = min(ended["sub"], to_inter.eof_at) < min(ended["inter"], to_sub.eof_at)
    verdict, message = _verdict(rs, ri, killed, sub_first)
    return Interaction(verdict, message, rs, ri, to_sub.moved, to_inter.moved)


def _tail(b: bytes) -> str:
    return b[-2000:].decode(errors="replace").strip()


def _verdict(rs: Result, ri: Result, killed: bool, sub_first: bool) -> tuple[str, str]:
    limit = rs.status in (Status.TO, Status.ML, Status.OL, Status.SG, Status.XX) and not killed
    if (limit or rs.status is Status.RE) and sub_first:  # it failed before the interactor judged
        return str(rs.status), f"your program: {rs.reason or f'exit code {rs.exit_code}'}"
    crashed = b"Traceback (most recent call last):" in ri.stderr  # a Python judge's own bug
    if ri.status is Status.RE and ri.exit_code in (1, 2) and not crashed:
        return "WA", f"wrong answer: {_tail(ri.stderr) or 'the interactor rejected it'}"
    if ri.status is Status.OK and ri.exit_code == 0:
        if killed:
            return "TO", f"your program did not end within {GRACE:g}s after the interaction ended"
        if rs.status is Status.OK:
            return "AC", _tail(ri.stderr)
        if limit:
            return str(rs.status), f"your program: {rs.reason or rs.status}"
        return "RE", f"your program: {rs.reason or f'exit code {rs.exit_code}'}"
    if limit:
        return str(rs.status), f"your program: {rs.reason or rs.status}"
    why = ri.reason or f"exit code {ri.exit_code}"
    return "JE", f"the interactor failed ({ri.status}: {why}): {_tail(ri.stderr)}"


__all__ = ["Interaction", "run_interactive"]
