"""Images of more layers than an old kernel's overlay can stack: the bottom layers merged into one.

Linux < 6.8 has no overlayfs ``lowerdir+``: every lower goes into mount(2)'s option string,
which the kernel copies as one page (~150 layers named ``/oldroot/proc/self/fd/N``). On such a
kernel an image of more than ``MAX_LOWERS`` layers is given to the box as its top
``MAX_LOWERS - 1`` layers over one *flattened* layer: the layers below merged by overlayfs's
own rule, computed here over the store's trees, bottom layer first:

* a later layer's entry replaces an earlier one's (a non-directory drops what was under it);
* a whiteout (``user.overlay.whiteout``, ``_layers``) deletes the name and all under it;
* an opaque directory (``user.overlay.opaque=y``) hides what the earlier layers had in it,
  before the layer's own entries.

The merge is materialized as hard links to the layers' files (no data is copied: the store's
files are never written after import), directories with their modes, symlinks by their text.
It is the bottom of the stack, so it needs no whiteouts of its own. It is built once per chain
of layers, in the store's ``tmp/`` and renamed into ``layers/flat-<sha256 of the chain>``
(two boxes racing keep one), and removed with the last image that uses one of its layers
(``ImageStore.remove``). The layer trees came from archives, so every name is opened with
``openat2`` beneath its layer (``_safefs``), no link followed.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import stat

from sandbox import _layers, _safefs
from sandbox import _syscalls as sc

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from sandbox._images import ImageStore

MAX_LOWERS = 128  # lowers of /oldroot/proc/self/fd/NNN that fit mount(2)'s one page, with room
PREFIX = "flat-"


def lowerdir_plus() -> bool:
    """Whether this kernel's overlayfs takes ``lowerdir+`` (Linux 6.8)."""
    parts = os.uname().release.split(".")
    try:
        return (int(parts[0]), int("".join(c for c in parts[1] if c.isdigit()) or 0)) >= (6, 8)
    except (IndexError, ValueError):
        return True  # an unparsable release: try lowerdir+, the mount falls back if refused


def lowers(store: ImageStore, diff_ids: list[str]) -> list[str]:
    """The layer directories of ``diff_ids`` (top first) that the box's overlay stacks."""
    dirs = [store.layer_dir(d) for d in diff_ids]
    if len(dirs) <= MAX_LOWERS or lowerdir_plus():
        return dirs
    keep = MAX_LOWERS - 1
    return dirs[:keep] + [_flattened(store, diff_ids[keep:])]


def _flattened(store: ImageStore, chain: list[str]) -> str:
    """The directory of ``chain`` (top first) merged into one tree, built if the store has none."""
    name = PREFIX + hashlib.sha256("\n".join(chain).encode()).hexdigest()
    final = os.path.join(store._dir("layers"), name)
    if not os.path.isdir(final):
        work = os.path.join(store._dir("tmp"), secrets.token_hex(8))
        os.mkdir(work, 0o711)
        try:
            bottom_first = [store.layer_dir(d) for d in reversed(chain)]
            os.mkdir(os.path.join(work, "fs"), 0o700)
            counts = [store.layer(d)["entries"] for d in reversed(chain)]  # (as imported)
            _materialize(_merge(bottom_first, counts), bottom_first, os.path.join(work, "fs"))
            with open(os.path.join(work, "flat.json"), "w") as f:
                json.dump({"layers": chain}, f)
            try:
                os.rename(work, final)
                work = ""
            except OSError:  # another box built it first
                pass
        finally:
            if work:
                store._discard(work)
    return os.path.join(final, "fs")


def _merge(layer_dirs: list[str], counts: list[int]) -> dict[str, Any]:
    """The merged view of ``layer_dirs`` (bottom first): a tree of ``{"layer": index, "rel":
    its path in that layer, "mode", "kids": {name: node}}``. ``counts``: each layer's entries
    (``layer.json``), the walk's bound: a store made with a higher ``max_layer_entries`` than
    the default holds larger layers, which a default bound would cut short, silently."""
    root: dict[str, Any] = {"layer": 0, "rel": "", "mode": 0o40755, "kids": {}}
    for i, d in enumerate(layer_dirs):
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            if _safefs.xattr_beneath(fd, "", _layers.X_OPAQUE) == b"y":
                root["kids"] = {}
            root["mode"] = os.fstat(fd).st_mode
            for rel, st in _safefs.walk_beneath(fd, max_entries=counts[i] + 1):
                *dirs, name = rel.split("/")
                parent = root
                for part in dirs:  # (a layer lists a directory before its entries)
                    parent = parent["kids"][part]
                if stat.S_ISREG(st.st_mode) and st.st_size == 0 and _safefs.xattr_beneath(fd, rel, _layers.X_WHITEOUT):
                    parent["kids"].pop(name, None)
                    continue
                old = parent["kids"].get(name)
                node = {"layer": i, "rel": rel, "mode": st.st_mode, "kids": {}}
                if stat.S_ISDIR(st.st_mode) and old and stat.S_ISDIR(old["mode"]) \
                        and _safefs.xattr_beneath(fd, rel, _layers.X_OPAQUE) != b"y":
                    node["kids"] = old["kids"]  # the earlier layers' entries show through
                parent["kids"][name] = node
        finally:
            os.close(fd)
    return root


def _materialize(tree: dict[str, Any], layer_dirs: list[str], top: str) -> None:
    layer_fds = [os.open(d, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC) for d in layer_dirs]
    try:
        out = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _fill(tree, out, layer_fds)
            os.fchmod(out, stat.S_IMODE(tree["mode"]))
        finally:
            os.close(out)
    finally:
        for fd in layer_fds:
            os.close(fd)


def _fill(node: dict[str, Any], out: int, layer_fds: list[int]) -> None:
    """``node``'s entries into the directory ``out``; a directory's mode is set once it is
    full (a 0555 one would refuse its own entries)."""
    for name, kid in sorted(node["kids"].items()):
        mode, src = kid["mode"], layer_fds[kid["layer"]]
        if stat.S_ISDIR(mode):
            os.mkdir(name, 0o700, dir_fd=out)
            fd = sc.openat2(out, name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, _safefs.RESOLVE)
            try:
                _fill(kid, fd, layer_fds)
                os.fchmod(fd, stat.S_IMODE(mode))
            finally:
                os.close(fd)
            continue
        parent, _, base = kid["rel"].rpartition("/")
        pfd = _safefs.open_beneath(src, parent, directory=True)
        try:
            if stat.S_ISLNK(mode):
                os.symlink(os.readlink(base, dir_fd=pfd), name, dir_fd=out)
            else:
                os.link(base, name, src_dir_fd=pfd, dst_dir_fd=out, follow_symlinks=False)
        finally:
            os.close(pfd)


def remove_unused(store: ImageStore, gone: list[str]) -> None:
    """Remove the flattened layers made of any layer in ``gone`` (``ImageStore.remove``)."""
    top = os.path.join(store.root, "layers")
    parent = os.open(top, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for name in os.listdir(parent):
            if not name.startswith(PREFIX):
                continue
            try:
                with open(os.path.join(top, name, "flat.json"), "rb") as f:
                    chain = json.loads(f.read(1 << 20))["layers"]
            except (OSError, ValueError, KeyError):
                chain = gone  # unreadable: made by us, so rebuilt when needed
            if set(chain) & set(gone):
                _layers.remove_tree(parent, name)
    finally:
        os.close(parent)
