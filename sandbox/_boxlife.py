"""One box's life on the host, written once for every runner that clones its box here: a
one-shot box (``run_sync``, the CLI, the plugin's ``@sandboxed`` tests), a held ``Box`` (and
the fixture's), and the grader's and fixture's worker sessions.

The life is always the same five steps, in this order:

1. **cgroup**: a fresh leaf of this process's delegated subtree (or the rlimit fallback, or a
   refusal when ``require_cgroup``), and why each limit it does not hold fell back;
2. **plan**: ``_plan.prepare`` for the limits that leaf holds (an immutable plan);
3. **clone**: ``_spawn.spawn_box`` straight into the leaf (``CLONE_INTO_CGROUP``);
4. the runner's own work while init lives (move a payload's bytes, or serve requests), with
   the **CPU-time watch** (``watch``): box-wide, from the leaf's ``cpu.stat`` or, in the
   fallback, a walk of init's process tree;
5. **end**: init killed if still alive and reaped (its rusage), the leaf's figures read, the
   leaf removed — also when any earlier step failed or the caller was interrupted.

Why one place: the runners used to write this out each, and drifted (the grader's
``import_module`` boxes got no cgroup at all while its ``run`` boxes did). Every failure of
steps 1–3 is a ``BoxError`` carrying the XX verdict with the failed step, the one error type
of a box that did not start.
"""

from __future__ import annotations

import os
import time

from sandbox import _spawn, _verdict
from sandbox import _syscalls as sc
from sandbox._boxcgroup import cgroup_enforced, cgroup_fallbacks, open_box_cgroup
from sandbox._plan import prepare
from sandbox._record import field, record, replace
from sandbox._result import Result, Status

TYPE_CHECKING = False  # no typing import at run time (CLI start)
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from sandbox._config import SandboxConfig
    from sandbox._network import Network
    from sandbox._plan import Prepared, Target


@record
class Usage:
    """The whole box over its life: every process it ever had, init included."""

    cpu_time: float = 0.0
    peak_memory: int | None = None
    wall_time: float = 0.0
    execs: int = 0
    memory_exceeded: bool = False
    cpu_exceeded: bool = False  # the box's CPU-time budget was spent: the box was killed
    enforcement: dict[str, Any] = field(default_factory=dict)
    fallback_reasons: dict[str, str] = field(default_factory=dict)  # as Result.fallback_reasons
    egress: dict[str, Any] | None = None  # on a network: its attempts out (as Result.egress)


class BoxError(Exception):
    """A box could not start, or was used after it closed. ``result`` holds the XX verdict with
    the failed step when there is one (``step: what failed (errno N)``)."""

    def __init__(self, message: str, result: Result | None = None) -> None:
        super().__init__(message)
        self.result = result


def xx_result(step: str, err: OSError | str) -> Result:
    msg = err if isinstance(err, str) else (err.strerror or str(err))
    no = None if isinstance(err, str) else err.errno
    return Result(Status.XX, error=f"{step}: {msg}" + (f" (errno {no})" if no else ""),
                  reason=f"{step}: {msg}", error_step=step, errno=no)


def _fail(step: str, err: OSError | str) -> BoxError:
    r = xx_result(step, err)
    return BoxError(r.error or step, r)


