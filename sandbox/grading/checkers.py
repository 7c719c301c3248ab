"""Output checkers for grader tests: they run in the teacher's process, outside every box, on
a program's output as data (bytes or text; never evaluated, never unpickled).

    from sandbox.grading.checkers import check, exact, tokens, floats

    r = submission.run(["./prog"], stdin=b"3\\n")
    check(r, "1 2 3\\n", tokens)                       # AssertionError naming the first difference
    check(r, "0.333333", floats(abs_tol=1e-6))
    check(r, expected, my_checker)                     # the teacher's own: (expected, got) -> ...

A checker is any callable ``(expected: str, got: str) -> Verdict | bool | str``: a ``Verdict``,
True/False, or a message (a non-empty string means wrong, and says why). ``check`` raises
``AssertionError`` with the checker's message (pytest shows it in the feedback) when the answer
is wrong, and returns the ``Verdict`` otherwise. Why outside the box: the expected answer never
enters the submission's box, and what the submission printed cannot change how it is judged.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_CHECKED = 64 << 20  # bytes of output a checker looks at (Result's are capped before this)
SHOWN = 60  # characters of a token quoted in a message


@dataclass(frozen=True)
class Verdict:
    """A checker's answer: ``ok``, and ``message`` (why not, or a note)."""

    ok: bool
    message: str = ""

    def __bool__(self) -> bool:
        return self.ok


Checker = Callable[[str, str], "Verdict | bool | str"]


def _text(data: Any, what: str) -> str:
    if hasattr(data, "stdout") and not isinstance(data, (bytes, str)):
        data = data.stdout  # a sandbox.Result: its standard output
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data[:MAX_CHECKED]).decode(errors="replace")
    if isinstance(data, str):
        return data[:MAX_CHECKED]
    raise TypeError(f"{what}: {type(data).__name__}: give bytes, str or a sandbox.Result")


def _q(s: str) -> str:
    return repr(s if len(s) <= SHOWN else s[:SHOWN] + "…")


def exact(expected: str, got: str) -> Verdict:
    """Byte for byte, except that trailing whitespace at the end of the output is ignored."""
    e, g = expected.rstrip(), got.rstrip()
    if e == g:
        return Verdict(True)
    el, gl = e.split("\n"), g.split("\n")
    for i, (a, b) in enumerate(zip(el, gl, strict=False)):
        if a != b:
            return Verdict(False, f"line {i + 1}: expected {_q(a)}, got {_q(b)}")
    return Verdict(False, f"expected {len(el)} lines, got {len(gl)}")


def tokens(expected: str, got: str) -> Verdict:
    """Whitespace-separated tokens equal, in order (spacing and line breaks do not matter)."""
    e, g = expected.split(), got.split()
    for i, (a, b) in enumerate(zip(e, g, strict=False)):
        if a != b:
            return Verdict(False, f"token {i + 1}: expected {_q(a)}, got {_q(b)}")
    if len(e) != len(g):
        return Verdict(False, f"expected {len(e)} tokens, got {len(g)}")
    return Verdict(True)


def floats(abs_tol: float = 1e-9, rel_tol: float = 1e-9) -> Checker:
    """Tokens compared as numbers within ``abs_tol`` or ``rel_tol`` (either suffices, as
    ``math.isclose``); a token that is not a number in the expected answer must match exactly.
    A NaN or an infinity the submission prints is never close to a finite answer."""
    if not (abs_tol >= 0 and rel_tol >= 0):
        raise ValueError(f"floats(abs_tol={abs_tol!r}, rel_tol={rel_tol!r}): tolerances must be ≥ 0")

    def check_floats(expected: str, got: str) -> Verdict:
        e, g = expected.split(), got.split()
        if len(e) != len(g):
            return Verdict(False, f"expected {len(e)} tokens, got {len(g)}")
        for i, (a, b) in enumerate(zip(e, g, strict=True)):
            try:
                x = float(a)
            except ValueError:
                if a != b:
                    return Verdict(False, f"token {i + 1}: expected {_q(a)}, got {_q(b)}")
                continue
            try:
                y = float(b) if len(b) <= 1000 else math.nan
            except ValueError:
                return Verdict(False, f"token {i + 1}: expected the number {a}, got {_q(b)}")
            if not math.isclose(x, y, rel_tol=rel_tol, abs_tol=abs_tol):
                return Verdict(False, f"token {i + 1}: expected {a}, got {_q(b)} "
                                      f"(abs_tol {abs_tol:g}, rel_tol {rel_tol:g})")
        return Verdict(True)
    check_floats.__name__ = f"floats(abs_tol={abs_tol:g}, rel_tol={rel_tol:g})"
    return check_floats


def check(got: Any, expected: Any, checker: Checker = exact) -> Verdict:
    """Judge ``got`` (a ``Result``'s stdout, bytes or str) against ``expected`` with
    ``checker``; wrong: ``AssertionError("wrong answer: <why>")``. A checker that raises is
    the teacher's error and propagates as it is."""
    v = checker(_text(expected, "expected"), _text(got, "got"))
    if isinstance(v, str):
        v = Verdict(not v, v)
    elif isinstance(v, bool):
        v = Verdict(v, "" if v else f"rejected by {getattr(checker, '__name__', 'the checker')}")
    elif not isinstance(v, Verdict):
        raise TypeError(f"checker {getattr(checker, '__name__', checker)!r} returned "
                        f"{type(v).__name__}: return a Verdict, a bool or a message")
    if not v.ok:
        raise AssertionError(f"wrong answer: {v.message or 'rejected'}")
    return v


__all__ = ["Checker", "Verdict", "check", "exact", "floats", "tokens"]
