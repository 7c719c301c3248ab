"""``sandbox doctor``: can this host and user run boxes, which limits will be real, how to fix.

Every check is a real trial where one is possible (a user namespace is created, a box is run)
rather than a reading of sysctls alone: Docker's seccomp profile, AppArmor's userns
restriction or a hardened kernel all show up as the trial's errno. Exit 0 when boxes can run.
"""

from __future__ import annotations

import ctypes
import os
import shutil
from dataclasses import dataclass

from sandbox import _syscalls as sc


@dataclass
class Check:
    """One line of `sandbox doctor`: what was checked, ok/warn/fail, and the fix."""

    name: str
    status: str  # "ok" | "warn" | "fail"
    detail: str
    fix: str = ""


def _sysctl(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def _userns_trial() -> tuple[bool, str]:
    """Fork a child that creates a user namespace and writes its uid map."""
    r, w = os.pipe()
    uid = os.geteuid()  # after unshare it reads as the overflow uid until the map exists
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            os.close(r)
            sc.unshare(sc.CLONE_NEWUSER)
            with open("/proc/self/setgroups", "w") as f:
                f.write("deny")
            with open("/proc/self/uid_map", "w") as f:
                f.write(f"0 {uid} 1")
        except OSError as e:
            os.write(w, f"{e.errno}:{e.strerror}".encode())
            code = 1
        os._exit(code)
    os.close(w)
    msg = os.read(r, 200).decode()
    os.close(r)
    os.waitpid(pid, 0)
    return (not msg, msg)


def _seccomp_of_self() -> str:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Seccomp:"):
                    return line.split()[1]
    except OSError:
        pass
    return "?"


def _landlock_abi() -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    nr = {"x86_64": 444, "aarch64": 444}.get(os.uname().machine, -1)
    if nr < 0:
        return 0
    v = libc.syscall(ctypes.c_long(nr), None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return max(0, int(v))


def _subid(user: str) -> str | None:
    try:
        with open("/etc/subuid") as f:
            for line in f:
                p = line.strip().split(":")
                if len(p) == 3 and p[0] in (user, str(os.getuid())):
                    return f"{p[1]}+{p[2]}"
    except OSError:
        pass
    return None


def diagnose() -> list[Check]:
    """What this machine lets a box use, and how to fix what it does not: one ``Check`` per
    kernel feature, namespace, cgroup, seccomp and set-up fact (``sandbox doctor`` prints them)."""
    out: list[Check] = []
    rel = os.uname().release
    major, minor = (int(x) for x in rel.split(".")[:2])
    out.append(Check("kernel", "ok" if (major, minor) >= (5, 11) else "fail", rel,
                     "" if (major, minor) >= (5, 11) else "Linux >= 5.11 is needed (overlayfs in "
                     "user namespaces, clone3 with CLONE_INTO_CGROUP, close_range)"))
    appa = _sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns")
    maxns = _sysctl("/proc/sys/user/max_user_namespaces")
    ok, err = _userns_trial()
    fix = ""
    if not ok:
        if appa == "1":
            fix = "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0 (or an AppArmor profile allowing userns)"
        elif maxns == "0":
            fix = "sudo sysctl -w user.max_user_namespaces=15000"
        elif _seccomp_of_self() == "2":
            fix = ("a seccomp filter (e.g. Docker's default profile) blocks it: docker run "
                   "--security-opt seccomp=unconfined (or a profile allowing clone/unshare with CLONE_NEWUSER)")
        else:
            fix = "enable CONFIG_USER_NS / unprivileged user namespaces"
    out.append(Check("user namespaces", "ok" if ok else "fail",
                     f"trial {'succeeded' if ok else 'failed: ' + err}; max_user_namespaces={maxns}"
                     + (f"; apparmor_restrict_unprivileged_userns={appa}" if appa else ""), fix))
    from sandbox import Status
    from sandbox._config import SandboxConfig
    from sandbox._direct import run_direct

    r = run_direct(["true"], SandboxConfig(use_cgroup=False))
    out.append(Check("sandbox trial", "ok" if r.status == Status.OK else "fail",
                     "a full box (namespaces, overlayfs root, seccomp) ran /bin/true" if r.ok
                     else f"{r.error}", "" if r.ok else "see the failing step above; `sandbox run --seccomp none -- true` narrows it down"))
    from sandbox import _cgroups

    env = _cgroups.detect()
    if not env.reason and env.missing:  # some controllers: those limits by cgroup, the rest not
        held = [c for c in _cgroups.WANTED if c not in env.missing]
        out.append(Check("cgroup v2", "warn", f"{env.mode}, delegated subtree {env.own_path}: "
                         f"{', '.join(held)} limits are enforced by cgroup v2; "
                         + "; ".join(env.missing.values()) + " (those limits fall back, verdicts say why)",
                         "delegate the missing controllers too (systemd: Delegate=cpu cpuset io memory pids)"))
    elif not env.reason:
        out.append(Check("cgroup v2", "ok", f"{env.mode}, delegated subtree {env.own_path}: "
                         "memory, pids and CPU limits are enforced by cgroup v2"))
    else:
        out.append(Check("cgroup v2", "warn", f"{env.mode}: {env.reason}; memory, pids and CPU "
                         "fall back to rlimits (verdicts say so)",
                         "systemd-run --user --scope -p Delegate=yes sandbox run ...  or a drop-in "
                         "/etc/systemd/system/user@.service.d/delegate.conf with [Service] "
                         "Delegate=cpu cpuset io memory pids"
                         + ("; on a hybrid host boot with systemd.unified_cgroup_hierarchy=1"
                            if env.mode == "hybrid" else "")))
    out.append(Check("seccomp", "ok", f"filters available; this process: Seccomp={_seccomp_of_self()}"))
    abi = _landlock_abi()
    out.append(Check("landlock", "ok" if abi else "warn", f"ABI v{abi}" if abi else "not available",
                     "" if abi else "Linux >= 5.13 with CONFIG_SECURITY_LANDLOCK and lsm=landlock"))
    try:
        import pwd

        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = str(os.getuid())
    sub = _subid(user)
    have = shutil.which("newuidmap") is not None
    out.append(Check("id ranges", "ok" if (sub and have) or os.geteuid() == 0 else "warn",
                     f"newuidmap {'found' if have else 'missing'}; /etc/subuid {sub or 'none'}",
                     "" if (sub and have) or os.geteuid() == 0 else
                     "optional (--id-map range): apt-get install uidmap; usermod --add-subuids 100000-165535 "
                     f"--add-subgids 100000-165535 {user}"))
    nets = [n for n in ("pasta", "slirp4netns") if shutil.which(n)]
    out.append(Check("user-mode networking", "ok" if nets else "warn",
                     ", ".join(nets) or "pasta/slirp4netns not found (only --net none|host)",
                     "" if nets else "optional: apt-get install passt"))
    return out
