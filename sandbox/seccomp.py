"""seccomp policies, declared in Python, compiled by libseccomp (pyseccomp), loaded in the box.

A policy is data (``Policy`` of ``Rule``s with the reason for each). ``compile_bpf`` turns it
into a BPF program with libseccomp — never hand-assembled — once per policy in the parent
(launcher, CLI) and caches the bytes; ``load_bpf`` in the box is then one prctl, so the filter
adds microseconds, not milliseconds, to a box start. The filter is the last step before exec
(after no_new_privs, which is what lets an unprivileged process install it at all).

The compiled bytes are also kept on disk, next to this module's byte code
(``__pycache__/seccomp-*.bpf``), so a one-box CLI neither imports pyseccomp nor runs libseccomp
(~1.7 ms of ``sandbox run``'s start). Trust: exactly that of the ``.pyc`` files beside it —
whoever can write that directory can already change the code that loads the filter, and no box
can (the Python prefix is a copy-on-write overlay in a box; see docs/threat-model.md). A cache
file is used only if its header repeats, byte for byte, the key it was made for — this policy
(every rule's syscall, errno and argument tests) and the running kernel — and names the
libseccomp we would load now (``_same_libseccomp``). Written like byte code: not when ``sys.dont_write_bytecode`` is set;
``python -m sandbox.seccomp`` writes the default policy's, with and without the memfd rules
(ci/setup.sh runs it next to compileall).

The default policy (``sandbox.seccomp_rules``) allows everything except: kernel attack surface
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
import stat
import sys

from sandbox import _clib as ctypes  # the ctypes names, without ctypes/__init__ (see _clib)
from sandbox._record import field, record
from sandbox._syscalls import _libc, check  # the one libc handle (symbols resolved in the parent)
from sandbox.seccomp_rules import DEFAULT_RULES, EQ, MASKED_EQ, MEMFD_RULES, NE, Rule, check_widths

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
    from sandbox._imports import import_pyseccomp  # without typing and ctypes.util

    s = import_pyseccomp()
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
    """libseccomp's BPF for ``policy``: from this process's cache, the disk cache, or
    libseccomp (then cached in both)."""
    data = _cache.get(policy)
    if data is None:
        key = _policy_key(policy)
        data = _read_cached(key)
        if data is None:
            data = _compile(policy)
            if not sys.dont_write_bytecode:
                write_cached(key, data)
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
    if not _is_program(data):
        raise OSError(errno.EINVAL, "libseccomp produced an invalid BPF program")
    return data


BPF_MAX = 4096 * 8  # BPF_MAXINSNS instructions of 8 bytes


def _is_program(data: bytes) -> bool:
    """Whole 8-byte instructions, at least one, at most the kernel's BPF_MAXINSNS."""
    return bool(data) and len(data) % 8 == 0 and len(data) <= BPF_MAX


CACHE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__")


def _libseccomp_version() -> str:
    class _Version(ctypes.Structure):
        _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]

    try:
        fn = ctypes.Library("libseccomp.so.2", use_errno=False).seccomp_version
    except (OSError, AttributeError):
        return "unknown"
    fn.restype = ctypes.POINTER(_Version)
    v = fn().contents
    return f"{v.major}.{v.minor}.{v.micro}"


def _identity(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "-"
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}"


def _loaded_libseccomp() -> str:
    """The file this process mapped for libseccomp (after _libseccomp_version or a compile)."""
    with open("/proc/self/maps") as f:
        for line in f:
            path = line.split(maxsplit=5)[5:]
            if path and "/libseccomp.so" in path[0]:
                return path[0].strip()
    return "-"


_LD_CACHE = "/etc/ld.so.cache"
_LD_ENV = ("LD_LIBRARY_PATH", "LD_PRELOAD")  # could make the loader pick another library


def _libseccomp_line() -> bytes:
    """``libseccomp VERSION PATH IDENTITY ld.so.cache IDENTITY``: the version the program
    depends on, and where it came from. The file identities let a later run skip loading
    libseccomp to ask its version (~0.3 ms of a cold start): see ``_same_libseccomp``."""
    version = _libseccomp_version()
    lib = _loaded_libseccomp()
    return (f"libseccomp {version} {lib} {_identity(lib)} ld.so.cache "
            f"{_identity(_LD_CACHE)}\n").encode()


