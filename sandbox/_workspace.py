"""``Workspace``: writable space shared by boxes one after another — files in before, results
out after — that touches no host disk.

A judge or a test runs several fresh boxes over the same files (compile in one, run in the
next, read what it wrote). None of those boxes' own tmpfs outlives it, and a host directory
would let a box fill the host's disk. A workspace is a size- and inode-capped tmpfs the host
holds only by an fd (``sandbox._memdir``: no path, in no mount table); each box binds a clone
of it (``mount()``). Where the kernel cannot bind such a tmpfs into a box it falls back to a
private host directory, and says so (``on_host_disk``).

Everything in it was written by boxes: hostile. ``put`` and ``read`` resolve every name beneath
the workspace with ``openat2(RESOLVE_BENEATH|NO_SYMLINKS|NO_MAGICLINKS)``, never follow a link
or open a FIFO a box planted, write only regular files and read a bounded number of bytes.
"""

from __future__ import annotations

import os
import shutil
import stat

from sandbox import _memdir, _safefs
from sandbox import _syscalls as sc
from sandbox._config import MountSpec, parse_size

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import TracebackType

READ_MAX = 16 << 20


class Workspace:
    """``with Workspace("64M") as ws: ws.put("in.txt", b"..."); cfg = SandboxConfig(mounts=[
    ws.mount("/work")]); ...; ws.read("out.txt")``. Closing it frees its memory."""

    def __init__(self, size: int | str = "256M") -> None:
        self.size = parse_size(size, "workspace size")
        self._top: str | None = None
        fd = _memdir.create(self.size)
        self.on_host_disk = fd is None  # the kernel could not bind a detached tmpfs into a box
        if fd is None:
            self._top, path = _safefs.box_writable_dir("sandbox-workspace-")
            fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            self._source: str | None = path
        else:
            self._source = None
        self._fd = fd

    def __enter__(self) -> Workspace:
        return self

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.close()

    def mount(self, target: str = "/work", *, readonly: bool = False) -> MountSpec:
        """The mount that shows this workspace at ``target`` in a box."""
        self._check()
        kind = "ro-bind" if readonly else "bind"
        if self._source is not None:
            return MountSpec(kind, target, self._source)
        return MountSpec(kind, target, fd=self._fd)

    def put(self, name: str, data: bytes) -> None:
        """Write ``name`` (relative; parents made). A box that ran before may have planted a
        symlink or FIFO under that name: nothing is followed, only regular files are written."""
        self._check()
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if not parts or name.startswith("/") or ".." in parts:
            raise ValueError(f"file name {name!r} must be relative, inside the workspace")
        dfd = os.dup(self._fd)
        try:
            for part in parts[:-1]:
                try:
                    os.mkdir(part, 0o755, dir_fd=dfd)
                except FileExistsError:
                    pass
                sub = _safefs.open_beneath(dfd, part, directory=True)
                os.close(dfd)
                dfd = sub
            fd = sc.openat2(dfd, parts[-1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                            | os.O_NONBLOCK | os.O_CLOEXEC, _safefs.RESOLVE, 0o644)
        except OSError as e:
            raise _safefs.UnsafePath(e.errno, f"{name}: cannot write it safely ({e.strerror})") from None
        finally:
            os.close(dfd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise _safefs.UnsafePath(22, f"{name}: not a regular file (planted by an earlier box?)")
            os.fchmod(fd, 0o666 if os.geteuid() == 0 else 0o644)  # as root the box is another uid
            sc.write_all(fd, data)
        finally:
            os.close(fd)

    def read(self, name: str, max_bytes: int = READ_MAX) -> bytes:
        """A file a box wrote, at most ``max_bytes``, read without following anything it planted."""
        self._check()
        return _safefs.read_beneath(self._fd, name, max_bytes)

    def close(self) -> None:
        """Free it (the last fd of its tmpfs: the files go with it)."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._top is not None:
            shutil.rmtree(self._top, ignore_errors=True)
            self._top = None

    def _check(self) -> None:
        if self._fd < 0:
            raise ValueError("this workspace is closed")
