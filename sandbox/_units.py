"""Sizes, durations and counts as users write them (``256M``, ``500ms``, ``64``) → numbers, or
one ``ConfigError`` line naming the value and what is valid. Split from ``sandbox._config`` (which
re-exports all of it) to keep each module short; on the CLI's run path, so no ``re``.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
_SIZE_UNITS = {"": 1, "k": KiB, "m": MiB, "g": GiB, "t": 1024 * GiB}
_TIME_UNITS = (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0))


class ConfigError(ValueError):
    """A user mistake in the configuration; ``str()`` is one line naming the value and what is valid."""


# Hand-written rather than ``re``: importing re (and enum under it) is ~4 ms of the CLI's start.
def _number(text: str) -> float | None:
    """``"12"``/``"1.5"`` (ASCII digits, at most one dot with digits on both sides) or None."""
    whole, dot, frac = text.partition(".")
    if not (whole.isascii() and whole.isdigit()):
        return None
    if dot and not (frac.isascii() and frac.isdigit()):
        return None
    return float(text)


def _size_text(text: str) -> float | None:
    """``NUMBER [K|M|G|T][B|iB]`` (spaces allowed around the number) → bytes, or None."""
    s = text.strip()
    if s[-1:] in ("b", "B"):
        s = s[:-2] if s[-2:-1] == "i" else s[:-1]
    unit = s[-1:].lower() if s[-1:].lower() in ("k", "m", "g", "t") else ""
    n = _number(s[: len(s) - len(unit)].rstrip())
    return None if n is None else n * _SIZE_UNITS[unit]


def _duration_text(text: str) -> float | None:
    """``NUMBER [ms|s|m|h]`` (spaces allowed) → seconds, or None."""
    s = text.strip()
    factor = 1.0
    for suffix, f in _TIME_UNITS:
        if s.endswith(suffix):
            s, factor = s[: -len(suffix)], f
            break
    n = _number(s.rstrip())
    return None if n is None else n * factor


def parse_size(value: int | str | None, what: str, *, allow_none: bool = True,
               minimum: int = 1) -> int | None:
    """``"256M"`` → bytes. Accepts plain bytes, K/M/G/T suffixes (binary), optional ``iB``/``B``.
    ``minimum``: the smallest size that makes sense here, named in the error below it."""
    bad = f"{what}: {value!r} is not a size; use bytes or a number with K/M/G (e.g. 256M)"
    m = _magnitude(value, _size_text, bad)
    if m is None:
        if allow_none:
            return None
        raise ConfigError(f"{what}: a limit is required here (e.g. 64M); 'unlimited' is not allowed")
    n = int(m)
    if n <= 0:
        raise ConfigError(f"{what} {value!r}: must be a positive size like 256M")
    if n < minimum:
        bare = isinstance(value, str) and value.strip().isdigit()  # "10" is bytes: meant 10M?
        hint = f"; a number alone is bytes: did you mean {str(value).strip()}M?" if bare else ""
        raise ConfigError(f"{what} {value!r}: below the minimum of {_fmt(minimum)}{hint}")
    return n


def _magnitude(value: object, parse: Callable[[str], float | None], bad: str) -> float | None:
    """The number a size or a duration gives, its sign kept, None for none/unlimited; ``bad``
    (a ConfigError) for a bool or text ``parse`` cannot read. ``"-5M"`` parses as -5M: a
    negative value is then refused as not positive, naming it, instead of as "not a size"."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "unlimited")):
        return None
    if isinstance(value, bool):
        raise ConfigError(bad)
    if isinstance(value, int | float):
        return value  # (an int stays exact: a size of 2**63 + 1 is not rounded)
    text = str(value).strip()
    sign, text = (-1, text[1:]) if text.startswith("-") else (1, text)
    parsed = parse(text)
    if parsed is None:
        raise ConfigError(bad)
    return sign * parsed


def _fmt(n: int) -> str:
    """1048576 → ``1M``: the minimums in the messages, as a user would write them."""
    for unit, f in (("G", GiB), ("M", MiB), ("K", KiB)):
        if n >= f and n % f == 0:
            return f"{n // f}{unit}"
    return f"{n} bytes"


def parse_duration(value: float | int | str | None, what: str) -> float | None:
    """``"5s"``/``"500ms"``/``"2m"``/``3`` → seconds."""
    secs = _magnitude(value, _duration_text,
                      f"{what}: {value!r} is not a duration; use e.g. 5s, 500ms, 2m")
    if secs is None:
        return None
    secs = float(secs)
    if secs <= 0:
        raise ConfigError(f"{what}: {value!r} must be a positive duration like 5s")
    return secs


def parse_count(value: int | str | None, what: str, *, minimum: int = 1) -> int | None:
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "unlimited")):
        return None
    try:
        n = int(str(value).strip()) if not isinstance(value, bool) else None
    except ValueError:
        n = None
    if n is None:
        raise ConfigError(f"{what}: {value!r} is not a whole number >= {minimum}")
    if n < minimum:
        why = f" ({COUNT_MINIMUM_WHY[what]})" if what in COUNT_MINIMUM_WHY else ""
        raise ConfigError(f"{what} {value!r}: below the minimum of {minimum}{why}")
    return n


COUNT_MINIMUM_WHY = {"--pids": "the box's init and the program"}
