"""Where a box sees the running Python: its prefixes outside /usr at neutral paths.

At the host's path (the README's venv in the checkout: /home/USER/proj/.venv), a box's
/proc/self/mountinfo and the directories made above the mount named the user and the
checkout. ``sandbox._rootfs`` mounts what ``exposed`` lists; ``box_paths`` turns our own paths
(``sys.path`` entries, the interpreter) into the box's, for the workers we start in a box.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

DEFAULT_EXPOSED = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")

# Where the box sees the running Python's prefixes that are not under /usr: base_prefix,
# base_exec_prefix (the installation: what runs the interpreter), prefix, exec_prefix (a
# venv's). At the host's path, /proc/self/mountinfo and the directories above named the user
# (/home/USER/.venv) and the checkout; these names say nothing of the host.
PYTHON_AT = ("/opt/python", "/opt/python-exec", "/opt/venv", "/opt/venv-exec")

_prefixes: list[tuple[str, str]] | None = None  # computed once (functools costs the CLI's start ~1 ms)


def _python_prefixes() -> list[tuple[str, str]]:
    """(host path, neutral box path) of each prefix: one inside another (a pyenv-virtualenv
    env in its base) is seen through its parent's mount."""
    global _prefixes
    if _prefixes is None:
        _prefixes = _find_python_prefixes()
    return _prefixes


def _find_python_prefixes() -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    for p, at in zip((sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix), PYTHON_AT, strict=True):
        rp = os.path.realpath(p)
        if _under(rp, DEFAULT_EXPOSED) is None and _under(rp, [h for h, _ in seen]) is None:
            seen.append((rp, at))
    return seen


def exposed(expose_python: bool | str) -> list[tuple[str, str]]:
    """(host path, box path) of the prefixes a box with this ``expose_python`` gets.

    True: only the installation, at /opt/python. Not the venv: its files name where it lives
    (pyvenv.cfg's ``command``, its scripts' ``#!`` lines, every byte-compiled module's file
    name: 1605 files of this project's venv held its host path), and no program in a box
    runs from it (``python3`` there is /usr/bin's). "venv": the venv too, at /opt/venv (the
    fixture's call worker imports what the tests' Python has installed; pyvenv.cfg's
    ``home`` is the base's bin, so the venv's own interpreter runs there too). "host": all at
    their host paths (a clone of the caller imports from where it already did)."""
    if not expose_python:
        return []
    pairs = [(h, at) for h, at in _python_prefixes()
             if expose_python in ("venv", "host") or at.startswith("/opt/python")]
    return [(h, h) for h, _ in pairs] if expose_python == "host" else pairs


def _under(path: str, roots: Sequence[str]) -> str | None:
    return next((r for r in roots if path == r or path.startswith(r + "/")), None)


def box_paths(paths: Iterable[str], expose_python: bool | str = True) -> list[str]:
    """The host paths of the running Python (``sys.path`` entries, the interpreter) as a box
    with this ``expose_python`` sees them; those the box does not have are left out, so no
    host path is handed in for nothing (a worker's ``sys.path`` is readable by the box)."""
    pairs = dict(exposed(expose_python))
    out: list[str] = []
    for p in paths:
        rp = os.path.realpath(p) if p.startswith("/") else ""
        root = _under(rp, DEFAULT_EXPOSED) or _under(rp, list(pairs))
        if root is not None:
            out.append(pairs.get(root, root) + rp[len(root):])
    return out