class BoxLife:
    """Steps 1–2 at construction, 3 in ``spawn``, 4's watch in ``watch``, 5 in ``end``.

    ``serve``: a held box (init serves requests). ``cpu_per_exec``: every exec holds the
    config's CPU time as RLIMIT_CPU (the plan does not leave it to the leaf), and the box-wide
    budget is the watch's (``watch``), which the leaf's ``cpu.stat`` feeds. ``prepared``: a plan computed
    earlier for the same config, used only where no cgroup leaf changes what the plan enforces.
    ``target=None``: the box is planned and cloned by another process (the warm supervisor's
    launcher, which clones into our leaf); ``adopt`` then hands us its init and what its plan enforces.
    """

    def __init__(self, config: SandboxConfig, target: Target | None, *, serve: bool = False,
                 cpu_per_exec: bool = False, prepared: Prepared | None = None,
                 network: tuple[Network, str] | None = None) -> None:
        self.config, self.init, self.t0 = config, None, time.monotonic()
        self.network, self.address, self.serve = network, None, serve
        self.egress: dict[str, Any] | None = None  # its attempts out (allow_hosts), once reaped
        self._own_network: Any = None
        self.cg: Any = None
        self.prep: Any = None
        self._watch: Any = None
        self._waiter: Callable[[int], tuple[Any, float, int | None]] = sc.wait4
        if config.allow_hosts and network is None and target is not None:  # egress needs a hub: a network of its own
            self._own_network = _private_network(target)
            self.network = (self._own_network, "box")
        self.cg, err = open_box_cgroup(config)
        if err:
            self.end()
            raise _fail("cgroup", err)
        self.fallback = cgroup_fallbacks(config, self.cg)
        self.enforced = cgroup_enforced(self.cg) - ({"cpu_time"} if cpu_per_exec else set())
        self.enforcement: dict[str, str] = {}
        self.seccomp_desc, self.landlock = "none", False
        if target is None:
            return
        try:
            if prepared is not None and self.cg is None and prepared.serve == serve:
                self.prep = prepared if prepared.target is target else replace(prepared, target=target)
            else:
                self.prep = prepare(config, target, cgroup_enforced=self.enforced, serve=serve)
        except OSError as e:
            self.end()
            raise _fail("prepare", e) from None
        except BaseException:  # Ctrl-C, or a bug: the leaf goes all the same
            self.end()
            raise
        self.enforcement = self.prep.enforcement
        self.seccomp_desc, self.landlock = self.prep.seccomp_desc, self.prep.landlock

    def adopt(self, init: _spawn.BoxProcess, enforcement: dict[str, str], seccomp_desc: str,
              waiter: Callable[[int], tuple[Any, float, int | None]], *,
              landlock: bool = False) -> None:
        """A box another process cloned into our leaf (``target=None``) is ours from now on;
        its parent reaps it (``waiter(pid)`` → wait status, CPU seconds, max RSS)."""
        self.init, self.enforcement, self._waiter = init, enforcement, waiter
        self.seccomp_desc, self.landlock = seccomp_desc, landlock

    def spawn(self, *, stdin: int, stdout: int, stderr: int, status_w: int,
              pass_fds: Sequence[int] = ()) -> _spawn.BoxProcess:
        """Clone the box's init (into the leaf, when there is one)."""
        cg_fd = self.cg.dir_fd() if self.cg is not None else None
        self.t0 = time.monotonic()
        try:
            if self.network is not None:  # its hub clones it: sandbox._network_hub says why
                from sandbox._network import exit_waiter

                net, name = self.network
                self.init, self.address, ended = net.spawn(
                    self.config, name, self.enforced, serve=self.serve, stdio=(stdin, stdout, stderr),
                    status_w=status_w, pass_fds=pass_fds, cgroup_fd=cg_fd,
                    argv=None if self.serve else list(self.prep.target))
                self._waiter = exit_waiter(ended, self)
            else:
                self.init = _spawn.spawn_box(self.prep, stdin=stdin, stdout=stdout, stderr=stderr,
                                             status_w=status_w, pass_fds=pass_fds, cgroup_fd=cg_fd)
        except OSError as e:
            raise _fail("clone", e) from None
        finally:
            if cg_fd is not None:
                os.close(cg_fd)
        return self.init

    def facts(self) -> _verdict.Facts:
        """The verdict's facts known before the box ran (what enforces each limit, and why)."""
        f = _verdict.Facts(self.config.limits, self.enforcement, 0.0,
                           seccomp_policy=self.seccomp_desc, landlock=self.landlock,
                           fallback_reasons=self.fallback, cwd=self.config.cwd)
        if self._watch is not None and self._watch.mechanism != "cgroup":
            f.enforcement = {**f.enforcement, "cpu_time": self._watch.mechanism}
        return f

    def watch(self, limit: float | None) -> Any:
        """The box-wide CPU-time watch for ``limit`` seconds (call it: seconds until the next
        check, or None once spent), or None without a limit. Without a cgroup its first sample
        waits ``limit / CPUs``: nothing can be spent sooner, and a box that ends first (most
        one-shot runs) never loads the watcher."""
        if self.init is not None:
            self._watch = cpu_watch(self.cg, limit, self.init.pid, self.init.pidfd)
        return self._watch

    def watch_more(self, seconds: float) -> Any:
        """A watch for ``seconds`` more than the box has spent so far (a held box's new budget,
        ``Box.cpu_budget``): ``watch.base`` is what it had spent when the budget began."""
        from sandbox import _cpuwatch

        assert self.init is not None
        w = _cpuwatch.cpu_watch(self.cg, seconds, self.init.pid, self.init.pidfd)
        assert w is not None
        w.base = w.sample()
        w.limit += w.base
        self._watch = w
        return w

    def kill(self) -> None:
        """SIGKILL init: the kernel then ends the whole pid namespace."""
        if self.init is not None:
            try:
                sc.pidfd_send_signal(self.init.pidfd, 9)
            except OSError:
                pass

    def reap(self, *, kill: bool = False) -> tuple[int, float, int | None]:
        """Wait for init (after SIGKILL with ``kill``): (wait status, CPU seconds, max RSS).
        The CPU time is the larger of init's rusage and the watch's total: processes the
        kernel kills when init exits are reaped unwaited-for and never reach init's rusage."""
        assert self.init is not None
        if kill:
            self.kill()
        status, cpu, rss = self._waiter(self.init.pid)
        os.close(self.init.pidfd)
        self.init = None
        if self._watch is not None:
            cpu = max(cpu, self._watch.used)
        return status, cpu, rss

    def stats(self) -> dict[str, Any] | None:
        """The leaf's figures (cpu_usec, memory_peak, oom_kill ...), or None without a leaf."""
        return self.cg.stats() if self.cg is not None else None

    def oom_killed(self) -> bool:
        return self.cg is not None and bool(self.cg.oom_killed())

    def end(self) -> None:
        """Remove what is left: init (killed and reaped) and the leaf. Idempotent."""
        try:
            if self.init is not None:
                self.reap(kill=True)
        finally:  # even when the wait was interrupted: init is SIGKILLed, the leaf goes
            if self.init is not None:
                os.close(self.init.pidfd)
                self.init = None
            if self.cg is not None:
                self.cg.destroy()
                self.cg = None
            if self._own_network is not None:
                self._own_network.close()
                self._own_network = None


