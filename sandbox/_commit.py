"""``Box.commit("NAME[:TAG]")``: a held box on an image, its writable layer stored as a new
layer on top of the image's, a new image in the store.

The upper is the box's: every name in it was made by the program we do not trust. It is read
from the host through the box's tmpfs fd that init sent (``Box``'s ``BoxFiles.tmpfs``), one
directory at a time with ``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS …)`` (``_safefs``):
no link is followed, a symlink is stored as its text, a FIFO or device is skipped (never
opened), files are read non-blocking and only if regular. The tar written from it goes through
the same ``_layers.extract`` as an imported archive (a name with a newline is refused there,
naming it), so the store holds nothing an import could not have put there.

overlayfs records a deletion in the upper as a 0/0 character device and a directory made anew
over a lower one as ``user.overlay.opaque=y`` (with ``userxattr``): those become the OCI
``.wh.NAME`` and ``.wh..wh..opq`` entries, which ``_layers`` turns back into xattr whiteouts.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import tarfile
import tempfile

from sandbox import _images, _layers, _safefs
from sandbox import _syscalls as sc
from sandbox._box_files import showing_layer

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, BinaryIO

UPPER = "scratch/up/root"


def _tar_upper(tmpfs: int, out: BinaryIO, max_entries: int, top: str = UPPER,
               owner_of: Callable[[str, bool], tuple[int, int]] | None = None) -> None:
    """Tar the tree ``top`` under the fd ``tmpfs`` (a box's upper, or a stored layer's ``fs``
    for ``sandbox image export``), its whiteouts and opaque markers as OCI entries, each entry
    owned by ``owner_of(path, opaque)`` (else 0:0: the tree's own owners are the unpacker's), a file's
    further hard links as tar hard links to its first name."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        pending, count = [""], 0
        links: dict[tuple[int, int], str] = {}
        while pending:
            rel = pending.pop()
            dfd = _safefs.open_beneath(tmpfs, f"{top}/{rel}".rstrip("/"), directory=True)
            try:
                if rel:
                    try:
                        if os.getxattr(dfd, "user.overlay.opaque") == b"y":
                            tar.addfile(_info(rel + ".wh..wh..opq", tarfile.REGTYPE, 0o644))
                    except OSError:
                        pass
                for entry in sorted(os.scandir(dfd), key=lambda e: e.name):
                    count += 1
                    if count > max_entries:
                        raise _images.ImageError(f"commit: more than {max_entries} entries in the box's writable layer")
                    ti, data = _add(tar, dfd, rel, entry.name, pending, links)
                    if ti is not None:
                        anew = ti.isdir() and _safefs.xattr_beneath(  # removed and made again
                            dfd, entry.name, _layers.X_OPAQUE, directory=True) == b"y"
                        ti.uid, ti.gid = owner_of(ti.name, anew) if owner_of else (0, 0)
                        try:
                            tar.addfile(ti, data)
                        finally:
                            if data is not None:
                                data.f.close()
            finally:
                os.close(dfd)


def _info(name: str, kind: bytes, mode: int, size: int = 0, mtime: float = 0) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.size, ti.mtime = kind, mode, size, int(mtime)
    return ti


def _add(tar: tarfile.TarFile, dfd: int, rel: str, name: str, pending: list[str],
         links: dict[tuple[int, int], str]) -> tuple[tarfile.TarInfo | None, _Bounded | None]:
    """The entry ``name`` of ``rel`` as a TarInfo and its data (whiteouts written here)."""
    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    path = rel + name
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:  # overlayfs's whiteout
        tar.addfile(_info(f"{rel}.wh.{name}", tarfile.REGTYPE, 0o644))
    elif stat.S_ISDIR(st.st_mode):
        pending.append(path + "/")
        return _info(path, tarfile.DIRTYPE, mode, mtime=st.st_mtime), None
    elif stat.S_ISLNK(st.st_mode):
        ti = _info(path, tarfile.SYMTYPE, 0o777, mtime=st.st_mtime)
        ti.linkname = os.readlink(name, dir_fd=dfd)
        return ti, None
    elif stat.S_ISREG(st.st_mode):
        fd = sc.openat2(dfd, name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, _safefs.RESOLVE)
        f = os.fdopen(fd, "rb")
        fst = os.fstat(f.fileno())
        if not stat.S_ISREG(fst.st_mode):  # swapped since the stat: skipped
            f.close()
        elif _whiteout(f.fileno()):  # a stored layer's xattr whiteout (_layers)
            f.close()
            tar.addfile(_info(f"{rel}.wh.{name}", tarfile.REGTYPE, 0o644))
        elif fst.st_nlink > 1 and (fst.st_dev, fst.st_ino) in links:  # a further name of a file
            f.close()
            ti = _info(path, tarfile.LNKTYPE, mode, mtime=fst.st_mtime)
            ti.linkname = links[(fst.st_dev, fst.st_ino)]
            return ti, None
        else:
            if fst.st_nlink > 1:
                links[(fst.st_dev, fst.st_ino)] = path
            return _info(path, tarfile.REGTYPE, mode, fst.st_size, fst.st_mtime), _Bounded(f, fst.st_size)
    return None, None  # FIFOs, sockets, other devices: not image content (and never opened)


