"""Raw Linux syscalls through ctypes (its C half: see ``_clib``), and two adapters.

Python's ``os`` module lacks clone3, pivot_root, mount and friends (3.11). Each wrapper raises
``OSError(errno, "<call> <arg>: <strerror>")`` so the in-child sequence can report the failing
step with its errno. Numbers are per architecture; only x86-64 and aarch64 are supported.
``prlimit`` and ``wait4`` are the ``resource``/``os`` calls in the shape the callers use (the
kernel's RLIM_INFINITY; CPU seconds and RSS bytes).
"""

from __future__ import annotations

import os
import resource

from sandbox import _clib as ctypes

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

_libc = ctypes.Library(None)
_syscall = _libc.syscall
_syscall.restype = ctypes.c_long
# clone3 goes through a PyDLL-style handle: ctypes then keeps the GIL across the call, so the
# child starts owning the GIL it inherited instead of a copy of whatever another thread held.
_syscall_gil = ctypes.Library(None, keep_gil=True, restype=ctypes.c_long).syscall
# Resolve symbols now, in the long-lived parent: each box's child would otherwise pay a dlsym
# per function on first use (CDLL caches the lookup as an attribute).
for _name in ("mount", "umount2", "unshare", "sethostname", "prctl", "capset", "memset",
              "memcpy", "strlen", "clearenv", "signalfd"):
    getattr(_libc, _name)
_libc.strlen.restype = ctypes.c_size_t

_NR = {
    "x86_64": {"clone3": 435, "pivot_root": 155, "close_range": 436, "pidfd_open": 434,
               "pidfd_send_signal": 424, "openat2": 437, "setns": 308, "mount_setattr": 442,
               "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432},
    "aarch64": {"clone3": 435, "pivot_root": 41, "close_range": 436, "pidfd_open": 434,
                "pidfd_send_signal": 424, "openat2": 437, "setns": 268, "mount_setattr": 442,
                "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432},
}[os.uname().machine]

# clone / unshare flags (linux/sched.h)
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_PIDFD = 0x00001000
CLONE_INTO_CGROUP = 0x200000000

# mount flags (linux/mount.h)
MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_NOATIME = 1024
MS_NODIRATIME = 2048
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MS_SLAVE = 1 << 19
MS_RELATIME = 1 << 21
MS_STRICTATIME = 1 << 24
MNT_DETACH = 2

# mount_setattr(2) (linux/mount.h)
MOUNT_ATTR_RDONLY = 0x1
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4
MOUNT_ATTR_NOEXEC = 0x8

CLOSE_RANGE_CLOEXEC = 1 << 2

# the new mount API (linux/mount.h)
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
MOVE_MOUNT_F_EMPTY_PATH = 0x4
OPEN_TREE_CLONE = 1
AT_EMPTY_PATH = 0x1000

RESOLVE_NO_XDEV = 0x01
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_IN_ROOT = 0x10


def check(ret: int, what: str) -> int:
    """A libc/syscall return value, or OSError(errno, "<what>: <strerror>") for a failure."""
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


class _CloneArgs(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in (
        "flags", "pidfd", "child_tid", "parent_tid", "exit_signal", "stack", "stack_size",
        "tls", "set_tid", "set_tid_size", "cgroup")]


def clone3(flags: int, *, exit_signal: int, cgroup_fd: int | None = None) -> tuple[int, int]:
    """fork()-like clone3 (no new stack: the child continues on a copy of ours).

    Returns ``(pid, pidfd)`` in the parent and ``(0, -1)`` in the child. CLONE_PIDFD gives us a
    pidfd atomically, so there is no window where the pid could be recycled before we hold it.
    Only safe from a single-threaded process (the child has one thread and no Python at-fork
    hooks run), which is why sandboxes are spawned from the launcher, never from trio.
    """
    pidfd = ctypes.c_int(-1)
    args = _CloneArgs()
    args.flags = flags | CLONE_PIDFD
    args.pidfd = ctypes.addressof(pidfd)
    args.exit_signal = exit_signal
    if cgroup_fd is not None:
        args.flags |= CLONE_INTO_CGROUP
        args.cgroup = cgroup_fd
    pid = check(_syscall_gil(_NR["clone3"], ctypes.byref(args), ctypes.sizeof(args)), "clone3")
    return (pid, pidfd.value) if pid else (0, -1)


def unshare(flags: int) -> None:
    check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def setns(fd: int, nstype: int) -> None:
    check(_libc.setns(ctypes.c_int(fd), ctypes.c_int(nstype)), "setns")


def mount(source: str | None, target: str, fstype: str | None, flags: int = 0,
          data: str | None = None) -> None:
    enc = os.fsencode
    ret = _libc.mount(enc(source) if source else None, enc(target),
                      enc(fstype) if fstype else None, ctypes.c_ulong(flags),
                      enc(data) if data else None)
    check(ret, f"mount {fstype or 'bind'} {target}")


def umount2(target: str, flags: int = 0) -> None:
    check(_libc.umount2(os.fsencode(target), ctypes.c_int(flags)), f"umount {target}")


class _MountAttr(ctypes.Structure):
    _fields_ = [(name, ctypes.c_uint64) for name in ("attr_set", "attr_clr", "propagation",
                                                     "userns_fd")]


def mount_setattr(target: str, attr_set: int, propagation: int = 0) -> None:
    """Set mount attributes (and propagation) of one mount in one call (Linux >= 5.12).
    Only what ``attr_set`` names changes: flags the kernel locked stay as they are."""
    attr = _MountAttr(attr_set, 0, propagation, 0)
    check(_syscall(_NR["mount_setattr"], ctypes.c_int(-100), os.fsencode(target),  # AT_FDCWD
                   ctypes.c_uint(0), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr))),
          f"mount_setattr {target}")


