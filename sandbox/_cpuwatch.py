"""One box-wide CPU-time watcher, for both runners (_direct.py's poll loop, the trio supervisor).

A CPU-time limit is for the box, not for one of its processes. With a delegated cgroup the
kernel keeps the box's total (``cpu.stat`` usage_usec). Without one (this is the rlimit
fallback: hybrid or v1 hosts) the only kernel limit is RLIMIT_CPU, which is per process: two
spinners under ``--cpu-time 1s`` used 2 s. Nor does init's wait4 rusage add up the box: when
init exits, ``zap_pid_ns_processes`` sets init's SIGCHLD to SIG_IGN before it kills the rest,
so the processes killed at teardown are reaped without their times reaching init.

So in the fallback the supervisor measures the box itself, from the host's /proc (numbers the
kernel keeps; the box can hide CPU time from them, never add to them). Each sample walks the
process tree from init's host pid: every pid namespace's orphan goes to init or to a
subreaper below it, so every process of the box is a descendant of init. A child belongs to
the *thread* that forked it, hence ``/proc/P/task/T/children`` for each thread T. Each
process's ``stat`` gives its own utime+stime (all its threads, dead ones too) and its
cutime+cstime (the children it waited for). Two lower bounds come out of a sample:

* tree: Σ over init and every live process of own + waited-for children. Each process is read
  after its parent's stat (stat first, then its children list), so a child reaped meanwhile is
  in neither (this sample is low; the next finds it in the parent's cutime), never in both.
  A pid listed as a child whose stat names another parent was reparented or reused: skipped.
* seen: Σ over every process ever sampled of the most own time it showed. It keeps the time of
  processes nobody waits for (a parent that ignores SIGCHLD, the kill at teardown), which no
  kernel counter keeps.

``used`` is the largest of both and of every earlier sample: monotone, and never more than the
box used. What it cannot see: a process nobody waits for, born and dead between two samples
(the kernel keeps no record of it), and what processes the payload leaves running spend
after the last sample (init's exit kills them unwaited-for; init reaping them itself before it
reports would close that). RLIMIT_CPU still caps each process on its own, and the wall time
the whole box. A sample counts only if init was still alive after it (its pidfd, or
else its unchanged start time): once init has been reaped its pid, and so the walk's root,
may belong to a host process.

Not a fixed poll (the same schedule for both mechanisms): after each sample the watcher waits
until the earliest moment the budget could run out, remaining / CPUs the box may use, so an
idle box costs one sample per wake-up and a spinning one is caught close to its limit.
"""

from __future__ import annotations

import os
import select
import time

TYPE_CHECKING = False  # no typing import at run time (CLI start)
if TYPE_CHECKING:
    from typing import Any

MIN_WAIT = 0.005  # seconds: the closest two samples get, near the end of the budget
# ... and never closer than this many times what the last sample took: a box that idles just
# below its budget with hundreds of processes (a walk of each per sample) cannot make the
# supervisor spend more than about a tenth of a CPU watching it.
COST_FACTOR = 10
MAX_PROCS = 4096  # a sample stops there (the box's pids limit is far lower; a bound per sample)
FALLBACK = "rlimit+supervisor"  # enforcement["cpu_time"]: RLIMIT_CPU per process, this box-wide
_TICK = os.sysconf("SC_CLK_TCK")  # /proc/P/stat times are in clock ticks


