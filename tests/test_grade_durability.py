"""`sandbox grade` end to end: what a cut-short run keeps (journal, Ctrl-C, a crash, deadlines),
`--resume`, the order submissions are graded in, and per-submission `--timeout`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from grade_course import MAIN, SOL, grade, grade_cmd, journal, make_course, rows, summary

SLOW_TESTS = '''
import pytest

@pytest.mark.points(2)
def test_add(submission):
    assert submission.import_module("solution").add(2, 3) == 5

def test_cli(submission):
    r = submission.run(["python3", "main.py"], stdin=b"2 3\\n", wall_time="20s")
    assert r.stdout.strip() == b"5"
'''
SLOW_MAIN = "import time\ntime.sleep(0.4)\n" + MAIN  # each submission takes a while: time to interrupt
WRONG = "def add(a, b):\n    return a - b\n"


def slow_course(root: Path, n: int = 6) -> Path:
    subs = {f"s{i}": {"solution.py": SOL if i % 2 else WRONG, "main.py": SLOW_MAIN} for i in range(n)}
    return make_course(root, {"test_slow.py": SLOW_TESTS}, subs)


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGKILL], ids=["ctrl-c", "crash"])
def test_cut_short_then_resume_gives_the_uninterrupted_results(tmp_path, how, no_leftovers):
    """Ctrl-C (SIGINT to the terminal's process group) or a crash (SIGKILL) mid-run, then
    `--resume`: the same final results as a run that was never interrupted, without grading
    again what the journal holds."""
    full = slow_course(tmp_path / "full")
    assert grade(full, "-j", "1").returncode == 0
    cut = slow_course(tmp_path / "cut")
    p = subprocess.Popen(grade_cmd(cut, "-j", "1"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while len(journal(cut)) < 2 and time.monotonic() < deadline and p.poll() is None:
        time.sleep(0.02)
    os.killpg(p.pid, how)
    out, err = p.communicate(timeout=60)
    kept = journal(cut)
    if how == signal.SIGKILL:  # a crash cannot remove its temp dir (all that it leaves)
        for d in Path(os.environ["TMPDIR"]).glob("grade-run-*"):
            shutil.rmtree(d)
        with open(cut / "results.json.journal", "a") as f:  # and it may cut a line short
            f.write('{"key": "0123", "row": {"name": "s5", "sco')
    assert 2 <= len(kept) < 6, (len(kept), err)  # durable per submission, mid-run
    if how == signal.SIGINT:
        assert p.returncode == 130, err
        assert len(err.strip().splitlines()) == 1 and "interrupted" in err and "Traceback" not in err, err
        got = rows(cut)  # the results of what finished are written, the rest say why not
        assert {n for n, r in got.items() if r["error"] is None} >= {e["row"]["name"] for e in kept}
        assert any("interrupted" in (r["error"] or "") for r in got.values())
        assert all(r["max_score"] == 3 for r in got.values())
    r = grade(cut, "-j", "1", "--resume")
    assert r.returncode == 0, r.stderr
    assert summary(cut) == summary(full)
    assert {e["row"]["name"] for e in journal(cut)} == set(rows(full))  # all of it durable now
    again = rows(cut)
    for e in kept:  # reused from the journal, not graded again (durations would differ)
        assert again[e["row"]["name"]] == e["row"]


def test_resume_regrades_what_changed(tmp_path):
    """The journal is keyed by the submission, the tests and the options: change one and
    exactly what depends on it is graded again."""
    c = slow_course(tmp_path, 3)
    assert grade(c).returncode == 0
    first = rows(c)
    (c / "submissions/s0/solution.py").write_text(SOL)  # s0 fixed its bug
    assert grade(c, "--resume").returncode == 0
    second = rows(c)
    assert second["s0"]["score"] == 3 and first["s0"]["score"] == 1
    assert second["s1"] == first["s1"] and second["s2"] == first["s2"]  # not graded again
    tests = c / "grader_tests/test_slow.py"
    tests.write_text(tests.read_text().replace("points(2)", "points(5)"))
    assert grade(c, "--resume").returncode == 0
    assert {n: r["max_score"] for n, r in rows(c).items()} == {"s0": 6, "s1": 6, "s2": 6}
    assert grade(c, "--resume", "--memory", "128M").returncode == 0  # options: graded again
    assert rows(c)["s1"] != second["s1"] and rows(c)["s1"]["score"] == 6


ORDER_TESTS = '''
import os

def test_{m}_one(submission):
    with open(os.environ["GRADE_ORDER"], "a") as f:
        f.write(submission.name + " {m}\\n")
    assert submission.import_module("solution").add(1, 1) == 2

def test_{m}_two(submission):
    with open(os.environ["GRADE_ORDER"], "a") as f:
        f.write(submission.name + " {m}\\n")
'''


def test_a_run_grades_one_whole_submission_after_another(tmp_path):
    """All of a submission's tests, over all modules, before the next submission's: the
    progress and the journal count whole submissions as they finish."""
    c = make_course(tmp_path, {"test_a.py": ORDER_TESTS.format(m="a"), "test_b.py": ORDER_TESTS.format(m="b")},
                    {f"s{i}": {"solution.py": SOL} for i in range(3)})
    order = tmp_path / "order.txt"
    r = subprocess.run(grade_cmd(c, "-j", "1"), capture_output=True, text=True, timeout=300,
                       env={**os.environ, "GRADE_ORDER": str(order)})
    assert r.returncode == 0, r.stderr
    seen = [ln.split()[0] for ln in order.read_text().splitlines()]
    assert seen == ["s0"] * 4 + ["s1"] * 4 + ["s2"] * 4, seen
    assert [e["row"]["name"] for e in journal(c)] == ["s0", "s1", "s2"]


HANG_TESTS = '''
def test_add(submission):
    assert submission.import_module("solution").add(2, 3) == 5

def test_slow(submission):
    r = submission.run(["python3", "main.py"], wall_time="60s")
    assert r.ok
'''


def test_timeout_is_per_submission_and_the_rest_is_graded(tmp_path, no_leftovers):
    """A submission slower than --timeout (though within every per-test limit) is given up
    alone: the ones after it in the same run are still graded; the maximum score stays the
    full one; the run says it did not grade everyone (exit 1)."""
    subs = {"a": {"solution.py": SOL, "main.py": "pass\n"},
            "b": {"solution.py": SOL, "main.py": "import time\ntime.sleep(60)\n"},
            "c": {"solution.py": SOL, "main.py": "pass\n"}}
    c = make_course(tmp_path, {"test_h.py": HANG_TESTS}, subs)
    t = time.monotonic()
    r = grade(c, "-j", "1", "--timeout", "3", "--wall-time", "60s", "--call-timeout", "60")
    assert time.monotonic() - t < 40
    assert r.returncode == 1, r.stderr
    got = rows(c)
    assert got["a"]["error"] is None and got["c"]["error"] is None and got["c"]["score"] == 2
    assert "--timeout 3s" in got["b"]["error"] and got["b"]["worst"] == "TO"
    assert got["b"]["score"] == 1 and got["b"]["max_score"] == 2 and got["b"]["total"] == 2
    assert [t["outcome"] for t in got["b"]["tests"]] == ["passed", "not run"]


def test_run_timeout_is_the_whole_runs_and_exits_non_zero(tmp_path, no_leftovers):
    c = slow_course(tmp_path, 6)
    r = grade(c, "-j", "1", "--run-timeout", "1.5")
    assert r.returncode == 1, r.stderr
    got = rows(c)
    assert len(got) == 6 and any("--run-timeout 1.5s" in (x["error"] or "") for x in got.values())
    assert all(x["max_score"] == 3 and x["total"] == 2 for x in got.values())
    assert json.loads((c / "results.json").read_text())  # written, whole


def test_progress_counts_whole_submissions():
    """The bar's numbers: a submission is running from its first test to its last, then done
    (or failed to grade); submissions the journal had count as done from the start."""
    from sandbox.grading.progress import Progress

    p = Progress(total=4, already=1, enabled=False)
    p.started("a")
    p.started("b")
    assert (p.done, len(p.running), p.failed) == (1, 2, 0)
    p.finished("a", graded=True)
    p.finished("b", graded=False)
    assert (p.done, len(p.running), p.failed) == (3, 0, 1)
