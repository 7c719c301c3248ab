"""The files of a held box, from the host: ``put``, ``get`` and ``changes`` (see ``sandbox.Box``).

The host works on the box's files itself, through two directory fds its init sent when it was
ready: the box's ``/`` (for ``put``/``get``, crossing the box's own mounts: /tmp, the overlays)
and its tmpfs (for ``changes``: the overlay uppers, /tmp, /dev/shm and the skeleton, all in that
one size- and inode-capped tmpfs). Every name is resolved one component at a time with
``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)``: a link the box planted
is refused, never followed (judge0's CVE-2024-28185 was a planted symlink); reads are bounded
and only of regular files (a FIFO would stall us); a put writes a new file and renames it over
the name, so a planted link is replaced, not written through.
"""

from __future__ import annotations

import os
import stat

from sandbox import _safefs
from sandbox import _syscalls as sc
from sandbox._config import ConfigError
from sandbox._record import field, record

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

RESOLVE_IN_BOX = sc.RESOLVE_BENEATH | sc.RESOLVE_NO_SYMLINKS | sc.RESOLVE_NO_MAGICLINKS
NOT_FILES = ("proc", "sys", "dev")  # kernel views, not the box's files (except /dev/shm)
GET_MAX = 16 << 20
MAX_ENTRIES = 20000  # per place (/, /tmp, /dev/shm, each overlay upper) that changes() lists


@record
class Changes:
    """Paths (as the box sees them) created, modified and deleted since the box started."""

    created: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    truncated: bool = False  # more than MAX_ENTRIES per place, or too deep: nothing is "deleted"


class Checkpoint:
    """What a box's files were at one moment (``Box.checkpoint()``): ``changes(since=it)`` then
    lists only what changed after it (a grader's test sees its own writes, not an earlier
    test's in the same box)."""

    __slots__ = ("_entries", "_owner", "_truncated")

    def __init__(self, owner: BoxFiles, entries: dict[str, tuple], truncated: bool) -> None:
        self._owner, self._entries, self._truncated = owner, entries, truncated