def _read(path: str, cap: int = 65536) -> bytes:
    """At most ``cap`` bytes of a /proc file; b"" when it is gone (the process exited)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        data = b""
        while len(data) < cap and (chunk := os.read(fd, cap - len(data))):
            data += chunk
        return data
    except OSError:
        return b""
    finally:
        os.close(fd)


def _stat(pid: int) -> tuple[int, int, int, int] | None:
    """(ppid, own ticks, waited-for children's ticks, start time) from /proc/PID/stat. The
    command name is the box's choice and may hold ") ": the fields start after the last ")"."""
    raw = _read(f"/proc/{pid}/stat", 4096)
    f = raw[raw.rfind(b")") + 2:].split()
    try:
        return int(f[1]), int(f[11]) + int(f[12]), int(f[13]) + int(f[14]), int(f[19])
    except (IndexError, ValueError):
        return None


def _children(pid: int) -> list[int]:
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    kids: list[int] = []
    for tid in tids:
        kids += [int(c) for c in _read(f"/proc/{pid}/task/{tid}/children").split() if c.isdigit()]
    return kids


class _Watch:
    """``watch()`` → None once the budget is spent, else the seconds until it could be;
    ``watch.used`` is the box's CPU seconds as last measured."""

    mechanism = ""
    base = 0.0  # what the box had spent when this budget began (``BoxLife.watch_more``)

    def __init__(self, limit: float, ncpu: float) -> None:
        self.limit, self.ncpu, self.used = limit, max(ncpu, 0.01), 0.0

    def sample(self) -> float:
        raise NotImplementedError

    def __call__(self) -> float | None:
        t = time.monotonic()
        remaining = self.limit - self.sample()
        cost = time.monotonic() - t
        if remaining <= 0:
            return None
        return max(MIN_WAIT, COST_FACTOR * cost, remaining / self.ncpu)


class CgroupWatch(_Watch):
    mechanism = "cgroup"

    def __init__(self, box_cg: Any, limit: float) -> None:
        super().__init__(limit, float(box_cg.cpus or os.cpu_count() or 1))
        self.box_cg = box_cg

    def sample(self) -> float:
        self.used = max(self.used, self.box_cg.cpu_seconds())
        return self.used


class TreeWatch(_Watch):
    mechanism = FALLBACK

    def __init__(self, limit: float, init_pid: int, pidfd: int = -1) -> None:
        super().__init__(limit, float(os.cpu_count() or 1))
        self.init_pid, self.pidfd = init_pid, pidfd
        self.init_start: int | None = None
        self.seen: dict[tuple[int, int], int] = {}  # (pid, start time) → most own ticks shown
        self.gone = 0  # own ticks of sampled processes that have since gone

    def _init_alive(self, start: int) -> bool:
        if self.pidfd >= 0:
            p = select.poll()
            p.register(self.pidfd, select.POLLIN)
            return not p.poll(0)  # a pidfd polls readable once its process has exited
        if self.init_start is None:
            self.init_start = start
        return start == self.init_start

    def sample(self) -> float:
        tree, own = 0, {}
        todo: list[tuple[int, int | None]] = [(self.init_pid, None)]
        visited: set[int] = set()
        init_start = -1
        while todo and len(visited) < MAX_PROCS:
            pid, parent = todo.pop()
            if pid in visited or (st := _stat(pid)) is None or (parent is not None and st[0] != parent):
                continue
            visited.add(pid)
            _ppid, mine, waited, start = st
            if parent is None:
                init_start = start
            tree += mine + waited
            own[(pid, start)] = mine
            todo += [(kid, pid) for kid in _children(pid)]
        if init_start < 0 or not self._init_alive(init_start):
            return self.used  # init is gone: the pid, the root of the walk, is not ours now
        for key, ticks in self.seen.items():
            if key in own:
                own[key] = max(own[key], ticks)
            elif (st := _stat(key[0])) is not None and st[3] == key[1]:
                own[key] = max(ticks, st[1])  # still there, only missed by this walk
            else:
                self.gone += ticks  # exited: its last showing is all it will ever show
        self.seen = own
        self.used = max(self.used, tree / _TICK, (self.gone + sum(own.values())) / _TICK)
        return self.used


def cpu_watch(box_cg: Any, limit: float | None, init_pid: int | None,
              pidfd: int = -1) -> _Watch | None:
    """The box's CPU-time watch: cgroup ``cpu.stat`` where the box's cgroup holds cpu_time,
    else the process-tree walk from init (host pid ``init_pid``; ``pidfd``, when given, tells
    a live init from a reused pid). None when there is no CPU-time limit."""
    if limit is None:
        return None
    if box_cg is not None and box_cg.enforced.get("cpu_time") == "cgroup":
        return CgroupWatch(box_cg, limit)
    if init_pid is None:
        return None
    return TreeWatch(limit, init_pid, pidfd)


async def until_spent(watch: _Watch) -> None:
    """Return once ``watch``'s budget is spent (trio: the supervisor's CPU-time task)."""
    import trio

    while (wait := watch()) is not None:
        await trio.sleep(wait)


class Guard:
    """A held box's budget, kept while its host does nothing: a thread samples ``watch`` on its
    schedule and calls ``kill`` (SIGKILL to init) once it is spent. Checked only when the host
    called on the box, a background process (a daemon, a server) spent freely between calls;
    the supervisor's counters, not the host's activity, must end it. ``spent`` tells the host
    why the box died. The thread holds no reference to the Box (a dropped box is collected)."""

    def __init__(self, watch: _Watch, kill: Any) -> None:
        import threading

        self.watch, self.spent, self._kill = watch, False, kill
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sandbox-cpu-guard", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            while (wait := self.watch()) is not None:
                if self._stop.wait(wait):
                    return
        except OSError:  # the leaf went with the box (its end stops us first; a bound anyway)
            return
        self.spent = True
        self._kill()

    def stop(self) -> None:
        """No more samples, and none under way, once this returns (the box may then end)."""
        import threading

        self._stop.set()
        if threading.current_thread() is not self._thread:
            self._thread.join()
