"""A submission's row (score, tests, worst verdict) and the files ``sandbox grade`` writes:
``--out`` JSON, ``--csv``, ``--junitxml``, ``--feedback``.

The maximum score is always the full one — every collected test's points, whether or not it
reported (a submission cut short by ``--timeout`` does not get a smaller denominator): a test
that never reported is listed as ``not run``, with why.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from sandbox.grading.feedback import verdict_text, write_feedback

SEVERITY = {s: i for i, s in enumerate(["OK", "CE", "RE", "SG", "OL", "ML", "TO", "XX"])}


def _planned(name: str, announced: dict[str, list[list[Any]]]) -> list[list[Any]]:
    """The tests ``name`` was to get: its own announcement, or another submission's (every
    submission gets the same tests) with the name swapped in (its run died before collecting)."""
    if name in announced:
        return announced[name]
    for other, tests in announced.items():
        return [[str(t[0]).replace(f"[{other}]", f"[{name}]"), *t[1:]] for t in tests]
    return []


def build_row(name: str, lines: list[dict[str, Any]], announced: dict[str, list[list[Any]]],
              error: str | None) -> dict[str, Any]:
    planned = _planned(name, announced)
    reported = {str(t.get("nodeid")) for t in lines}
    tests = list(lines)
    for nodeid, points, hidden, classname in planned:
        if nodeid not in reported:
            tests.append({"nodeid": nodeid, "submission": name, "outcome": "not run", "points": points,
                          "earned": 0.0, "hidden": hidden, "classname": classname, "duration": 0.0,
                          "message": error or "not run", "worst": "TO" if error and "timeout" in error else "XX"})
    if error is None and (not planned or len(lines) < len(planned)):
        error = f"only {len(lines)} of {len(planned)} tests reported"
    worst = max((str(t.get("worst", "OK")) for t in tests), key=lambda s: SEVERITY.get(s, 7), default="XX")
    if error is not None and SEVERITY.get(worst, 7) < SEVERITY["TO"]:
        worst = "TO" if "timeout" in error else "XX"
    return {"name": name, "tests": tests, "total": max(len(planned), len(lines)),
            "passed": sum(t.get("outcome") == "passed" for t in tests),
            "score": sum(float(t.get("earned", 0)) for t in tests),
            "max_score": sum(float(p[1]) for p in planned) if planned else
            sum(float(t.get("points", 1)) for t in tests),
            "worst": worst,
            "peak_memory": max((int(t.get("peak_memory", 0) or 0) for t in tests), default=0),
            "cpu_time": round(sum(float(t.get("cpu_time", 0) or 0) for t in tests), 3),
            "wall_time": round(sum(float(t.get("duration", 0)) for t in tests), 3),
            "error": error}


def write_outputs(rows: list[dict[str, Any]], a: Any) -> None:
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"submissions": rows}, f, indent=2)
    os.replace(tmp, a.out)
    if a.csv:
        with open(a.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["submission", "score", "max_score", "passed", "total", "worst", "wall_time",
                        "peak_memory", "error"])
            for r in rows:
                w.writerow([r["name"], r["score"], r["max_score"], r["passed"], r["total"], r["worst"],
                            r["wall_time"], r["peak_memory"], r["error"] or ""])
    if a.junitxml:
        with open(a.junitxml, "w") as f:
            f.write(junit(rows))
    if a.feedback:
        write_feedback(rows, a.feedback)


def _props(t: dict[str, Any]) -> str:
    props = {"points": t.get("points", 1), "earned": t.get("earned", 0), "verdict": verdict_text(t),
             "worst": t.get("worst", "OK"), "cpu_time": t.get("cpu_time", 0),
             "peak_memory": t.get("peak_memory", 0)}
    body = "".join(f"<property name={_attr(k)} value={_attr(v)}/>" for k, v in props.items())
    return f"<properties>{body}</properties>"


def junit(rows: list[dict[str, Any]]) -> str:
    """A testsuite per submission; per test its classname, the failure's whole body, and
    points, verdict, CPU time and peak memory as properties."""
    out = ['<?xml version="1.0" encoding="utf-8"?>\n<testsuites>\n']
    for r in rows:
        fails = r["total"] - r["passed"] + (1 if r["error"] else 0)
        out.append(f'  <testsuite name={_attr(r["name"])} tests="{max(r["total"], 1)}" '
                   f'failures="{fails}">\n')
        for t in r["tests"]:
            out.append(f'    <testcase classname={_attr(t.get("classname", ""))} '
                       f'name={_attr(str(t["nodeid"]).split("::")[-1])} time="{float(t["duration"]):.3f}">')
            out.append(_props(t))
            if t["outcome"] == "skipped":
                out.append(f'<skipped message={_attr(t["message"])}/>')
            elif t["outcome"] != "passed":
                body = str(t.get("failure") or t["message"])
                student = t.get("student") or {}
                if student.get("traceback"):
                    body += "\n\nstudent's traceback:\n" + str(student["traceback"])
                out.append(f'<failure message={_attr(t["message"])}>{_text(body)}</failure>')
            out.append("</testcase>\n")
        if r["error"]:
            out.append(f'    <testcase name="grading"><error message={_attr(r["error"])}/></testcase>\n')
        out.append("  </testsuite>\n")
    out.append("</testsuites>\n")
    return "".join(out)


def _clean(s: str) -> str:
    """XML 1.0 cannot hold most control characters, even escaped; a student's output may."""
    return "".join(c if c in "\t\n\r" or 32 <= ord(c) < 0xFFFE else f"\\x{ord(c):02x}" for c in s)


def _text(s: str) -> str:
    return escape(_clean(s))


def _attr(s: Any) -> str:
    return quoteattr(_clean(str(s)))
