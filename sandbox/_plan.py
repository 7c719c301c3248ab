"""The parent half of a box: everything its init needs, computed before the clone (``prepare``),
so the child only issues syscalls in the order ``sandbox._contain`` writes out. Reading host
files, compiling the seccomp filter and choosing the enforcement of each limit happen here,
where a failure is an ordinary exception in the caller and not a box that half-started.
"""

from __future__ import annotations

import os

from sandbox import _rlimits, _rootfs, _userns
from sandbox._config import DEFAULT_PATH, SandboxConfig
from sandbox._record import field, record, replace

TYPE_CHECKING = False  # collections.abc imports collections: ~1 ms of the CLI start
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    Target = Sequence[str] | Callable[[], int]  # argv, or (tests, launcher) a function


@record(frozen=True)
class Prepared:
    """Everything the child needs, computed in the parent so the child only makes syscalls.

    Immutable: one plan serves many boxes (the launcher and the plugin reuse it per config), so
    a box that changed it would change the next one's. A box with another target is
    ``_record.replace(prep, target=...)``; what init learns at run time stays in init's locals.
    """

    config: SandboxConfig
    target: Target
    env: dict[str, str]
    ids: _userns.IdPlan
    rootfs: _rootfs.RootfsPlan
    rlimits: _rlimits.Plan
    enforcement: dict[str, str]
    seccomp_bpf: bytes | None = None
    seccomp_desc: str = "none"
    landlock: bool = False
    landlock_abi: int = 0
    landlock_writable: list[str] = field(default_factory=list)
    keep_fds: tuple[int, ...] = field(default_factory=tuple)
    serve: bool = False  # a held box (sandbox.Box): init serves requests instead of one payload


def prepare(config: SandboxConfig, target: Target, *,
            cgroup_enforced: frozenset[str] = frozenset(), serve: bool = False) -> Prepared:
    """The plan of one box. ``serve``: a held box (``sandbox.Box``) whose init serves requests
    and whose ``/`` stays writable; ``cgroup_enforced``: the limits its cgroup leaf holds."""
    env = {k: os.environ[k] for k in config.inherit_env if k in os.environ}
    env.update({"PATH": DEFAULT_PATH, "HOME": "/tmp", "USER": "sandbox", "LOGNAME": "sandbox",
                "HOSTNAME": config.hostname})
    env.update(config.env)
    plan, enforcement = _rlimits.plan_rlimits(config.limits, cgroup_enforced)
    root = replace(_rootfs.plan_rootfs(config), cgroup=bool(cgroup_enforced), held=serve)
    landlock_abi, landlock_writable = 0, []
    if config.landlock:
        from sandbox import _landlock

        landlock_abi = _landlock.abi_version()  # reported: landlock False when the kernel lacks it
        landlock_writable = ["/tmp", "/dev", "/proc"] + [
            m.target for m in config.mounts if m.kind in ("bind", "overlay", "tmpfs")]
    # memfd pages: charged to a memory cgroup, invisible to RLIMIT_AS (refused by seccomp then)
    memfd = "none" if enforcement["memory"] == "rlimit" else enforcement["memory"]
    bpf, desc = None, "none"
    if config.seccomp != "none":
        from sandbox import _seccomp  # compiled once per policy in this (parent) process

        policy = _seccomp.policy_for(config.seccomp, config.seccomp_allow, config.seccomp_deny,
                                     memory_rlimit=enforcement["memory"] == "rlimit")
        bpf, desc = _seccomp.compile_bpf(policy), policy.describe()
        if _seccomp.refuses(policy, "memfd_create"):
            memfd = "seccomp"
    enforcement["memfd"] = memfd
    # Socket and pipe buffers are kernel memory: a memory cgroup charges them, RLIMIT_AS never
    # sees them (a box held 1 GiB in unix socket buffers under --memory 64M), and no filter
    # can bound their total. The verdict says so rather than implying --memory covered them.
    enforcement["kernel_buffers"] = "none" if enforcement["memory"] == "rlimit" else enforcement["memory"]
    return Prepared(config, target, env, _userns.plan_ids(config.uid, config.gid, config.id_map),
                    root, plan, enforcement, seccomp_bpf=bpf, seccomp_desc=desc,
                    landlock=landlock_abi > 0, landlock_abi=landlock_abi,
                    landlock_writable=landlock_writable, serve=serve)


Plan = Prepared  # its public name (sandbox.Plan, from sandbox.prepare)
