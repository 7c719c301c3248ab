"""Unpacking one image layer (a tar stream) into a directory, never trusting the archive.

An image is someone else's tar file, and tar extraction is a classic way out of a directory:
``../../.bashrc`` or ``/etc/cron.d/x`` names, a symlink ``a -> /home/me`` followed by the file
``a/.ssh/authorized_keys`` (CVE-2019-14271, CVE-2018-15664 class), a hard link to a host file,
device nodes, setuid binaries, file capabilities in ``security.capability``, a sparse file that
claims terabytes, and a gzip bomb. So ``tarfile`` here only *parses*; every write is an ``*at``
call relative to a directory fd that ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)`` gave us:
the kernel, not a string check, refuses any path out of the layer, and no symlink is ever
followed (one the archive made is only text for the box to resolve inside its own root).

Rules (each refusal is one ``LayerError`` naming the entry): names are relative, with no ``..``
and no control character (a newline would forge lines of ``inspect`` or of logs); a hard link
must name an earlier regular file of the same layer; no device node or FIFO; modes lose
setuid/setgid; no xattr of the archive is written (so no file capability, and no
``user.overlay.*`` xattr that would steer the overlay: redirects, metacopy, whiteouts); sparse
entries are refused; the total of file sizes, the number of entries and the uncompressed
bytes read are capped. Owners are not applied: every file belongs to whoever unpacks it (an
unprivileged user can give no other owner; in a box that is the box user); those other than
0:0 are returned (``owners``) for the store to keep beside the tree, for export and commit.

OCI whiteouts become overlayfs *xattr* whiteouts (Documentation/filesystems/overlayfs.rst,
kernel >= 6.7): a ``.wh.NAME`` entry is an empty regular file NAME with ``user.overlay.whiteout``,
and its directory gets ``user.overlay.opaque=x`` (the kernel only looks for such whiteouts in a
directory marked so); ``.wh..wh..opq`` sets ``user.overlay.opaque=y``, which hides the lower
layers' entries, never the layer's own. The usual form, a 0/0 character device, cannot be
made in a user namespace (mknod is EPERM), and ``user.`` xattrs are what overlayfs reads with
``userxattr``, the only way an unprivileged user mounts it.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tarfile

from sandbox import _syscalls as sc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import BinaryIO

RESOLVE = sc.RESOLVE_BENEATH | sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS | sc.RESOLVE_NO_XDEV
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
X_WHITEOUT = "user.overlay.whiteout"
X_OPAQUE = "user.overlay.opaque"
MAX_BYTES = 8 << 30      # file data of one layer
MAX_ENTRIES = 500_000    # entries of one layer
CHUNK = 1 << 20
MAX_ID = (1 << 32) - 1   # (uid_t's -1 is "no id")


class LayerError(ValueError):
    """An image layer (or the archive holding it) that is refused: ``entry`` names the tar entry
    (or the archive file) at fault, and the message is one line saying why."""

    def __init__(self, entry: str, why: str) -> None:
        super().__init__(f"layer entry {entry!r}: {why}")
        self.entry = entry


class HashingReader:
    """A file read once, front to back, through sha256 and a byte cap: the digest is of exactly
    what the parser consumed (``finish`` reads the rest), and a decompression bomb stops at
    ``limit`` instead of at the disk's end."""

    def __init__(self, raw: BinaryIO, limit: int, what: str) -> None:
        self.raw, self.limit, self.what = raw, limit, what
        self.hash = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(CHUNK if n is None or n < 0 else n)
        self.count += len(data)
        if self.count > self.limit:
            raise LayerError(self.what, f"more than {self.limit} bytes")
        self.hash.update(data)
        return data

    def finish(self) -> str:
        while self.read(CHUNK):
            pass
        return "sha256:" + self.hash.hexdigest()


ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
# A zstd frame names the window its decoder must hold in memory (up to 2 GiB and more): a
# frame asking more than zstd's own default decoding limit (2**27, made explicit here) is
# refused, not allocated.
ZSTD_MAX_WINDOW = 1 << 27


class ZstdReader:
    """A ``tar+zstd`` layer decompressed as it is read (``zstandard``): memory bounded by
    ``ZSTD_MAX_WINDOW``, output by the caller's ``HashingReader`` cap (a bomb stops there)."""

    def __init__(self, src: BinaryIO, what: str) -> None:
        try:
            import zstandard
        except ImportError:
            raise LayerError(what, "is zstd-compressed: needs the zstandard package (pip install zstandard)") from None
        self.error, self.what = zstandard.ZstdError, what
        dctx = zstandard.ZstdDecompressor(max_window_size=ZSTD_MAX_WINDOW)
        self.reader = dctx.stream_reader(src, read_across_frames=True)

    def read(self, n: int = -1) -> bytes:
        try:
            return self.reader.read(CHUNK if n is None or n < 0 else n)
        except self.error as e:
            raise LayerError(self.what, f"zstd: {e}") from None


