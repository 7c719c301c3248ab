"""cgroup v2 detection: is a delegated subtree with the memory, pids and cpu controllers ours?

Split from ``sandbox.cgroups`` because every box start asks this, and most hosts answer no
(no delegation, a v1/v2 hybrid): then only this module is imported, and the box falls back to
rlimits (``CgroupEnv.reason`` says why, in every verdict's enforcement and in the doctor).
"""

from __future__ import annotations

import os

from sandbox import _syscalls as sc
from sandbox._record import record

WANTED = ("memory", "pids", "cpu")
Mode = str  # "unified" | "hybrid" | "legacy" | "none" (no typing import: CLI start-up)


@record
class CgroupEnv:
    """What the host offers: which cgroup mode, where v2 is mounted, our own cgroup, and why not."""

    mode: Mode
    mount: str | None
    own_path: str | None
    delegated: bool
    controllers: frozenset[str]
    reason: str

    @property
    def own_dir(self) -> str | None:
        if self.mount is None or self.own_path is None:
            return None
        return os.path.join(self.mount, self.own_path.lstrip("/"))


_read = sc.read_file


def _cgroup2_mount() -> str | None:
    try:
        for line in _read("/proc/self/mountinfo").splitlines():
            left, _, right = line.partition(" - ")
            if right.split()[:1] == ["cgroup2"] and left.split()[3] == "/":
                return left.split()[4]
    except OSError:
        pass
    return None


def detect() -> CgroupEnv:
    """Where we stand: hierarchy mode, our cgroup, delegation, available controllers."""
    try:
        lines = _read("/proc/self/cgroup").splitlines()
    except OSError:
        return CgroupEnv("none", None, None, False, frozenset(), "no /proc/self/cgroup")
    v2 = [ln.split(":", 2)[2] for ln in lines if ln.startswith("0::")]
    mode: Mode = ("unified" if len(lines) == 1 else "hybrid") if v2 else "legacy"
    mount = _cgroup2_mount()
    if not v2 or mount is None:
        return CgroupEnv(mode, mount, None, False, frozenset(),
                         "no cgroup v2 hierarchy is mounted (legacy cgroup v1 host)")
    env = CgroupEnv(mode, mount, v2[0], False, frozenset(), "")
    own = env.own_dir or ""
    try:
        env.controllers = frozenset(_read(os.path.join(own, "cgroup.controllers")).split())
    except OSError:
        env.controllers = frozenset()
    parent = os.path.dirname(own)
    writable = [d for d in (own, parent) if d.startswith(mount) and os.access(d, os.W_OK)
                and os.access(os.path.join(d, "cgroup.subtree_control"), os.W_OK)]
    env.delegated = bool(writable)
    parent_ctl: frozenset[str] = frozenset()
    if parent.startswith(mount):
        try:
            parent_ctl = frozenset(_read(os.path.join(parent, "cgroup.controllers")).split())
        except OSError:
            pass
    usable = env.controllers | (parent_ctl if parent in writable else frozenset())
    missing = [c for c in WANTED if c not in usable]
    if not env.delegated:
        env.reason = (f"cgroup v2 subtree {env.own_path} is not delegated to uid {os.getuid()} "
                      "(no write access to it or its parent)")
    elif missing:
        env.reason = (f"cgroup v2 {', '.join(missing)} controller(s) not delegated"
                      + (" (hybrid v1/v2 host: they are bound to cgroup v1)" if mode == "hybrid" else ""))
    return env
