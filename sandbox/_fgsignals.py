"""Signals sent to a caller that runs a box in its foreground (the CLI), passed on to the box.

Why: a service manager stops a job with SIGTERM, a closing terminal sends SIGHUP, a user presses
Ctrl-C or Ctrl-\\; the program in the box must get them and its handlers must run (a server
closes cleanly, a REPL shows a new prompt). Killing the box for them, as a Python
KeyboardInterrupt in the caller did, took that away and cut the program's output short.

How: init, pid 1 of the box's pid namespace, is sent each signal through its pidfd and passes it
on to the payload (``_init_signals.FORWARDED_SIGNALS``). A namespace's init is only sent the
signals it handles or blocks (the kernel drops the rest, even from outside); init blocks these.

* After SIGTERM or SIGHUP the program has ``stop_timeout`` seconds to end (docker's grace
  period), then the box is killed; a second SIGTERM kills it at once.
* SIGTSTP (Ctrl-Z: the terminal's job control reaches only our process group, the box is a
  session of its own) stops the whole box: init stops every other process of its namespace,
  then we stop ourselves, so the shell sees the job stopped. SIGCONT (``fg``, ``bg``) resumes
  both. The wall time does not run while the box is stopped (``paused``).
* SIGTTIN/SIGTTOU (a job put in the background reads the terminal, or writes it under ``stty
  tostop``) stop the box and us the same way: by default they would stop only us, and the box
  would run on against its wall time with nobody reading it.

Handlers run in the main thread; ``fd`` (the wakeup pipe) wakes the caller's poll so it sees a
new kill deadline at once. ``close`` puts every disposition back.
"""

from __future__ import annotations

import _signal
import os
import time

from sandbox import _syscalls as sc
from sandbox._init_signals import FORWARDED_SIGNALS, drain

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

FORWARD = FORWARDED_SIGNALS  # what init passes on, so what we send it
STOPPING = (_signal.SIGTERM, _signal.SIGHUP)  # these start the grace period
SUSPENDING = (_signal.SIGTSTP, _signal.SIGTTIN, _signal.SIGTTOU)  # these stop the box and us


class Forwarder:
    """Pass signals we get on to the box whose init is ``pidfd``, for as long as it is open."""

    def __init__(self, pidfd: int, stop_timeout: float | None,
                 on_stop: Callable[[bool], None] | None = None,
                 on_winch: Callable[[], None] | None = None) -> None:
        self.pidfd, self.stop_timeout, self.on_stop, self.on_winch = pidfd, stop_timeout, on_stop, on_winch
        self.kill_at: float | None = None  # the grace period's end (monotonic)
        self.kill_now = False  # a second SIGTERM
        self.paused = 0.0  # seconds the box spent stopped (Ctrl-Z until fg)
        self.received: list[int] = []
        self.fd, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._old: dict[int, Any] = {}
        self._old_wakeup = _signal.set_wakeup_fd(self._w, warn_on_full_buffer=False)
        for sig in (*FORWARD, *SUSPENDING, _signal.SIGCONT) + ((_signal.SIGWINCH,) if on_winch else ()):
            self._old[sig] = _signal.signal(sig, self._on_signal)

    def _send(self, sig: int) -> None:
        try:
            sc.pidfd_send_signal(self.pidfd, sig)
        except OSError:  # init has ended: nobody left to tell
            pass

    def _on_signal(self, sig: int, _frame: object) -> None:
        if sig in SUSPENDING:
            self._suspend(sig)
            return
        if sig == _signal.SIGWINCH:  # our terminal was resized: so is the box's (its own SIGWINCH)
            if self.on_winch is not None:
                self.on_winch()
            return
        self._send(sig)
        if sig == _signal.SIGCONT:  # (`fg` after `bg`: the terminal is ours again, raw)
            if self.on_stop is not None:
                self.on_stop(False)
            return
        self.received.append(sig)
        if sig == _signal.SIGTERM and _signal.SIGTERM in self.received[:-1]:
            self.kill_now = True
        if sig in STOPPING and self.kill_at is None and self.stop_timeout is not None:
            self.kill_at = time.monotonic() + self.stop_timeout

    def _suspend(self, sig: int) -> None:
        """Stop the box, then ourselves with ``sig``'s default; we run on here after SIGCONT."""
        t = time.monotonic()
        self._send(_signal.SIGTSTP)  # init: SIGSTOP to everyone else in the box
        if self.on_stop is not None:
            self.on_stop(True)  # (a terminal in raw mode goes back to how the user had it)
        _signal.signal(sig, _signal.SIG_DFL)
        try:
            os.kill(os.getpid(), sig)  # stopped here until fg/bg sends SIGCONT
        finally:
            _signal.signal(sig, self._on_signal)
            if self.on_stop is not None:
                self.on_stop(False)
            self._send(_signal.SIGCONT)
            self.paused += time.monotonic() - t

    def drain(self) -> None:
        """Empty the wakeup pipe (the poll saw ``fd`` readable: the handlers have run)."""
        drain(self.fd)

    def close(self) -> None:
        for sig, old in self._old.items():
            _signal.signal(sig, old)
        self._old.clear()
        _signal.set_wakeup_fd(self._old_wakeup)
        for fd in (self.fd, self._w):
            os.close(fd)
        self.fd = self._w = -1