def check_name(name: str) -> list[str]:
    """The entry's path components, or a refusal: relative, no ``..``, no control character."""
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise LayerError(name, "control character in the name")
    if name.startswith("/"):
        raise LayerError(name, "absolute path")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise LayerError(name, "'..' in the path")
    return parts


class _Layer:
    """The state of one extraction: the layer's root fd, what it holds so far."""

    def __init__(self, root_fd: int, max_bytes: int, max_entries: int) -> None:
        self.root = root_fd
        self.max_bytes, self.max_entries = max_bytes, max_entries
        self.bytes = self.entries = 0
        self.files: set[str] = set()          # regular files made so far: hard-link targets
        self.dirs: dict[str, int] = {"": 0o755}  # directory → mode, applied at the end
        self.opaque: dict[str, str] = {}      # directory → "y" | "x"
        self.owners: dict[str, tuple[int, int]] = {}  # entry → its (uid, gid) when not 0:0

    def parent(self, name: str, parts: list[str]) -> int:
        """An fd of the entry's parent directory, made (0700) where missing, every component
        resolved beneath the layer's root with no symlink followed."""
        fd = os.dup(self.root)
        for i, part in enumerate(parts[:-1]):
            rel = "/".join(parts[: i + 1])
            try:
                nfd = sc.openat2(fd, part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, RESOLVE)
            except FileNotFoundError:
                os.mkdir(part, 0o700, dir_fd=fd)
                self.dirs.setdefault(rel, 0o755)
                nfd = sc.openat2(fd, part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, RESOLVE)
            except OSError as e:
                try:
                    link = stat.S_ISLNK(os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode)
                finally:
                    os.close(fd)
                why = ("is a symlink (never followed)" if link or e.errno == 40
                       else "is not a directory" if e.errno == 20 else e.strerror)
                raise LayerError(name, f"parent {rel!r} {why}") from None
            os.close(fd)
            fd = nfd
        return fd

    def clear(self, pfd: int, base: str, rel: str, keep_dir: bool) -> None:
        """Remove what an earlier entry of this layer left at ``base`` (tar's last-wins rule);
        a directory stays when the new entry is a directory too."""
        try:
            st = os.stat(base, dir_fd=pfd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISDIR(st.st_mode):
            if keep_dir:
                return
            remove_tree(pfd, base)
            self.dirs = {d: m for d, m in self.dirs.items() if d != rel and not d.startswith(rel + "/")}
        else:
            os.unlink(base, dir_fd=pfd)
        self.files.discard(rel)

    def add(self, m: tarfile.TarInfo, tar: tarfile.TarFile) -> None:
        name = m.name
        self.entries += 1
        if self.entries > self.max_entries:
            raise LayerError(name, f"more than {self.max_entries} entries in the layer")
        if m.issparse() or any(k.startswith("GNU.sparse") for k in m.pax_headers):
            raise LayerError(name, "sparse file (its real size is unbounded)")
        if m.ischr() or m.isblk() or m.isfifo():
            raise LayerError(name, "device node or FIFO")
        if not (m.isreg() or m.isdir() or m.issym() or m.islnk()):
            raise LayerError(name, f"unsupported entry type {m.type!r}")
        parts = check_name(name)
        base, rel = (parts[-1], "/".join(parts)) if parts else ("", "")
        if base != OPAQUE and not base.startswith(WHITEOUT):  # (kept for export; not applied)
            self.owners.pop(rel, None)
            if (m.uid or m.gid) and 0 <= m.uid < MAX_ID and 0 <= m.gid < MAX_ID:
                self.owners[rel] = (m.uid, m.gid)
        if not parts:
            if m.isdir():
                self.dirs[""] = m.mode & 0o1777
                return
            raise LayerError(name, "names the layer's root")
        if m.size and (m.isreg() or m.islnk()):
            self.bytes += m.size
            if self.bytes > self.max_bytes:
                raise LayerError(name, f"layer holds more than {self.max_bytes} bytes")
        pfd = self.parent(name, parts)
        try:
            prel = "/".join(parts[:-1])
            if base == OPAQUE:
                self.opaque[prel] = "y"
                return
            if base.startswith(WHITEOUT):
                base, rel = base[len(WHITEOUT):], (prel + "/" if prel else "") + base[len(WHITEOUT):]
                if base in ("", ".", "..") or base.startswith(WHITEOUT):
                    raise LayerError(name, "whiteout of no name")
                self.clear(pfd, base, rel, keep_dir=False)
                # 0644: reading a user. xattr needs read permission, and a root-mode box's init
                # (a high uid) reads the whiteout of a root-owned store as "others"
                fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             0o644, dir_fd=pfd)
                try:
                    os.fchmod(fd, 0o644)  # (past the umask)
                    os.setxattr(fd, X_WHITEOUT, b"y")
                finally:
                    os.close(fd)
                self.opaque.setdefault(prel, "x")
                return
            self.clear(pfd, base, rel, keep_dir=m.isdir())
            if m.isdir():
                try:
                    os.mkdir(base, 0o700, dir_fd=pfd)
                except FileExistsError:  # an earlier entry's directory (``clear`` kept it)
                    pass
                self.dirs[rel] = m.mode & 0o1777  # setuid/setgid dropped; sticky kept
            elif m.issym():
                os.symlink(m.linkname, base, dir_fd=pfd)
            elif m.islnk():
                self.link(m, pfd, base, rel)
            else:
                self.regular(m, tar, pfd, base, rel)
        finally:
            os.close(pfd)

    def link(self, m: tarfile.TarInfo, pfd: int, base: str, rel: str) -> None:
        try:
            tparts = check_name(m.linkname)
        except LayerError:
            tparts = []
        target = "/".join(tparts)
        if not tparts or target not in self.files:
            raise LayerError(m.name, f"hard link to {m.linkname!r}, not an earlier file of this layer")
        tfd = self.parent(m.name, tparts)
        try:
            os.link(tparts[-1], base, src_dir_fd=tfd, dst_dir_fd=pfd, follow_symlinks=False)
        finally:
            os.close(tfd)
        self.files.add(rel)

    def regular(self, m: tarfile.TarInfo, tar: tarfile.TarFile, pfd: int, base: str, rel: str) -> None:
        fd = os.open(base, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600, dir_fd=pfd)
        try:
            src = tar.extractfile(m)
            assert src is not None  # a regular file
            left = m.size
            while left > 0:
                chunk = src.read(min(CHUNK, left))
                if not chunk:
                    raise LayerError(m.name, "archive ends inside the file")
                sc.write_all(fd, chunk)
                left -= len(chunk)
            os.fchmod(fd, m.mode & 0o777)  # no setuid/setgid/sticky
            os.utime(fd, (m.mtime, m.mtime))
        finally:
            os.close(fd)
        self.files.add(rel)

    def finish(self) -> None:
        """Directory modes and opaque markers, deepest first (a 0555 directory would have refused
        its own entries had its mode been set when it was made)."""
        for rel in sorted(set(self.dirs) | set(self.opaque), key=lambda d: -d.count("/") - (d != "")):
            fd = sc.openat2(self.root, rel or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, RESOLVE)
            try:
                if rel in self.opaque:
                    os.setxattr(fd, X_OPAQUE, self.opaque[rel].encode())
                os.fchmod(fd, self.dirs.get(rel, 0o755))
            finally:
                os.close(fd)


