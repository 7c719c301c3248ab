"""`sandbox grade` feedback a student can read (--feedback DIR, one Markdown file each), the
JUnit report a teacher's tools read, and the worst verdict of the score table."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from grade_course import grade, make_course, rows

TESTS = '''
import pytest

def test_sum_of_list(submission):
    got = submission.import_module("solution").total([1, 2, 3])
    assert got == 6, f"total([1, 2, 3]) should be 6, got {got}"

def test_divide(submission):
    assert submission.import_module("solution").divide(6, 3) == 2

def test_program(submission):
    r = submission.run(["python3", "main.py"], stdin=b"2 3\\n")
    assert r.stdout.strip() == b"5"

def test_fast(submission):
    r = submission.run(["python3", "main.py"], stdin=b"2 3\\n", wall_time="1s")
    assert r.status == "OK"

@pytest.mark.points(3)
@pytest.mark.visibility("hidden")
def test_secret(submission):
    assert submission.import_module("solution").total([40, 2]) == 42, "SECRET-EXPECTATION"
'''

STUDENT = {
    "solution.py": ("def total(xs):\n    return sum(xs) - 1\n\n"
                    "def _helper(a, b):\n    return a / b\n\n"
                    "def divide(a, b):\n    return _helper(a, 0)\n"),
    "main.py": ("import sys, time\nprint('debug: starting')\nprint('oops on stderr', file=sys.stderr)\n"
                "time.sleep(3)\nprint(7)\n"),
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    c = make_course(tmp_path_factory.mktemp("fb"), {"test_fb.py": TESTS},
                    {"carl": STUDENT, "syntax": {"solution.py": "def total(xs)\n    pass\n"},
                     "hog": {"solution.py": "x = []\nwhile True:\n    x.append(bytearray(16 << 20))\n"}})
    r = grade(c, "--feedback", str(c / "fb"), "--junitxml", str(c / "r.xml"), "--memory", "64M",
              "--wall-time", "5s")
    assert r.returncode == 0, r.stderr
    return c


def test_feedback_shows_the_whole_explanation_traceback_output_and_verdicts(graded):
    md = (graded / "fb" / "carl.md").read_text()
    assert md.startswith("# carl: 0/7 points")
    # the whole assertion message and pytest's explanation, not just the first line
    assert "total([1, 2, 3]) should be 6, got 5" in md and "assert 5 == 6" in md
    # the student's exception with its traceback text, down to the line that raised
    assert "ZeroDivisionError" in md and 'solution.py", line 5, in _helper' in md and "return a / b" in md
    assert "SubmissionError" not in md  # the grader's wrapper is not the student's business
    # what the program printed, both streams
    assert "debug: starting" in md and "oops on stderr" in md
    # the verdict with its numbers
    assert "wall time 1s exceeded" in md
    # a hidden test: pass/fail and points only
    assert "test_secret — 0/3 points" in md and "SECRET-EXPECTATION" not in md
    assert "hidden test" in md


def test_worst_is_not_ok_for_a_syntax_error_or_a_memory_error(graded):
    got = rows(graded)
    assert got["syntax"]["worst"] == "RE" and got["hog"]["worst"] == "ML"
    md = (graded / "fb" / "syntax.md").read_text()
    assert "SyntaxError" in md and "your code raised SyntaxError" in md
    assert "memory limit 64M" in (graded / "fb" / "hog.md").read_text() or \
        "MemoryError" in (graded / "fb" / "hog.md").read_text()


def test_junit_has_classname_failure_body_and_grading_properties(graded):
    root = ET.parse(graded / "r.xml").getroot()
    suite = next(s for s in root if s.get("name") == "carl")
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    case = cases["test_divide[carl]"]
    assert case.get("classname").endswith("test_fb")
    props = {p.get("name"): p.get("value") for p in case.iter("property")}
    assert props["points"] == "1.0" and props["earned"] == "0.0"
    assert "ZeroDivisionError" in props["verdict"]
    assert float(props["cpu_time"]) >= 0 and int(props["peak_memory"]) >= 0
    body = case.find("failure").text
    assert "def test_divide" in body and "return a / b" in body  # pytest's report, the student's traceback
    fast = {p.get("name"): p.get("value") for p in cases["test_fast[carl]"].iter("property")}
    assert "wall time 1s exceeded" in fast["verdict"] and fast["worst"] == "TO"