class BoxFiles:
    """``root``/``tmpfs``: the fds init sent (ours to close); ``owner``: the box user's host ids
    when we are root (range maps), else None; ``ops``: the rootfs plan (where the uppers go);
    ``image``: ``RootfsPlan.image`` (an image box: its layers are the lowers of its root's upper)."""

    def __init__(self, root: int, tmpfs: int, owner: tuple[int, int] | None,
                 inside_ids: tuple[int, int], ops: list, image: tuple = ()) -> None:
        self.root, self.tmpfs, self.owner, self.inside_ids = root, tmpfs, owner, inside_ids
        self.uppers = _upper_targets(ops)
        self.lower_fds: dict[str, int] = {}
        targets = [(dst, src) for dst, src in self.uppers.values()]
        targets += [(f"{IMAGE_UPPER}#{i}", path) for i, (path, _dev, _ino) in enumerate(image[1] if image else ())]
        for dst, src in targets:
            try:
                self.lower_fds[dst] = os.open(src, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            except OSError:
                pass
        try:
            self.baseline, self.baseline_truncated = self._snapshot()
        except BaseException:  # (Ctrl-C while the box starts) the caller closes root and tmpfs
            for fd in self.lower_fds.values():
                os.close(fd)
            raise

    def close(self) -> None:
        for fd in (self.root, self.tmpfs, *self.lower_fds.values()):
            if fd >= 0:
                os.close(fd)
        self.root = self.tmpfs = -1
        self.lower_fds = {}

    def _open_parent(self, path: str, create: bool) -> tuple[int, str]:
        if not isinstance(path, str):
            raise ConfigError(f"path {path!r}: must be a str, an absolute path in the box")
        parts = [p for p in path.split("/") if p not in ("", ".")]  # "/./proc" is /proc
        if not path.startswith("/") or not parts or ".." in parts:
            raise ConfigError(f"path {path!r}: must be an absolute path of a file in the box, "
                              "without '..'")
        if parts[0] in NOT_FILES and parts[:2] != ["dev", "shm"]:
            raise ConfigError(f"path {path!r}: /{parts[0]} is a kernel view, not the box's files")
        dfd = os.dup(self.root)
        try:
            for part in parts[:-1]:
                if create:
                    try:
                        self._create(lambda p=part, d=dfd: os.mkdir(p, 0o755, dir_fd=d), part, dfd)
                    except FileExistsError:
                        pass
                nfd = sc.openat2(dfd, part, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW, RESOLVE_IN_BOX)
                os.close(dfd)
                dfd = nfd
        except OSError as e:
            os.close(dfd)
            if e.errno in (40, 20):  # ELOOP, ENOTDIR
                raise _safefs.UnsafePath(e.errno, f"{path}: refusing to follow a link the box made") from None
            raise
        return dfd, parts[-1]

    def _create(self, fn: Callable[[], Any], name: str | None, dfd: int) -> Any:
        """Run ``fn`` (a create or rename in ``dfd``) so the new entry is the box user's.

        Unprivileged (single-id map) we are the box user. Root (range maps) is unmapped in the
        box's user namespace, which owns its tmpfs: a file root creates there fails (EOVERFLOW).
        So we act as the box user (setfsuid: this thread only) where it may write, and otherwise
        (a directory of the box's root user, such as ``/``) as that root, then give the entry to
        the box user."""
        if self.owner is None:
            return fn()
        try:
            with sc.acting_as(*self.owner):
                return fn()
        except PermissionError:
            base = (self.owner[0] - self.inside_ids[0], self.owner[1] - self.inside_ids[1])
            with sc.acting_as(*base):
                out = fn()
            if name is not None:
                os.chown(name, *self.owner, dir_fd=dfd, follow_symlinks=False)
            return out

    def put(self, path: str, data: bytes | os.PathLike[str], *, mode: int = 0o644) -> None:
        if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
            raise ConfigError(f"put({path!r}): mode {mode!r}: permission bits 0..0o777 "
                              "(no setuid, setgid or sticky)")
        if isinstance(data, (bytes, bytearray, memoryview)):
            src = None
        elif isinstance(data, os.PathLike):
            src = os.fspath(data)
        else:  # a str too: text to write, or the name of a host file? Neither is guessed
            raise ConfigError(f"put({path!r}, {type(data).__name__}): give bytes, or a "
                              "pathlib.Path of a host file")
        dfd, name = self._open_parent(path, create=True)
        import secrets

        tmp = f".sandbox-put-{secrets.token_hex(8)}"  # unguessable: the box cannot plant it
        made = False
        try:
            fd = self._create(lambda: os.open(
                tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode,
                dir_fd=dfd), tmp, dfd)
            made = True
            try:
                if src is None:
                    sc.write_all(fd, data)  # type: ignore[arg-type]
                else:
                    with open(src, "rb") as f:
                        while chunk := f.read(1 << 20):
                            os.write(fd, chunk)
                os.fchmod(fd, mode)
            finally:
                os.close(fd)
            self._create(lambda: os.rename(tmp, name, src_dir_fd=dfd, dst_dir_fd=dfd), None, dfd)
            made = False
        finally:
            if made:
                try:
                    self._create(lambda: os.unlink(tmp, dir_fd=dfd), None, dfd)
                except OSError:
                    pass
            os.close(dfd)

    def get(self, path: str, max_bytes: int = GET_MAX) -> bytes:
        """A file of the box, at most ``max_bytes``; refuses links, FIFOs and devices. As root
        it reads with the box user's ids: what the box user could not read, neither do we."""
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ConfigError(f"get({path!r}): max_bytes {max_bytes!r}: a byte count >= 0")
        dfd, name = self._open_parent(path, create=False)
        try:
            if self.owner is None:
                return _safefs.read_beneath(dfd, name, max_bytes)
            with sc.acting_as(*self.owner):
                return _safefs.read_beneath(dfd, name, max_bytes)
        finally:
            os.close(dfd)

    def checkpoint(self) -> Checkpoint:
        return Checkpoint(self, *self._snapshot())

    def changes(self, since: Checkpoint | None = None) -> Changes:
        """Created / modified / deleted since the box started, or since the checkpoint ``since``
        (files and links; directories only when made or removed). ``truncated``: the box holds
        more than we list (or deeper trees than a path can name); then nothing is called
        deleted, since we cannot know."""
        if since is not None and since._owner is not self:
            raise ConfigError("changes(since=...): that checkpoint is of another box")
        base, base_cut = ((self.baseline, self.baseline_truncated) if since is None
                          else (since._entries, since._truncated))
        now, truncated = self._snapshot()
        ch = Changes(truncated=truncated or base_cut)
        for p, sig in now.items():
            old = base.get(p)
            if sig[0] == "whiteout":
                if old != sig:  # (already deleted at the checkpoint: not this window's)
                    ch.deleted.append(p)
            elif old is None:
                if sig[2]:  # in an upper, over an entry of the lower: changed, not new
                    if sig[0] != "dir":
                        ch.modified.append(p)
                else:
                    ch.created.append(p)
            elif old != sig and sig[0] != "dir":
                ch.modified.append(p)
        if not ch.truncated:
            ch.deleted += [p for p, sig in base.items() if p not in now and sig[0] != "whiteout"]
        for lst in (ch.created, ch.modified, ch.deleted):
            lst.sort()
        return ch

    def _snapshot(self) -> tuple[dict[str, tuple], bool]:
        """Every entry of the box's tmpfs as the box sees it: path → (kind, identity, in lower),
        and whether the listing was cut short. The identity includes the ctime, which no
        program can set (a same-size write with the mtime put back still shows)."""
        out: dict[str, tuple] = {}
        truncated = False
        hidden: list[tuple[int, str, str]] = []  # opaque upper dirs over a lower dir
        lowers_of: dict[str, list[int]] = {}
        places = [("newroot", ""), ("scratch/tmp", "/tmp"), ("scratch/shm", "/dev/shm")]
        places += [(f"scratch/up/{n}", dst) for n, (dst, _src) in self.uppers.items()]
        places += [(IMAGE_UPPER, "")] if f"{IMAGE_UPPER}#0" in self.lower_fds else []
        for rel, prefix in places:
            try:
                fd = _safefs.open_beneath(self.tmpfs, rel, directory=True)
            except OSError:
                continue
            lowers = ([fd_ for k, fd_ in self.lower_fds.items() if k.startswith(IMAGE_UPPER + "#")]
                      if rel == IMAGE_UPPER else [self.lower_fds[prefix]] if prefix in self.lower_fds else [])
            count = 0
            try:
                for sub, st in _safefs.walk_beneath(fd, max_entries=MAX_ENTRIES):
                    count += 1
                    path = f"{prefix}/{sub}"
                    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 and lowers:
                        out[path] = ("whiteout",)
                        continue
                    kind = ("dir" if stat.S_ISDIR(st.st_mode) else
                            "link" if stat.S_ISLNK(st.st_mode) else "file")
                    # the host lower, resolved beneath itself: never through a link in it
                    in_lower = _shown_by_lowers(lowers, sub)
                    ident = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino) if kind != "dir" else 0
                    out[path] = (kind, ident, in_lower)
                    if kind == "dir" and in_lower and _opaque(fd, sub):
                        hidden += [(lower, sub, prefix) for lower in lowers]
                        lowers_of[prefix] = lowers
            except OSError:  # a tree deeper than a path can name (ENAMETOOLONG), ...
                truncated = True
            finally:
                os.close(fd)
            truncated = truncated or count >= MAX_ENTRIES
        for lower, sub, prefix in hidden:  # a directory removed and made again: the lower's
            try:                           # entries under it are gone (deleted), not listed
                fd = _safefs.open_beneath(lower, sub, directory=True)
            except OSError:
                continue
            try:
                for name, _st in _safefs.walk_beneath(fd, max_entries=MAX_ENTRIES):
                    if f"{prefix}/{sub}/{name}" not in out and _shown_by_lowers(lowers_of[prefix], f"{sub}/{name}"):
                        out[f"{prefix}/{sub}/{name}"] = ("whiteout",)
            except OSError:
                truncated = True
            finally:
                os.close(fd)
        return out, truncated


