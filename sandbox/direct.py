"""Run one box from the calling process, without trio: the CLI path and the plugin's fork path.

Why a second runner next to the trio supervisor: ``sandbox run`` pays Python's start-up once
and should not pay ~90 ms more to import trio and start a launcher process for a single box.
The calling process must be single-threaded (it clones the box itself). Verdicts come from the
same ``verdict.build_result`` as the supervisor's, so both runners always agree.
"""

from __future__ import annotations

import _signal  # the C module: signal.py converts to enums (enum costs the CLI ~3 ms)
import errno
import os
import select
import time

from sandbox import _syscalls as sc
from sandbox import contain, spawn, statusline, verdict
from sandbox.config import SandboxConfig, command_argv
from sandbox.result import Result, Status

TYPE_CHECKING = False  # no typing import at run time (CLI start)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

CHUNK = 65536


class CappedBuffer:
    """Collects at most ``cap`` bytes; remembers whether more was offered (→ OL)."""

    def __init__(self, cap: int, which: int = 0,
                 sink: Callable[[int, bytes], None] | None = None) -> None:
        self.cap, self.parts, self.size, self.exceeded = cap, [], 0, False
        self.which, self.sink = which, sink

    def feed(self, data: bytes) -> bool:
        room = self.cap - self.size
        if len(data) > room:
            data, self.exceeded = data[:room], True
        if data:
            self.size += len(data)
            if self.sink is not None:
                self.sink(self.which, data)
            else:
                self.parts.append(data)
        return not self.exceeded

    def value(self) -> bytes:
        return b"".join(self.parts)


def box_pipes(stdin: bytes | None, inherit_stdin: bool = False) -> tuple[int, ...]:
    """(in_r, in_w, out_r, out_w, err_r, err_w, status_r, status_w), all close-on-exec; in_w is
    -1 when there is nothing to feed (the box gets /dev/null, or our own fd 0)."""
    if stdin is None and inherit_stdin:
        in_r, in_w = os.dup(0), -1
    elif stdin is None:
        in_r, in_w = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC), -1
    else:
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
    return (in_r, in_w, *os.pipe2(os.O_CLOEXEC), *os.pipe2(os.O_CLOEXEC),
            *os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK))


def xx_result(step: str, err: OSError | str, config: SandboxConfig) -> Result:
    msg = err if isinstance(err, str) else (err.strerror or str(err))
    no = None if isinstance(err, str) else err.errno
    return Result(Status.XX, error=f"{step}: {msg}" + (f" (errno {no})" if no else ""),
                  reason=f"{step}: {msg}", error_step=step, errno=no)


def run_direct(target: Sequence[str] | Callable[[], int], config: SandboxConfig | None = None, *,
               stdin: bytes | None = None, pass_fds: Sequence[int] = (),
               prepared: contain.Prepared | None = None, inherit_stdin: bool = False,
               on_output: Callable[[int, bytes], None] | None = None) -> Result:
    """Run ``target`` (argv to exec, or a callable run inside the box) and return its verdict.

    ``inherit_stdin`` hands our own fd 0 to the box (the CLI: interactive use); ``on_output``
    is called with (1 or 2, chunk) as output arrives, within the cap (the CLI streams it).
    """
    config = (config or SandboxConfig()).validate()
    if not callable(target):
        target = command_argv(target)
    box_cg, cg_err = open_box_cgroup(config)
    if cg_err:
        return xx_result("cgroup", cg_err, config)
    try:
        prep = prepared or contain.prepare(config, target, cgroup_enforced=cgroup_enforced(box_cg))
    except OSError as e:
        if box_cg is not None:
            box_cg.destroy()
        return xx_result("prepare", e, config)
    lim = config.limits
    fds: list[int] = []
    facts: verdict.Facts | None = None
    try:
        in_r, in_w, out_r, out_w, err_r, err_w, st_r, st_w = box_pipes(stdin, inherit_stdin)
        fds += [in_r, out_r, out_w, err_r, err_w, st_r, st_w] + ([in_w] if in_w >= 0 else [])
        t0 = time.monotonic()
        cg_fd = box_cg.dir_fd() if box_cg is not None else None
        try:
            box = spawn.spawn_box(prep, stdin=in_r, stdout=out_w, stderr=err_w, status_w=st_w,
                                  pass_fds=pass_fds, cgroup_fd=cg_fd)
        except OSError as e:
            return xx_result("clone", e, config)
        finally:
            if cg_fd is not None:
                os.close(cg_fd)
        for fd in (in_r, out_w, err_w, st_w):
            os.close(fd)
            fds.remove(fd)
        fds.append(box.pidfd)
        facts = verdict.Facts(lim, prep.enforcement, 0.0, seccomp_policy=prep.seccomp_desc,
                              landlock=prep.landlock)
        out = CappedBuffer(lim.output_limit, 1, on_output)
        err = CappedBuffer(lim.output_limit, 2, on_output)
        _pump(box, in_w, stdin or b"", {out_r: out, err_r: err}, facts,
              None if lim.wall_time is None else t0 + lim.wall_time,
              cpu_watch(box_cg, lim.cpu_time))
        status, facts.cpu_time, facts.max_rss = sc.wait4(box.pid)
        facts.wall_time = time.monotonic() - t0
        facts.init_wait_status = status
        facts.status_line = statusline.read(st_r)
        if box_cg is not None:
            facts.cgroup = box_cg.stats()
        return verdict.build_result(facts, out.value(), err.value(), out.exceeded, err.exceeded)
    finally:
        if box_cg is not None:
            box_cg.destroy()
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass


