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
    from sandbox import Limits

    if not os.path.exists(a.tests):
        raise ValueError(f"--tests {a.tests}: no such file or directory")
    if not os.path.isdir(a.submissions):
        raise ValueError(f"--submissions {a.submissions}: not a directory (one sub-folder per submission)")
    if a.jobs < 1:
        raise ValueError(f"-j {a.jobs}: must be at least 1")
    Limits.parse(memory=a.memory, wall_time=a.wall_time)  # ConfigError: "--memory: ..."


def discover(root: str) -> list[tuple[str, str]]:
    """(name, path) of every submission; files are graded as a one-file directory."""
    import re

    def natural(name: str) -> list[Any]:  # s2 before s10
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]

    out = []
    for name in sorted(os.listdir(root), key=natural):
        path = os.path.join(root, name)
        if name.startswith(".") or os.path.islink(path):
            continue  # a symlinked "submission" could point anywhere on the host
        if os.path.isdir(path) or os.path.isfile(path):
            out.append((name, path))
    return out


def _pytest_cmd(a: argparse.Namespace, subs: list[str], log: str | None) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", os.path.abspath(a.tests), "-q", "--color=no",
           "-p", "no:cacheprovider", "-p", "no:pytest_isolate", "-p", "no:xdist",
           "-p", "sandbox.grading.plugin", "--call-timeout", str(a.call_timeout),
           "--grade-memory", a.memory, "--grade-wall-time", a.wall_time, "--sandbox-no-summary"]
    cmd += [x for s in subs for x in ("--submission", s)]
    if log:
        cmd += ["--grade-log", log]
    return cmd


def run_grading(subs: list[tuple[str, str]], a: argparse.Namespace, tmp: str,
                on_test: Any) -> tuple[list[dict[str, Any]], str | None]:
    """``-j N`` trusted pytest runs, each over every test for its share of the submissions
    (dealt round-robin); returns the per-test lines.

    Plain processes, not pytest-xdist: an xdist worker is multi-threaded (execnet's I/O
    thread), so each of its boxes would have to come from a forked helper (a box cloned from a
    threaded process can inherit a lock another thread holds); single-threaded runs clone
    their boxes directly, ~2x the throughput on 2 cores."""
    jobs = max(1, min(a.jobs, len(subs)))
    shards = [[p for _, p in subs[i::jobs]] for i in range(jobs)]
    procs, logs = [], []
    for i, shard in enumerate(shards):
        log = os.path.join(tmp, f"grade-{i}.log")
        open(log, "w").close()
        out = open(os.path.join(tmp, f"pytest-{i}.out"), "wb")  # noqa: SIM115
        # Everything a run creates in temp space (pytest's own temp base; overlay uppers are in
        # each box's tmpfs) lives under our temp dir, removed at the end even when a run had to
        # be killed.
        shard_tmp = os.path.join(tmp, f"tmp-{i}")
        os.mkdir(shard_tmp)
        os.chmod(shard_tmp, 0o711)  # traversable (root mode: the box is another uid), not listable
        env = {**os.environ, "TMPDIR": shard_tmp}
        procs.append((subprocess.Popen(_pytest_cmd(a, shard, log), stdout=out, env=env,
                                       stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL), out))
        logs.append(open(log))  # noqa: SIM115
    deadline = time.monotonic() + a.timeout
    lines: list[dict[str, Any]] = []
    error = None
    try:
        while True:
            done = all(p.poll() is not None for p, _ in procs)
            for f in logs:
                for line in f.readlines():
                    try:
                        lines.append(json.loads(line))
                        on_test(lines[-1])
                    except ValueError:
                        pass
            if done:
                break
            if time.monotonic() > deadline:
                error = f"grading did not finish within --timeout {a.timeout:g}s"
                break
            time.sleep(0.1)
    finally:
        for p, out in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            out.close()
        for f in logs:
            f.close()
    for p, out in procs:
        if p.returncode not in (0, 1) and error is None:
            error = f"the test run failed (pytest exit code {p.returncode}): " + _tail(out.name)
    return lines, error


def build_rows(subs: list[tuple[str, str]], lines: list[dict[str, Any]], per_sub: int,
               error: str | None, wall: float) -> list[dict[str, Any]]:
    from sandbox.grading.submission import SEVERITY

    rows = []
    for name, _ in subs:
        tests = [t for t in lines if t.get("submission") == name]
        row: dict[str, Any] = {
            "name": name, "tests": tests, "total": max(per_sub, len(tests)),
            "passed": sum(t["outcome"] == "passed" for t in tests),
            "score": sum(float(t.get("earned", 0)) for t in tests),
            "max_score": sum(float(t.get("points", 1)) for t in tests),
            "worst": max((t.get("worst", "OK") for t in tests), key=lambda s: SEVERITY.get(s, 6), default="XX"),
            "peak_memory": max((int(t.get("peak_memory", 0) or 0) for t in tests), default=0),
            "wall_time": round(sum(float(t.get("duration", 0)) for t in tests), 3),
            "error": None}
        if len(tests) < per_sub or per_sub == 0:
            row["error"] = error or f"only {len(tests)} of {per_sub} tests reported"
        rows.append(row)
    return rows


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
    from sandbox.grading.progress import Progress, print_table

    subs = discover(a.submissions)
    done: dict[str, dict[str, Any]] = {}
    if a.resume and os.path.exists(a.out):
        done = {r["name"]: r for r in _read_report_rows(a.out) if not r.get("error")}
    with tempfile.TemporaryDirectory(prefix="grade-run-") as tmp:
        os.chmod(tmp, 0o755)
        todo = [(n, _as_dir(n, p, tmp)) for n, p in subs if n not in done]
        rows = dict(done)
        if todo:
            t0 = time.monotonic()
            with Progress(len(subs), len(done), 0, enabled=not a.no_progress) as prog:
                lines, error = run_grading(todo, a, tmp, prog.test_done)
            # each run logs how many tests it collected per submission before running them
            per_sub = max((n for ln in lines for n in ln.get("collected", {}).values()), default=0)
            if per_sub == 0 and error is None:
                error = "no tests were collected for any submission"
            for row in build_rows(todo, lines, per_sub, error, time.monotonic() - t0):
                rows[row["name"]] = row
    ordered = [rows[n] for n, _ in subs if n in rows]
    _write_outputs(ordered, a)
    print_table(ordered)
    return 0


def _as_dir(name: str, path: str, tmp: str) -> str:
    """A single-file submission is graded as a one-file directory."""
    if os.path.isdir(path):
        return os.path.abspath(path)
    d = os.path.join(tmp, "files", name)
    os.makedirs(d)
    with open(path, "rb") as src, open(os.path.join(d, name), "wb") as dst:
        dst.write(src.read(MAX_REPORT))
    os.chmod(d, 0o755)
    return d


def _read_report_rows(path: str) -> list[dict[str, Any]]:
    try:
        with open(path, "rb") as f:
            data = json.loads(f.read(MAX_REPORT))
        return [r for r in data.get("submissions", []) if isinstance(r, dict) and "name" in r]
    except (OSError, ValueError, AttributeError):
        return []