def extract(stream: BinaryIO, root_fd: int, *, max_bytes: int = MAX_BYTES,
            max_entries: int = MAX_ENTRIES, owners: dict[str, tuple[int, int]] | None = None) -> tuple[int, int]:
    """Unpack the uncompressed tar ``stream`` into the empty directory ``root_fd``: returns
    (bytes of file data, entries). Raises ``LayerError`` for the first bad entry; what was
    written so far stays beneath ``root_fd`` (the caller removes it). ``owners`` gets the
    entries' owners other than 0:0, which the tree cannot hold (files are the unpacker's)."""
    layer = _Layer(root_fd, max_bytes, max_entries)
    try:
        tar = tarfile.open(fileobj=stream, mode="r|")  # noqa: SIM115 - a stream, closed below
    except LayerError:
        raise
    except (tarfile.TarError, ValueError, EOFError) as e:
        raise LayerError("(archive)", f"not a tar stream: {e}") from None
    try:
        for m in tar:
            layer.add(m, tar)
    except LayerError:
        raise
    except (tarfile.TarError, ValueError, EOFError) as e:  # a malformed pax header: ValueError
        raise LayerError("(archive)", f"broken tar stream: {e}") from None
    finally:
        tar.close()
    layer.finish()
    if owners is not None:
        owners.update(layer.owners)
    return layer.bytes, layer.entries


def remove_tree(dir_fd: int, name: str) -> None:
    """Remove ``name`` under ``dir_fd`` and everything in it, by fds, no link followed; a
    directory the layer made unwritable (0555) is made writable first."""
    try:
        fd = sc.openat2(dir_fd, name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, RESOLVE)
    except OSError as e:
        if e.errno in (20, 40):  # not a directory, or a symlink: one name
            os.unlink(name, dir_fd=dir_fd)
            return
        raise
    try:
        os.fchmod(fd, 0o700)
        for entry in os.scandir(fd):
            if entry.is_dir(follow_symlinks=False):
                remove_tree(fd, entry.name)
            else:
                os.unlink(entry.name, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)
