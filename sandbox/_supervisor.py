"""The trio supervisor: many boxes at once, each with its own limits, streams and verdict.

It never forks: boxes are cloned by the single-threaded launcher (sandbox/_launcher.py) and
come back as pidfds. Per box the supervisor streams stdin in and stdout/stderr out with hard
caps (OL: the box is killed, the captured bytes kept), enforces wall time with a cancel scope,
kills the whole box on timeout or cancellation (SIGKILL to init through its pidfd: the kernel
then kills the whole pid namespace), and builds the verdict from kernel facts only.

Ctrl-C / SIGTERM of the supervisor cancels every ``run``; each one kills its box in a shielded
cleanup, and closing the launcher socket makes the launcher kill and reap whatever is left.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import trio

from sandbox import _cpuwatch, _fdpass, _spawn, _statusline, _verdict
from sandbox import _syscalls as sc
from sandbox._boxcgroup import cgroup_manager
from sandbox._boxlife import BoxError, BoxLife, xx_result
from sandbox._config import SandboxConfig, command_argv
from sandbox._direct import CHUNK, CappedBuffer, box_pipes
from sandbox._result import Result

if TYPE_CHECKING:
    from sandbox._abox import AsyncBox
    from sandbox._network import Network

DRAIN_GRACE = 2.0  # after init died, every box process is dead; pipes reach EOF promptly


@dataclass
class _Slot:
    """Rendezvous for one box: the launcher's replies, in protocol order."""

    spawned: trio.Event = field(default_factory=trio.Event)
    exited: trio.Event = field(default_factory=trio.Event)
    reply: dict[str, Any] = field(default_factory=dict)
    pidfd: int = -1
    exit: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Warm:
    """A pre-built box the launcher offered us: its init waits for a command on ``ctl``."""

    pid: int
    pidfd: int
    ctl: int
    meta: dict[str, Any]

    def close(self) -> None:
        for fd in (self.pidfd, self.ctl):  # init sees EOF on ctl and exits; the launcher reaps
            try:
                os.close(fd)
            except OSError:
                pass


