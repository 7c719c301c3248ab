"""Import pyseccomp without what it only needs for type hints and library search.

``sandbox run -- /bin/true`` is measured against bubblewrap's start (a C program), and
pyseccomp's own imports were ~22 ms of ours: ``typing`` (~8 ms, for annotations, ``cast`` and
``overload``) and ``ctypes.util`` (shutil, subprocess, ...) whose ``find_library`` runs
``ldconfig -p`` twice (~15 ms); ``weakref`` (~0.7 ms, for one ``weakref.finalize`` per
filter) comes third. While pyseccomp imports, these are stand-ins:

- ``typing``: ``cast``/``overload`` are the identity (what they do at run time anyway) and
  every other name is a placeholder that only ends up in pyseccomp's ``__annotations__``;
- ``weakref``: ``finalize`` is a small equivalent built on the C ``_weakref.ref`` callback
  (frees the libseccomp context when its filter object dies; ``detach``/call/``alive``);
- ``ctypes.util.find_library``: tries the well-known sonames first, and hands over to the real
  module (for good) if one of them does not load here.

A stand-in is used only when the real module is not loaded yet (under pytest it is), and is
removed from ``sys.modules`` right after, so nothing else ever sees it.
"""

from __future__ import annotations

import _weakref
import ctypes
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

KNOWN_SONAMES = {"c": "libc.so.6", "seccomp": "libseccomp.so.2"}


class _Hint:
    """Placeholder for ``Union[...]``, ``Iterable[...]``, ``Any``...: annotations only."""

    def __getitem__(self, _item: object) -> _Hint:
        return self

    def __repr__(self) -> str:
        return "<typing stand-in>"


Module = type(sys)  # types.ModuleType, without importing types


def _typing_stand_in() -> Module:
    mod = Module("typing")
    hint = _Hint()
    mod.cast = lambda _type, value: value  # type: ignore[attr-defined]
    mod.overload = lambda fn: fn  # type: ignore[attr-defined]
    mod.__getattr__ = lambda _name: hint  # type: ignore[method-assign]
    return mod


class Finalize:
    """``weakref.finalize(obj, func, *args)`` as pyseccomp uses it: ``func(*args)`` runs once,
    when ``obj`` is collected or the finalizer is called; ``detach()`` cancels it. Pending
    finalizers are kept alive by a class-level set, as weakref.finalize keeps its registry."""

    _pending: set[Finalize] = set()

    def __init__(self, obj: object, func: Any, *args: Any) -> None:
        self._func, self._args = func, args
        self._ref = _weakref.ref(obj, self._collected)
        Finalize._pending.add(self)

    def _collected(self, _ref: object) -> None:
        self()

    def __call__(self) -> Any:
        if self in Finalize._pending:
            Finalize._pending.discard(self)
            return self._func(*self._args)
        return None

    def detach(self) -> tuple[object, Any, tuple[Any, ...], dict[str, Any]] | None:
        obj = self._ref()
        if self in Finalize._pending and obj is not None:
            Finalize._pending.discard(self)
            return (obj, self._func, self._args, {})
        return None

    @property
    def alive(self) -> bool:
        return self in Finalize._pending


def _find_library(name: str) -> str | None:
    so = KNOWN_SONAMES.get(name)
    if so:
        try:
            ctypes.CDLL(so)
            return so
        except OSError:
            pass
    if sys.modules.get("ctypes.util") is _util_stand_in:  # let the real module in, for good
        del sys.modules["ctypes.util"]
    import ctypes.util as real

    return real.find_library(name)


_util_stand_in = Module("ctypes.util")
_util_stand_in.find_library = _find_library  # type: ignore[attr-defined]


def import_pyseccomp() -> Any:
    if "pyseccomp" in sys.modules:
        return sys.modules["pyseccomp"]
    stand_ins: dict[str, Module] = {}
    if "typing" not in sys.modules:
        stand_ins["typing"] = _typing_stand_in()
    if "weakref" not in sys.modules:
        stand_ins["weakref"] = Module("weakref")
        stand_ins["weakref"].finalize = Finalize  # type: ignore[attr-defined]
    real_find = None
    if "ctypes.util" in sys.modules:  # loaded: only its find_library is swapped, for a moment
        real_find = sys.modules["ctypes.util"].find_library
        sys.modules["ctypes.util"].find_library = _find_library
    else:
        stand_ins["ctypes.util"] = _util_stand_in
    sys.modules.update(stand_ins)
    if "ctypes.util" in stand_ins:
        ctypes.util = _util_stand_in  # type: ignore[attr-defined]
    try:
        import pyseccomp
    finally:
        if real_find is not None:
            sys.modules["ctypes.util"].find_library = real_find
        for name, mod in stand_ins.items():
            if sys.modules.get(name) is mod:
                del sys.modules[name]
                if name == "ctypes.util":
                    del ctypes.util  # type: ignore[attr-defined]
    return pyseccomp
