"""Writable space that outlives one box and touches no host disk: a tmpfs of its own, capped in
size and in inodes, that the host holds only by a file descriptor.

The pytest fixture's ``/work`` needs one: a test puts files there, runs several boxes one after
another, and reads back what they wrote, so it cannot live in any one box's tmpfs. A host
directory would let a box fill the host's disk (only ``RLIMIT_FSIZE`` per file stood in the
way). This tmpfs is a *detached* mount (fsopen/fsconfig/fsmount): it has no host path, is in
no mount table (nobody else can find it to plant files), and is freed when the last fd of it
closes. Each box binds a clone of it (``MountSpec("bind", "/work", fd=...)``).

Making a tmpfs needs CAP_SYS_ADMIN over the caller's mount namespace. Root has it; an
unprivileged caller forks a helper that enters a user and mount namespace of its own, makes the
filesystem there and sends its fd back (SCM_RIGHTS), then exits: the filesystem outlives it.
Its user namespace maps just our uid, which is the box user's host uid too, so the boxes and
we may write (the kernel refuses to create files for an id the superblock's namespace does
not map).

A box may clone a detached mount made in another mount namespace only on kernels whose
``open_tree(OPEN_TREE_CLONE)`` accepts a detached mount of no origin namespace (Linux 6.18
does; older ones answer EINVAL). ``create`` checks exactly that and returns None where the
kernel refuses, so the caller can say what it falls back to.
"""

from __future__ import annotations

import errno
import os

from sandbox import _syscalls as sc

MOUNT_ATTR_NOSUID_NODEV = sc.MOUNT_ATTR_NOSUID | sc.MOUNT_ATTR_NODEV


def inodes_for(size: int) -> int:
    """The inode cap for a tmpfs of ``size`` bytes, the same rule as a box's own tmpfs
    (``_rootfs.tmpfs_inodes``): empty files take no pages, only kernel slab."""
    from sandbox._rootfs import tmpfs_inodes

    return tmpfs_inodes(size)


def create(size: int) -> int | None:
    """An O_PATH fd of a fresh empty tmpfs of ``size`` bytes (and ``inodes_for(size)`` inodes),
    or None when this kernel cannot bind it into a box. The caller owns the fd.

    Its root is private (0700) to our uid unprivileged; as root it is 0777, because each
    root-mode box runs as a different high uid and a test's boxes share the directory."""
    opts = {"size": str(size), "nr_inodes": str(inodes_for(size)),
            "mode": "0777" if os.geteuid() == 0 else "0700"}
    return _make(opts) if os.geteuid() == 0 else _make_in_helper(opts)


def _make(opts: dict[str, str]) -> int | None:
    """The tmpfs, or None where the kernel has no new mount API or would not let a box clone
    it: cloning it here is exactly what each box's init does (see the module docstring)."""
    try:
        fd = sc.fs_new("tmpfs", list(opts.items()), MOUNT_ATTR_NOSUID_NODEV)
    except OSError as e:
        if e.errno == errno.ENOSYS:  # Linux < 5.2
            return None
        raise
    try:
        os.close(sc.open_tree_clone(fd))
    except OSError as e:
        os.close(fd)
        if e.errno == errno.EINVAL:
            return None
        raise
    return fd


def _make_in_helper(opts: dict[str, str]) -> int | None:
    """Fork a helper that makes the tmpfs in a user + mount namespace of its own (see the
    module docstring) and sends back its fd, or the errno it failed with."""
    import socket

    from sandbox import _fdpass, _userns

    uid, gid = os.geteuid(), os.getegid()  # (once unshared, they read as the overflow ids)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        pid = os.fork()
        if pid == 0:  # ---- helper: never return into the caller
            code = 1
            try:
                ours.close()
                sc.unshare(sc.CLONE_NEWUSER | sc.CLONE_NEWNS)
                _userns.write_own_maps(_userns.IdPlan("single", uid, gid, uid, gid))
                fd = _make(opts)
                _fdpass.send(theirs, {"ok": fd is not None}, [] if fd is None else [fd])
                code = 0
            except OSError as e:
                _fdpass.send(theirs, {"errno": e.errno or 0, "error": str(e)})
            finally:
                os._exit(code)
        theirs.close()
        try:
            msg, fds = _fdpass.recv(ours, max_fds=1)
        finally:
            os.waitpid(pid, 0)
    finally:
        ours.close()
        theirs.close()
    if len(fds) == 1 and msg == b'{"ok": true}':
        return fds[0]
    for fd in fds:
        os.close(fd)
    if msg == b'{"ok": false}':
        return None
    import json

    err = json.loads(msg) if msg else {"errno": 0, "error": "the helper died"}
    raise OSError(err.get("errno") or errno.EIO, f"memdir: {err.get('error')}")
