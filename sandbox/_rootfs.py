"""The box's root filesystem: tmpfs root, overlays, binds, curated /etc, /dev, /proc, pivot_root.

Shape (the same trick bubblewrap uses, so host paths under /tmp stay reachable as sources):

1. Nothing we mount can propagate to the host: the mount namespace belongs to our user
   namespace, so the kernel copied every shared mount as a slave (see ``build_rootfs``).
2. One tmpfs of ``tmpfs_size`` (plus room for the /etc skeleton) is mounted on /tmp and we
   ``pivot_root`` into it; the host root is now ``/oldroot`` and every host source is read as
   ``/oldroot/<path>``. This tmpfs is the only one the box's layout needs: it holds the box's
   ``/`` skeleton (``/newroot``, a directory bind-mounted onto itself so it can be pivoted
   into) and ``/scratch`` — every overlay upper, the box's /tmp and /dev/shm — so one size cap
   bounds everything the box can write (one superblock to set up and shut down). Overlay over
   /oldroot/usr etc. can't be done on ``/`` itself: the host root has locked submounts, so we
   overlay each exposed directory separately.
3. /dev (a bind of its own directory, so it can be remounted read-only and noexec, with
   bind-mounted host nodes, a private devpts, the shm bind and, with ``-t``, the box's pty as
   /dev/console), /proc (fresh, pid namespace
   scoped, sensitive files masked).
4. ``pivot_root(".", ".")`` into newroot, a lazy unmount of the stacked old root (the host tree
   is gone); 5. ``/`` and ``/dev`` remounted read-only: only /tmp, /dev/shm, overlays take writes.

No inode of a host directory is in the box: inotify (and unprivileged fanotify) on one reports
every host process's opens and reads in it (a bind of /etc/ssl did). /usr and the Python prefix
are overlays; the /etc directories (``ETC_VIEW``) are binds out of one read-only overlay of the
host's /etc mounted outside the box's tree, and a read-only directory is an overlay too
(``_ro_view``). /dev's nodes are host inodes (a user namespace can have no others): the default
seccomp policy refuses inotify and fanotify for that (``seccomp_rules``).

The plan is computed in the parent (``plan_rootfs``: stats, the few /etc files): init only makes syscalls.
"""

from __future__ import annotations

import errno
import os
import stat

from sandbox import _etc, _image_root, _ipclimits
from sandbox import _syscalls as sc
from sandbox._config import SandboxConfig
from sandbox._pyprefix import DEFAULT_EXPOSED, exposed
from sandbox._record import field, record

DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
PROC_MASK_FILES = ("kcore", "keys", "key-users", "timer_list", "sched_debug", "sysrq-trigger",
                   "latency_stats", "kallsyms", "kmsg", "config.gz", "vmallocinfo", "pagetypeinfo")
PROC_MASK_DIRS = ("acpi", "scsi", "asound", "driver", "tty/driver")
PROC_READONLY = ("sys", "irq", "bus", "fs", "sysvipc")
STAT_TO_MS = ((1, sc.MS_RDONLY), (2, sc.MS_NOSUID), (4, sc.MS_NODEV), (8, sc.MS_NOEXEC),
              (1024, sc.MS_NOATIME), (2048, sc.MS_NODIRATIME), (4096, sc.MS_RELATIME))

# A tmpfs inode costs ~1 KiB of kernel slab that size= does not count and only a memory cgroup
# bounds (a million empty files: ~1 GiB), so a tmpfs gets one per TMPFS_INODE_BYTES of its size,
# at least TMPFS_MIN_INODES: the default 256M holds 32768 files; more need a larger size.
TMPFS_INODE_BYTES, TMPFS_MIN_INODES = 8 * 1024, 4096

Op = tuple  # ("overlay"|"ro-bind"|"bind", src, dst, is_dir[, upper_to, (uid, gid)]) | ("symlink", dst, text)
#            | ("tmpfs", dst, size) | ("bind-fd", fd, dst, readonly) | ("etc-view", dst)


@record
class RootfsPlan:
    """The box's root, computed in the parent so init only makes syscalls."""

    ops: list[Op] = field(default_factory=list)
    etc_files: dict[str, bytes | tuple[str, str]] = field(default_factory=dict)
    tmpfs_size: int = 0
    sysctls: list[tuple[str, str]] = field(default_factory=list)  # the box's IPC ns limits
    cgroup: bool = False  # mount our cgroup namespace's cgroup2 read-only at /sys/fs/cgroup
    # A held box (sandbox.Box): its / stays writable (on the same capped tmpfs), and init keeps
    # a handle on the tmpfs itself (``build_rootfs`` returns it) for the host to list changes.
    held: bool = False
    image: tuple = ()  # an image's layers, ((path, st_dev, st_ino), ...) top first: the box's /


