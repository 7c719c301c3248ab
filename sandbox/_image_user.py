"""The image config's ``User`` (``uid``, ``uid:gid``, ``name``, ``name:group``) as the box's
uid/gid (``SandboxConfig.validate`` on an image, when ``uid``/``gid`` are the defaults).

A name is looked up in the image's own /etc/passwd and /etc/group, read from the store's layer
trees on the host: those trees are the archive's, so the file is opened with
``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS …)`` (``_safefs``) under each layer's directory,
top layer first, the way overlayfs would resolve it: the first layer that has it wins, and a
whiteout of it (or of /etc), or an opaque /etc, ends the search. An /etc/passwd that is a
symlink (or /etc one) is refused rather than followed: resolved from the host it would read a
host file. Reads are bounded. Docker's rule for a numeric uid without a group: the passwd
entry's group if the uid has one, else 0.

What a box cannot be is refused with one line: an id above 65533 (the box's id map is one id,
or a 65536-id range whose top ids are overflow ids).
"""

from __future__ import annotations

import os

from sandbox import _layers, _safefs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sandbox._config import SandboxConfig

MAX_READ = 1 << 20
MAX_ID = 65533


def _read(layer_dirs: list[str], rel: str, what: str) -> bytes:
    """``rel`` as the image's overlay shows it (layer_dirs top first); b"" when it has none."""
    for d in layer_dirs:
        root = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                fd = _safefs.open_beneath(root, rel)
            except _safefs.UnsafePath:
                raise ValueError(f"{what}: the image's /{rel} is a symlink or not a regular file "
                                 "(not followed from the host); give uid:gid as numbers") from None
            except NotADirectoryError:  # /etc whited out or a file in this layer
                return b""
            except FileNotFoundError:
                try:
                    dfd = _safefs.open_beneath(root, os.path.dirname(rel), directory=True)
                except (FileNotFoundError, NotADirectoryError):
                    continue
                try:
                    if _xattr(dfd, _layers.X_OPAQUE) == b"y":
                        return b""
                finally:
                    os.close(dfd)
                continue
            with os.fdopen(fd, "rb") as f:
                return b"" if _xattr(f.fileno(), _layers.X_WHITEOUT) else f.read(MAX_READ)
        finally:
            os.close(root)
    return b""


def _xattr(fd: int, name: str) -> bytes:
    try:
        return os.getxattr(fd, name)
    except OSError:
        return b""


def _entries(data: bytes) -> list[list[str]]:
    return [line.split(":") for line in data.decode("utf-8", "replace").splitlines() if line.count(":") >= 2]


def _id(text: str, what: str) -> int:
    n = int(text)
    if not 0 <= n <= MAX_ID:
        raise ValueError(f"{what}: id {n} is not one a box can have (0 to {MAX_ID}); give --uid/--gid")
    return n


def resolve(user: str, layer_dirs: list[str]) -> tuple[int, int]:
    """``(uid, gid)`` of the image's ``User`` string."""
    what = f"User {user!r}"
    name, _, group = user.partition(":")
    passwd = None
    if name.isdigit():
        uid = _id(name, what)
    else:
        passwd = _entries(_read(layer_dirs, "etc/passwd", what))
        row = next((r for r in passwd if r[0] == name and len(r) >= 4), None)
        if row is None or not (row[2].isdigit() and row[3].isdigit()):
            raise ValueError(f"{what}: no user {name!r} in the image's /etc/passwd; give uid:gid as numbers")
        uid = _id(row[2], what)
        if not group:
            return uid, _id(row[3], what)
    if group.isdigit():
        return uid, _id(group, what)
    if group:
        row = next((r for r in _entries(_read(layer_dirs, "etc/group", what)) if r[0] == group), None)
        if row is None or not row[2].isdigit():
            raise ValueError(f"{what}: no group {group!r} in the image's /etc/group; give uid:gid as numbers")
        return uid, _id(row[2], what)
    passwd = _entries(_read(layer_dirs, "etc/passwd", what))
    row = next((r for r in passwd if len(r) >= 4 and r[2] == str(uid) and r[3].isdigit()), None)
    return uid, _id(row[3], what) if row else 0


def apply_user(cfg: SandboxConfig, image_cfg: dict, layer_dirs: list[str]) -> None:
    """Set ``cfg.uid``/``cfg.gid`` from the image's User unless the caller gave other ids."""
    from sandbox._config import DEFAULT_GID, DEFAULT_UID, ConfigError

    user = image_cfg.get("User") or ""
    if not isinstance(user, str) or not user or (cfg.uid, cfg.gid) != (DEFAULT_UID, DEFAULT_GID):
        return
    try:
        cfg.uid, cfg.gid = resolve(user, layer_dirs)
    except ValueError as e:
        raise ConfigError(f"image {cfg.image!r}: {e}") from None