IMAGE_UPPER = "scratch/up/root"  # an image box's root upper (_image_root), over its layers


def _shown_by_lowers(lowers: list[int], sub: str) -> bool:
    """Whether the overlay's lower layers (top first) show ``sub`` (``showing_layer``)."""
    return showing_layer(lowers, sub) is not None


def showing_layer(lowers: list[int], sub: str) -> int | None:
    """The index in ``lowers`` (top first) of the layer whose ``sub`` the overlay shows, or
    None; resolved as overlayfs does, one component at a time: a layer's whiteout of it or of a
    parent, a file in place of a parent, or an opaque parent (``user.overlay.opaque=y``) hides
    every layer below. So a path a higher layer deleted and the box made again is created, not
    modified (and not a copy-up: ``_commit``). Each name is opened ``O_PATH`` beneath its
    layer: no link followed."""
    stack, parts = list(enumerate(lowers)), sub.split("/")
    opened: list[int] = []
    try:
        for depth, name in enumerate(parts):
            below: list[tuple[int, int]] = []
            for i, d in stack:
                try:
                    h = sc.openat2(d, name, os.O_PATH | os.O_NOFOLLOW, _safefs.RESOLVE)
                except OSError:
                    continue
                opened.append(h)
                st = os.fstat(h)
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0 or (
                        stat.S_ISREG(st.st_mode) and st.st_size == 0 and _safefs.xattr_of(h, X_WHITEOUT)):
                    break  # a whiteout: gone from here down
                if depth == len(parts) - 1:
                    return i
                if not stat.S_ISDIR(st.st_mode):
                    break  # a file or link where a parent should be
                below.append((i, h))
                if _safefs.xattr_of(h, X_OPAQUE) == b"y":
                    break
            if not below:
                return None
            stack = below
        return None
    finally:
        for h in opened:
            os.close(h)


X_WHITEOUT, X_OPAQUE = "user.overlay.whiteout", "user.overlay.opaque"


def _opaque(dir_fd: int, sub: str) -> bool:
    """Whether overlayfs marked ``sub`` (a directory of an upper) opaque: it was removed and
    made again, so nothing of the lower shows through it (``user.overlay.opaque``: the box's
    overlays are mounted with userxattr)."""
    return _safefs.xattr_beneath(dir_fd, sub, X_OPAQUE, directory=True) == b"y"


def _upper_targets(ops: list) -> dict[int, tuple[str, str]]:
    """Overlay number (as rootfs numbers its uppers) → (target in the box, host lower)."""
    out, n = {}, 0
    for op in ops:
        if op[0] == "overlay" and op[3]:
            n += 1
            out[n] = (op[2], op[1])
    return out