def _same_libseccomp(line: bytes) -> bool:
    """Is the libseccomp that wrote this cache line the one we would load now? Yes without
    loading it when neither the library file nor the loader's cache (rewritten by every
    ldconfig, so by every library install) changed and no LD_* variable redirects the loader;
    otherwise only if the library we load reports the same version."""
    parts = line.decode("ascii", "replace").split()
    if len(parts) != 6 or parts[0] != "libseccomp" or parts[4] != "ld.so.cache":
        return False
    _, version, lib, lib_id, _, ld_id = parts
    if (not any(v in os.environ for v in _LD_ENV) and lib != "-" and lib_id == _identity(lib)
            and ld_id == _identity(_LD_CACHE)):
        return True
    return version == _libseccomp_version()


def _policy_key(policy: Policy) -> bytes:
    """What the program depends on besides libseccomp, spelled out (compared whole, not hashed):
    each rule's syscall, errno and argument tests (not its explanation), and the kernel."""
    u = os.uname()
    rules = tuple((r.syscall, r.errno, r.alternatives) for r in policy.rules)  # shapes the BPF
    return (f"sandbox seccomp cache 2\nkernel {u.sysname} {u.release} {u.version} {u.machine}\n"
            f"{rules!r}\n").encode()


def _cache_path(policy_key: bytes) -> str:
    # A file name, not an integrity check (the whole key is compared on read): the key as one
    # number, modulo the largest 32-bit prime. Importing zlib for crc32 cost ~0.1 ms.
    tag = int.from_bytes(policy_key, "big") % 4294967291
    return os.path.join(CACHE_DIR, f"seccomp-{tag:08x}-{len(policy_key)}.bpf")


_LINE_MAX = 4096 + 200  # the libseccomp line: two paths' worth and the identities


def _read_cached(policy_key: bytes) -> bytes | None:
    try:
        fd = os.open(_cache_path(policy_key), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    limit = len(policy_key) + _LINE_MAX + BPF_MAX
    try:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or st.st_uid not in (0, os.geteuid())
                or st.st_size > limit):
            return None
        raw = os.read(fd, limit + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    if raw[:len(policy_key)] != policy_key:
        return None
    line_end = raw.find(b"\n", len(policy_key)) + 1
    if not line_end or not _same_libseccomp(raw[len(policy_key):line_end]):
        return None
    data = raw[line_end:]
    return data if _is_program(data) else None


def write_cached(policy_key: bytes, data: bytes) -> None:
    """Best effort (a read-only install just compiles every time); atomic (rename). Call it
    with libseccomp loaded (after compiling): its line names the file that was mapped."""
    key = policy_key + _libseccomp_line()
    path = _cache_path(policy_key)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o644)
    except OSError:
        return
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(key + data)
        os.replace(tmp, path)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_char_p)]  # points into the bytes


_prctl = _libc.prctl  # resolved now, in the parent
_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER = 22, 2


def load_bpf(bpf: bytes) -> None:
    """Install a compiled filter on the calling thread (no_new_privs must already be set)."""
    prog = _SockFprog(len(bpf) // 8, bpf)
    check(_prctl(_PR_SET_SECCOMP, _SECCOMP_MODE_FILTER, ctypes.byref(prog), 0, 0), "seccomp filter")


if __name__ == "__main__":  # python -m sandbox.seccomp [DIR]: (re)write the default policy's
    CACHE_DIR = sys.argv[1] if len(sys.argv) > 1 else CACHE_DIR  # cache files (DIR: for tests)
    os.makedirs(CACHE_DIR, exist_ok=True)
    for _name in os.listdir(CACHE_DIR):  # stale keys (older kernel, libseccomp, policy)
        if _name.startswith("seccomp-") and _name.endswith(".bpf"):
            os.unlink(os.path.join(CACHE_DIR, _name))
    for _policy in (policy_for("default"), policy_for("default", memory_rlimit=True)):
        write_cached(_policy_key(_policy), _compile(_policy))
