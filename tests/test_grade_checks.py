"""`sandbox grade` refuses before grading: wrong paths and values (one-line usage error, exit
2), and the teacher's own broken tests (shown with file and line, exit 3) — never blamed on
every student as 0/0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from grade_course import MAIN, SOL, grade, make_course, rows

GOOD_TESTS = '''
def test_add(submission):
    assert submission.import_module("solution").add(2, 3) == 5
'''
SUBS = {"alice": {"solution.py": SOL, "main.py": MAIN}, "bob": {"solution.py": SOL, "main.py": MAIN}}


@pytest.fixture
def course(tmp_path: Path) -> Path:
    return make_course(tmp_path, {"test_ok.py": GOOD_TESTS}, SUBS)


def _usage(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandbox._cli", "grade", *args],
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("extra,needle", [
    (["--out", "/nonexistent/r.json"], "/nonexistent"),
    (["--csv", "/nonexistent/t.csv"], "--csv /nonexistent/t.csv"),
    (["--junitxml", "{tmp}"], "is a directory"),
    (["--feedback", "/nonexistent/a/b"], "--feedback"),
    (["--call-timeout", "0"], "--call-timeout 0"),
    (["--timeout", "-1"], "--timeout -1"),
    (["--run-timeout", "0"], "--run-timeout 0"),
    (["--call-timeout", "soon"], "'soon'"),
])
def test_bad_values_are_refused_before_grading(course, extra, needle):
    extra = [x.replace("{tmp}", str(course)) for x in extra]
    p = _usage(["--tests", str(course / "grader_tests"), "--submissions", str(course / "submissions"),
                "--out", str(course / "results.json"), *extra])
    assert p.returncode == 2, p.stderr
    assert len(p.stderr.strip().splitlines()) == 1 and needle in p.stderr, p.stderr
    assert not (course / "results.json").exists() and not (course / "results.json.journal").exists()


def test_empty_submissions_folder_is_an_error(course):
    (course / "empty").mkdir()
    p = _usage(["--tests", str(course / "grader_tests"), "--submissions", str(course / "empty"),
                "--out", str(course / "results.json")])
    assert p.returncode == 2 and "no submissions in it" in p.stderr and str(course / "empty") in p.stderr


def test_one_submissions_folder_instead_of_the_folder_of_them_is_explained(course):
    p = _usage(["--tests", str(course / "grader_tests"), "--submissions", str(course / "submissions/alice"),
                "--out", str(course / "results.json")])
    assert p.returncode == 2, p.stderr
    assert "looks like one submission's folder" in p.stderr and str(course / "submissions") in p.stderr
    assert len(p.stderr.strip().splitlines()) == 1


def test_a_folder_of_single_file_submissions_is_still_graded(tmp_path):
    c = make_course(tmp_path, {"test_f.py": GOOD_TESTS.replace('"solution"', 'submission.name[:-3]')}, {})
    for n in ("ann.py", "ben.py"):
        (c / "submissions" / n).write_text(SOL)
        (c / "submissions" / n).chmod(0o644)
    r = grade(c)
    assert r.returncode == 0, r.stderr
    assert {n: x["score"] for n, x in rows(c).items()} == {"ann.py": 1, "ben.py": 1}


def test_help_shows_defaults():
    p = _usage(["--help"])
    assert p.returncode == 0
    text = " ".join(p.stdout.split())
    for needle in ("(default: 300.0)", "(default: results.json)", "(default: 256M)", "(default: 2)"):
        assert needle in text, needle


@pytest.mark.parametrize("src,where,error", [
    ("def test_x(submission)\n    pass\n", "test_bad.py:1", "SyntaxError"),
    ("import no_such_module_here\n", "test_bad.py:1", "No module named 'no_such_module_here'"),
    ("x = 1\ny = undefined_name\n", "test_bad.py:2", "NameError"),
    ("import pytest\n\n@pytest.fixture\ndef data():\n    return open('/nonexistent/data.csv').read()\n\n"
     "def test_x(submission, data):\n    assert submission.import_module('solution').add(1, 1) == 2\n",
     "test_bad.py:5", "FileNotFoundError"),
    ("import pytest\n\n@pytest.fixture\ndef sol(submission):\n    raise RuntimeError('teacher forgot')\n\n"
     "def test_x(sol):\n    pass\n", "test_bad.py:5", "RuntimeError: teacher forgot"),
], ids=["syntax", "import", "module-level", "fixture", "fixture-on-submission"])
def test_teachers_broken_tests_stop_the_run(tmp_path, src, where, error, no_leftovers):
    c = make_course(tmp_path, {"test_ok.py": GOOD_TESTS, "test_bad.py": src}, SUBS)
    r = grade(c)
    assert r.returncode == 3, r.stdout + r.stderr
    first = r.stderr.splitlines()[0]
    assert where in first and error in first and "teacher's tests" in first, r.stderr
    assert "/_pytest/" not in r.stderr and "importlib" not in r.stderr  # the teacher's frames only
    assert where in r.stderr.splitlines()[1].replace('", line ', ":")  # then the place itself
    assert not (c / "results.json").exists()  # nobody got 0/0
    assert "alice" not in r.stdout


def test_a_conftest_that_does_not_load_stops_the_run(tmp_path, no_leftovers):
    c = make_course(tmp_path, {"test_ok.py": GOOD_TESTS, "conftest.py": "import pytest\ndef broken(:\n"}, SUBS)
    r = grade(c)
    assert r.returncode == 3, r.stdout + r.stderr
    first = r.stderr.splitlines()[0]
    assert "conftest.py:2" in first and "SyntaxError" in first, r.stderr
    assert not (c / "results.json").exists()


STUDENT_FIXTURE = '''
import pytest

@pytest.fixture
def sol(submission):
    s = submission.import_module("solution")   # the student's import may fail: theirs
    assert s.ready(), "ready() should say True"  # and so may what their code returns
    return s

def test_x(sol):
    assert sol.add(1, 1) == 2
'''


def test_a_fixture_failing_on_the_students_code_is_the_students(tmp_path):
    ready = "def ready():\n    return True\n"
    c = make_course(tmp_path, {"test_s.py": STUDENT_FIXTURE},
                    {"alice": {"solution.py": SOL + ready}, "bob": {"solution.py": "1 / 0\n"},
                     "carl": {"solution.py": SOL + ready.replace("True", "False")}})
    r = grade(c)
    assert r.returncode == 0, r.stderr
    got = rows(c)
    assert got["alice"]["score"] == 1 and got["bob"]["score"] == 0 and got["bob"]["worst"] == "RE"
    assert "ZeroDivisionError" in got["bob"]["tests"][0]["message"]
    assert got["carl"]["score"] == 0 and "ready() should say True" in got["carl"]["tests"][0]["message"]
