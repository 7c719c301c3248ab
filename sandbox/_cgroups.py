"""cgroup v2: find a delegated subtree, give each box its own leaf, read what the kernel counted.

Where limits become real: ``memory.max`` (+ ``memory.swap.max``, ``memory.oom.group`` so an
OOM kills the whole box), ``pids.max`` and ``cpu.max`` apply to every process of the box
together, and ``cpu.stat``/``memory.peak``/``memory.events`` measure them. Nothing here
touches the host's cgroup mounts; we only write inside a subtree delegated to our uid.

Kernel rules this module obeys:

* No internal processes: a non-root cgroup that distributes controllers to children
  (``cgroup.subtree_control``) must not contain processes itself. So we either build under
  our cgroup's *parent* (when that is delegated to us: a sibling subtree, nothing moves), or move
  this process into its own leaf (``supervisor-<pid>``) first, when it is alone in its cgroup.
* Controllers must be enabled top-down: a missing controller is enabled in the parent's
  ``subtree_control`` as far up as we may write. One we cannot enable is recorded with the
  file that lacks it (``CgroupManager.missing``): the boxes use the controllers there are, and
  the limits the missing ones would hold fall back to rlimits, each verdict saying why.
* Moving a process (``clone3(CLONE_INTO_CGROUP)`` or a ``cgroup.procs`` write) needs write
  access to the common ancestor's ``cgroup.procs``: inside our delegated subtree, it is ours.

Each process opens its own subtree (named by pid), so pytest-xdist workers never collide.
"""

from __future__ import annotations

import errno
import itertools
import os
import time

from sandbox import _syscalls as sc
from sandbox._cgroup_env import (  # noqa: F401 (detect: re-exported)
    WANTED,
    CgroupEnv,
    _read,
    detect,
    fallback_reasons,
    why_missing,
)
from sandbox._config import Limits


class CgroupUnavailable(OSError):
    pass


_write = sc.write_file


class CgroupManager:
    """Our subtree (``base``) under which every box gets a leaf."""

    def __init__(self, env: CgroupEnv, base: str, controllers: frozenset[str],
                 moved_from: str | None = None) -> None:
        self.env, self.base, self.controllers = env, base, controllers
        self.moved_from = moved_from  # our original cgroup when we moved into a leaf of it
        self._counter = itertools.count()
        # wanted controller → why our subtree does not have it (the kernel file lacking it)
        self.missing = {c: why_missing(base, c, env.mount or "/") for c in WANTED if c not in controllers}
        self.last_error = ""  # why the latest create_box failed (its box falls back)

    @classmethod
    def open(cls, *, require: bool = False, env: CgroupEnv | None = None) -> CgroupManager | None:
        env = env or detect()
        try:
            if env.reason:
                raise CgroupUnavailable(errno.EPERM, env.reason)
            return cls._setup(env)
        except OSError as e:
            if require:
                raise CgroupUnavailable(e.errno or errno.EPERM, str(e.strerror or e)) from None
            return None

    @classmethod
    def _setup(cls, env: CgroupEnv) -> CgroupManager:
        own = env.own_dir or ""
        parent = os.path.dirname(own)
        tag = f"sandbox-{os.getpid()}"
        procs = [p for p in _read(os.path.join(own, "cgroup.procs")).split() if p]
        moved_from = None
        if os.access(os.path.join(parent, "cgroup.subtree_control"), os.W_OK) and os.access(parent, os.W_OK):
            top = parent  # build a sibling subtree: nothing has to move
        elif procs == [str(os.getpid())] or not procs:
            # Alone in our cgroup: move into our own leaf, then our cgroup may distribute.
            leaf = os.path.join(own, f"supervisor-{os.getpid()}")
            os.makedirs(leaf, exist_ok=True)
            _write(os.path.join(leaf, "cgroup.procs"), "0")
            top, moved_from = own, own
        else:
            raise CgroupUnavailable(errno.EBUSY, f"our cgroup {env.own_path} holds other processes "
                                    "and its parent is not delegated: no-internal-process rule")
        _enable(top, WANTED)
        base = os.path.join(top, tag)
        os.makedirs(base, exist_ok=True)
        have = frozenset(_read(os.path.join(base, "cgroup.controllers")).split())
        _enable(base, [c for c in WANTED if c in have])
        enabled = frozenset(_read(os.path.join(base, "cgroup.subtree_control")).split())
        return cls(env, base, enabled, moved_from)

    def create_box(self, limits: Limits, name: str | None = None) -> BoxCgroup:
        path = os.path.join(self.base, name or f"box-{next(self._counter)}")
        try:
            os.mkdir(path)
        except OSError as e:
            self.last_error = f"cannot create the box's cgroup under {self.base}: {e.strerror or e}"
            raise
        box = BoxCgroup(path, {})
        try:
            if "memory" in self.controllers and limits.memory is not None:
                _write(os.path.join(path, "memory.max"), str(limits.memory))
                if os.path.exists(os.path.join(path, "memory.swap.max")):
                    _write(os.path.join(path, "memory.swap.max"), str(limits.swap))
                _write(os.path.join(path, "memory.oom.group"), "1")
                box.enforced["memory"] = "cgroup"
            if "pids" in self.controllers and limits.pids is not None:
                _write(os.path.join(path, "pids.max"), str(limits.pids))
                box.enforced["pids"] = "cgroup"
            if "cpu" in self.controllers and limits.cpus is not None:
                _write(os.path.join(path, "cpu.max"), f"{max(1000, int(limits.cpus * 100000))} 100000")
                box.enforced["cpus"] = "cgroup"
                box.cpus = limits.cpus
            if limits.cpu_time is not None:
                box.enforced["cpu_time"] = "cgroup"  # cpu.stat usage is kept for every cgroup
        except OSError as e:
            self.last_error = f"cannot set the limits of the box's cgroup {path}: {e.strerror or e}"
            box.destroy()
            raise
        box.fallback = fallback_reasons(limits, set(box.enforced), self.missing)
        return box

    def close(self) -> None:
        """Remove our subtree (at process exit): no cgroup directory outlives its supervisor.
        If we had moved into a leaf, stop distributing controllers and move back first."""
        for name in os.listdir(self.base) if os.path.isdir(self.base) else []:
            if os.path.isdir(os.path.join(self.base, name)):
                BoxCgroup(os.path.join(self.base, name), {}).destroy(timeout=2)
        for path in (self.base,):
            try:
                os.rmdir(path)
            except OSError:
                pass
        if self.moved_from:
            leaf = os.path.join(self.moved_from, f"supervisor-{os.getpid()}")
            try:
                ctl = " ".join(f"-{c}" for c in _read(os.path.join(self.moved_from, "cgroup.subtree_control")).split())
                if ctl:
                    _write(os.path.join(self.moved_from, "cgroup.subtree_control"), ctl)
                _write(os.path.join(self.moved_from, "cgroup.procs"), "0")
                os.rmdir(leaf)
            except OSError:
                pass


