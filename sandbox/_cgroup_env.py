"""cgroup v2 detection: is a delegated subtree ours, and which of the memory, pids and cpu
controllers may it use?

Split from ``sandbox._cgroups`` because every box start asks this, and most hosts answer no
(no delegation, a v1/v2 hybrid): then only this module is imported, and the box falls back to
rlimits. The answer is per controller: a subtree delegated with memory and pids but not cpu
still holds those two limits (systemd's ``Delegate=memory pids`` does exactly that). Every
verdict says for each limit no cgroup holds why not (``Result.fallback_reasons``, built by
``fallback_reasons`` from ``CgroupEnv.reason`` or from the kernel file that lacks the
controller), so the cause is in the verdict and not only in ``sandbox doctor``.
"""

from __future__ import annotations

import os

from sandbox import _syscalls as sc
from sandbox._record import field, record

WANTED = ("memory", "pids", "cpu")
# limit → the controller that holds it; cpu_time needs none: cpu.stat is a core file of every
# cgroup v2, so any box cgroup counts the CPU of all its processes.
CONTROLLER_OF = {"memory": "memory", "pids": "pids", "cpus": "cpu", "cpu_time": ""}
Mode = str  # "unified" | "hybrid" | "legacy" | "none" (no typing import: CLI start-up)


@record
class CgroupEnv:
    """What the host offers: which cgroup mode, where v2 is mounted, our own cgroup, and why not."""

    mode: Mode
    mount: str | None
    own_path: str | None
    delegated: bool
    controllers: frozenset[str]
    reason: str  # why no cgroup at all ("" when one can be used)
    missing: dict[str, str] = field(default_factory=dict)  # wanted controller → why it is not usable

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
    elif len(missing) == len(WANTED):
        env.reason = (f"cgroup v2 {', '.join(missing)} controller(s) not delegated"
                      + (" (hybrid v1/v2 host: they are bound to cgroup v1)" if mode == "hybrid" else ""))
    else:  # some: the box cgroups hold those limits, rlimits the others
        top = parent if parent in writable else own
        env.missing = {c: why_missing(top, c, mount) for c in missing}
    return env


def why_missing(cg: str, controller: str, mount: str) -> str:
    """Why ``controller`` is not in ``cg``'s ``cgroup.controllers``: the kernel offers a child
    only what its parent's ``cgroup.subtree_control`` enables, so walk up to the first cgroup
    that has it and name the file that does not pass it on (and whether we may write it)."""
    d = cg
    while d.startswith(mount) and d != mount:
        p = os.path.dirname(d)
        try:
            have = _read(os.path.join(p, "cgroup.controllers")).split()
        except OSError:
            break
        if controller in have:
            ctl = os.path.join(p, "cgroup.subtree_control")
            how = ("" if os.access(ctl, os.W_OK) else f", which uid {os.getuid()} may not write")
            return f"{controller} controller not delegated to {d}: {ctl} lacks {controller}{how}"
        d = p
    return (f"the cgroup v2 hierarchy at {mount} has no {controller} controller"
            " (bound to cgroup v1, or not built into the kernel)")


def fallback_reasons(limits: object, held: frozenset[str] | set[str],
                     why: str | dict[str, str]) -> dict[str, str]:
    """limit → why no cgroup holds it, for each limit that is set, that a cgroup would hold,
    and that ``held`` lacks. ``why``: one reason for all (the box has no cgroup) or per
    controller (its cgroup lacks that one). ``memfd`` and ``kernel_buffers`` follow memory:
    a memory cgroup is what would have counted them."""
    out: dict[str, str] = {}
    for limit, ctl in CONTROLLER_OF.items():
        if getattr(limits, limit) is not None and limit not in held:
            out[limit] = why if isinstance(why, str) else why.get(ctl, f"no {ctl} controller")
    if "memory" in out:
        out["memfd"] = out["kernel_buffers"] = out["memory"]
    return out
