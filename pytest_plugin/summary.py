"""The end-of-run table of sandboxed tests: outcome, the kernel's status, wall/CPU time, peak
memory. The status column is the box's verdict (from the kernel), the outcome is pytest's."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class SummaryRow:
    nodeid: str
    outcome: str
    status: str
    wall: float
    cpu: float
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


def record(rows: list[SummaryRow], nodeid: str, result: Any, reports: list[Any]) -> None:
    rows.append(SummaryRow(nodeid, outcome_of(reports), str(result.status), result.wall_time,
                           result.cpu_time, result.peak_memory))


def _mib(n: int | None) -> str:
    return "-" if not n else f"{n / (1 << 20):.1f}M"


def write_summary(tr: Any, rows: list[SummaryRow]) -> None:
    if not rows:
        return
    tr.write_sep("=", f"sandbox: {len(rows)} sandboxed test(s)")
    width = min(70, max(len(r.nodeid) for r in rows))
    tr.write_line(f"{'test':<{width}}  {'outcome':<8} status     wall      cpu     peak")
    for r in rows:
        name = r.nodeid if len(r.nodeid) <= width else "…" + r.nodeid[-(width - 1):]
        tr.write_line(f"{name:<{width}}  {r.outcome:<8} {r.status:<6} {r.wall:7.3f}s "
                      f"{r.cpu:7.3f}s {_mib(r.peak):>8}")
