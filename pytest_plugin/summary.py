"""The end-of-run table of sandboxed tests: outcome, the kernel's status, wall/CPU time, peak
memory. The status column is the box's verdict (from the kernel), the outcome is pytest's.
By default only the tests the sandbox stopped are listed; ``-v`` lists all."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class SummaryRow:
    nodeid: str
    outcome: str
    status: str
    wall: float
    cpu: float | None  # None: a test of a module or session box (its CPU time is the box's)
    peak: int | None


def outcome_of(reports: list[Any]) -> str:
    for rep in reports:
        if rep.failed:
            return "failed" if rep.when == "call" else "error"
    for rep in reports:
        if hasattr(rep, "wasxfail"):
            return "xfailed" if rep.skipped else "xpassed"
        if rep.skipped:
            return "skipped"
    return "passed"


def record(rows: list[SummaryRow], nodeid: str, result: Any, reports: list[Any],
           shared: bool = False) -> None:
    """``shared``: the test ran in a module or session box, whose verdict (``result``, or None
    while the box lives on) covers its other tests too: the row has the test's own duration
    and no CPU time or peak of its own."""
    if shared:
        rows.append(SummaryRow(nodeid, outcome_of(reports), str(result.status) if result else "OK",
                               sum(r.duration for r in reports), None, None))
        return
    rows.append(SummaryRow(nodeid, outcome_of(reports), str(result.status), result.wall_time,
                           result.cpu_time, result.peak_memory))


def _mib(n: int | None) -> str:
    return "-" if not n else f"{n / (1 << 20):.1f}M"


def write_summary(tr: Any, rows: list[SummaryRow], verbose: bool = False) -> None:
    """The table lists the tests the sandbox stopped (a limit, a signal, an exit: status not
    OK), or with ``-v`` every sandboxed test: a suite of thousands of passing tests would
    otherwise print thousands of lines nobody reads (``--sandbox-no-summary``: no table)."""
    if not rows:
        return
    stopped = [r for r in rows if r.status != "OK"]
    shown = rows if verbose else stopped
    more = "" if verbose else " (-v lists every one)"
    tr.write_sep("=", f"sandbox: {len(rows)} sandboxed test(s), "
                      f"{len(stopped) or 'none'} stopped by the sandbox{more}")
    if not shown:
        return
    width = min(70, max(len(r.nodeid) for r in shown))
    tr.write_line(f"{'test':<{width}}  {'outcome':<8} status     wall      cpu     peak")
    for r in shown:
        name = r.nodeid if len(r.nodeid) <= width else "…" + r.nodeid[-(width - 1):]
        cpu = "       -" if r.cpu is None else f"{r.cpu:7.3f}s"
        tr.write_line(f"{name:<{width}}  {r.outcome:<8} {r.status:<6} {r.wall:7.3f}s "
                      f"{cpu} {_mib(r.peak):>8}")