_MANAGERS: dict[int, object] = {}  # pid → CgroupManager | None: one subtree per process


def open_box_cgroup(config: SandboxConfig) -> tuple[Any, str | None]:
    """A fresh cgroup v2 leaf for one box, or (None, None) to fall back to rlimits, or
    (None, reason) when ``require_cgroup`` forbids the fallback. The manager (our delegated
    subtree) is opened once per process, so pytest-xdist workers never collide."""
    if not config.use_cgroup:
        return None, None
    from sandbox import cgroup_env  # the manager's module only where there is something to manage

    pid = os.getpid()
    if pid not in _MANAGERS:
        env = cgroup_env.detect()
        _MANAGERS[pid] = None
        if not env.reason:
            from sandbox import cgroups

            try:
                _MANAGERS[pid] = cgroups.CgroupManager.open(require=False, env=env)
            except OSError:
                pass
        if _MANAGERS[pid] is not None:
            import atexit

            atexit.register(_MANAGERS[pid].close)  # type: ignore[union-attr]
    mgr: Any = _MANAGERS[pid]
    if mgr is None:
        if config.require_cgroup:
            return None, f"no usable delegated cgroup v2 subtree ({cgroup_env.detect().reason})"
        return None, None
    try:
        return mgr.create_box(config.limits), None
    except OSError as e:
        if config.require_cgroup:
            return None, f"cannot create the box's cgroup: {e}"
        return None, None


def cgroup_enforced(box_cg: Any) -> frozenset[str]:
    if box_cg is None:
        return frozenset()
    return frozenset(k for k, v in box_cg.enforced.items() if v == "cgroup")


def cpu_watch(box_cg: Any, limit: float | None) -> Callable[[], float | None] | None:
    """Whole-box CPU-time check from cgroup ``cpu.stat``. Returns seconds until the earliest
    moment the budget could run out (remaining / CPUs the box may use), or None when spent:
    no fixed-interval polling, and a box that sleeps costs one read per wake-up."""
    if box_cg is None or limit is None or "cpu_time" not in cgroup_enforced(box_cg):
        return None
    ncpu = float(box_cg.cpus or os.cpu_count() or 1)

    def check() -> float | None:
        remaining = limit - box_cg.cpu_seconds()
        return None if remaining <= 0 else max(0.005, remaining / ncpu)
    return check


def _pump(box: spawn.BoxProcess, in_w: int, data: bytes, outs: dict[int, CappedBuffer],
          facts: verdict.Facts, deadline: float | None,
          cpu_check: Callable[[], float | None] | None = None) -> None:
    """Move bytes until the box's init exits; kill it on wall time or output overflow."""
    poller = select.poll()
    for fd in outs:
        poller.register(fd, select.POLLIN)
    poller.register(box.pidfd, select.POLLIN)
    if in_w >= 0:
        os.set_blocking(in_w, False)
        poller.register(in_w, select.POLLOUT)
    open_outs, exited, killed = set(outs), False, False

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
        while open_outs or not exited:
            timeout = None
            if deadline is not None and not killed:
                timeout = max(0, int((deadline - time.monotonic()) * 1000) + 1)
            cpu_wait = cpu_check() if cpu_check is not None and not killed else 1.0
            if cpu_wait is None:
                kill("cpu")
                continue
            if cpu_check is not None and not killed:
                ms = int(cpu_wait * 1000) + 1
                timeout = ms if timeout is None else min(timeout, ms)
            if exited:
                timeout = 2000  # all box processes are dead; drain what is left in the pipes
            events = poller.poll(timeout)
            if not events:
                if exited:
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    kill("wall")
                continue
            for fd, ev in events:
                if fd == box.pidfd:
                    exited = True
                    poller.unregister(fd)
                elif fd == in_w:
                    try:
                        n = os.write(in_w, data[:CHUNK]) if data else 0
                        data = data[n:]
                    except OSError as e:
                        if e.errno != errno.EAGAIN:
                            data = b""
                    if not data:
                        poller.unregister(in_w)
                        os.close(in_w)
                        in_w = -1
                elif fd in open_outs:
                    chunk = os.read(fd, CHUNK) if ev & (select.POLLIN | select.POLLHUP) else b""
                    if not chunk:
                        poller.unregister(fd)
                        open_outs.discard(fd)
                    elif not outs[fd].feed(chunk):
                        kill("output")
    except BaseException:
        kill(None)
        raise
    finally:
        if in_w >= 0:
            os.close(in_w)
