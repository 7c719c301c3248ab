"""Helpers for the `sandbox grade` course tests: a small course written into tmp_path, and a
real `sandbox grade` run over it (the module under test imported from this tree)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

SOL = "def add(a, b):\n    return a + b\n"
MAIN = "a, b = map(int, input().split())\nprint(a + b)\n"


def make_course(root: Path, tests: dict[str, str], subs: dict[str, dict[str, str]]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for name, src in tests.items():
        (root / "grader_tests").mkdir(exist_ok=True)
        (root / "grader_tests" / name).write_text(src)
    (root / "submissions").mkdir(exist_ok=True)
    for name, files in subs.items():
        (root / "submissions" / name).mkdir()
        for fn, src in files.items():
            (root / "submissions" / name / fn).write_text(src)
    for p in [root, *root.rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, 0o777 if p.is_dir() else 0o644)  # root mode: the box's uid reads them
    return root


def grade_cmd(course: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "sandbox._cli", "grade", "--tests", str(course / "grader_tests"),
            "--submissions", str(course / "submissions"), "--out", str(course / "results.json"),
            "--no-progress", *extra]


def grade(course: Path, *extra: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(grade_cmd(course, *extra), capture_output=True, text=True, timeout=timeout)


def rows(course: Path) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in json.loads((course / "results.json").read_text())["submissions"]}


def summary(course: Path) -> dict[str, tuple[Any, ...]]:
    """What a grade is: score, maximum, passed/total, worst verdict, each test's outcome."""
    return {n: (r["score"], r["max_score"], r["passed"], r["total"], r["worst"], r["error"],
                sorted((t["nodeid"].split("::", 1)[-1], t["outcome"], t.get("earned")) for t in r["tests"]))
            for n, r in rows(course).items()}


def journal(course: Path) -> list[dict[str, Any]]:
    """The journal's whole entries (a line a crash cut short is not one)."""
    path = course / "results.json.journal"
    out = []
    for ln in path.read_text().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(ln))
        except ValueError:
            continue
    return out
