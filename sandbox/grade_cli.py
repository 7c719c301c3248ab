"""``sandbox grade``: a trusted pytest suite × a folder of untrusted submissions → a score table.

Each submission is graded by its own pytest process (``-j N`` at a time) running the teacher's
tests with ``sandbox.grading.plugin``; every use of the submission happens in fresh boxes.
A submission that crashes, hangs, forks wildly, fills its disk or eats memory only loses its
own points; if even its pytest run fails or exceeds ``--timeout``, it still gets a row with
the reason. Results: ``--out`` JSON (also the state for ``--resume``), ``--csv``, ``--junitxml``.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from typing import Any
from xml.sax.saxutils import quoteattr

MAX_REPORT = 16 * 1024 * 1024


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(message)


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sandbox grade", description="grade untrusted submissions with a trusted pytest suite")
    p.add_argument("--tests", required=True, help="directory (or file) of the teacher's pytest tests")
    p.add_argument("--submissions", required=True, help="directory with one sub-folder per submission")
    p.add_argument("-j", "--jobs", type=int, default=2, help="submissions graded in parallel")
    p.add_argument("--out", default="results.json", help="JSON results (default results.json)")
    p.add_argument("--csv", help="also write a CSV table")
    p.add_argument("--junitxml", help="also write JUnit XML (a testsuite per submission)")
    p.add_argument("--resume", action="store_true", help="skip submissions already in --out")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per submission (whole run)")
    p.add_argument("--call-timeout", type=float, default=2.0, help="seconds per proxied call")
    p.add_argument("--memory", default="256M", help="memory limit per submission box")
    p.add_argument("--wall-time", default="10s", help="wall time per submission box")
    p.add_argument("--no-progress", action="store_true")
    return p


def _check(a: argparse.Namespace) -> None:
    from sandbox.config import parse_duration, parse_size

    if not os.path.exists(a.tests):
        raise ValueError(f"--tests {a.tests}: no such file or directory")
    if not os.path.isdir(a.submissions):
        raise ValueError(f"--submissions {a.submissions}: not a directory (one sub-folder per submission)")
    if a.jobs < 1:
        raise ValueError(f"-j {a.jobs}: must be at least 1")
    parse_size(a.memory, "--memory")
    parse_duration(a.wall_time, "--wall-time")


def discover(root: str) -> list[tuple[str, str]]:
    """(name, path) of every submission; files are graded as a one-file directory."""
    out = []
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if name.startswith(".") or os.path.islink(path):
            continue  # a symlinked "submission" could point anywhere on the host
        if os.path.isdir(path) or os.path.isfile(path):
            out.append((name, path))
    return out


def grade_one(name: str, path: str, a: argparse.Namespace) -> dict[str, Any]:
    t0 = time.monotonic()
    row: dict[str, Any] = {"name": name, "score": 0.0, "max_score": 0.0, "passed": 0, "total": 0,
                           "worst": "XX", "wall_time": 0.0, "peak_memory": 0, "error": None, "tests": []}
    with tempfile.TemporaryDirectory(prefix="grade-run-") as tmp:
        os.chmod(tmp, 0o755)
        if os.path.isfile(path):  # a single-file submission becomes a one-file directory
            os.mkdir(os.path.join(tmp, "sub"))
            with open(path, "rb") as src, open(os.path.join(tmp, "sub", name), "wb") as dst:
                dst.write(src.read(MAX_REPORT))
            os.chmod(os.path.join(tmp, "sub"), 0o755)
            path = os.path.join(tmp, "sub")
        report = os.path.join(tmp, "report.json")
        cmd = [sys.executable, "-m", "pytest", os.path.abspath(a.tests), "-q", "--color=no",
               "-p", "no:cacheprovider", "-p", "no:pytest_isolate", "-p", "sandbox.grading.plugin",
               "--submission", os.path.abspath(path), "--grade-report", report,
               "--call-timeout", str(a.call_timeout), "--grade-memory", a.memory,
               "--grade-wall-time", a.wall_time, "--rootdir", os.path.abspath(os.path.dirname(a.tests.rstrip("/")) or ".")]
        try:
            with open(os.path.join(tmp, "log"), "wb") as log:
                p = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=a.timeout,
                                   stdin=subprocess.DEVNULL)
            rc = p.returncode
        except subprocess.TimeoutExpired:
            row["error"] = f"grading took longer than --timeout {a.timeout:g}s"
            rc = None
        data = _read_report(report)
        if data is None:
            row["error"] = row["error"] or f"the test run produced no report (pytest exit code {rc}): " + \
                _tail(os.path.join(tmp, "log"))
        else:
            tests = data["tests"]
            row.update(score=data["score"], max_score=data["max_score"], tests=tests,
                       total=len(tests), passed=sum(t["outcome"] == "passed" for t in tests),
                       worst=data["worst"], peak_memory=max((t.get("peak_memory", 0) for t in tests), default=0))
    row["wall_time"] = round(time.monotonic() - t0, 3)
    return row


def _read_report(path: str) -> dict[str, Any] | None:
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(MAX_REPORT))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("tests"), list) else None


def _tail(path: str) -> str:
    try:
        with open(path, "rb") as f:
            lines = f.read()[-4000:].decode(errors="replace").strip().splitlines()
        return lines[-1][:300] if lines else "no output"
    except OSError:
        return "no output"


def _write_outputs(rows: list[dict[str, Any]], a: argparse.Namespace) -> None:
    tmp = a.out + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"submissions": rows}, f, indent=2)
    os.replace(tmp, a.out)
    if a.csv:
        with open(a.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["submission", "score", "max_score", "passed", "total", "worst", "wall_time", "peak_memory", "error"])
            for r in rows:
                w.writerow([r["name"], r["score"], r["max_score"], r["passed"], r["total"], r["worst"],
                            r["wall_time"], r["peak_memory"], r["error"] or ""])
    if a.junitxml:
        with open(a.junitxml, "w") as f:
            f.write('<?xml version="1.0" encoding="utf-8"?>\n<testsuites>\n')
            for r in rows:
                fails = r["total"] - r["passed"] + (1 if r["error"] else 0)
                f.write(f'  <testsuite name={quoteattr(r["name"])} tests="{max(r["total"], 1)}" failures="{fails}">\n')
                for t in r["tests"]:
                    f.write(f'    <testcase name={quoteattr(t["nodeid"])} time="{t["duration"]:.3f}">')
                    if t["outcome"] != "passed":
                        f.write(f'<failure message={quoteattr(t["message"])}/>')
                    f.write("</testcase>\n")
                if r["error"]:
                    f.write(f'    <testcase name="grading"><error message={quoteattr(r["error"])}/></testcase>\n')
                f.write("  </testsuite>\n")
            f.write("</testsuites>\n")


def main(argv: list[str]) -> int:
    try:
        a = _parser().parse_args(argv)
        _check(a)
    except ValueError as e:
        sys.stderr.write(f"sandbox grade: error: {e}\n")
        return 2
    subs = discover(a.submissions)
    done: dict[str, dict[str, Any]] = {}
    if a.resume and os.path.exists(a.out):
        prev = _read_report_rows(a.out)
        done = {r["name"]: r for r in prev if not r.get("error")}
    todo = [(n, p) for n, p in subs if n not in done]
    rows = dict(done)
    from sandbox.grading.progress import Progress

    with Progress(len(subs), len(done), enabled=not a.no_progress) as prog, \
            ThreadPoolExecutor(max_workers=a.jobs) as pool:
        futures = {pool.submit(grade_one, n, p, a): n for n, p in todo}
        for n, _ in todo[: a.jobs]:
            prog.started(n)
        for fut in as_completed(futures):
            row = fut.result()
            rows[row["name"]] = row
            prog.finished(row)
            _write_outputs([rows[n] for n, _ in subs if n in rows], a)  # results are never lost
    ordered = [rows[n] for n, _ in subs if n in rows]
    _write_outputs(ordered, a)
    from sandbox.grading.progress import print_table

    print_table(ordered)
    return 0


def _read_report_rows(path: str) -> list[dict[str, Any]]:
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(MAX_REPORT))
        return [r for r in data.get("submissions", []) if isinstance(r, dict) and "name" in r]
    except (OSError, ValueError, AttributeError):
        return []
