"""Live progress (rich) and the final score table for ``sandbox grade``."""

from __future__ import annotations

import sys
from typing import Any


class Progress:
    """Submissions done / running / failed to grade, with an ETA; silent when not a terminal.
    It counts whole submissions as they finish (each run grades one submission at a time)."""

    def __init__(self, total: int, already: int, enabled: bool = True) -> None:
        self.total, self.done, self.failed = total, already, 0
        self.running: set[str] = set()
        self.enabled = enabled and sys.stderr.isatty()
        self._bar: Any = None

    def __enter__(self) -> Progress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(TextColumn("grading"), BarColumn(), MofNCompleteColumn(),
                                     TextColumn("{task.fields[state]}"), TimeRemainingColumn(),
                                     transient=True)
            self._bar.__enter__()
            self._task = self._bar.add_task("grade", total=self.total, completed=self.done,
                                            state=self._state())
        return self

    def _state(self) -> str:
        return f"running {len(self.running)}  failed to grade {self.failed}"

    def started(self, name: str) -> None:
        self.running.add(name)
        self._update()

    def finished(self, name: str, graded: bool) -> None:
        self.running.discard(name)
        self.done += 1
        self.failed += not graded
        self._update()

    def _update(self) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, state=self._state())

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


def _mib(n: int | None) -> str:
    return f"{(n or 0) / (1 << 20):.1f}M" if n else "-"


def print_table(rows: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title="sandbox grade")
    for col in ("submission", "score", "passed/total", "worst", "wall", "peak mem", "note"):
        t.add_column(col)
    for r in rows:
        t.add_row(r["name"], f"{r['score']:g}/{r['max_score']:g}", f"{r['passed']}/{r['total']}",
                  r["worst"], f"{r['wall_time']:.2f}s", _mib(r.get("peak_memory")),
                  (r.get("error") or "")[:60])
    Console(width=max(100, Console().width)).print(t)
