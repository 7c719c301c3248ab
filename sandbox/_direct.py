"""Run one box from the calling process, without trio: the CLI path and the plugin's fork path.

Why a second runner next to the trio supervisor: ``sandbox run`` pays Python's start-up once
and should not pay ~90 ms more to import trio and start a launcher process for a single box.
The calling process must be single-threaded (it clones the box itself). Verdicts come from the
same ``_verdict.build_result`` as the supervisor's, so both runners always agree.
"""

from __future__ import annotations

import _signal  # the C module: signal.py converts to enums (enum costs the CLI ~3 ms)
import os
import select
import stat
import time

from sandbox import _spawn, _statusline, _verdict
from sandbox import _syscalls as sc
from sandbox._boxlife import BoxError, BoxLife, xx_result
from sandbox._config import SandboxConfig, command_argv
from sandbox._result import Result

TYPE_CHECKING = False  # no typing import at run time (CLI start)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from sandbox._plan import Prepared

CHUNK = 65536
PARKED_MS = 100  # how often a background `sandbox run` checks whether it may read its terminal


class CappedBuffer:
    """Collects at most ``cap`` bytes; remembers whether more was offered (→ OL). With a
    ``sink`` the bytes go there, and only the last ``_verdict.TAIL`` stay (``tail``: the
    verdict reads the end of stderr, see ``_verdict._refused_allocation``). A sink that returns
    False has lost its reader (``gone``): the stream's pipe is then closed, as a shell's pipe
    would be, so the program gets SIGPIPE/EPIPE on its next write instead of writing on to the
    cap (``yes | head -1`` was an output-limit verdict)."""

    def __init__(self, cap: int, which: int = 0,
                 sink: Callable[[int, bytes], bool | None] | None = None) -> None:
        self.cap, self.parts, self.size, self.exceeded = cap, [], 0, False
        self.which, self.sink, self.tail, self.gone = which, sink, b"", False

    def feed(self, data: bytes) -> bool:
        room = self.cap - self.size
        if len(data) > room:
            data, self.exceeded = data[:room], True
        if data:
            self.size += len(data)
            if self.sink is not None:
                self.gone = self.sink(self.which, data) is False
                self.tail = (self.tail + data[-_verdict.TAIL:])[-_verdict.TAIL:]
            else:
                self.parts.append(data)
        return not self.exceeded

    def value(self) -> bytes:
        return b"".join(self.parts)


def box_pipes(stdin: bytes | None, stream: bool = False, term: Any = None) -> tuple[int, ...]:
    """(in_r, in_w, out_r, out_w, err_r, err_w, status_r, status_w), all close-on-exec; in_w is
    -1 when there is nothing to feed (the box gets /dev/null). With ``stream`` the box's stdin
    is a pipe too, fed from an fd of ours (``StdinFeed``): never that fd itself. With ``term``
    (a ``_pty.Terminal``) the box's stdin and stdout are its pty's slave, ours its master."""
    made: list[int] = []
    try:  # EMFILE part-way: close what was made (a caller never sees a half set)
        if term is not None:
            made += [os.dup(term.slave), os.dup(term.master), os.dup(term.master), os.dup(term.slave)]
        elif stdin is None and not stream:
            made += [os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC), -1]
        else:
            made += os.pipe2(os.O_CLOEXEC)
        if term is None:
            made += os.pipe2(os.O_CLOEXEC)
        made += os.pipe2(os.O_CLOEXEC)
        made += os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    except BaseException:
        for fd in made:
            if fd >= 0:
                os.close(fd)
        raise
    return tuple(made)


def _has_input(fd: int) -> bool:
    """False when ``fd`` is closed or /dev/null: the box then gets /dev/null (EOF) directly,
    with no pipe to feed."""
    try:
        st = os.fstat(fd)
    except OSError:
        return False
    return not (stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3))


