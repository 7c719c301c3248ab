"""seccomp policies, declared in Python, compiled by libseccomp (pyseccomp), loaded in the box.

A policy is data (``Policy`` of ``Rule``s with the reason for each). ``compile_bpf`` turns it
into a BPF program with libseccomp — never hand-assembled — once per policy in the parent
(launcher, CLI) and caches the bytes; ``load_bpf`` in the box is then one prctl, so the filter
adds microseconds, not milliseconds, to a box start. The filter is the last step before exec
(after no_new_privs, which is what lets an unprivileged process install it at all).

The default policy allows everything except the syscalls below: kernel attack surface a test
program never needs, anything that could escape or reshape the box, and the terminal-injection
ioctls. Denials return EPERM, or ENOSYS where programs probe for a feature and fall back
(io_uring, clone3). Syscalls of a foreign architecture (i386 via ``int 0x80``, x32) kill the
process: every rule here is written for the native numbering, so a second ABI would be a
bypass (the classic x32/i386 seccomp escape).
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass, field


def _import_pyseccomp():  # type: ignore[no-untyped-def]
    """pyseccomp locates libc and libseccomp with ctypes.util.find_library, which runs
    ``ldconfig -p`` twice (~15 ms), and importing ctypes.util alone (shutil, subprocess, ...)
    costs ~4 ms of the CLI's cold start. While pyseccomp imports, ``ctypes.util`` is a stub
    that tries the well-known sonames first; the real module is loaded only if one of them
    does not load here."""
    import sys
    import types

    if "pyseccomp" in sys.modules:
        return sys.modules["pyseccomp"]
    known = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}
    had_util = "ctypes.util" in sys.modules

    def find(name: str) -> str | None:
        so = known.get(name)
        if so:
            try:
                ctypes.CDLL(so)
                return so
            except OSError:
                pass
        if sys.modules.get("ctypes.util") is stub:  # let the real module in, for good
            del sys.modules["ctypes.util"]
        import ctypes.util as real

        return real.find_library(name)

    stub = types.ModuleType("ctypes.util")
    stub.find_library = find  # type: ignore[attr-defined]
    if not had_util:
        sys.modules["ctypes.util"] = stub
        ctypes.util = stub  # type: ignore[attr-defined]
    else:
        real_find = sys.modules["ctypes.util"].find_library
        sys.modules["ctypes.util"].find_library = find
    try:
        import pyseccomp
    finally:
        if had_util:
            sys.modules["ctypes.util"].find_library = real_find
        elif sys.modules.get("ctypes.util") is stub:
            del sys.modules["ctypes.util"]
            del ctypes.util  # type: ignore[attr-defined]
    return pyseccomp


_s = _import_pyseccomp()

EPERM, ENOSYS = errno.EPERM, errno.ENOSYS
CLONE_NEW_FLAGS = {"CLONE_NEWNS": 0x00020000, "CLONE_NEWCGROUP": 0x02000000,
                   "CLONE_NEWUTS": 0x04000000, "CLONE_NEWIPC": 0x08000000,
                   "CLONE_NEWUSER": 0x10000000, "CLONE_NEWPID": 0x20000000,
                   "CLONE_NEWNET": 0x40000000, "CLONE_NEWTIME": 0x00000080}
# personality(2) flags that weaken memory protection (ASLR off, executable data, page 0).
# Each is matched together with bit 31 clear, so the query personality(0xffffffff) still works.
PERSONALITY_BAD = (0x0040000, 0x0080000, 0x0100000, 0x0200000, 0x0400000, 0x0800000,
                   0x1000000, 0x2000000, 0x4000000, 0x8000000)
AF_NETLINK, AF_VSOCK, NETLINK_ROUTE = 16, 40, 0
TIOCSTI, TIOCLINUX = 0x5412, 0x541C

Arg = tuple[int, int, int, int]  # (argument index, pyseccomp op, datum_a, datum_b)


@dataclass(frozen=True)
class Rule:
    """One denied syscall (optionally only for some argument values), and why."""

    syscall: str
    why: str
    errno: int = EPERM
    args: tuple[Arg, ...] = ()
    group: str = ""  # name used by allow=/deny= to relax or add (defaults to the syscall)

    @property
    def key(self) -> str:
        return self.group or self.syscall


def _deny(names: str, why: str, err: int = EPERM, group: str = "") -> list[Rule]:
    return [Rule(n, why, err, group=group) for n in names.split()]


DEFAULT_RULES: tuple[Rule, ...] = tuple(
    _deny("keyctl add_key request_key", "kernel keyrings are not namespaced: shared with the "
          "host user, and a long CVE history")
    + _deny("bpf", "eBPF verifier bugs are a recurring root exploit path")
    + _deny("perf_event_open", "kernel pointer/side-channel leaks and exploit history")
    + _deny("userfaultfd", "used to widen race windows in kernel exploits")
    + _deny("io_uring_setup io_uring_enter io_uring_register", "io_uring: huge attack surface, "
            "and its operations are not seen by seccomp; ENOSYS so runtimes fall back", ENOSYS)
    + _deny("kexec_load kexec_file_load reboot", "replace or stop the host kernel")
    + _deny("init_module finit_module delete_module create_module get_kernel_syms query_module",
            "kernel modules")
    + _deny("acct swapon swapoff syslog quotactl quotactl_fd lookup_dcookie nfsservctl uselib "
            "ustat sysfs _sysctl vhangup iopl ioperm vm86 vm86old", "host administration, "
            "obsolete or hardware-level calls no test needs (docker's default profile denies them)")
    + _deny("settimeofday clock_settime clock_adjtime adjtimex stime", "the clock is not "
            "namespaced: a box must never move the host's time")
    + _deny("open_by_handle_at name_to_handle_at", "file handles bypass path-based confinement "
            "(the 'shocker' container escape)")
    + _deny("ptrace process_vm_readv process_vm_writev pidfd_getfd", "debugging other "
            "processes; before Linux 4.8 ptrace could even bypass seccomp", group="ptrace")
    + _deny("mount umount2 pivot_root chroot unshare setns open_tree move_mount fsopen fsmount "
            "fsconfig fspick mount_setattr", "reshaping the box's namespaces or mounts")
    + [Rule("clone", f"clone with {name}: no nested namespaces (nested user namespaces are a "
            "large kernel attack surface)", EPERM, ((0, _s.MASKED_EQ, bit, bit),))
       for name, bit in CLONE_NEW_FLAGS.items() if name != "CLONE_NEWTIME"]
    + _deny("clone3", "its flags live in memory, which seccomp cannot inspect; ENOSYS makes "
            "libc fall back to clone(), whose flags the rules above check", ENOSYS)
    + [Rule("personality", "personality flags that disable ASLR or make data executable", EPERM,
            ((0, _s.MASKED_EQ, bit | 0x80000000, bit),)) for bit in PERSONALITY_BAD]
    + [Rule("socket", "AF_VSOCK reaches the hypervisor/host side", EPERM,
            ((0, _s.EQ, AF_VSOCK, 0),)),
       Rule("socket", "AF_NETLINK other than NETLINK_ROUTE (audit, uevents, netfilter ...)",
            EPERM, ((0, _s.EQ, AF_NETLINK, 0), (2, _s.NE, NETLINK_ROUTE, 0)))]
    + [Rule("ioctl", f"{name}: inject keystrokes into / control the terminal (CVE-2019-10063: "
            "matched on the low 32 bits, so high garbage bits cannot dodge the rule)", EPERM,
            ((1, _s.MASKED_EQ, 0xFFFFFFFF, req),), group=name.lower())
       for name, req in (("TIOCSTI", TIOCSTI), ("TIOCLINUX", TIOCLINUX))]
)


@dataclass(frozen=True)
class Policy:
    """A named set of rules; compiled once per process by compile_bpf."""

    name: str
    rules: tuple[Rule, ...] = field(default_factory=tuple)
    allowed: tuple[str, ...] = ()
    denied: tuple[str, ...] = ()

    def describe(self) -> str:
        """Short form for the verdict: ``default``, ``default(-ptrace,+chmod)``, ``none``."""
        mods = [f"-{a}" for a in self.allowed] + [f"+{d}" for d in self.denied]
        return f"{self.name}({','.join(mods)})" if mods else self.name


def policy_for(name: str, allow: tuple[str, ...] = (), deny: tuple[str, ...] = ()) -> Policy:
    """``allow`` removes rules by syscall or group name (e.g. "ptrace"); ``deny`` adds EPERM
    rules for more syscalls."""
    if name == "none":
        return Policy("none")
    if name != "default":
        raise ValueError(f"unknown seccomp policy {name!r}; use default or none")
    known = {r.key for r in DEFAULT_RULES} | {r.syscall for r in DEFAULT_RULES}
    for a in allow:
        if a not in known:
            raise ValueError(f"seccomp allow {a!r}: not in the default policy; "
                             f"one of: {', '.join(sorted(known))}")
    rules = tuple(r for r in DEFAULT_RULES if r.key not in allow and r.syscall not in allow)
    rules += tuple(Rule(d, "denied for this box by its configuration") for d in deny)
    return Policy(name, rules, tuple(allow), tuple(deny))


_cache: dict[Policy, bytes] = {}


def build_filter(policy: Policy) -> _s.SyscallFilter:
    f = _s.SyscallFilter(_s.ALLOW)
    f.set_attr(_s.Attr.ACT_BADARCH, _s.KILL_PROCESS)
    f.set_attr(_s.Attr.CTL_NNP, 0)  # we set no_new_privs ourselves, earlier
    for r in policy.rules:
        args = [_s.Arg(i, op, a, b) for i, op, a, b in r.args]
        try:
            f.add_rule(_s.ERRNO(r.errno), r.syscall, *args)
        except OSError as e:
            # a syscall this architecture does not have (vm86 on x86-64, ...): nothing to deny
            if e.errno not in (errno.EINVAL, errno.EDOM, errno.EFAULT):
                raise
    return f


def compile_bpf(policy: Policy) -> bytes:
    """libseccomp's BPF for ``policy`` (cached): export to a memfd and read it back."""
    if policy not in _cache:
        fd = os.memfd_create("seccomp-bpf", os.MFD_CLOEXEC)
        try:
            with os.fdopen(os.dup(fd), "rb") as f:
                build_filter(policy).export_bpf(f)
            os.lseek(fd, 0, os.SEEK_SET)
            data = b""
            while chunk := os.read(fd, 65536):
                data += chunk
        finally:
            os.close(fd)
        if not data or len(data) % 8:
            raise OSError(errno.EINVAL, "libseccomp produced an invalid BPF program")
        _cache[policy] = data
    return _cache[policy]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


_libc = ctypes.CDLL(None, use_errno=True)
_prctl = _libc.prctl  # resolved now, in the parent
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2


def load_bpf(bpf: bytes) -> None:
    """Install a compiled filter on the calling thread (no_new_privs must already be set)."""
    buf = ctypes.create_string_buffer(bpf, len(bpf))
    prog = _SockFprog(len(bpf) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if _prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0) < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"seccomp filter: {os.strerror(err)}")