class Supervisor:
    """``async with Supervisor() as sup: await sup.run(argv, config)``."""

    def __init__(self, *, max_concurrent: int | None = None, warm_pool: int = 2) -> None:
        """``warm_pool``: boxes the launcher pre-builds for the config in use (0 = none);
        they take clone and rootfs set-up off the latency path (see _launcher.py)."""
        self._warm_pool = warm_pool
        self._limiter = trio.CapacityLimiter(max_concurrent or max(2, 4 * (os.cpu_count() or 1)))
        self._stack = AsyncExitStack()
        self._slots: dict[int, _Slot] = {}
        self._by_pid: dict[int, _Slot] = {}
        self._next_id = 0
        self._sock: trio.socket.SocketType | None = None
        self._proc: trio.Process | None = None
        self._send_lock = trio.Lock()
        self._pool_key: str | None = None  # config of the boxes in _pool
        self._pool: list[_Warm] = []

    async def __aenter__(self) -> Supervisor:
        # Open our cgroup subtree first (it may move this process into a leaf, per the
        # no-internal-processes rule), so the launcher starts where it belongs.
        cgroup_manager()  # (it used to make a box leaf here too, and never removed it)
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._proc = await trio.lowlevel.open_process(
                [sys.executable, "-m", "sandbox._launcher", str(child.fileno()), str(os.getpid()),
                 str(self._warm_pool)],
                pass_fds=[child.fileno()], stdin=subprocess.DEVNULL)
        finally:
            child.close()
        self._sock = trio.socket.from_stdlib_socket(parent)
        nursery = await self._stack.enter_async_context(trio.open_nursery())
        nursery.start_soon(self._reader)
        self._nursery = nursery
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._sock is not None and self._proc is not None
        self._nursery.cancel_scope.cancel()
        await self._stack.aclose()
        self._drop_pool()
        self._sock.close()  # launcher sees EOF: kills and reaps any box still alive, exits
        with trio.move_on_after(5) as cs:
            cs.shield = True
            await self._proc.wait()
        if self._proc.returncode is None:
            self._proc.kill()

    async def _reader(self) -> None:
        assert self._sock is not None
        while True:
            try:
                msg, anc, _f, _a = await self._sock.recvmsg(
                    _fdpass.MAX_MSG, socket.CMSG_SPACE(_fdpass.MAX_FDS * 4), socket.MSG_CMSG_CLOEXEC)
            except OSError:
                msg, anc = b"", []
            fds = _fdpass.fds_of(anc)
            if not msg:
                for s in list(self._slots.values()):  # launcher gone: nothing will report
                    s.reply.setdefault("op", "error")
                    s.reply.setdefault("error", "launcher exited")
                    s.spawned.set()
                    s.exited.set()
                return
            m = json.loads(msg)
            if m.get("op") in ("spawned", "error"):
                slot = self._slots.get(m.get("id"))
                if slot is None:
                    for fd in fds:
                        os.close(fd)
                    continue
                slot.reply = m
                if fds:
                    slot.pidfd = fds[0]
                if m["op"] == "spawned":
                    self._by_pid[m["pid"]] = slot
                slot.spawned.set()
            elif m.get("op") == "warm":
                if len(fds) == 2:
                    w = _Warm(int(m["pid"]), fds[0], fds[1], m)
                    if m.get("key") == self._pool_key and len(self._pool) < self._warm_pool:
                        self._pool.append(w)
                    else:
                        w.close()
                else:
                    for fd in fds:
                        os.close(fd)
            elif m.get("op") == "exited":
                slot = self._by_pid.pop(m.get("pid"), None)
                if slot is not None:
                    slot.exit = m
                    slot.exited.set()

    def _drop_pool(self) -> None:
        for w in self._pool:
            w.close()
        self._pool = []

    async def _start_warm(self, slot: _Slot, argv: list[str], fds: list[int]) -> bool:
        """Start ``argv`` in a pre-built box by writing it straight to the box's init. Then
        tell the launcher (it reports the box's exit from now on; if the box died before it
        heard, it reports the death it already reaped). False when no offered box answers."""
        while self._pool:
            w = self._pool.pop()
            self._by_pid[w.pid] = slot
            ctl = socket.socket(fileno=w.ctl)
            try:
                _fdpass.send(ctl, {"argv": argv}, fds, socket.MSG_DONTWAIT | socket.MSG_NOSIGNAL)
            except OSError:  # that init is gone (or wedged): try the next, else start cold
                self._by_pid.pop(w.pid, None)
                os.close(w.pidfd)
                continue
            finally:
                ctl.close()
            slot.pidfd = w.pidfd
            slot.reply = {**w.meta, "op": "spawned"}
            slot.spawned.set()
            with trio.CancelScope(shield=True):  # the box runs: the launcher must know it
                try:
                    await self._send({"op": "taken", "pid": w.pid}, [])
                except OSError:
                    pass  # launcher gone: the box dies with it and _reader ends this run
            return True
        return False

    async def _send(self, obj: dict, fds: list[int]) -> None:
        assert self._sock is not None
        async with self._send_lock:
            await self._sock.sendmsg([json.dumps(obj).encode()], _fdpass.rights(fds))

    def box(self, config: SandboxConfig | None = None, *, network: Network | None = None,
            name: str | None = None) -> AsyncBox:
        """A held box for trio: ``async with sup.box(config) as box: await box.exec([...])``
        (see ``sandbox.Box``); on ``network`` (``sup.network()``) as ``name``."""
        from sandbox._abox import AsyncBox

        return AsyncBox(config, network=network, name=name)

    @asynccontextmanager
    async def network(self, **shaping: Any) -> AsyncIterator[Network]:
        """``async with sup.network() as net:`` a ``sandbox.Network`` for boxes of this
        supervisor, closed (its boxes killed) on leaving."""
        from sandbox._network import Network

        net = Network(**shaping)
        await trio.to_thread.run_sync(net.open)
        try:
            yield net
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(net.close)

    async def run(self, argv: Sequence[str], config: SandboxConfig | None = None, *,
                  stdin: bytes | None = None) -> Result:
        config = (config or SandboxConfig()).validate()
        argv = command_argv(argv)
        if config.allow_hosts:  # a box of a network's hub, not the launcher's: a held one
            async with self._limiter, self.box(config) as box:
                r = await box.exec(argv, stdin=stdin)
            r.egress = box.usage.egress if box.usage is not None else None
            return r
        async with self._limiter:
            try:  # its leaf and its end; the launcher plans and clones it (into the leaf)
                life = BoxLife(config, None)
            except BoxError as e:
                assert e.result is not None
                return e.result
            try:
                return await self._run_one(argv, config, stdin, life)
            finally:
                life.end()

    async def _run_one(self, argv: list[str], config: SandboxConfig,
                       stdin: bytes | None, life: BoxLife) -> Result:
        lim, box_cg = config.limits, life.cg
        self._next_id += 1
        rid, slot = self._next_id, _Slot()
        self._slots[rid] = slot
        own: list[int] = []
        try:
            in_r, in_w, out_r, out_w, err_r, err_w, st_r, st_w = box_pipes(stdin)
            own += [in_r, out_w, err_w, st_w, out_r, err_r, st_r]
            t0 = time.monotonic()
            send_fds = [in_r, out_w, err_w, st_w]
            if box_cg is not None:
                send_fds.append(box_cg.dir_fd())
                own.append(send_fds[-1])
            cfg, enforced = config.to_dict(), sorted(life.enforced)
            key = json.dumps([cfg, enforced], sort_keys=True)
            pooled = box_cg is None and self._warm_pool > 0  # cgroup boxes are built cold
            if not (pooled and key == self._pool_key and await self._start_warm(slot, argv, send_fds)):
                if pooled and key != self._pool_key:  # the launcher builds a pool for this one
                    self._drop_pool()
                    self._pool_key = key
                try:
                    await self._send({"op": "spawn", "id": rid, "config": cfg, "key": key,
                                      "argv": argv, "cgroup": box_cg is not None,
                                      "cgroup_enforced": enforced}, send_fds)
                except OSError as e:  # the launcher is gone: a verdict that says so, no traceback
                    return xx_result("launcher", e)
            for fd in (in_r, out_w, err_w, st_w):
                os.close(fd)
                own.remove(fd)
            # Shielded: a box that was started must reach the kill-on-cancel below, or a
            # cancellation here would leave it running (the launcher always answers, or its
            # EOF ends every wait).
            with trio.CancelScope(shield=True):
                await slot.spawned.wait()
            if slot.reply.get("op") != "spawned":
                step = slot.reply.get("step", "launcher")
                err = slot.reply.get("error", "unknown error")
                no = slot.reply.get("errno")
                return xx_result(step, OSError(no, err) if no else err)
            life.adopt(_spawn.BoxProcess(int(slot.reply.get("pid") or 0), slot.pidfd),
                       dict(slot.reply.get("enforcement", {})), str(slot.reply.get("seccomp")),
                       lambda _pid: (slot.exit.get("wait_status"),  # reaped by the launcher
                                     float(slot.exit.get("cpu_time", 0.0)), slot.exit.get("max_rss")),
                       landlock=bool(slot.reply.get("landlock")))
            watch = life.watch(lim.cpu_time)
            facts = life.facts()
            out, err = CappedBuffer(lim.output_limit), CappedBuffer(lim.output_limit)
            in_holder = [in_w] if in_w >= 0 else []
            in_w = -1  # owned by in_holder from here: the feeder closes it to signal EOF
            try:
                await self._supervise(slot, facts, in_holder, stdin or b"", out_r, err_r, out, err,
                                      watch)
            except BaseException:
                self._kill(slot)
                with trio.CancelScope(shield=True):
                    with trio.move_on_after(5):
                        await slot.exited.wait()
                raise
            facts.wall_time = time.monotonic() - t0
            facts.init_wait_status, facts.cpu_time, facts.max_rss = life.reap()
            facts.status_line = _statusline.read(st_r)
            facts.cgroup = life.stats()
            return _verdict.build_result(facts, out.value(), err.value(), out.exceeded,
                                         err.exceeded)
        finally:
            self._slots.pop(rid, None)
            for fd in own + ([in_w] if in_w >= 0 else []) + locals().get("in_holder", []):
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _kill(self, slot: _Slot, reason: str | None = None, facts: _verdict.Facts | None = None) -> None:
        if facts is not None and reason and facts.killed_for is None:
            facts.killed_for = reason
        if slot.pidfd >= 0 and not slot.exited.is_set():
            try:
                sc.pidfd_send_signal(slot.pidfd, signal.SIGKILL)
            except OSError:
                pass

    async def _supervise(self, slot: _Slot, facts: _verdict.Facts, in_holder: list[int], data: bytes,
                         out_r: int, err_r: int, out: CappedBuffer, err: CappedBuffer,
                         watch: _cpuwatch._Watch | None = None) -> None:
        lim = facts.limits

        async def pump(fd: int, buf: CappedBuffer) -> None:
            stream = trio.lowlevel.FdStream(os.dup(fd))
            async with stream:
                while chunk := await stream.receive_some(CHUNK):
                    if not buf.feed(chunk):
                        self._kill(slot, "output", facts)
                        return

        async def feed() -> None:
            stream = trio.lowlevel.FdStream(in_holder.pop())
            async with stream:
                try:
                    for i in range(0, len(data), CHUNK):
                        await stream.send_all(data[i:i + CHUNK])
                except (trio.BrokenResourceError, OSError):
                    pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pump, out_r, out)
            nursery.start_soon(pump, err_r, err)
            if in_holder:
                nursery.start_soon(feed)
            cpu_scope = trio.CancelScope()
            if watch is not None:  # the box's CPU time, all its processes (sandbox/_cpuwatch.py)
                async def cpu_limit() -> None:
                    with cpu_scope:
                        await _cpuwatch.until_spent(watch)
                        self._kill(slot, "cpu", facts)
                nursery.start_soon(cpu_limit)
            deadline = math.inf if lim.wall_time is None else trio.current_time() + lim.wall_time
            with trio.move_on_at(deadline):
                await slot.exited.wait()
            if not slot.exited.is_set():
                self._kill(slot, "wall", facts)
                await slot.exited.wait()
            cpu_scope.cancel()
            nursery.cancel_scope.deadline = trio.current_time() + DRAIN_GRACE