class StdinFeed:
    """Feeds the box's stdin pipe (``w``, ours) from bytes given up front or from an fd of ours
    (``src``, the CLI's own stdin) read as a plain stream.

    Why a pipe even for a file or a terminal: an fd handed in is the caller's open file. A box
    could reopen it through /proc/self/fd/0 (a file the box's user owns then opens for writing),
    write to a read-write terminal past every output cap, or change its modes, window size and
    TIOCEXCL for good; a socket's peer would receive what the box sends. Through the pipe it
    reaches only the pipe. At most one chunk of ``src`` is held: it is read only once the
    previous chunk is in the pipe, so a slow box holds back the producer (backpressure), and
    ``src`` is never set non-blocking (its open file may be a terminal the shell shares).
    """

    def __init__(self, w: int, data: bytes = b"", src: int = -1,
                 keys: Callable[[bytes], bytes] | None = None) -> None:
        self.w, self.src, self.pending, self.waiting = w, src, memoryview(data), -1
        self.keys = keys  # a terminal's filter of what the user typed (_pty.Terminal.keys)
        self.tty, self.parked = src >= 0 and os.isatty(src), False
        os.set_blocking(w, False)

    def _foreground(self) -> bool:
        """Whether reading our terminal is ours to do. From a background job (`sandbox run
        ... &`) a read would stop us with SIGTTIN and leave the box unsupervised, and what
        the user types belongs to the shell then; so we park until we are in the foreground."""
        try:
            return os.tcgetpgrp(self.src) == os.getpgrp()
        except OSError:  # not our controlling terminal: no job control applies
            return True

    def unpark(self, poller: select.poll) -> None:
        if self.parked and self._foreground():
            self.parked = False
            self._wait(poller, self.src, select.POLLIN)

    def start(self, poller: select.poll) -> None:
        self._write(poller)

    def ready(self, poller: select.poll, fd: int) -> None:
        """``fd`` (the one we wait on) polled ready: move what we can."""
        if fd == self.src:
            if self.tty and not self._foreground():
                poller.unregister(fd)
                self.waiting, self.parked = -1, True
                return
            try:
                chunk = os.read(self.src, CHUNK)
            except BlockingIOError:  # the caller's fd is non-blocking and another reader won
                return
            except OSError:  # EIO (terminal hung up), EBADF (fd 0 open write-only): EOF
                chunk = b""
            if not chunk:
                self.close(poller)
                return
            self.pending = memoryview(chunk if self.keys is None else self.keys(chunk))
        self._write(poller)

    def _write(self, poller: select.poll) -> None:
        try:
            while self.pending:
                self.pending = self.pending[os.write(self.w, self.pending):]
        except BlockingIOError:
            pass
        except OSError:  # EPIPE: the box closed its stdin; read no more of the caller's input
            self.close(poller)
            return
        if self.pending:
            self._wait(poller, self.w, select.POLLOUT)
        elif self.src >= 0:
            self._wait(poller, self.src, select.POLLIN)
        else:
            self.close(poller)  # all given bytes are in: EOF

    def _wait(self, poller: select.poll, fd: int, ev: int) -> None:
        if self.waiting != fd:
            if self.waiting >= 0:
                poller.unregister(self.waiting)
            poller.register(fd, ev)
            self.waiting = fd

    def close(self, poller: select.poll | None = None) -> None:
        if self.waiting >= 0 and poller is not None:
            poller.unregister(self.waiting)
        self.waiting, self.parked = -1, False
        if self.w >= 0:
            os.close(self.w)
            self.w = -1
        self.pending, self.src = memoryview(b""), -1