def _enable(cg: str, controllers: list[str] | tuple[str, ...]) -> None:
    """Enable controllers in ``cg``'s subtree_control, first in its parents if needed."""
    have = set(_read(os.path.join(cg, "cgroup.controllers")).split())
    missing = [c for c in controllers if c not in have]
    parent = os.path.dirname(cg)
    if missing and os.access(os.path.join(parent, "cgroup.subtree_control"), os.W_OK):
        _enable(parent, missing)
        have = set(_read(os.path.join(cg, "cgroup.controllers")).split())
    want = " ".join(f"+{c}" for c in controllers if c in have)
    if want:
        _write(os.path.join(cg, "cgroup.subtree_control"), want)


class BoxCgroup:
    def __init__(self, path: str, enforced: dict[str, str]) -> None:
        self.path, self.enforced = path, enforced
        self.cpus: float | None = None
        self.fallback: dict[str, str] = {}  # limit → why this cgroup does not hold it

    def dir_fd(self) -> int:
        """For clone3(CLONE_INTO_CGROUP): the box's first process is born in this leaf, so no
        instruction of it ever runs unlimited (the caller closes the fd)."""
        return os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)

    def _kv(self, name: str) -> dict[str, int]:
        try:
            return {k: int(v) for k, v in (ln.split() for ln in _read(os.path.join(self.path, name)).splitlines())}
        except (OSError, ValueError):
            return {}

    def _int(self, name: str) -> int | None:
        try:
            return int(_read(os.path.join(self.path, name)).strip())
        except (OSError, ValueError):
            return None

    def cpu_seconds(self) -> float:
        return self._kv("cpu.stat").get("usage_usec", 0) / 1e6

    def oom_killed(self) -> bool:
        return self._kv("memory.events").get("oom_kill", 0) > 0

    def stats(self) -> dict[str, int | None]:
        cpu, mem, pids = self._kv("cpu.stat"), self._kv("memory.events"), self._kv("pids.events")
        return {"cpu_usec": cpu.get("usage_usec", 0), "user_usec": cpu.get("user_usec", 0),
                "system_usec": cpu.get("system_usec", 0), "memory_peak": self._int("memory.peak"),
                "memory_current": self._int("memory.current"), "oom": mem.get("oom", 0),
                "oom_kill": mem.get("oom_kill", 0), "pids_max_events": pids.get("max", 0),
                "throttled_usec": cpu.get("throttled_usec", 0)}

    def kill(self) -> None:
        """cgroup.kill (Linux ≥ 5.14) kills every process in the box at once, even ones that
        double-forked and called setsid; older kernels: freeze, SIGKILL each pid, thaw."""
        try:
            _write(os.path.join(self.path, "cgroup.kill"), "1")
            return
        except OSError:
            pass
        try:
            _write(os.path.join(self.path, "cgroup.freeze"), "1")
            for pid in _read(os.path.join(self.path, "cgroup.procs")).split():
                try:
                    os.kill(int(pid), 9)
                except OSError:
                    pass
            _write(os.path.join(self.path, "cgroup.freeze"), "0")
        except OSError:
            pass

    def populated(self) -> bool:
        return self._kv("cgroup.events").get("populated", 0) == 1

    def destroy(self, timeout: float = 5.0) -> None:
        """Kill, wait for ``populated 0``, rmdir: no directory is left behind."""
        deadline = time.monotonic() + timeout
        delay = 0.0005
        while os.path.isdir(self.path):
            if self.populated():
                self.kill()
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError as e:
                if e.errno != errno.EBUSY or time.monotonic() > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 0.05)

    async def watch_cpu_time(self, limit: float) -> None:
        """Return once the box has used ``limit`` CPU seconds (all its processes together):
        the one CPU-time watcher and its schedule live in sandbox/_cpuwatch.py."""
        from sandbox import _cpuwatch

        await _cpuwatch.until_spent(_cpuwatch.CgroupWatch(self, limit))