def fs_new(fstype: str, options: Sequence[tuple[str, str | None]], attrs: int) -> int:
    """A new filesystem as a *detached* mount (fsopen, fsconfig, fsmount): an O_PATH fd of its
    root, in no mount table; the filesystem lives as long as a reference to it does. Options
    go one at a time (value None: a flag), so their total is not bounded by the one page that
    is mount(2)'s data string (overlayfs's ``lowerdir+`` adds one lower layer per call)."""
    fs = check(_syscall(_NR["fsopen"], fstype.encode(), ctypes.c_uint(1)), f"fsopen {fstype}")  # CLOEXEC
    try:
        for key, value in options:
            check(_syscall(_NR["fsconfig"], ctypes.c_int(fs),
                           ctypes.c_uint(FSCONFIG_SET_FLAG if value is None else FSCONFIG_SET_STRING),
                           key.encode(), None if value is None else value.encode(), ctypes.c_int(0)),
                  f"fsconfig {key}" + ("" if value is None else f"={value}"))
        check(_syscall(_NR["fsconfig"], ctypes.c_int(fs), ctypes.c_uint(FSCONFIG_CMD_CREATE),
                       None, None, ctypes.c_int(0)), f"fsconfig create {fstype}")
        return check(_syscall(_NR["fsmount"], ctypes.c_int(fs), ctypes.c_uint(1),  # CLOEXEC
                              ctypes.c_uint(attrs)), "fsmount")
    finally:
        os.close(fs)


def move_mount_to(fd: int, target: str) -> None:
    """Attach the detached mount ``fd`` (``fs_new``) at ``target``."""
    check(_syscall(_NR["move_mount"], ctypes.c_int(fd), b"", ctypes.c_int(-100),  # AT_FDCWD
                   os.fsencode(target), ctypes.c_uint(MOVE_MOUNT_F_EMPTY_PATH)), f"move_mount {target}")