def _expose(ops: list[Op], path: str, kind: str = "overlay") -> None:
    if os.path.islink(path):
        ops.append(("symlink", path, os.readlink(path)))
    elif os.path.isdir(path):
        ops.append((kind, path, path, True))


def plan_rootfs(cfg: SandboxConfig) -> RootfsPlan:
    ops: list[Op] = []  # (an image is the box's root: no host /usr, Python or /etc views)
    for d in DEFAULT_EXPOSED if not cfg.image else ():
        _expose(ops, d)
    for host, at in exposed(cfg.expose_python) if not cfg.image else ():
        if os.path.isdir(host):
            ops.append(("overlay", host, at, True))
    etc_dev = os.stat("/etc").st_dev
    for name in _etc.ETC_VIEW if not cfg.image else ():
        p = "/etc/" + name
        if os.path.isdir(p):  # one that is a host mount of its own is not in /etc's overlay
            ops.append(("etc-view", p) if os.stat(p).st_dev == etc_dev else ("ro-bind", p, p, True))
    for m in sorted(cfg.mounts, key=lambda m: m.target.count("/")):  # parents first
        if m.kind == "tmpfs":
            ops.append(("tmpfs", m.target, m.size or cfg.limits.tmpfs_size))
        elif m.fd is not None:
            ops.append(("bind-fd", m.fd, m.target, m.kind == "ro-bind"))
        else:
            assert m.source is not None
            ops.append((m.kind, m.source, m.target, os.path.isdir(m.source))
                       + ((m.upper_to, (cfg.uid, cfg.gid)) if m.upper_to is not None else ()))
    return RootfsPlan(ops, _image_root.etc_files(cfg, _etc.plan_files(cfg)), cfg.limits.tmpfs_size, _ipclimits.plan(cfg.limits.memory), image=_image_root.plan_layers(cfg))


