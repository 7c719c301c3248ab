"""The host's handle on one module or session box (``boxscope`` drives it): the box runs in a
thread of ours, ``sandbox.run_sync`` with the in-box loop (``boxserve.serve``) as its body; they
talk over a command pipe, an ack pipe, and memfds for the reports and the stack."""

from __future__ import annotations

import os
import secrets
import select
import threading
import time
from functools import partial

import pytest

import sandbox
from pytest_plugin import boxrun, boxserve, boxstate, boxtee
from sandbox import Result, SandboxConfig

JOIN_TIMEOUT = 10.0  # for a box told to end (its own wall time bounds it in any case)


def _note_fork() -> None:
    """A box's thread has forked (``sandbox.run_sync`` from a threaded process forks first). The
    fork copies every lock as it is, and a Python lock our main thread holds (a cached_property's,
    taken in pytest's code) would be held for ever in the box: so the main thread waits for the
    fork (``ScopeBox.forked``) before it runs anything but a wait."""
    forked = getattr(threading.current_thread(), "sandbox_forked", None)
    if forked is not None:
        forked.set()


def _forget_fork_event() -> None:
    """In the fork (and so in the box): the event is the host's, and its lock may be a copy
    of one the host's main thread held; a fork made in the box must not touch it."""
    threading.current_thread().__dict__.pop("sandbox_forked", None)


os.register_at_fork(after_in_parent=_note_fork, after_in_child=_forget_fork_event)


class ScopeBox:
    """A live box of one group, run by ``sandbox.run_sync`` in a thread of ours."""

    def __init__(self, item: pytest.Item, key: tuple[str, ...], group: list[pytest.Item],
                 total: SandboxConfig, wait: float = 0.0) -> None:
        """``wait``: the box is started early and may wait that long for its first test (its wall
        clock runs meanwhile): its wall time is that much longer, and unused after ``deadline``."""
        self.key, self.first, self.nonce, self.session = key, True, "", item.session
        self.deadline = time.monotonic() + wait if wait and total.limits.wall_time else None
        self.ahead: tuple[int, int, float] | None = None  # the command sent ahead (K, N, seconds)
        self.refused = False  # a command met a closed pipe: the box never read it
        self.tests, self.wall = len(group), total.limits.wall_time
        if self.deadline is not None and total.limits.wall_time is not None:
            total.limits.wall_time += wait
        share, adopt = boxrun.capture_plan(item.config)
        self.spools = {fd: boxrun.memfd("sandbox-capture") for fd in share}
        self.stack, self.channel = boxrun.memfd("sandbox-stack"), boxrun.memfd("sandbox-channel")
        self.tees = boxtee.make(item.config)
        cmd_r, self.cmd_w = os.pipe2(os.O_CLOEXEC)
        self.ack_r, ack_w = os.pipe2(os.O_CLOEXEC)
        self.done_r, done_w = os.pipe2(os.O_CLOEXEC)
        self.result: Result | None = None
        self.error: BaseException | None = None
        self.forked = threading.Event()  # our fork for the box is made (``_note_fork``)
        body = partial(boxserve.serve, item.session.items, group, boxstate.capture(), self.tees, adopt,
                       self.spools, self.stack, self.channel, cmd_r, ack_w)
        fds = [self.channel, cmd_r, ack_w, *self.spools.values(), self.stack, *self.tees.values()]

        def run() -> None:
            try:
                self.result = sandbox.run_sync(body, total, pass_fds=fds,
                                               on_output=boxrun.echo_output)
            except BaseException as e:  # noqa: BLE001 - the test that asked fails with it
                self.error = e
            finally:
                self.forked.set()
                for fd in (cmd_r, ack_w):
                    os.close(fd)
                os.write(done_w, b"x")
                os.close(done_w)

        self.thread = threading.Thread(target=run, name="sandbox-scope-box", daemon=True)
        self.thread.sandbox_forked = self.forked  # type: ignore[attr-defined]
        self.thread.start()

    def send(self, k: int, nk: int, seconds: float) -> None:
        """The command carries a fresh nonce the box's ack must echo: a test that writes a
        test number to the pipes it finds cannot end its own turn early (the real ack, arriving
        later, would otherwise fail the next test)."""
        self.nonce = secrets.token_hex(8)
        failed = self.session.testsfailed  # what a box started early has not seen counted
        boxrun.write_all(self.cmd_w, f"{k} {nk} {seconds:.3f} {failed} {self.nonce}\n".encode())

    def wait_ack(self, k: int) -> bool | None:
        """True: the box finished test ``k``; None: it answered something else; False: the box
        ended first."""
        poller = select.poll()
        poller.register(self.ack_r, select.POLLIN)
        poller.register(self.done_r, select.POLLIN)
        buf = b""
        while True:
            ready = dict(poller.poll())
            if self.ack_r in ready:
                chunk = os.read(self.ack_r, 64)
                if not chunk:  # our copy of the box's end is closed once the box ended
                    return False
                buf += chunk
                if b"\n" in buf or len(buf) > 64:
                    return True if buf == f"{k} {self.nonce}\n".encode() else None
            elif self.done_r in ready:
                return False

    def end(self, timeout: float | None = None) -> Result | None:
        """Let the box end (it ends by itself after its group's last test, or at EOF on its
        command pipe) and close our ends."""
        if self.cmd_w >= 0:
            os.close(self.cmd_w)
            self.cmd_w = -1
        self.thread.join(JOIN_TIMEOUT if timeout is None else timeout)
        return self.result

    def release(self) -> None:
        """Close our fds once the box is gone (a box that did not end in time is left to its
        daemon thread and its own wall time, with them, until ``close`` at the session's end)."""
        if not self.thread.is_alive():
            for fd in (self.ack_r, self.done_r, self.channel, self.stack,
                       *self.spools.values(), *self.tees.values()):
                os.close(fd)
