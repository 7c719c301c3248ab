"""The sample course shipped in examples/course grades as the README says."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

COURSE = Path(__file__).resolve().parent.parent / "examples" / "course"


def test_the_sample_course_grades_as_documented(tmp_path, no_leftovers):
    out = tmp_path / "results.json"
    sandbox_cmd = Path(sys.executable).with_name("sandbox")
    r = subprocess.run([str(sandbox_cmd), "grade", "--tests", str(COURSE / "grader_tests"),
                        "--submissions", str(COURSE / "submissions"), "--out", str(out)],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={**os.environ, "COLUMNS": "100"})
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {s["name"]: s for s in json.loads(out.read_text())["submissions"]}
    assert {k: (v["score"], v["max_score"]) for k, v in rows.items()} == {
        "alice": (4, 4), "bob": (2, 4), "carol": (2, 4), "dave": (2, 4)}
