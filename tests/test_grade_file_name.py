"""Single-file submissions (``submissions/henry.py``): graded as a one-file folder, the file
under its own name unless ``--file-name`` names it as the teacher's tests import it."""

from __future__ import annotations

from pathlib import Path

from grade_course import SOL, grade, rows

TESTS = '''
def test_add(submission):
    assert submission.import_module("solution").add(2, 3) == 5
'''


def _course(root: Path) -> Path:
    (root / "grader_tests").mkdir(parents=True)
    (root / "grader_tests" / "test_sol.py").write_text(TESTS)
    (root / "submissions").mkdir()
    (root / "submissions" / "henry.py").write_text(SOL)
    (root / "submissions" / "ada.py").write_text("def add(a, b):\n    return a - b\n")
    for p in [root, *root.rglob("*")]:
        p.chmod(0o777 if p.is_dir() else 0o644)  # root mode: the box's uid reads them
    return root


def test_file_name_names_a_single_file_submission_as_the_tests_import_it(tmp_path: Path) -> None:
    course = _course(tmp_path / "c")
    p = grade(course)  # under its own name: henry.py is no module "solution"
    assert p.returncode == 0, p.stderr
    assert "No module named 'solution'" in rows(course)["henry.py"]["tests"][0]["message"]
    p = grade(course, "--file-name", "solution.py")
    assert p.returncode == 0, p.stdout + p.stderr
    got = rows(course)
    assert (got["henry.py"]["score"], got["ada.py"]["score"]) == (1.0, 0.0), got
    assert [t["outcome"] for t in got["ada.py"]["tests"]] == ["failed"]


def test_a_bad_file_name_is_a_usage_error(tmp_path: Path) -> None:
    course = _course(tmp_path / "c")
    for bad in ("../solution.py", "", "a/b.py", ".."):
        p = grade(course, "--file-name", bad)
        assert p.returncode == 2 and p.stderr.count("\n") == 1, (bad, p.stderr)
        assert "--file-name" in p.stderr and "plain file name" in p.stderr and "Traceback" not in p.stderr
        assert not (course / "results.json").exists()