def _private_network(target: Any) -> Any:
    """The network of one box with ``allow_hosts`` (its hub runs the egress gate)."""
    from sandbox._network import Network, NetworkError

    if callable(target):
        raise _fail("network", "allow_hosts needs a command to exec: a callable runs in a clone "
                               "of its caller, which the network's hub cannot make")
    try:
        return Network().open()
    except NetworkError as e:
        raise _fail("network", str(e)) from None


def cpu_watch(box_cg: Any, limit: float | None, init_pid: int | None = None,
              pidfd: int = -1) -> Any:
    """The box's CPU-time watch (``sandbox/_cpuwatch.py``); see ``BoxLife.watch``. Also used
    by the runners whose box is cloned elsewhere (the supervisor's launcher)."""
    if limit is None:
        return None
    if box_cg is None and init_pid is not None:
        return _DeferredWatch(limit, init_pid, pidfd)
    from sandbox import _cpuwatch

    return _cpuwatch.cpu_watch(box_cg, limit, init_pid, pidfd)


class _DeferredWatch:
    mechanism, used, base = "rlimit+supervisor", 0.0, 0.0  # = _cpuwatch.FALLBACK (tests/test_fallback_verdicts)

    def __init__(self, limit: float, init_pid: int, pidfd: int) -> None:
        self.args, self.real = (limit, init_pid, pidfd), None
        self.first = time.monotonic() + limit / float(os.cpu_count() or 1)

    def __call__(self) -> float | None:
        if self.real is None:
            wait = self.first - time.monotonic()
            if wait > 0:
                return wait
            from sandbox import _cpuwatch

            self.real = _cpuwatch.TreeWatch(*self.args)
        result = self.real()
        self.used = self.real.used
        return result
