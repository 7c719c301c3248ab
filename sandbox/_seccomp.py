"""seccomp policies, declared in Python, compiled by libseccomp (pyseccomp), loaded in the box.

A policy is data (``Policy`` of ``Rule``s with the reason for each). ``compile_bpf`` turns it
into a BPF program with libseccomp — never hand-assembled — once per policy in the parent
(launcher, CLI) and caches the bytes; ``load_bpf`` in the box is then one prctl, so the filter
adds microseconds, not milliseconds, to a box start. The filter is the last step before exec
(after no_new_privs, which is what lets an unprivileged process install it at all).

The compiled bytes are also kept on disk (``sandbox._seccomp_cache``: built at install into
``{sys.prefix}/share/sandbox``, else cached in ``${XDG_CACHE_HOME:-~/.cache}/sandbox``), so a
one-box CLI neither imports pyseccomp nor runs libseccomp. ``python -m sandbox._seccomp [DIR]``
is the install step: the default policy's program, with and without the memfd rules.

The default policy (``sandbox._seccomp_rules``) allows everything except: kernel attack surface
a test program never needs, anything that could escape or reshape the box, the
terminal-injection ioctls, personality flags that weaken ASLR, and prlimit() on the box's
init; under the RLIMIT_AS memory fallback also memfds, which that limit cannot bound.
Arguments are compared at the width the kernel reads them (32 bits for an ``int``). Denials
return EPERM, or ENOSYS where programs probe for a feature and fall back (io_uring, clone3,
memfd). Syscalls of a foreign architecture (i386 via ``int 0x80``, x32) kill the process:
every rule is written for the native numbering, so a second ABI would be a bypass (the
classic x32/i386 seccomp escape).
"""

from __future__ import annotations

import errno
import os
import sys

from sandbox import _clib as ctypes  # the ctypes names, without ctypes/__init__ (see _clib)
from sandbox import _seccomp_cache as disk
from sandbox._record import field, record
from sandbox._seccomp_rules import DEFAULT_RULES, EQ, MASKED_EQ, MEMFD_RULES, NE, Rule, check_widths
from sandbox._syscalls import _libc, check  # the one libc handle (symbols resolved in the parent)

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


@record(frozen=True)
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


def policy_for(name: str, allow: tuple[str, ...] = (), deny: tuple[str, ...] = (), *,
               memory_rlimit: bool = False) -> Policy:
    """``allow`` removes rules by syscall or group name (e.g. "ptrace"); ``deny`` adds EPERM
    rules for more syscalls. ``memory_rlimit``: the box's memory limit is the RLIMIT_AS
    fallback, which memfds escape: add ``MEMFD_RULES``."""
    if name == "none":
        return Policy("none")
    if name != "default":
        raise ValueError(f"unknown seccomp policy {name!r}; use default or none")
    candidates = DEFAULT_RULES + MEMFD_RULES
    known = {r.key for r in candidates} | {r.syscall for r in candidates}
    for a in allow:
        if a not in known:
            raise ValueError(f"seccomp allow {a!r}: not in the default policy; "
                             f"one of: {', '.join(sorted(known))}")
    base = candidates if memory_rlimit else DEFAULT_RULES
    rules = tuple(r for r in base if r.key not in allow and r.syscall not in allow)
    rules += tuple(Rule(d, "denied for this box by its configuration") for d in deny)
    return Policy(name, rules, tuple(allow), tuple(deny))


def refuses(policy: Policy, syscall: str) -> bool:
    """Does the policy deny ``syscall`` whatever its arguments?"""
    return any(r.syscall == syscall and r.alternatives == ((),) for r in policy.rules)


_cache: dict[Policy, bytes] = {}


def _pyseccomp() -> Any:
    import pyseccomp as s  # only on a cache miss: with typing, weakref, ctypes.util

    if (s.NE, s.EQ, s.MASKED_EQ) != (NE, EQ, MASKED_EQ):
        raise OSError(errno.EINVAL, "pyseccomp's comparison constants are not libseccomp's")
    return s


def build_filter(policy: Policy) -> Any:
    """The policy as a pyseccomp ``SyscallFilter`` (for compile_bpf, and for tests)."""
    check_widths(policy.rules)
    _s = _pyseccomp()
    f = _s.SyscallFilter(_s.ALLOW)
    f.set_attr(_s.Attr.ACT_BADARCH, _s.KILL_PROCESS)
    f.set_attr(_s.Attr.CTL_NNP, 0)  # we set no_new_privs ourselves, earlier
    for r in policy.rules:
        for case in r.alternatives:
            args = [_s.Arg(i, op, a, b) for i, op, a, b in case]
            try:
                f.add_rule(_s.ERRNO(r.errno), r.syscall, *args)
            except OSError as e:
                # a syscall this architecture does not have (vm86 on x86-64, ...): nothing to deny
                if e.errno not in (errno.EINVAL, errno.EDOM, errno.EFAULT):
                    raise
    return f


def compile_bpf(policy: Policy) -> bytes:
    """libseccomp's BPF for ``policy``: from this process's cache, the disk (the install's
    or the user's cache), or libseccomp (then kept in this process and the user's cache)."""
    data = _cache.get(policy)
    if data is None:
        key = policy_key(policy)
        data = disk.read(key)
        if data is None:
            data = _compile(policy)
            disk.write(key, data)
        _cache[policy] = data
    return data


def _compile(policy: Policy) -> bytes:
    """Export libseccomp's program to a memfd and read it back."""
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
    if not disk.is_program(data):
        raise OSError(errno.EINVAL, "libseccomp produced an invalid BPF program")
    return data


def policy_key(policy: Policy) -> bytes:
    """What the program depends on besides libseccomp, spelled out (compared whole, not hashed):
    each rule's syscall, errno and argument tests (not its explanation), and the kernel."""
    u = os.uname()
    rules = tuple((r.syscall, r.errno, r.alternatives) for r in policy.rules)  # shapes the BPF
    return (f"sandbox seccomp cache 3\nkernel {u.sysname} {u.release} {u.version} {u.machine}\n"
            f"{rules!r}\n").encode()


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]  # points into the bytes


_prctl = _libc.prctl  # resolved now, in the parent
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2


def load_bpf(bpf: bytes) -> None:
    """Install a compiled filter on the calling thread (no_new_privs must already be set)."""
    prog = _SockFprog(len(bpf) // 8, bpf)
    check(_prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "seccomp filter")


def install(directory: str = disk.INSTALL_DIR) -> None:
    """The install step: the default policy's programs (with and without the memfd rules)
    into ``directory``, stale ones (another kernel, libseccomp or policy) removed first."""
    os.makedirs(directory, mode=0o755, exist_ok=True)
    dfd = disk.open_dir(directory, (0, os.geteuid()))
    if dfd is None:
        raise OSError(errno.EPERM, f"{directory}: not a directory that only root or we can write")
    try:
        os.fchmod(dfd, 0o755)  # every user reads it, whatever the umask
        for name in os.listdir(dfd):
            if name.startswith("seccomp-") and name.endswith(".bpf"):
                os.unlink(name, dir_fd=dfd)
    finally:
        os.close(dfd)
    for policy in (policy_for("default"), policy_for("default", memory_rlimit=True)):
        if not disk.write(policy_key(policy), _compile(policy), directory):
            raise OSError(errno.EIO, f"{directory}: could not write the compiled seccomp program")


if __name__ == "__main__":  # python -m sandbox._seccomp [DIR] (DIR: for tests)
    try:
        install(*sys.argv[1:2])
    except OSError as e:
        sys.exit(f"python -m sandbox._seccomp: {e}")