def open_tree_clone(fd: int) -> int:
    """open_tree(fd, "", OPEN_TREE_CLONE): a detached copy of the mount ``fd`` refers to."""
    return check(_syscall(_NR["open_tree"], ctypes.c_int(fd), b"",
                          ctypes.c_uint(OPEN_TREE_CLONE | AT_EMPTY_PATH | os.O_CLOEXEC)),
                 "open_tree")


class _Rlimit(ctypes.Structure):  # for PreparedExec: setrlimit without a Python allocation
    _fields_ = [("cur", ctypes.c_ulong), ("max", ctypes.c_ulong)]


RLIM_INFINITY = (1 << 64) - 1  # as the kernel spells it (Python's resource module says -1)


def _to_py(v: int) -> int:
    return resource.RLIM_INFINITY if v >= 1 << 63 else v


def _to_kernel(v: int) -> int:
    return v & RLIM_INFINITY  # -1 -> RLIM_INFINITY


def prlimit(res: int, new: tuple[int, int] | None = None) -> tuple[int, int]:
    """``resource.prlimit`` on ourselves, in the kernel's spelling of "unlimited"
    (``RLIM_INFINITY``): set (soft, hard) when ``new`` is given; returns the limits before."""
    old = (resource.prlimit(0, res) if new is None
           else resource.prlimit(0, res, (_to_py(new[0]), _to_py(new[1]))))
    return _to_kernel(old[0]), _to_kernel(old[1])


def wait4(pid: int) -> tuple[int, float, int]:
    """Block until ``pid`` exits (``os.wait4``): (wait status, user+system CPU seconds, max
    RSS in bytes)."""
    _, status, ru = os.wait4(pid, 0)
    return status, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024


def reap_ended() -> Iterator[tuple[int, int, float, int]]:
    """Every child that has ended, without blocking: (pid, wait status, user+system CPU
    seconds, max RSS in bytes) each, as ``wait4`` gives them."""
    while True:
        try:
            pid, status, ru = os.wait4(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status, ru.ru_utime + ru.ru_stime, ru.ru_maxrss * 1024


class acting_as:
    """``with acting_as(uid, gid):`` file system ids of *this thread* set to another id (setfsuid(2):
    per thread, and no other credential changes). Root writes into a box's tmpfs with it: the tmpfs
    belongs to the box's user namespace, where host root is unmapped (EOVERFLOW), and the files must
    be the box user's anyway."""

    def __init__(self, uid: int, gid: int) -> None:
        self.ids = (uid, gid)

    def __enter__(self) -> None:
        self.old = (_libc.setfsuid(-1), _libc.setfsgid(-1))  # -1: change nothing, return current
        _libc.setfsgid(self.ids[1])
        _libc.setfsuid(self.ids[0])

    def __exit__(self, *exc: object) -> None:
        _libc.setfsuid(self.old[0])
        _libc.setfsgid(self.old[1])


def pivot_root(new_root: str, put_old: str) -> None:
    check(_syscall(_NR["pivot_root"], os.fsencode(new_root), os.fsencode(put_old)), "pivot_root")


def sethostname(name: str) -> None:
    b = name.encode()
    check(_libc.sethostname(b, ctypes.c_size_t(len(b))), "sethostname")


def close_range(first: int, last: int, flags: int = 0) -> None:
    check(_syscall(_NR["close_range"], ctypes.c_uint(first), ctypes.c_uint(last),
                   ctypes.c_uint(flags)), "close_range")


def signalfd(signals: Sequence[int]) -> int:
    """A non-blocking, close-on-exec signalfd(2) that reads ``signals`` (the caller blocks them)."""
    mask = ctypes.c_uint64(sum(1 << (sig - 1) for sig in signals))  # glibc passes 8 bytes of a set
    return check(_libc.signalfd(-1, ctypes.byref(mask), os.O_NONBLOCK | os.O_CLOEXEC), "signalfd")


def pidfd_open(pid: int) -> int:
    return check(_syscall(_NR["pidfd_open"], ctypes.c_int(pid), ctypes.c_uint(0)), "pidfd_open")


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    check(_syscall(_NR["pidfd_send_signal"], ctypes.c_int(pidfd), ctypes.c_int(sig), None,
                   ctypes.c_uint(0)), "pidfd_send_signal")


class _OpenHow(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)]