def layer_owners(store: _images.ImageStore, diff_id: str) -> dict[str, tuple[int, int]]:
    """The layer's entries not owned by 0:0 in its archive (``owners.json``, ``_images``).
    Read whole: the store wrote it, as large as the import's caps let the layer be (a layer of
    many files COPY --chown'ed has tens of MiB of it)."""
    path = os.path.join(os.path.dirname(store.layer_dir(diff_id)), "owners.json")
    try:
        with open(path, "rb") as f:
            return {k: (int(v[0]), int(v[1])) for k, v in json.load(f).items()}
    except FileNotFoundError:
        return {}
    except (ValueError, TypeError, IndexError, AttributeError) as e:
        raise _images.ImageError(f"{path}: damaged ({e}); remove the image and import it again") from None


class _CommitOwners:
    """For a commit: a path of the image's layers keeps its owner there (the layer the overlay
    shows it from: the box's single-id map cannot chown, so a copy-up is still that owner's);
    a path the box made is the box user's."""

    def __init__(self, store: _images.ImageStore, layers: list[str], box_ids: tuple[int, int]) -> None:
        self.store, self.top_first, self.box_ids = store, list(reversed(layers)), box_ids
        self.fds = [os.open(store.layer_dir(d), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC) for d in self.top_first]
        self.owners: dict[int, dict[str, tuple[int, int]]] = {}

    def __call__(self, path: str, opaque: bool = False) -> tuple[int, int]:
        i = None if opaque else showing_layer(self.fds, path)  # (not one a higher layer deleted,
        if i is None:                                          # nor an opaque dir: made anew)
            return self.box_ids
        if i not in self.owners:
            self.owners[i] = layer_owners(self.store, self.top_first[i])
        return self.owners[i].get(path, (0, 0))

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


def _whiteout(fd: int) -> bool:
    try:
        return bool(os.getxattr(fd, _layers.X_WHITEOUT))
    except OSError:
        return False


class _Bounded:
    """Exactly ``size`` bytes of ``f`` (a file the box may still be growing or truncating):
    zeros when it got shorter, the rest ignored when it grew, so the tar stays well-formed."""

    def __init__(self, f: Any, size: int) -> None:
        self.f, self.left = f, size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        data = self.f.read(n)
        data += b"\0" * (n - len(data))
        self.left -= n
        return data


class _Spool:
    """The committed layer as an archive with one member, for ``ImageStore._add_layer``."""

    def __init__(self, f: BinaryIO) -> None:
        self.path, self.f = "(the box's writable layer)", f

    def open(self, rel: str) -> BinaryIO:
        self.f.seek(0)
        return _Reader(self.f)  # type: ignore[return-value]


class _Reader:
    def __init__(self, f: BinaryIO) -> None:
        self.f = f

    def read(self, n: int | None = -1) -> bytes:
        return self.f.read(-1 if n is None else n)

    def __enter__(self) -> _Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def commit(box: Any, name: str) -> str:
    """Store ``box``'s writable layer (whiteouts and opaque directories kept) as a new layer on
    its image's, as image ``name`` (NAME[:TAG]); returns the normalized name. The box keeps
    running; what it writes meanwhile may or may not be in the layer."""
    if not box.config.image:
        raise _images.ImageError("commit: the box is not on an image (SandboxConfig(image=...))")
    target = _images.normalize(name)
    box._check_open(turn=True)
    store = _images.ImageStore()
    base = store.get(box.config.image)
    owners = _CommitOwners(store, base["layers"], (box.config.uid, box.config.gid))
    with tempfile.TemporaryFile() as spool:
        try:
            _tar_upper(box._files.tmpfs, spool, store.limits["max_entries"], owner_of=owners)
        finally:
            owners.close()
        spool.seek(0)
        h = hashlib.sha256()
        while chunk := spool.read(1 << 20):
            h.update(chunk)
        diff_id = "sha256:" + h.hexdigest()
        store._add_layer("layer.tar", diff_id, None, _Spool(spool))  # type: ignore[arg-type]
    config = dict(base["config"])
    config["rootfs"] = {"type": "layers", "diff_ids": [*base["layers"], diff_id]}
    config["history"] = [*(config.get("history") or []), {"created_by": "sandbox Box.commit"}]
    data = _images.json.dumps(config, sort_keys=True).encode()
    store._write_record(target, config, "sha256:" + hashlib.sha256(data).hexdigest(), config["rootfs"]["diff_ids"])
    return target
