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
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "unlimited")):
        if allow_none:
            return None
        raise ConfigError(f"{what}: a limit is required here (e.g. 64M); 'unlimited' is not allowed")
    if isinstance(value, bool):
        raise ConfigError(f"{what}: {value!r} is not a size; use bytes or a number with K/M/G (e.g. 256M)")
    if isinstance(value, int | float):
        n = int(value)
    else:
        parsed, sign = _unsigned(value, _size_text)
        if parsed is None:
            raise ConfigError(
                f"{what}: {value!r} is not a size; use bytes or a number with K/M/G (e.g. 256M)"
            )
        n = sign * int(parsed)
    if n <= 0:
        raise ConfigError(f"{what} {value!r}: must be a positive size like 256M")
    if n < minimum:
        bare = isinstance(value, str) and value.strip().isdigit()  # "10" is bytes: meant 10M?
        hint = f"; a number alone is bytes: did you mean {str(value).strip()}M?" if bare else ""
        raise ConfigError(f"{what} {value!r}: below the minimum of {_fmt(minimum)}{hint}")
    return n


def _unsigned(value: object, parse: Callable[[str], float | None]) -> tuple[float | None, int]:
    """``"-5M"`` → (the number without its sign, -1): a negative value is then refused as not
    positive, naming it, instead of as "not a size"."""
    text = str(value).strip()
    return (parse(text[1:]), -1) if text.startswith("-") else (parse(text), 1)


def _fmt(n: int) -> str:
    """1048576 → ``1M``: the minimums in the messages, as a user would write them."""
    for unit, f in (("G", GiB), ("M", MiB), ("K", KiB)):
        if n >= f and n % f == 0:
            return f"{n // f}{unit}"
    return f"{n} bytes"


def parse_duration(value: float | int | str | None, what: str) -> float | None:
    """``"5s"``/``"500ms"``/``"2m"``/``3`` → seconds."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "unlimited")):
        return None
    if isinstance(value, bool):
        raise ConfigError(f"{what}: {value!r} is not a duration; use e.g. 5s, 500ms, 2m")
    if isinstance(value, int | float):
        secs = float(value)
    else:
        parsed, sign = _unsigned(value, _duration_text)
        if parsed is None:
            raise ConfigError(f"{what}: {value!r} is not a duration; use e.g. 5s, 500ms, 2m")
        secs = sign * parsed
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
