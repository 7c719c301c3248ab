"""The Python stack a box's test process wrote (faulthandler's dump), as the failure shows it.

Below the test, every stack has the same frames of pytest, pluggy and the sandbox's own
machinery: they are folded into one line so the test's frames stand out. The text was written
inside the box: control characters are replaced before it reaches a terminal.
"""

from __future__ import annotations

import os


def _package_dirs() -> tuple[str, ...]:
    import _pytest
    import pluggy

    import sandbox

    return (*(f'"{os.path.dirname(m.__file__ or "")}/' for m in (_pytest, pluggy, sandbox)),
            f'"{os.path.dirname(__file__)}/', "<frozen runpy>")


MACHINERY = _package_dirs()


def trim(text: str) -> str:
    """faulthandler's dump, without pytest's, pluggy's and the sandbox's own frames below the
    test (they are the same for every test); control characters are replaced."""
    out: list[str] = []
    skipping = False
    for line in text.splitlines():
        if line.startswith("  File "):
            if not skipping and any(m in line for m in MACHINERY):
                skipping = True
                out.append("  ... (pytest and sandbox frames)")
            if skipping:
                continue
        else:
            skipping = False
        out.append(printable(line))
    return "\n".join(out)


def printable(text: str) -> str:
    return "".join(c if c.isprintable() or c == "\t" else "?" for c in text)
