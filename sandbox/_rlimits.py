"""Resource limits applied with setrlimit in the payload just before exec.

Always applied (cheap, and they bound things cgroups do not): core dumps off (a crashing box
must not write a core file of its memory anywhere), ``nofile``, ``fsize``.
The *fallback* ones stand in for cgroup v2 where the box's cgroup does not hold a limit (no
delegated cgroup at all, or one without that limit's controller: this is per limit), and the
verdict says so (``enforcement[...] == "rlimit"``) and why (``Result.fallback_reasons``, from
``sandbox._cgroup_env.fallback_reasons``):

* memory → ``RLIMIT_AS``: per process and counts address space, not RSS. It reliably stops a
  memory bomb, but runtimes that reserve large virtual ranges (Go, JVM) need a larger value.
* cpu_time → ``RLIMIT_CPU``: per process (SIGXCPU at the soft limit, SIGKILL one second later);
  the box-wide total is the runners' watch (sandbox/_cpuwatch.py: the verdict then says
  ``rlimit+supervisor``).
* pids → ``RLIMIT_NPROC``: counted per (user namespace, uid) on kernels ≥ 5.14, so it counts
  the box's own processes; on older kernels it counts every process of the host user.
"""

from __future__ import annotations

import math
import os

from sandbox._syscalls import RLIM_INFINITY, prlimit, read_file

Plan = list[tuple[int, int, int]]
# <asm-generic/resource.h>: the same numbers on x86-64 and aarch64
RLIMIT_CPU, RLIMIT_FSIZE, RLIMIT_CORE, RLIMIT_NPROC, RLIMIT_NOFILE, RLIMIT_AS = 0, 1, 4, 6, 7, 9


def plan_rlimits(limits, cgroup_enforced: frozenset[str] = frozenset()) -> tuple[Plan, dict[str, str]]:
    """→ (setrlimit calls, enforcement per limit name)."""
    plan: Plan = [(RLIMIT_CORE, 0, 0)]
    enf: dict[str, str] = {}
    if limits.nofile is not None:
        plan.append((RLIMIT_NOFILE, limits.nofile, limits.nofile))
        enf["nofile"] = "rlimit"
    else:
        enf["nofile"] = "none"
    if limits.fsize is not None:
        plan.append((RLIMIT_FSIZE, limits.fsize, limits.fsize))
        enf["fsize"] = "rlimit"
    else:
        enf["fsize"] = "none"
    if limits.memory is not None and "memory" not in cgroup_enforced:
        plan.append((RLIMIT_AS, limits.memory, limits.memory))
        enf["memory"] = "rlimit"
    if limits.cpu_time is not None and "cpu_time" not in cgroup_enforced:
        soft = max(1, math.ceil(limits.cpu_time))
        plan.append((RLIMIT_CPU, soft, soft + 1))
        enf["cpu_time"] = "rlimit"
    if limits.pids is not None and "pids" not in cgroup_enforced:
        plan.append((RLIMIT_NPROC, limits.pids, limits.pids))
        enf["pids"] = "rlimit"
    for name in ("memory", "cpu_time", "pids"):
        if getattr(limits, name) is None:
            enf[name] = "none"
        elif name in cgroup_enforced:
            enf[name] = "cgroup"
    if limits.cpus is not None:
        enf["cpus"] = "cgroup" if "cpus" in cgroup_enforced else "none"
    enf["wall_time"] = "supervisor" if limits.wall_time is not None else "none"
    enf["output_limit"] = "supervisor"
    enf["tmpfs_size"] = "tmpfs"
    return plan, enf


def clamped(plan: Plan) -> Plan:
    """The plan as setrlimit will accept it: a hard limit cannot be raised, so where the host's
    is stricter it is kept (and the soft limit lowered to it)."""
    out: Plan = []
    for res, soft, hard in plan:
        _, cur_hard = prlimit(res)
        if cur_hard != RLIM_INFINITY and hard > cur_hard:
            hard = cur_hard
            soft = min(soft, hard)
        out.append((res, soft, hard))
    return out


def apply_rlimits(plan: Plan) -> None:
    for res, soft, hard in clamped(plan):
        prlimit(res, (soft, hard))


def address_space_size() -> int:
    """This process's address space in bytes (VmSize: what RLIMIT_AS counts)."""
    return int(read_file("/proc/self/statm").split()[0]) * os.sysconf("SC_PAGE_SIZE")


def on_top_of_current_image(plan: Plan) -> Plan:
    """For a box that runs a *forked* Python function (the pytest plugin) instead of exec'ing:
    it inherits the caller's whole address space, so RLIMIT_AS must count from there, or a
    large pytest process would have no memory left at all. The limit then means "this much
    more than the test process already had"."""
    vsz = address_space_size()
    return [(r, s + vsz, h + vsz) if r == RLIMIT_AS else (r, s, h) for r, s, h in plan]