def openat2(dirfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> int:
    """openat2(2): lets the host open files *beneath* a box directory without ever following a
    symlink the box planted out of it (judge0 CVE-2024-28185 class of bugs)."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    return check(_syscall(_NR["openat2"], ctypes.c_int(dirfd), os.fsencode(path),
                          ctypes.byref(how), ctypes.c_size_t(ctypes.sizeof(how))),
                 f"openat2 {path}")


def zero_memory(addr: int, size: int) -> None:
    """memset(addr, 0, size) in our own address space (the caller must own those bytes)."""
    if size > 0:
        _libc.memset(ctypes.c_void_p(addr), 0, ctypes.c_size_t(size))


def copy_to_memory(addr: int, data: bytes) -> None:
    """memcpy(addr, data, len(data)) in our own address space."""
    _libc.memcpy(ctypes.c_void_p(addr), data, ctypes.c_size_t(len(data)))


def wipe_c_environment() -> None:
    """Zero every string the C ``environ`` array points to, wherever it lives (the kernel's
    block, or the heap copies setenv() made), then clearenv(). The strings are measured and
    zeroed by address: reading one into Python would leave a copy of it behind."""
    array = ctypes.c_void_p.in_dll(_libc, "environ").value
    while array:
        entry = ctypes.c_void_p.from_address(array).value
        if not entry:
            break
        zero_memory(entry, _libc.strlen(ctypes.c_void_p(entry)))
        array += ctypes.sizeof(ctypes.c_void_p)
    _libc.clearenv()


class PreparedExec:
    """setrlimit + execvpe with every argument converted to C *beforehand*.

    For a process already above the address-space limit it is about to set (the box's init is
    a copy of a large caller): after setrlimit(RLIMIT_AS) any new mapping fails, so the calls
    that follow must not make Python allocate — no string encoding, no PATH joining in Python.
    glibc's execvpe builds candidate paths on the stack."""

    def __init__(self, argv: list[str], env: dict[str, str], limits: list[tuple[int, int, int]]) -> None:
        def c_array(items: list[bytes]) -> ctypes.Array:
            return (ctypes.c_char_p * (len(items) + 1))(*items, None)

        self._argv = c_array([os.fsencode(a) for a in argv])
        self._env = c_array([os.fsencode(f"{k}={v}") for k, v in env.items()])
        self._limits = [(ctypes.c_int(res), _Rlimit(soft & RLIM_INFINITY, hard & RLIM_INFINITY))
                        for res, soft, hard in limits]
        self._setrlimit, self._execvpe = _libc.setrlimit, _libc.execvpe

    def __call__(self) -> int:
        """Set the limits and exec; returns the errno only if that failed."""
        for res, lim in self._limits:
            if self._setrlimit(res, ctypes.byref(lim)) != 0:
                return ctypes.get_errno()
        self._execvpe(self._argv[0], self._argv, self._env)
        return ctypes.get_errno()


def read_file(path: str) -> str:
    """A small kernel interface file (/proc, cgroup files), whole: os.open and read(2) until
    EOF, without the buffered text-file layer (these reads happen on every box start)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        data = b""
        while chunk := os.read(fd, 65536):
            data += chunk
        return data.decode()
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """All of ``data`` to a blocking ``fd`` (write(2) may take less than it is given)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_file(path: str, data: str) -> None:
    """One write(2) to a kernel interface file (/proc/*/uid_map, cgroup files): these must
    receive the whole value in a single write, which buffered text I/O does not promise."""
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, data.encode())
    finally:
        os.close(fd)
