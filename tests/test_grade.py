"""`sandbox grade` end to end on a generated sample course with honest, wrong, crashing,
hanging, fork-bombing, memory-hogging, output-flooding and cheating submissions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sandbox._codec import CodecError, decode, encode

TESTS = '''
import pytest

@pytest.mark.points(2)
def test_add(submission):
    sol = submission.import_module("solution")
    assert sol.add(2, 3) == 5

def test_add_negative(submission):
    assert submission.import_module("solution").add(-1, -1) == -2

@pytest.mark.points(2)
def test_cli(submission):
    r = submission.run(["python3", "main.py"], stdin=b"2 3\\n", wall_time="10s")
    assert r.stdout.strip() == b"5"

def test_writes_file(submission):
    submission.import_module("solution").save("out.txt", "hi")
    assert submission.changes().created == ["out.txt"]
'''

GOOD_SOL = "def add(a, b):\n    return a + b\n\ndef save(name, text):\n    open(name, 'w').write(text)\n"
GOOD_MAIN = "a, b = map(int, input().split())\nprint(a + b)\n"

COURSE: dict[str, dict[str, str]] = {
    "honest": {"solution.py": GOOD_SOL, "main.py": GOOD_MAIN},
    "wrong": {"solution.py": "def add(a, b):\n    return a - b\n\ndef save(n, t):\n    open(n, 'w').write(t)\n",
              "main.py": "a, b = map(int, input().split())\nprint(a * b)\n"},
    "crashing": {"solution.py": "1 / 0\n", "main.py": "raise SystemExit(3)\n"},
    "hanging": {"solution.py": "while True:\n    pass\n", "main.py": "import time\ntime.sleep(100)\n"},
    "forkbomb": {"solution.py": "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                 "main.py": "import os\nwhile True:\n    os.fork()\n"},
    "memhog": {"solution.py": "x = []\nwhile True:\n    x.append(bytearray(16 << 20))\n",
               "main.py": "x = bytearray(1 << 32)\n"},
    "flood": {"solution.py": "import sys\ndef add(a, b):\n    while True:\n        sys.stdout.write('x' * 65536)\n",
              "main.py": "while True:\n    print('y' * 1000)\n"},
    "cheat_print": {"solution.py": "def add(a, b):\n    print('test_add PASSED\\n4 passed')\n    return a + b\n",
                    "main.py": "print('5')\nprint('===== 4 passed in 0.01s =====')\n"},
    "cheat_patch": {"solution.py": (
        "import builtins, sys\n"
        "builtins.__import__ = lambda *a, **k: None\n"  # breaks its own process only
        "sys.modules['pytest'] = None\n"
        "class AlwaysEqual:\n    def __eq__(self, o):\n        return True\n"
        "def add(a, b):\n    return AlwaysEqual()\n")},
    "cheat_pickle": {"solution.py": (
        "import os\nclass Evil:\n    def __reduce__(self):\n        return (os.system, ('touch /tmp/pwned',))\n"
        "def add(a, b):\n    return Evil()\n")},
}
# points: add 2, add_negative 1, cli 2, writes_file 1 → 6
EXPECTED = {"honest": 6, "wrong": 1, "crashing": 0, "hanging": 0, "forkbomb": 0, "memhog": 0,
            "flood": 0, "cheat_print": 3, "cheat_patch": 0, "cheat_pickle": 0, "symlinks": 5}


@pytest.fixture
def course(tmp_path: Path) -> Path:
    os.chmod(tmp_path, 0o755)
    (tmp_path / "grader_tests").mkdir()
    (tmp_path / "grader_tests" / "test_course.py").write_text(TESTS)
    subs = tmp_path / "submissions"
    for name, files in COURSE.items():
        (subs / name).mkdir(parents=True)
        for fn, src in files.items():
            (subs / name / fn).write_text(src)
    sym = subs / "symlinks"  # plants links to host files where the grader might look
    sym.mkdir()
    (sym / "solution.py").write_text(GOOD_SOL)
    (sym / "main.py").write_text(GOOD_MAIN)
    (sym / "out.txt").symlink_to("/etc/passwd")
    (sym / "leak").symlink_to(os.path.expanduser("~"))
    for p in tmp_path.rglob("*"):
        if not p.is_symlink():
            os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return tmp_path


def grade(course: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sandbox._cli", "grade", "--tests",
                           str(course / "grader_tests"), "--submissions", str(course / "submissions"),
                           "-j", "2", "--call-timeout", "1", "--wall-time", "5s",
                           "--out", str(course / "results.json"), "--csv", str(course / "r.csv"),
                           "--junitxml", str(course / "r.xml"), *extra],
                          capture_output=True, text=True, timeout=600)


def test_sample_course_exact_scores_and_host_unchanged(course, no_leftovers):
    p = grade(course)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = {r["name"]: r for r in json.loads((course / "results.json").read_text())["submissions"]}
    assert set(rows) == set(EXPECTED)  # every submission has a row
    got = {n: r["score"] for n, r in rows.items()}
    wrong = {n: [(t["nodeid"].split("::")[-1], t["message"]) for t in rows[n]["tests"]
                 if t["outcome"] != "passed"] for n in EXPECTED if got[n] != EXPECTED[n]}
    assert got == EXPECTED, wrong
    assert all(r["max_score"] == 6 and r["total"] == 4 for r in rows.values())
    assert rows["hanging"]["worst"] == "TO"
    # ML where a cgroup enforces memory, and under the rlimit fallback too, where the refused
    # allocation raises MemoryError in the student's code
    assert rows["memhog"]["worst"] == "ML"
    assert rows["crashing"]["worst"] == "RE"  # ZeroDivisionError on import: not OK
    assert any("MemoryError" in (t["message"] or "") for t in rows["memhog"]["tests"])
    assert not os.path.exists("/tmp/pwned")                  # nothing was unpickled
    assert os.path.islink(course / "submissions/symlinks/out.txt")  # submission itself untouched
    assert "honest" in p.stdout and "6/6" in p.stdout        # the table
    assert (course / "r.csv").read_text().count("\n") == len(EXPECTED) + 1
    assert (course / "r.xml").read_text().count("<testsuite ") == len(EXPECTED)


def test_resume_skips_graded_submissions(course):
    assert grade(course).returncode == 0
    first = json.loads((course / "results.json").read_text())
    p = grade(course, "--resume")
    assert p.returncode == 0
    assert json.loads((course / "results.json").read_text())["submissions"] == first["submissions"]


@pytest.mark.parametrize("args,needle", [
    (["--tests", "/nonexistent", "--submissions", "/tmp"], "/nonexistent"),
    (["--tests", "/tmp", "--submissions", "/nonexistent"], "/nonexistent"),
    (["--tests", "/tmp"], "--submissions"),
    (["--tests", "/tmp", "--submissions", "/tmp", "-j", "0"], "-j 0"),
    (["--tests", "/tmp", "--submissions", "/tmp", "--memory", "lots"], "'lots'"),
])
def test_grade_usage_errors(args, needle):
    p = subprocess.run([sys.executable, "-m", "sandbox._cli", "grade", *args], capture_output=True, text=True)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and needle in p.stderr


@pytest.mark.parametrize("garbage", [b"", b"\x80\x04", b"[" * 100000, b'{"$bytes": 5}',
                                     b'{"$tuple": "x"}', b"1" * (40 << 20)])
def test_codec_rejects_garbage(garbage):
    with pytest.raises(CodecError):
        decode(garbage)


def test_codec_round_trip_and_refusals():
    v = {"a": [1, 2.5, None, True], "b": b"\x00\xff", "t": (1, (2, "x")), "$odd": {"k": "v"}}
    assert decode(encode(v)) == v
    with pytest.raises(CodecError):
        encode(object())
    with pytest.raises(CodecError):
        encode({1: "non-str key"})


def test_cut_short_run_still_gives_every_submission_a_row(course, no_leftovers):
    """Runs killed at --run-timeout leave nothing behind either (their temp space is the
    grader's); a run that did not grade everyone says so (exit 1); a row cut short keeps the
    full maximum score."""
    p = grade(course, "--run-timeout", "2")
    assert p.returncode == 1, p.stderr[-2000:]
    rows = json.loads((course / "results.json").read_text())["submissions"]
    assert {r["name"] for r in rows} == set(EXPECTED)
    assert any("--run-timeout" in (r["error"] or "") for r in rows)
    assert all(r["total"] == 4 and r["max_score"] == 6 for r in rows)
