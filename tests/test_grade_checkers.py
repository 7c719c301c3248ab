"""Checkers (``sandbox.grading.checkers``) judge output outside the box: exact, token-wise,
float tolerance and a teacher's own function — unit cases, and a course graded with them."""

from __future__ import annotations

from pathlib import Path

import pytest
from grade_course import grade, make_course, rows, summary

from sandbox.grading.checkers import Verdict, check, exact, floats, tokens


@pytest.mark.parametrize("checker,expected,got,ok,why", [
    (exact, "1 2\n3\n", "1 2\n3", True, ""),
    (exact, "1 2\n3\n", "1  2\n3\n", False, "line 1: expected '1 2', got '1  2'"),
    (exact, "a\nb\n", "a\n", False, "expected 2 lines, got 1"),
    (tokens, "1 2\n3\n", "1  2 3", True, ""),
    (tokens, "1 2 3", "1 2 4", False, "token 3: expected '3', got '4'"),
    (tokens, "1 2 3", "1 2", False, "expected 3 tokens, got 2"),
    (floats(abs_tol=1e-3), "0.3333 x", "0.33331 x", True, ""),
    (floats(abs_tol=1e-6), "0.3333", "0.3343", False, "token 1: expected 0.3333, got '0.3343'"),
    (floats(abs_tol=0, rel_tol=1e-3), "1000000", "1000500", True, ""),
    (floats(abs_tol=0, rel_tol=1e-3), "1000000", "1002000", False, "rel_tol 0.001"),
    (floats(), "1.5", "nan", False, "got 'nan'"),
    (floats(), "1.5", "inf", False, "got 'inf'"),
    (floats(), "1.5", "one", False, "expected the number 1.5, got 'one'"),
    (floats(), "YES 1.5", "NO 1.5", False, "token 1: expected 'YES', got 'NO'"),
])
def test_checkers(checker, expected, got, ok, why):
    if ok:
        assert check(got.encode(), expected, checker).ok
    else:
        with pytest.raises(AssertionError) as e:
            check(got, expected.encode(), checker)
        assert str(e.value).startswith("wrong answer: ") and why in str(e.value)


def test_a_teachers_own_checker_and_bad_arguments():
    def sorted_same(expected: str, got: str) -> bool:
        return sorted(expected.split()) == sorted(got.split())

    def says_why(expected: str, got: str) -> str:
        return "" if got.strip() == "42" else f"not the answer: {got.strip()!r}"

    assert check("3 1 2", "1 2 3", sorted_same)
    with pytest.raises(AssertionError, match="rejected by sorted_same"):
        check("3 1 1", "1 2 3", sorted_same)
    assert check("42\n", "", says_why) == Verdict(True, "")
    with pytest.raises(AssertionError, match="not the answer: '41'"):
        check("41", "", says_why)
    with pytest.raises(TypeError, match="return a Verdict, a bool or a message"):
        check("1", "1", lambda e, g: 1)
    with pytest.raises(TypeError, match="give bytes, str or a sandbox.Result"):
        check(1, "1")
    with pytest.raises(ValueError, match="tolerances must be ≥ 0"):
        floats(abs_tol=-1)


TESTS = '''
import pytest
from sandbox.grading.checkers import check, exact, floats, tokens

def test_mean_tokens(submission):
    check(submission.run(["python3", "mean.py"], stdin=b"1 2 4\\n"), "2.3333333333", floats(abs_tol=1e-6))

def test_sorted(submission):
    check(submission.run(["python3", "sort.py"], stdin=b"3 1 2\\n"), "1 2 3", tokens)

def test_greeting(submission):
    check(submission.run(["python3", "hello.py"]), "Hello, World!\\n", exact)

def test_any_permutation(submission):
    same = lambda e, g: sorted(e.split()) == sorted(g.split())
    check(submission.run(["python3", "sort.py"], stdin=b"3 1 2\\n"), "3 2 1", same)
'''
MEAN = "xs = list(map(float, input().split()))\nprint(sum(xs) / len(xs))\n"
SORT = "print(*sorted(map(int, input().split())))\n"


def test_a_course_judged_by_checkers(tmp_path: Path) -> None:
    course = make_course(tmp_path, {"test_chk.py": TESTS}, {
        "good": {"mean.py": MEAN, "sort.py": SORT.replace("print(*", "print('  ', *"),
                 "hello.py": "print('Hello, World!')\n"},
        "rounded": {"mean.py": "print('2.33')\n", "sort.py": "print('1\\n2\\n3')\n",
                    "hello.py": "print('Hello,  World!')\n"},
        "reversed": {"mean.py": "print('2.3333334 extra')\n", "sort.py": "print('3 2 1')\n",
                     "hello.py": "print('Hello, World!   ')\n"}})
    p = grade(course)
    assert p.returncode == 0, p.stdout + p.stderr
    got = {n: s[:4] for n, s in summary(course).items()}
    assert got == {"good": (4.0, 4.0, 4, 4), "rounded": (2.0, 4.0, 2, 4), "reversed": (2.0, 4.0, 2, 4)}
    msgs = {t["nodeid"].split("::")[1]: t["message"] for t in rows(course)["rounded"]["tests"]}
    assert "token 1: expected 2.3333333333, got '2.33'" in msgs["test_mean_tokens[rounded]"]
    assert "line 1: expected 'Hello, World!', got 'Hello,  World!'" in msgs["test_greeting[rounded]"]
