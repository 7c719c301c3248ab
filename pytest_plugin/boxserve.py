"""The in-box half of a module or session box (``boxscope`` is the host's): a loop in the
clone of pytest that runs the test each command names, to its ack, and ends after its group's
last test or at EOF on the command pipe."""

from __future__ import annotations

import faulthandler
import os
import select
import time
from typing import Any

import pytest

from pytest_plugin import boxed, boxstate

ENDED = b"\nsandbox: the box ended between two tests\n"  # in its stack memfd, last


def serve(items: list[pytest.Item], group: list[pytest.Item], host: boxstate.HostState,
          tees: dict[str, int], adopt: list[tuple[int, int]], spools: dict[int, int], stack: int,
          ch: int, cmd_r: int, ack_w: int) -> int:
    """``items``: the session's, as the host numbers them; ``group``: those this box may run."""
    boxed.enter(group, host, tees, adopt, spools, stack, ch)
    session = items[0].session
    watchdog = Watchdog(stack)
    first = True
    while (line := watchdog.next_command(cmd_r)) is not None:
        k, nk, seconds, failed, nonce = line.split()
        item, nextitem = items[int(k)], items[int(nk)] if int(nk) >= 0 else None
        if first:  # a box started early is a clone from before the host replayed the last test
            session.testsfailed, first = int(failed), False
        for fd in (ch, stack):  # this test's reports and stack only
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
        watchdog.start(float(seconds))
        go_on = boxed.run_test(item, nextitem, stack)
        os.write(ack_w, f"{k} {nonce}\n".encode())
        if nextitem is None or not go_on or session.shouldfail or session.shouldstop:
            break
    watchdog.cancel()  # (the teardown below was never a test's to time)
    try:  # what is still set up (the session ends early: -x, pytest.exit, Ctrl-C), as pytest's
        session._setupstate.teardown_exact(None)  # own session end does, quietly
    except Exception:  # noqa: BLE001 - nobody is left to report it to
        pass
    try:  # for the host: no test of its is unfinished here (a test that os._exit(0)s is)
        os.write(stack, ENDED)
    except OSError:
        pass
    return 0


class Watchdog:
    """Each test's wall time, ended by faulthandler's timer (a C thread, so it fires even while
    the test holds the GIL), without a timer per test: arming one starts a thread and
    cancelling it joins that thread, a handoff between threads per test that cost more than
    many tests take. One timer serves every test that starts within a quarter of the per-test
    time ``T`` of its arming: it fires ``1.25 T`` after the arming, so at least ``T`` and at
    most ``1.25 T`` after a test's start. It is cancelled only when the box would sit idle
    past it, waiting for the host's next command. faulthandler has one timer: a test that arms
    or cancels it (``faulthandler.dump_traceback_later``...) has replaced ours, so the next
    test arms it anew (the module's functions are wrapped to tell us)."""

    SLACK = 0.25

    def __init__(self, stack: int) -> None:
        self.stack, self.per, self.fires = stack, 0.0, 0.0  # fires: monotonic time, 0 = off
        self._later, self._cancel = faulthandler.dump_traceback_later, faulthandler.cancel_dump_traceback_later

        def later(*args: Any, **kwargs: Any) -> None:
            self.fires = 0.0
            self._later(*args, **kwargs)

        def cancel() -> None:
            self.fires = 0.0
            self._cancel()

        faulthandler.dump_traceback_later, faulthandler.cancel_dump_traceback_later = later, cancel

    def start(self, seconds: float) -> None:
        """A test starts that may run ``seconds`` (0: no limit)."""
        now = time.monotonic()
        if seconds <= 0:
            self.cancel()
        elif seconds != self.per or self.fires < now + seconds:
            self._later(seconds * (1 + self.SLACK), exit=True, file=self.stack)
            self.per, self.fires = seconds, now + seconds * (1 + self.SLACK)

    def next_command(self, fd: int) -> str | None:
        """The host's next command; the timer is cancelled first if none comes before it
        would fire (with half the slack to spare for the next ``start``). A pipe a test closed
        (or replaced) is the end, as EOF is: the box ends cleanly and the host runs the test it
        asked for in a new box."""
        try:
            if self.fires:
                left = self.fires - time.monotonic() - self.per * self.SLACK / 2
                if left <= 0 or not select.select([fd], [], [], left)[0]:
                    self.cancel()
            return read_line(fd)
        except (OSError, ValueError):  # EBADF, or a line that is not text
            return None

    def cancel(self) -> None:
        if self.fires:
            self._cancel()
            self.fires = 0.0


def read_line(fd: int) -> str | None:
    """One command from the host (a short line), or None at EOF."""
    buf = b""
    while not buf.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            return None
        buf += chunk
    return buf.decode()
