"""The compiled seccomp programs on disk: built at install, or cached per user.

Why a cache at all: a one-box CLI would otherwise import pyseccomp (with typing, weakref and
ctypes.util, whose ``find_library`` runs ``ldconfig -p`` twice) and run libseccomp on every
start (docs/performance.md has the numbers). Two places, read in this order:

1. ``INSTALL_DIR`` = ``{sys.prefix}/share/sandbox``: written by ``python -m sandbox._seccomp``
   at install (ci/install-venv.sh) for the default policy, with and without the memfd rules.
   Trusted like the interpreter it sits beside: only files and a directory owned by root or
   by us. The runtime never writes there.
2. The user's cache, ``${XDG_CACHE_HOME:-$HOME/.cache}/sandbox``: any other policy, or an
   install without step 1. Written by the runtime (directory 0700, files 0600); only a
   directory and files owned by us count. No usable HOME (unset, relative, unwritable): the
   program is compiled in memory, once per process.

Whatever the place, a file counts only if it is a regular file (never followed if a
symlink), has one link (not a hard link planted from elsewhere), is writable by its owner
alone, is bounded in size, and its header repeats, byte for byte, the key it was made for —
the policy (every rule's syscall, errno and argument tests) and the running kernel —, names
the libseccomp we would load now (``_same_libseccomp``) and the program's exact length. Files
are written whole (a temporary name, fsync, rename), so a crash leaves no torn program. Both
directories are opened once, without following a symlink, and the file is opened relative to
that descriptor: a rename of a directory in between cannot swap the file.
"""

from __future__ import annotations

import os
import stat
import sys

from sandbox import _clib as ctypes  # the ctypes names, without ctypes/__init__ (see _clib)
from sandbox import _syscalls as sc

INSTALL_DIR = os.path.join(sys.prefix, "share", "sandbox")
BPF_MAX = 4096 * 8  # BPF_MAXINSNS instructions of 8 bytes
_LINE_MAX = 4096 + 200  # the libseccomp line: two paths' worth and the identities


def user_cache_dir() -> str | None:
    """``$XDG_CACHE_HOME/sandbox``, else ``$HOME/.cache/sandbox``; None without an absolute
    one (the XDG spec: a relative path is invalid and ignored)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    if not os.path.isabs(base):
        home = os.environ.get("HOME", "")
        if not os.path.isabs(home):
            return None
        base = os.path.join(home, ".cache")
    return os.path.join(base, "sandbox")


def is_program(data: bytes) -> bool:
    """Whole 8-byte instructions, at least one, at most the kernel's BPF_MAXINSNS."""
    return bool(data) and len(data) % 8 == 0 and len(data) <= BPF_MAX


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


def libseccomp_line() -> bytes:
    """``libseccomp VERSION PATH IDENTITY ld.so.cache IDENTITY``: the version the program
    depends on, and where it came from. The file identities let a later run skip loading
    libseccomp to ask its version: see ``_same_libseccomp``."""
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


def file_name(policy_key: bytes) -> str:
    # A file name, not an integrity check (the whole key is compared on read): the key as one
    # number, modulo the largest 32-bit prime. Importing zlib for crc32 cost ~0.1 ms.
    tag = int.from_bytes(policy_key, "big") % 4294967291
    return f"seccomp-{tag:08x}-{len(policy_key)}.bpf"


def _owners() -> tuple[tuple[str | None, tuple[int, ...]], ...]:
    """Where to look, in order, and whose files count there."""
    me = os.geteuid()
    return ((INSTALL_DIR, (0, me)), (user_cache_dir(), (me,)))


def _trusted(st: os.stat_result, owners: tuple[int, ...]) -> bool:
    return st.st_uid in owners and not st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)


def open_dir(path: str, owners: tuple[int, ...]) -> int | None:
    """An fd of ``path`` if it is a directory (not a symlink) that only one of ``owners``
    can write; else None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if _trusted(os.fstat(fd), owners):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def read(policy_key: bytes) -> bytes | None:
    """The cached program for this key: the install's, else the user's; None if neither."""
    name = file_name(policy_key)
    for path, owners in _owners():
        dfd = None if path is None else open_dir(path, owners)
        if dfd is not None:
            try:
                data = _read_at(dfd, name, owners, policy_key)
            finally:
                os.close(dfd)
            if data is not None:
                return data
    return None


def _read_at(dfd: int, name: str, owners: tuple[int, ...], policy_key: bytes) -> bytes | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    except OSError:
        return None
    limit = len(policy_key) + _LINE_MAX + 32 + BPF_MAX
    try:
        st = os.fstat(fd)
        if (not stat.S_ISREG(st.st_mode) or not _trusted(st, owners) or st.st_nlink != 1
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
    size_end = raw.find(b"\n", line_end) + 1
    size = raw[line_end:size_end]
    data = raw[size_end:]
    if not size_end or size != f"bpf {len(data)}\n".encode():
        return None
    return data if is_program(data) else None


def write(policy_key: bytes, data: bytes, directory: str | None = None) -> bool:
    """Store a program: in ``directory`` (the install step: files 0644), else in the user's
    cache (created 0700, files 0600). Call it with libseccomp loaded (after compiling): its
    line names the file that was mapped. False if it could not be written (best effort: the
    caller has the program in memory)."""
    me = os.geteuid()
    if directory is None:
        directory, owners, mode = user_cache_dir(), (me,), 0o600
        if directory is None:
            return False
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
        except OSError:
            return False
    else:
        owners, mode = (0, me), 0o644
    dfd = open_dir(directory, owners)
    if dfd is None:
        return False
    try:
        content = policy_key + libseccomp_line() + f"bpf {len(data)}\n".encode() + data
        return _write_at(dfd, file_name(policy_key), content, mode)
    finally:
        os.close(dfd)


def _write_at(dfd: int, name: str, content: bytes, mode: int) -> bool:
    tmp = f".{name}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode, dir_fd=dfd)
    except OSError:
        return False
    try:
        try:
            os.fchmod(fd, mode)  # whatever the umask
            sc.write_all(fd, content)
            os.fsync(fd)  # the data before the rename: a crash leaves the old file or the new
        finally:
            os.close(fd)
        os.replace(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd)
        return True
    except OSError:
        try:
            os.unlink(tmp, dir_fd=dfd)
        except OSError:
            pass
        return False
