"""Interactive tasks: a submission and the teacher's interactor joined by pipes, each in its own
box; every way a side can misbehave (stop reading, exit early, flood, hang) ends with a clear
verdict, never a hang."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from grade_course import grade, make_course, rows

JUDGE = '''
import sys
secret = int(sys.argv[1])
for turn in range(1, 21):
    line = sys.stdin.readline()
    if not line:
        sys.exit(print(f"no guess {turn}: your program stopped talking", file=sys.stderr) or 1)
    try:
        g = int(line)
    except ValueError:
        sys.exit(print(f"guess {turn}: not a number: {line[:20]!r}", file=sys.stderr) or 1)
    if g == secret:
        print("=", flush=True)
        print(f"found in {turn}", file=sys.stderr)
        sys.exit(0)
    print("<" if secret < g else ">", flush=True)
sys.exit(print("more than 20 guesses", file=sys.stderr) or 1)
'''

TESTS = '''
from pathlib import Path
import pytest

JUDGE = Path(__file__).with_name("judge.py")

@pytest.mark.parametrize("secret", [1, 37, 100])
def test_guess(submission, secret):
    r = submission.interact(["python3", "guess.py"], ["python3", "judge.py", str(secret)],
                            files={"judge.py": JUDGE}, wall_time="3s")
    assert r.verdict == "AC", r.message
'''

BINARY = '''
lo, hi = 1, 100
while True:
    mid = (lo + hi) // 2
    print(mid, flush=True)
    a = input()
    if a == "=":
        break
    lo, hi = (lo, mid - 1) if a == "<" else (mid + 1, hi)
'''
LINEAR = "for g in range(1, 101):\n    print(g, flush=True)\n    if input() == '=':\n        break\n"
SUBS = {
    "binary": BINARY,
    "linear": LINEAR,  # 37 and 100 take more than 20 guesses
    "quits": "pass\n",  # exits at once: the interactor sees EOF
    "deaf": "import time\nprint(50, flush=True)\ntime.sleep(60)\n",  # stops reading
    "flood": "while True:\n    print(50)\n",  # writes, never reads
    "silent": "import sys\nsys.stdin.read()\n",  # waits for input forever: a deadlock
    "crash": "print(50, flush=True)\ninput()\nraise SystemExit(3)\n",
    "lingers": BINARY + "import time\ntime.sleep(60)\n",  # right, then does not end
}


def test_interactive_course(tmp_path: Path, no_leftovers) -> None:
    course = make_course(tmp_path, {"test_guess.py": TESTS, "judge.py": JUDGE},
                         {n: {"guess.py": src} for n, src in SUBS.items()})
    t0 = time.monotonic()
    p = grade(course, "-j", "2", timeout=120)
    took = time.monotonic() - t0
    assert p.returncode == 0, p.stdout + p.stderr
    got = {n: (r["score"], r["max_score"]) for n, r in rows(course).items()}
    assert got == {"binary": (3, 3), "linear": (1, 3), "quits": (0, 3), "deaf": (0, 3), "flood": (0, 3),
                   "silent": (0, 3), "crash": (0, 3), "lingers": (0, 3)}

    def msgs(name: str) -> list[str]:
        return [t["message"] for t in rows(course)[name]["tests"]]
    assert all("more than 20 guesses" in m for m in msgs("linear")[1:])
    assert all("WA" in m and "no guess 1: your program stopped talking" in m for m in msgs("quits"))
    assert all("'TO'" in m and "wall time 3s exceeded" in m for m in msgs("deaf"))
    assert all("'TO'" in m or "WA" in m for m in msgs("flood"))
    assert all("'TO'" in m and "wall time 3s exceeded" in m for m in msgs("silent"))
    assert all("RE" in m and "exit code 3" in m for m in msgs("crash"))
    assert all("did not end within 1s after the interaction ended" in m for m in msgs("lingers"))
    assert {t["worst"] for t in rows(course)["deaf"]["tests"]} == {"TO"}
    assert took < 60, f"{took:.1f}s"


@pytest.mark.parametrize("broken,needle", [
    ("import sys\nsys.stdin.readline()\nraise ValueError('the judge has a bug')\n", "the judge has a bug"),
    ("import sys\nprint('cannot read the test data', file=sys.stderr)\nsys.exit(3)\n", "exit code 3"),
])
def test_a_broken_interactor_is_the_judges_error(tmp_path: Path, broken: str, needle: str) -> None:
    tests = TESTS.replace('[1, 37, 100]', '[5]')
    course = make_course(tmp_path, {"test_guess.py": tests, "judge.py": broken},
                         {"binary": {"guess.py": BINARY}})
    p = grade(course)
    assert p.returncode == 0, p.stdout + p.stderr
    [t] = rows(course)["binary"]["tests"]
    assert "JE" in t["message"] and needle in t["message"], t["message"]