def tmpfs_inodes(size: int) -> int:
    return max(TMPFS_MIN_INODES, size // TMPFS_INODE_BYTES)


# ------------------------------------------------------------------ child side (no imports) --

def _make_target(path: str, is_dir: bool, hide: bool = False) -> str | None:
    """Create a mount point inside /newroot, refusing to walk through a symlink (the only
    symlinks there are ours, e.g. /bin -> usr/bin, and following one would mount elsewhere).

    ``hide``: the target is a host path (a mount at its source's path: the project of a
    pytest box, the Python prefix of a clone of the caller), so the directories made on the
    way are mode 0111: the box walks through them but cannot list the names in them (``ls
    /home`` showed the user's name). Their owner is the box user (the single-id map: it owns
    all of its tmpfs), who could ``chmod 755`` them back where they sit on a writable mount
    (a held box's /, the box's /tmp): returns the first directory it made so, which
    ``_seal`` turns into a read-only mount (chmod is then EROFS)."""
    cur, top = "/newroot", None
    parts = [p for p in path.split("/") if p]
    for i, part in enumerate(parts):
        cur += "/" + part
        last = i == len(parts) - 1
        if not os.access(cur, os.F_OK, follow_symlinks=False):  # (a bool: no exception to pay)
            if last and not is_dir:
                os.close(os.open(cur, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))
            else:
                os.mkdir(cur, 0o111 if hide and not last else 0o755)
                if hide and not last and top is None:
                    top = cur
            continue
        if stat.S_ISLNK(os.lstat(cur).st_mode):
            raise OSError(22, f"mount point {path} crosses the symlink {cur[8:]} -> "
                              f"{os.readlink(cur)} in the box; use the real path")
    return top


def _seal(tops: list[str]) -> None:
    """Make each hidden directory tree (``_make_target``) a read-only mount of its own, after
    everything was mounted in it: a recursive bind onto itself (the mounts inside come along,
    writable ones still writable), then read-only on that one mount only. The kernel checks
    the mount a path is reached through before the owner (EROFS), and a mount point cannot be
    renamed or removed (EBUSY), so the box can neither chmod the 0111 directories nor swap
    them for ones it may list."""
    done: list[str] = []
    for top in tops:
        if any(top.startswith(d + "/") for d in done):  # sealed with its parent tree
            continue
        sc.mount(top, top, None, sc.MS_BIND | sc.MS_REC)
        sc.mount(None, top, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | sc.MS_NOSUID
                 | sc.MS_NODEV | _locked_flags(top))
        done.append(top)


def _locked_flags(path: str) -> int:
    """Flags a remount must keep: the kernel refuses (EPERM) to clear nosuid/nodev/noexec/atime
    flags that the host mount has, once we are in a user namespace (MNT_LOCK_*)."""
    f = os.statvfs(path).f_flag
    return sum(ms for st, ms in STAT_TO_MS if f & st and ms != sc.MS_RDONLY)


_have_mount_setattr = True  # until the kernel says ENOSYS (< 5.12)


def _bind(src: str, dst: str, readonly: bool) -> None:
    """Bind ``src`` on ``dst``: private (a bind of a slave would stay the host's slave, so host
    mounts made later under it would appear in the box), nosuid, nodev, maybe read-only.
    One mount_setattr does all of that after the bind; kernels without it get the classic
    MS_PRIVATE + MS_REMOUNT pair, which must repeat the flags the kernel locked."""
    global _have_mount_setattr
    sc.mount(src, dst, None, sc.MS_BIND)
    if _have_mount_setattr:
        try:
            sc.mount_setattr(dst, sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV
                             | (sc.MOUNT_ATTR_RDONLY if readonly else 0), sc.MS_PRIVATE)
            return
        except OSError as e:
            if e.errno != 38:  # ENOSYS
                raise
            _have_mount_setattr = False
    sc.mount(None, dst, None, sc.MS_PRIVATE)
    flags = sc.MS_REMOUNT | sc.MS_BIND | sc.MS_NOSUID | sc.MS_NODEV | _locked_flags(src)
    sc.mount(None, dst, None, flags | (sc.MS_RDONLY if readonly else 0))


def held_fds(plan: RootfsPlan) -> list[int]:
    """The caller's fds that init needs for this plan (kept through init's first fd sweep;
    ``build_rootfs`` closes each once used, so the payload never holds one)."""
    return ([op[1] for op in plan.ops if op[0] == "bind-fd"]
            + [op[4] for op in plan.ops if op[0] == "overlay" and len(op) > 4 and op[4] is not None])


def _overlay(n: int, src: str, dst: str, upper_to: int | None = None,
             owner: tuple[int, int] | None = None) -> None:
    up, wk = f"/scratch/up/{n}", f"/scratch/wk/{n}"
    os.mkdir(up)
    os.mkdir(wk)
    if owner is not None:
        # The upper's root gives the overlay's root its owner: the box user's, so it may write
        # there as it may in a box-owned directory (init is inside root with a range map).
        # With the single-id map the box user is init's own id seen from a nested namespace,
        # and its inside id is unmapped here (EINVAL): init made the directory as that id.
        try:
            os.chown(up, *owner)
        except OSError as e:
            if e.errno != errno.EINVAL:
                raise
    # The lower layer by fd, not by name: mountinfo (and /proc/mounts) show the option string
    # as given, and "lowerdir=/oldroot/home/USER/.venv" named the host path to every box.
    # (A name with ',' ':' or '\\' would also have split the option string.)
    lower = os.open(src, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sc.mount("overlay", dst, "overlay", sc.MS_NOSUID | sc.MS_NODEV,
                 f"lowerdir=/oldroot/proc/self/fd/{lower},upperdir={up},workdir={wk},userxattr")
    except OSError as e:
        # Kernels before 6.6 have no user xattrs on tmpfs, so an overlay with a tmpfs upper
        # can be refused; fall back to a read-only view (writes then fail instead of vanishing).
        if e.errno not in (22, 95):
            raise
        _ro_view(src, dst, lower)
    finally:
        os.close(lower)
    if upper_to is not None:
        # The host lists what the box changed through this fd (sandbox._safefs); it keeps the
        # box's tmpfs alive after the box is gone, and closing it frees everything.
        from sandbox import _fdpass  # the caller's (it made the socket pair): no I/O

        _fdpass.send_dir_fd(upper_to, up)


def _ro_view(src: str, dst: str, lower: int = -1) -> None:
    """A read-only directory (``--ro-bind``, a host mount under /etc) as an overlay with no
    upper, its lower layer given by fd: a bind's root shows in mountinfo (field 4: the path
    within its filesystem, ``/home/USER/data``) and a bind shares the host's inodes, which
    inotify watches; neither holds for an overlay. The kernel wants two lower layers when
    there is no upper: the second is an empty directory of the box's. Same files, read-only
    (EROFS); st_dev differs. Like every overlay view (/usr, ``--overlay``) a name the host
    creates after the box looked it up and missed may stay missing until the box ends.
    Without ``userxattr``: ``user.overlay.*`` xattrs in the user's own files stay data (the
    ``trusted.`` ones are unreadable in a user namespace). A lower the kernel refuses (too
    deeply stacked, a filesystem overlay cannot use) is bound instead."""
    if not os.access("/scratch/empty", os.F_OK):
        os.mkdir("/scratch/empty")
    own = lower < 0
    if own:
        lower = os.open(src, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        sc.mount("overlay", dst, "overlay", sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV,
                 f"lowerdir=/oldroot/proc/self/fd/{lower}:/scratch/empty")
    except OSError as e:
        if e.errno not in (22, 95):
            raise
        _bind(src, dst, readonly=True)
    finally:
        if own:
            os.close(lower)


def _skeleton_inodes(plan: RootfsPlan) -> int:
    """Inodes the box's own skeleton takes (dirs, /etc files, mount points, overlay work dirs,
    /dev): added to the box's share, like ``_skeleton_bytes``."""
    return 64 + len(plan.etc_files) + 4 * len(plan.ops)


def _skeleton_bytes(plan: RootfsPlan) -> int:
    """What the box's own files take of the tmpfs (whole pages), plus slack for directories'
    and symlinks' pages: added to ``tmpfs_size`` so the box still gets all of it."""
    pages = sum(-(-len(c) // 4096) for c in plan.etc_files.values() if isinstance(c, bytes))
    return (pages + 16) * 4096


def _setup_dev(image: bool = False) -> None:
    sc.mount(_image_root.dev_source(image), "/newroot/dev", None, sc.MS_BIND)  # read-only below
    for n in DEV_NODES:
        p = "/newroot/dev/" + n
        os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        sc.mount("/oldroot/dev/" + n, p, None, sc.MS_BIND)
    if os.isatty(0):  # the pty `-t` made for the box (sandbox/_pty.py): ttyname finds it here
        os.close(os.open("/newroot/dev/console", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        sc.mount("/oldroot" + os.readlink("/oldroot/proc/self/fd/0"), "/newroot/dev/console",
                 None, sc.MS_BIND)
    os.mkdir("/newroot/dev/pts")
    sc.mount("devpts", "/newroot/dev/pts", "devpts", sc.MS_NOSUID | sc.MS_NOEXEC,
             "newinstance,ptmxmode=0666,mode=620")
    os.symlink("pts/ptmx", "/newroot/dev/ptmx")
    os.mkdir("/newroot/dev/shm")
    sc.mount("/scratch/shm", "/newroot/dev/shm", None, sc.MS_BIND)
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, "/newroot/dev/" + name)
    sc.mount(None, "/newroot/dev", None,
             sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NOEXEC)


def _setup_proc(sysctls: list[tuple[str, str]]) -> None:
    """Fresh procfs for our pid namespace, with the kernel-wide leaks covered (docker/runc's
    masked paths): /proc/kcore, keys, timer_list, ... become /dev/null, hardware dirs an
    empty read-only tmpfs, and /proc/sys & co read-only — after the IPC limits are set."""
    _image_root.ensure_dir("/newroot/proc")
    sc.mount("proc", "/newroot/proc", "proc", sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    _ipclimits.write("/newroot/proc/sys/", sysctls)
    exists = os.access  # F_OK: a bool, where os.path.exists raises and catches inside
    for name in PROC_MASK_FILES:
        p = "/newroot/proc/" + name
        if exists(p, os.F_OK):
            sc.mount("/newroot/dev/null", p, None, sc.MS_BIND)
    for name in PROC_MASK_DIRS:
        p = "/newroot/proc/" + name
        if os.path.isdir(p):
            sc.mount("tmpfs", p, "tmpfs", sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC,
                     "size=0")
    for name in PROC_READONLY:
        p = "/newroot/proc/" + name
        if os.path.isdir(p):
            sc.mount(p, p, None, sc.MS_BIND | sc.MS_REC)
            sc.mount(None, p, None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_RDONLY | sc.MS_NOSUID
                     | sc.MS_NODEV | sc.MS_NOEXEC)


def build_rootfs(plan: RootfsPlan) -> int:
    """Run in the box's init (uid-mapped, in its new mount + pid namespaces).

    No ``MS_REC|MS_PRIVATE`` pass over the inherited tree first (bwrap does one): the mount
    namespace is owned by our new user namespace, so the kernel already copied every shared
    mount as a *slave* (CL_SHARED_TO_SLAVE) — nothing we mount can propagate to the host, and
    pivot_root's "not shared" rule holds. That pass cost ~1 ms per box. The binds we keep
    after the pivot are made private one by one (``_bind``), so host mounts made later under a
    bound directory do not appear in the box either."""
    size = plan.tmpfs_size + _skeleton_bytes(plan)
    inodes = tmpfs_inodes(plan.tmpfs_size) + _skeleton_inodes(plan)
    sc.mount("tmpfs", "/tmp", "tmpfs", sc.MS_NOSUID | sc.MS_NODEV,
             f"mode=0755,size={size},nr_inodes={inodes}")
    os.chdir("/tmp")
    os.mkdir("oldroot")
    sc.pivot_root(".", "oldroot")
    os.chdir("/")
    tmpfs_fd = os.open("/", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) if plan.held else -1
    os.mkdir("/newroot")
    sc.mount("/newroot", "/newroot", None, sc.MS_BIND)  # a mount point, for pivot_root
    for d in ("/scratch", "/scratch/up", "/scratch/wk", "/scratch/tmp", "/scratch/shm",
              "/newroot/etc", "/newroot/tmp"):
        os.mkdir(d)
    os.chmod("/scratch/tmp", 0o1777)
    os.chmod("/scratch/shm", 0o1777)
    _image_root.mount_root(plan.image, list(plan.etc_files))  # (an image's overlay on /newroot)
    _etc.write_files(plan.etc_files)
    sc.mount("/scratch/tmp", "/newroot/tmp", None, sc.MS_BIND)
    # (the /etc overlay first: it makes /scratch/empty, the lower layer _ro_view adds too)
    etc_src = _etc.mount_view() if any(op[0] == "etc-view" for op in plan.ops) else ""
    n, hidden = 0, []
    for op in plan.ops:
        kind = op[0]
        if kind == "etc-view":
            _make_target(op[1], True)
            _bind(etc_src + op[1][4:], "/newroot" + op[1], readonly=True)
        elif kind == "symlink":
            _make_target(os.path.dirname(op[1]), True)
            os.symlink(op[2], "/newroot" + op[1])
        elif kind == "bind-fd":  # a tmpfs the caller holds by fd (sandbox._memdir): bind a clone
            _make_target(op[2], True)
            _bind(f"/oldroot/proc/self/fd/{op[1]}", "/newroot" + op[2], readonly=op[3])
            os.close(op[1])
        elif kind == "tmpfs":
            _make_target(op[1], True)
            sc.mount("tmpfs", "/newroot" + op[1], "tmpfs", sc.MS_NOSUID | sc.MS_NODEV,
                     f"mode=1777,size={op[2]},nr_inodes={tmpfs_inodes(op[2])}")
        else:
            src, dst, is_dir = op[1], op[2], op[3]
            top = _make_target(dst, is_dir, hide=src == dst)
            if top is not None:
                hidden.append(top)
            if kind == "overlay" and is_dir:
                n += 1
                _overlay(n, "/oldroot" + src, "/newroot" + dst, *op[4:])
            elif kind == "ro-bind" and is_dir:
                _ro_view("/oldroot" + src, "/newroot" + dst)
            else:
                _bind("/oldroot" + src, "/newroot" + dst, readonly=(kind != "bind"))
    _seal(hidden)
    if plan.cgroup:
        # Programs inside can read their own limits (memory.max, cpu.max ...) but change nothing:
        # the cgroup namespace (unshared by init inside its leaf) makes the leaf look like "/".
        _make_target("/sys/fs/cgroup", True)
        sc.mount("cgroup2", "/newroot/sys/fs/cgroup", "cgroup2",
                 sc.MS_RDONLY | sc.MS_NOSUID | sc.MS_NODEV | sc.MS_NOEXEC)
    _setup_dev(bool(plan.image))
    _setup_proc(plan.sysctls)
    os.chdir("/newroot")
    sc.pivot_root(".", ".")
    sc.umount2(".", sc.MNT_DETACH)
    os.chdir("/")
    sc.mount(None, "/", None, sc.MS_REMOUNT | sc.MS_BIND | sc.MS_NOSUID | sc.MS_NODEV
             | (0 if plan.held or plan.image else sc.MS_RDONLY))
    return tmpfs_fd
