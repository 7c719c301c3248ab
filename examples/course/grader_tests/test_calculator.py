"""A sample course: `sandbox grade --tests examples/course/grader_tests --submissions examples/course/submissions`.

Each student's folder holds `solution.py` (an `add` function) and `main.py` (reads two numbers,
prints their sum). The assertions run here, in the grader; the students' code only in boxes.
"""

import pytest


@pytest.mark.points(2)
def test_add(submission):
    sol = submission.import_module("solution")
    assert sol.add(2, 3) == 5
    assert sol.add(-1, 1) == 0


def test_main_reads_stdin(submission):
    r = submission.run(["python3", "main.py"], stdin=b"2 3\n", wall_time="2s")
    assert r.stdout.strip() == b"5"


def test_main_is_fast(submission):
    r = submission.run(["python3", "main.py"], stdin=b"40 2\n", wall_time="1s")
    assert r.status == "OK", r.reason