def run_direct(target: Sequence[str] | Callable[[], int], config: SandboxConfig | None = None, *,
               stdin: bytes | None = None, pass_fds: Sequence[int] = (),
               prepared: Prepared | None = None, stdin_from: int = -1,
               on_output: Callable[[int, bytes], bool | None] | None = None,
               forward_signals: bool = False, stop_timeout: float | None = 10.0,
               tty: bool = False) -> Result:
    """Run ``target`` (argv to exec, or a callable run inside the box) and return its verdict.

    ``stdin_from`` (an fd of ours, instead of ``stdin`` bytes: the CLI's fd 0) is streamed into
    the box's stdin pipe until its EOF; the box never gets the fd itself. ``on_output`` is
    called with (1 or 2, chunk) as output arrives, within the cap (the CLI streams it); when
    it returns False that stream's reader is gone and the box's pipe is closed. With
    ``forward_signals`` (main thread only: the CLI) the signals we get go on to the program
    (``sandbox._fgsignals``: ``stop_timeout``, Ctrl-Z). With ``tty`` and ``stdin_from`` a
    terminal, the box gets a pty of its own relayed to it (``sandbox._pty``).
    """
    config = (config or SandboxConfig()).validate()
    if not callable(target):
        target = command_argv(target)
    try:
        life = BoxLife(config, target, prepared=prepared)
    except BoxError as e:
        assert e.result is not None
        return e.result
    lim = config.limits
    fds: list[int] = []
    term = None
    try:
        stdin_from = stdin_from if stdin is None and stdin_from >= 0 and _has_input(stdin_from) else -1
        try:
            if tty and stdin_from >= 0 and os.isatty(stdin_from):
                from sandbox._pty import Terminal

                term = Terminal(stdin_from)
            in_r, in_w, out_r, out_w, err_r, err_w, st_r, st_w = box_pipes(stdin, stdin_from >= 0, term)
        except OSError as e:  # EMFILE: a box that did not start, as a failed clone is
            return xx_result("pipes", e)
        fds += [in_r, out_r, out_w, err_r, err_w, st_r, st_w] + ([in_w] if in_w >= 0 else [])
        try:
            box = life.spawn(stdin=in_r, stdout=out_w, stderr=err_w, status_w=st_w, pass_fds=pass_fds)
        except BoxError as e:
            assert e.result is not None
            return e.result
        for fd in (in_r, out_w, err_w, st_w):
            os.close(fd)
            fds.remove(fd)
        if term is not None:  # only the box holds the slave now: its last close is our EOF
            os.close(term.slave)
            term.slave = -1
        watch = life.watch(lim.cpu_time)
        facts = life.facts()
        out = CappedBuffer(lim.output_limit, 1, on_output)
        err = CappedBuffer(lim.output_limit, 2, on_output)
        feed = (StdinFeed(in_w, stdin or b"", stdin_from, term and term.keys)
                if in_w >= 0 else None)
        if in_w >= 0:
            fds.remove(in_w)  # the feed closes it (EOF for the box)
        fwd = None
        if forward_signals:
            from sandbox._fgsignals import Forwarder

            fwd = Forwarder(box.pidfd, stop_timeout, *((term.on_stop, term.copy_size) if term else ()))

        def release(fd: int) -> None:  # a stream whose reader went away: the box gets EPIPE
            fds.remove(fd)
            os.close(fd)

        try:
            _pump(box, feed, {out_r: out, err_r: err}, facts,
                  None if lim.wall_time is None else life.t0 + lim.wall_time, watch, fwd, release)
        finally:
            if fwd is not None:
                fwd.close()
        facts.init_wait_status, facts.cpu_time, facts.max_rss = life.reap()
        facts.wall_time = time.monotonic() - life.t0 - (fwd.paused if fwd is not None else 0.0)
        if fwd is not None and facts.killed_for == "stop":
            facts.stop_after = (fwd.stop_timeout, fwd.kill_now)
        facts.status_line = _statusline.read(st_r)
        facts.cgroup = life.stats()
        r = _verdict.build_result(facts, out.value(), err.value(), out.exceeded, err.exceeded,
                                  stderr_tail=err.tail if on_output is not None else None, sizes=(out.size, err.size))
        r.egress = life.egress
        return r
    finally:
        life.end()
        if term is not None:
            term.close()  # our terminal as it was, before anything is printed after the run
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass


def _pump(box: _spawn.BoxProcess, feed: StdinFeed | None, outs: dict[int, CappedBuffer],
          facts: _verdict.Facts, deadline: float | None,
          cpu_check: Callable[[], float | None] | None = None, fwd: Any = None,
          release: Callable[[int], None] | None = None) -> None:
    """Move bytes until the box's init exits; kill it on wall time, output overflow, or when
    ``cpu_check`` (a ``_cpuwatch`` watch) says the box's CPU time is spent, or ``fwd`` (a
    ``_fgsignals.Forwarder``) that the grace after SIGTERM is over. The feed, if any, stops
    when the box exits (a stdin that never ends cannot hold us)."""
    poller = select.poll()
    for fd in outs:
        poller.register(fd, select.POLLIN)
    poller.register(box.pidfd, select.POLLIN)
    if fwd is not None:
        poller.register(fwd.fd, select.POLLIN)
    wall_end = deadline
    open_outs, exited, killed, next_cpu = set(outs), False, False, 0.0

    def kill(reason: str | None) -> None:
        nonlocal killed
        if not killed:
            killed = True
            if reason and facts.killed_for is None:
                facts.killed_for = reason
            try:
                sc.pidfd_send_signal(box.pidfd, _signal.SIGKILL)
            except OSError:
                pass

    try:
        if feed is not None:
            feed.start(poller)
        while open_outs or not exited:
            timeout = None
            if fwd is not None and not killed:
                if wall_end is not None:  # a stopped box (Ctrl-Z) spends no wall time
                    deadline = wall_end + fwd.paused
                if fwd.kill_now or (fwd.kill_at is not None and time.monotonic() >= fwd.kill_at):
                    kill("stop")
                    continue
                if fwd.kill_at is not None:
                    timeout = max(0, int((fwd.kill_at - time.monotonic()) * 1000) + 1)
            if deadline is not None and not killed:
                ms = max(0, int((deadline - time.monotonic()) * 1000) + 1)
                timeout = ms if timeout is None else min(timeout, ms)
            if cpu_check is not None and not killed:
                now = time.monotonic()
                if now >= next_cpu:  # on its schedule, not on every chunk of output
                    cpu_wait = cpu_check()
                    if cpu_wait is None:
                        kill("cpu")
                        continue
                    next_cpu = now + cpu_wait
                ms = int((next_cpu - now) * 1000) + 1
                timeout = ms if timeout is None else min(timeout, ms)
            if feed is not None and feed.parked:  # back in the foreground? (no event says so)
                feed.unpark(poller)
                timeout = PARKED_MS if timeout is None else min(timeout, PARKED_MS)
            if exited:
                timeout = 2000  # all box processes are dead; drain what is left in the pipes
            events = poller.poll(timeout)
            if not events:
                if exited:
                    break
                if fwd is not None and wall_end is not None:  # (a stop in this very poll)
                    deadline = wall_end + fwd.paused
                if deadline is not None and time.monotonic() >= deadline:
                    kill("wall")
                continue
            for fd, ev in events:
                if fd == box.pidfd:
                    exited = True
                    poller.unregister(fd)
                    if feed is not None:
                        feed.close(poller)
                elif feed is not None and fd == feed.waiting:
                    feed.ready(poller, fd)
                elif fwd is not None and fd == fwd.fd:
                    fwd.drain()
                elif fd in open_outs:
                    try:
                        chunk = os.read(fd, CHUNK) if ev & (select.POLLIN | select.POLLHUP) else b""
                    except BlockingIOError:  # (a pty master: non-blocking, shared with the feed)
                        continue
                    except OSError:  # EIO: a pty whose every slave end is closed
                        chunk = b""
                    if not chunk:
                        poller.unregister(fd)
                        open_outs.discard(fd)
                    elif not outs[fd].feed(chunk):
                        kill("output")
                    elif outs[fd].gone and release is not None:
                        poller.unregister(fd)
                        open_outs.discard(fd)
                        release(fd)
    except BaseException:
        kill(None)
        raise
    finally:
        if feed is not None:
            feed.close()
