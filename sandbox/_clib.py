"""Calling libc: the slice of ``ctypes`` this package uses, built straight on ``_ctypes``.

Why not ``import ctypes``: its ``__init__`` defines ~40 types, a dozen loaders and helpers, and
pulls in ``struct`` and ``types`` — ~1.8 ms of every ``sandbox run`` (measured with os already
loaded; the C extension itself is ~0.5 ms of that). We need eight scalar types, structures,
pointers and function pointers from one library handle, all of which ``_ctypes`` (the C half of
ctypes, present wherever ctypes is) provides; the classes below are defined exactly as
``ctypes/__init__.py`` defines them, so they behave the same, and real ctypes objects may be
passed to these functions and back. Tools that are off the run path (``doctor``, the pyseccomp
loader) keep using ``ctypes`` itself.
"""

from __future__ import annotations

import _ctypes
from _ctypes import (  # noqa: F401  (re-exported)
    POINTER,
    Array,
    Structure,
    _SimpleCData,
    addressof,
    byref,
    get_errno,
    sizeof,
)


def _scalar(name: str, code: str) -> type:
    """A C scalar type: ``_type_`` is the struct-module code the ``_ctypes`` metaclass reads."""
    return type(name, (_SimpleCData,), {"_type_": code, "__module__": __name__})


c_int, c_uint, c_ushort = _scalar("c_int", "i"), _scalar("c_uint", "I"), _scalar("c_ushort", "H")
c_long, c_ulong, c_uint64 = _scalar("c_long", "l"), _scalar("c_ulong", "L"), _scalar("c_uint64", "Q")
c_void_p = _scalar("c_void_p", "P")
# "z": a NUL-terminated string or, from ``bytes``, a pointer to the bytes object's own buffer
# (the ctypes object holding it keeps the bytes alive)
c_char_p = _scalar("c_char_p", "z")

# LP64 Linux (x86-64, aarch64: the only architectures _syscalls supports), as ctypes decides it.
c_int32, c_uint32, c_size_t = c_int, c_uint, c_ulong
if sizeof(c_ulong) != sizeof(c_void_p) or sizeof(c_int) != 4:
    raise ImportError("sandbox needs an LP64 platform (x86-64 or aarch64 Linux)")


class Library:
    """A ``dlopen`` handle whose attributes are C functions returning ``restype`` (c_int unless
    set on the function), like ``ctypes.CDLL``. ``use_errno`` keeps errno per call for
    ``get_errno``; ``keep_gil`` is ``ctypes.PyDLL`` (the GIL is held across the call)."""

    def __init__(self, name: str | None, *, use_errno: bool = True, keep_gil: bool = False,
                 restype: type = c_int) -> None:
        flags = _ctypes.FUNCFLAG_CDECL
        if use_errno:
            flags |= _ctypes.FUNCFLAG_USE_ERRNO
        if keep_gil:
            flags |= _ctypes.FUNCFLAG_PYTHONAPI

        class _Function(_ctypes.CFuncPtr):
            _flags_ = flags
            _restype_ = restype

        self._function = _Function
        self._handle = _ctypes.dlopen(name, 0)  # RTLD_LOCAL, ctypes' default mode on Linux

    def __getattr__(self, name: str) -> _ctypes.CFuncPtr:
        if name.startswith("_"):
            raise AttributeError(name)
        fn = self._function((name, self))  # raises AttributeError for an unknown symbol
        setattr(self, name, fn)  # resolved once, like CDLL
        return fn
