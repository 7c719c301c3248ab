"""Compile once, run many: ``submission.build`` runs the compiler once per submission and
every test runs the binary; a failed build is CE, with the compiler's output, in every test of
that submission. A C and a C++ course graded end to end, with exact scores and feedback."""

from __future__ import annotations

from pathlib import Path

import pytest
from grade_course import grade, make_course, rows, summary

TESTS = '''
import pytest

CASES = [("2 3\\n", "5"), ("10 -4\\n", "6"), ("0 0\\n", "0"), ("-7 7\\n", "0")]

@pytest.fixture
def prog(submission):
    # the log line proves how often the build ran (the build's own outputs stay for all tests)
    submission.build(["sh", "-c", "echo built >> builds.log && {cc} -O2 -o prog {src}"])
    return submission

@pytest.mark.parametrize("inp,out", CASES)
def test_case(prog, inp, out):
    r = prog.run(["./prog"], stdin=inp.encode())
    assert r.stdout.decode().strip() == out

@pytest.mark.points(2)
def test_built_once(prog):
    assert prog.run(["cat", "builds.log"]).stdout == b"built\\n"
'''

C_OK = '#include <stdio.h>\nint main(void){long a,b;scanf("%ld %ld",&a,&b);printf("%ld\\n",a+b);return 0;}\n'
C_MUL = '#include <stdio.h>\nint main(void){long a,b;scanf("%ld %ld",&a,&b);printf("%ld\\n",a*b);return 0;}\n'
C_CE = "int main(void) { return undeclared_x; }\n"
C_CRASH = "int main(void) { volatile int *p = 0; return *p; }\n"
CPP_OK = '#include <iostream>\nint main(){long a,b;std::cin>>a>>b;std::cout<<a+b<<"\\n";}\n'
CPP_CE = "#include <vector>\nint main(){ std::vector<int> v = 3; }\n"

CASES = sorted([("2 3", "5"), ("10 -4", "6"), ("0 0", "0"), ("-7 7", "0")])  # as node ids sort


def _tests(name: str, outcomes: list[str], built: str) -> list[tuple[str, str, float]]:
    pairs = [(f"test_case[{name}-{i}\\n-{o}]", out, 1.0 if out == "passed" else 0.0)
             for (i, o), out in zip(CASES, outcomes, strict=True)]
    return sorted([*pairs, (f"test_built_once[{name}]", built, 2.0 if built == "passed" else 0.0)])


def test_c_course_compiles_once_and_a_failed_build_is_ce_everywhere(tmp_path: Path, no_leftovers) -> None:
    course = make_course(tmp_path, {"test_c.py": TESTS.replace("{cc}", "gcc").replace("{src}", "main.c")},
                         {"ok": {"main.c": C_OK}, "mul": {"main.c": C_MUL}, "ce": {"main.c": C_CE},
                          "crash": {"main.c": C_CRASH}})
    p = grade(course, "--feedback", str(course / "feedback"))
    assert p.returncode == 0, p.stdout + p.stderr
    got = summary(course)
    # (mul: 0*0 == 0+0 and -7*7 != 0; cases sorted by node id: "-7 7", "0 0", "10 -4", "2 3")
    assert got["ok"] == (6.0, 6.0, 5, 5, "OK", None, _tests("ok", ["passed"] * 4, "passed"))
    assert got["mul"] == (3.0, 6.0, 2, 5, "OK", None,
                          _tests("mul", ["failed", "passed", "failed", "failed"], "passed"))
    assert got["ce"] == (0.0, 6.0, 0, 5, "CE", None, _tests("ce", ["failed"] * 4, "failed"))
    assert got["crash"][:5] == (2.0, 6.0, 1, 5, "SG")
    ce = rows(course)["ce"]
    for t in ce["tests"]:  # one verdict, with the compiler's own words, in every test
        assert t["worst"] == "CE"
        assert "undeclared_x" in t["message"] and "compilation failed" in t["message"]
    fb = (course / "feedback" / "ce.md").read_text()
    assert fb.count("CE: your code did not compile") == 5 and "undeclared_x" in fb
    assert "ce/builds.log" not in str(list(course.rglob("builds.log")))  # the overlay kept it


def test_cpp_course(tmp_path: Path) -> None:
    course = make_course(tmp_path, {"test_cpp.py": TESTS.replace("{cc}", "g++").replace("{src}", "main.cpp")},
                         {"ok": {"main.cpp": CPP_OK}, "ce": {"main.cpp": CPP_CE}})
    p = grade(course)
    assert p.returncode == 0, p.stdout + p.stderr
    got = summary(course)
    assert got["ok"] == (6.0, 6.0, 5, 5, "OK", None, _tests("ok", ["passed"] * 4, "passed"))
    assert got["ce"][:5] == (0.0, 6.0, 0, 5, "CE")
    assert all("conversion from" in t["message"] for t in rows(course)["ce"]["tests"])


@pytest.mark.parametrize("src,needle", [("while (1) ;", "wall time")])
def test_a_build_that_hangs_is_ce_with_its_limit(tmp_path: Path, src: str, needle: str) -> None:
    tests = '''
def test_x(submission):
    submission.build(["sh", "-c", "while :; do :; done"], wall_time="1s")
    assert submission.run(["true"]).exit_code == 0

def test_y(submission):
    submission.build(["sh", "-c", "while :; do :; done"], wall_time="1s")
'''
    course = make_course(tmp_path, {"test_h.py": tests}, {"slow": {"main.c": src}})
    p = grade(course)
    assert p.returncode == 0, p.stdout + p.stderr
    r = rows(course)["slow"]
    assert (r["score"], r["worst"]) == (0.0, "CE")
    assert all(needle in t["message"] for t in r["tests"])
    assert r["tests"][1]["duration"] < 0.9  # the second test got the first build's verdict
