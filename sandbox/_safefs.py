"""Reading what a box wrote, from the host, without trusting it.

A box controls every name under a directory it could write (a ``--bind`` output dir, an
overlay upper). The host must never follow a symlink the box planted there (judge0's
CVE-2024-28185/28189: a planted symlink made the judge read or write host files), must not be
stalled by a FIFO or device, and must bound what it reads. Everything here opens with
``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV)``
relative to a directory fd (never crossing into another mount either), refuses anything but
regular files and directories, and caps sizes and counts.
"""

from __future__ import annotations

import os
import stat

from sandbox import _syscalls as sc

TYPE_CHECKING = False  # collections.abc imports collections: ~1 ms of the CLI start
if TYPE_CHECKING:
    from collections.abc import Iterator

RESOLVE = sc.RESOLVE_BENEATH | sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS | sc.RESOLVE_NO_XDEV
DEFAULT_MAX = 16 * 1024 * 1024


class UnsafePath(OSError):
    pass


def open_beneath(root_fd: int, relpath: str, *, directory: bool = False) -> int:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | (os.O_DIRECTORY if directory else 0)
    try:
        fd = sc.openat2(root_fd, relpath.lstrip("/") or ".", flags, RESOLVE)
    except OSError as e:
        if e.errno in (40, 18):  # ELOOP (a symlink), EXDEV (escapes the root or the mount)
            raise UnsafePath(e.errno, f"{relpath}: refusing to follow a link the box created") from None
        raise
    st = os.fstat(fd)
    if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
        os.close(fd)
        raise UnsafePath(22, f"{relpath}: not a regular file or directory")
    return fd


def read_beneath(root: str | int, relpath: str, max_bytes: int = DEFAULT_MAX) -> bytes:
    """Read ``root/relpath`` (a box-controlled tree) safely, at most ``max_bytes``."""
    root_fd = root if isinstance(root, int) else os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd = open_beneath(root_fd, relpath)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafePath(21, f"{relpath}: is a directory")
            out = bytearray()
            while len(out) < max_bytes and (chunk := os.read(fd, min(65536, max_bytes - len(out)))):
                out += chunk
            return bytes(out)
        finally:
            os.close(fd)
    finally:
        if not isinstance(root, int):
            os.close(root_fd)


def walk_beneath(root: str | int, max_entries: int = 10000) -> Iterator[tuple[str, os.stat_result]]:
    """Yield (relative path, lstat) for every entry under ``root`` (a path, or a directory fd
    such as a box's overlay upper) without following symlinks (they are reported as links,
    never entered), stopping after ``max_entries``.

    Each directory is opened only when its turn comes, by its path from ``root`` through
    ``open_beneath``: a box that makes thousands of directories cannot make us hold an fd per
    directory, and one that renames a directory while we walk still cannot lead us out."""
    root_fd = root if isinstance(root, int) else os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    count = 0
    pending = [""]
    try:
        while pending:
            prefix = pending.pop()
            try:
                dfd = open_beneath(root_fd, prefix, directory=True)
            except PermissionError:  # a directory the box made unsearchable: its name was listed
                if not prefix:
                    raise
                continue
            try:
                for name in sorted(os.listdir(dfd)):
                    count += 1
                    if count > max_entries:
                        return
                    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                    yield prefix + name, st
                    if stat.S_ISDIR(st.st_mode):
                        pending.append(prefix + name + "/")
            finally:
                os.close(dfd)
    finally:
        if not isinstance(root, int):
            os.close(root_fd)


def exists_beneath(root_fd: int, relpath: str) -> bool:
    """Whether ``root_fd/relpath`` exists, as a file, directory or link, with every component
    resolved beneath ``root_fd`` and no link followed (a path through a link does not exist)."""
    try:
        os.close(sc.openat2(root_fd, relpath.lstrip("/") or ".", os.O_PATH | os.O_NOFOLLOW, RESOLVE))
    except OSError:
        return False
    return True


def xattr_of(path_fd: int, name: str) -> bytes:
    """The xattr ``name`` of what the ``O_PATH`` fd ``path_fd`` names, b"" if none (getxattr
    refuses an O_PATH fd itself; its /proc/self/fd name works, and no link is followed)."""
    try:
        return os.getxattr(f"/proc/self/fd/{path_fd}", name)
    except OSError:
        return b""


def xattr_beneath(root_fd: int, relpath: str, name: str, *, directory: bool = False) -> bytes:
    """The xattr ``name`` of ``root_fd/relpath`` (b"" if none, or if it is no directory when
    ``directory``), opened ``O_PATH`` beneath ``root_fd``, no link followed."""
    flags = os.O_PATH | os.O_NOFOLLOW | (os.O_DIRECTORY if directory else 0)
    try:
        h = sc.openat2(root_fd, relpath.lstrip("/") or ".", flags, RESOLVE)
    except OSError:
        return b""
    try:
        return xattr_of(h, name)
    finally:
        os.close(h)


def box_writable_dir(prefix: str) -> tuple[str, str]:
    """(dir to remove afterwards, an empty dir the box's own user may write into).

    Unprivileged, the box runs as our own uid, so a private 0700 directory works. As root the
    box is an unpredictable high uid and needs a world-writable directory: it is hidden under a
    0711 parent (traversable, not listable) with a random name, so no other local user can find
    it to plant files the grader or a test would then read as the box's.
    """
    import secrets
    import tempfile

    top = tempfile.mkdtemp(prefix=prefix)
    if os.geteuid() != 0:
        return top, top
    os.chmod(top, 0o711)
    work = os.path.join(top, secrets.token_hex(16))
    os.mkdir(work)
    os.chmod(work, 0o777)
    return top, work
