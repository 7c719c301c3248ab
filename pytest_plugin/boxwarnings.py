"""The warnings a boxed test raised: recorded inside the box, re-raised on the host so they
show in pytest's warnings summary as unboxed.

The summary shows each warning's source line. Python's formatting reads it with ``linecache``
from the warning's file when none is given, and on the host that file is whatever the box
named: any file the host user can read, printed into the run's output (a secret the box cannot
see, in a public CI log), or ``/dev/zero``, read until the host runs out of memory. So the box
reads the line itself, from its own view of the files, and the host re-raises the warning with
that line (``_with_line``): the host opens no file the box names.
"""

from __future__ import annotations

import contextlib
import linecache
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_plugin import reportcheck as rc

MAX_WARNINGS = 100
LINENO_MAX = 2**31 - 1  # warn_explicit takes a C int: a line number past it is shown as 0
TEXT_MAX = 4096
CHECK = rc.obj({"$warnings": rc.list_of(rc.obj({"message": rc.STR, "category": rc.STR,
                                                 "filename": rc.STR, "lineno": rc.INT,
                                                 "line": rc.STR}))})


def to_json(log: list[warnings.WarningMessage]) -> dict[str, Any]:
    """Inside the box: the recorded warnings, each with its source line as the box sees it."""
    def line(w: warnings.WarningMessage) -> str:
        text = w.line if w.line is not None else linecache.getline(str(w.filename), int(w.lineno or 0))
        return text.strip()[:TEXT_MAX]

    return {"$warnings": [{"message": str(w.message)[:TEXT_MAX], "category": w.category.__name__,
                           "filename": str(w.filename), "lineno": int(w.lineno or 0), "line": line(w)}
                          for w in log[:MAX_WARNINGS]]}


@contextlib.contextmanager
def _with_line(line: str) -> Iterator[None]:
    """``warn_explicit`` takes no source line, and a warning it hands on without one has its
    line read from the file when formatted: give it the box's line (a warning with ``line=""``
    shows none), in the one call this wraps. pytest's ``catch_warnings`` records what
    ``warnings._showwarnmsg`` is given."""
    shown = warnings._showwarnmsg  # type: ignore[attr-defined]

    def show(msg: warnings.WarningMessage) -> None:
        msg.line = line
        shown(msg)

    warnings._showwarnmsg = show  # type: ignore[attr-defined]
    try:
        yield
    finally:
        warnings._showwarnmsg = shown  # type: ignore[attr-defined]


def reemit(found: list[dict[str, Any]]) -> None:
    """On the host: the box's warnings (``CHECK``ed), raised again for pytest's summary."""
    import builtins

    for w in found:
        cat = getattr(builtins, w["category"], None)
        if not (isinstance(cat, type) and issubclass(cat, Warning)):
            cat = getattr(pytest, w["category"], None)
        if not (isinstance(cat, type) and issubclass(cat, Warning)):
            cat, w["message"] = UserWarning, f"{w['category']}: {w['message']}"
        lineno = w["lineno"] if 0 <= w["lineno"] <= LINENO_MAX else 0
        try:
            with _with_line((w["line"].splitlines() or [""])[0][:TEXT_MAX]):
                warnings.warn_explicit(w["message"], cat, w["filename"], lineno)
        except Warning:  # an "error" filter: inside the box it would already have failed the test
            pass
