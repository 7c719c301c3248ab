"""The only format that crosses from a box to the pytest process: bounded, tagged JSON.

Never pickle: unpickling bytes a box wrote is code execution on the host. Values are
JSON-compatible (None, bool, int, float, str, list, dict with str keys) plus bytes and tuples,
tagged as ``{"$bytes": "<base64>"}`` / ``{"$tuple": [...]}``. Decoding checks every type, the
nesting depth and the total size, and raises ``CodecError`` (never anything else) on garbage.

The box's worker (``sandbox._worker``) loads this module from its source inside a fresh
interpreter and uses ``tag``/``untag`` with its own JSON (``json`` imports ``re``, ``enum`` and
more: ~10 ms of every worker start), so this module imports only ``binascii`` at load time.
"""

from __future__ import annotations

import binascii

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

MAX_BYTES = 32 * 1024 * 1024
MAX_DEPTH = 64


class CodecError(ValueError):
    pass


def _enc(v: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise CodecError("value nested too deeply")
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, bytes | bytearray | memoryview):
        return {"$bytes": binascii.b2a_base64(bytes(v), newline=False).decode()}
    if isinstance(v, tuple):
        return {"$tuple": [_enc(x, depth + 1) for x in v]}
    if isinstance(v, list):
        return [_enc(x, depth + 1) for x in v]
    if isinstance(v, dict):
        if not all(isinstance(k, str) for k in v):
            raise CodecError("only dicts with str keys can cross the sandbox boundary")
        if len(v) == 1 and next(iter(v)).startswith("$"):
            return {"$dict": {k: _enc(x, depth + 1) for k, x in v.items()}}
        return {k: _enc(x, depth + 1) for k, x in v.items()}
    raise CodecError(f"{type(v).__name__} cannot cross the sandbox boundary "
                     "(use None, bool, int, float, str, bytes, list, tuple, dict)")


def tag(v: Any) -> Any:
    """``v`` as plain JSON-able values (bytes and tuples tagged); CodecError if it may not cross."""
    return _enc(v, 0)


def encode(v: Any) -> bytes:
    import json

    data = json.dumps(tag(v), allow_nan=True).encode()
    if len(data) > MAX_BYTES:
        raise CodecError(f"value too large ({len(data)} bytes > {MAX_BYTES})")
    return data


def _dec(v: Any, depth: int) -> Any:
    if depth > MAX_DEPTH:
        raise CodecError("value nested too deeply")
    if v is None or isinstance(v, bool | int | float | str):
        return v
    if isinstance(v, list):
        return [_dec(x, depth + 1) for x in v]
    if isinstance(v, dict):
        if len(v) == 1:
            (tag, inner), = v.items()
            if tag == "$bytes":
                if not isinstance(inner, str):
                    raise CodecError("bad $bytes")
                try:
                    return binascii.a2b_base64(inner, strict_mode=True)
                except ValueError as e:
                    raise CodecError("bad $bytes") from e
            if tag == "$tuple":
                if not isinstance(inner, list):
                    raise CodecError("bad $tuple")
                return tuple(_dec(x, depth + 1) for x in inner)
            if tag == "$dict":
                if not isinstance(inner, dict):
                    raise CodecError("bad $dict")
                return {k: _dec(x, depth + 1) for k, x in inner.items()}
        return {k: _dec(x, depth + 1) for k, x in v.items()}
    raise CodecError(f"unexpected {type(v).__name__}")


def untag(raw: Any) -> Any:
    """The value that ``tag`` made ``raw`` from, every type checked; CodecError on garbage."""
    try:
        return _dec(raw, 0)
    except RecursionError as e:
        raise CodecError("value nested too deeply") from e


def decode(data: bytes) -> Any:
    import json

    if len(data) > MAX_BYTES:
        raise CodecError("message too large")
    try:
        raw = json.loads(data)
    except (ValueError, RecursionError) as e:
        raise CodecError(f"not valid JSON: {str(e)[:100]}") from None
    return untag(raw)
