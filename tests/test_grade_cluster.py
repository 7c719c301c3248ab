"""`sandbox grade --scheduler`: a real Dask LocalCluster (worker processes, the
sandbox.grading.cluster preload) grading the sample course to exactly the local pool's scores; a worker SIGKILLed mid-run
loses nothing and doubles nothing; a submission whose workers keep dying is reported, not retried
for ever; a worker on a host that cannot make boxes (a seccomp filter denying user namespaces)
refuses to join, naming the cause."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from grade_course import MAIN, SOL, grade_cmd, journal, make_course, rows, summary
from test_grade import EXPECTED, course, grade  # noqa: F401 - course is a fixture
from test_grade_image import TESTS as IMAGE_TESTS
from test_grade_image import store  # noqa: F401 - a fixture

try:
    import distributed  # noqa: F401
except ImportError:
    pytest.skip("Dask distributed is not installed (pip install '.[cluster]'): no cluster tests",
                allow_module_level=True)

BIN = os.path.dirname(sys.executable)


def _descendants(pid: int) -> dict[int, str]:
    """pid -> cmdline of every process below ``pid`` (ours only)."""
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d))
    out, todo = {}, [pid]
    while todo:
        for k in kids.get(todo.pop(), []):
            try:
                with open(f"/proc/{k}/cmdline", "rb") as f:
                    out[k] = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            todo.append(k)
    return out


def _ppid(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def test_local_cluster_gives_the_local_pools_exact_scores(course, no_leftovers):  # noqa: F811
    r = grade(course, "--no-progress")
    assert r.returncode == 0, r.stderr
    local = summary(course)
    assert {n: s[0] for n, s in local.items()} == EXPECTED
    r = grade(course, "--no-progress", "--scheduler", "local:2")
    assert r.returncode == 0, r.stderr
    assert summary(course) == local
    assert len(journal(course)) == len(EXPECTED)


def _slow_course(root: Path, n: int, extra: dict[str, dict[str, str]] | None = None) -> Path:
    tests = {"test_s.py": "import time\n\ndef test_add(submission):\n    time.sleep(1.5)\n"
                          "    assert submission.import_module('solution').add(2, 3) == 5\n"}
    subs = {f"s{i}": {"solution.py": SOL if i % 2 else "def add(a, b):\n    return 0\n", "main.py": MAIN}
            for i in range(n)}
    return make_course(root, tests, {**subs, **(extra or {})})


def test_sigkilled_worker_loses_nothing_and_records_each_once(tmp_path, no_leftovers):
    c = _slow_course(tmp_path / "c", 6)
    p = subprocess.Popen(grade_cmd(c, "--scheduler", "local:2"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    killed = None
    deadline = time.monotonic() + 120
    while killed is None and time.monotonic() < deadline and p.poll() is None:
        runs = [pid for pid, cmd in _descendants(p.pid).items() if "--grade-log" in cmd]
        if runs:  # a grading run: its grandparent is the worker process (run <- child <- worker)
            killed = _ppid(_ppid(runs[0]))
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.1)
    assert killed is not None, "no grading run was seen"
    out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    got = rows(c)
    assert {n: r["score"] for n, r in got.items()} == {f"s{i}": i % 2 for i in range(6)}
    names = [e["row"]["name"] for e in journal(c)]
    assert sorted(names) == sorted(got) and len(names) == len(set(names))


def _kill_graders_of(p: subprocess.Popen, name: str, times: int | None) -> int:
    """SIGKILL the worker grading submission ``name`` (a host fault), up to ``times`` times
    (None: whenever), until ``sandbox grade`` ends; returns how many were killed."""
    kills = 0
    deadline = time.monotonic() + 300
    while p.poll() is None and time.monotonic() < deadline:
        for pid, cmd in _descendants(p.pid).items():
            if "--grade-log" in cmd and f"/s/{name}" in cmd and (times is None or kills < times):
                try:
                    os.kill(_ppid(_ppid(pid)), signal.SIGKILL)
                    kills += 1
                except (OSError, ValueError):
                    pass
        time.sleep(0.1)
    return kills


def test_submission_killing_its_workers_is_reported_not_retried_for_ever(tmp_path, no_leftovers):
    c = _slow_course(tmp_path / "c", 2, {"poison": {"solution.py": SOL}})
    p = subprocess.Popen(grade_cmd(c, "--scheduler", "local:2"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    kills = _kill_graders_of(p, "poison", None)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 1, err
    got = rows(c)
    assert "also when graded alone; not retried again" in got["poison"]["error"]
    assert {n: got[n]["score"] for n in ("s0", "s1")} == {"s0": 0, "s1": 1}
    assert 6 <= kills <= 8  # allowed-failures 2: three deaths, three more alone, then reported
    assert "poison" not in [e["row"]["name"] for e in journal(c)]


def test_a_submission_dask_gave_up_on_is_graded_alone_once_more(tmp_path, no_leftovers):
    # its first three workers die for another reason (as they can while it only waits on
    # them): Dask gives up on it, and graded alone it gets its real score
    c = _slow_course(tmp_path / "c", 2, {"victim": {"solution.py": SOL}})
    p = subprocess.Popen(grade_cmd(c, "--scheduler", "local:2"), stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    kills = _kill_graders_of(p, "victim", 3)
    out, err = p.communicate(timeout=60)
    assert kills == 3 and p.returncode == 0, err
    got = rows(c)
    assert got["victim"]["score"] == 1 and not got["victim"].get("error"), got["victim"]
    assert {n: got[n]["score"] for n in ("s0", "s1")} == {"s0": 0, "s1": 1}


def test_image_reaches_local_workers(tmp_path, store, no_leftovers):  # noqa: F811
    """local:N's workers share this host's image store: their boxes have the image as root."""
    c = make_course(tmp_path / "c", {"test_img.py": IMAGE_TESTS}, {
        "good": {"main.sh": "read x\necho got $x\n"}, "bad": {"main.sh": "echo nope\n"}})
    r = subprocess.run(grade_cmd(c, "--image", store, "--scheduler", "local:2"),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert {n: s[:4] for n, s in summary(c).items()} == {"good": (3.0, 3.0, 3, 3), "bad": (2.0, 3.0, 2, 3)}


def test_image_with_a_remote_scheduler_is_refused(tmp_path, store):  # noqa: F811
    """A remote worker's store is not this host's: refused before anything, not graded wrong."""
    c = _slow_course(tmp_path / "c", 1)
    for env in ({}, {"SANDBOX_SCHEDULER": "tcp://127.0.0.1:1"}):
        extra = () if env else ("--scheduler", "tcp://127.0.0.1:1")
        r = subprocess.run(grade_cmd(c, "--image", store, *extra), capture_output=True, text=True,
                           timeout=60, env={**os.environ, **env})
        assert r.returncode == 2, r.stderr
        assert r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
        assert f"--image {store} cannot be combined with --scheduler tcp://127.0.0.1:1" in r.stderr
        assert not (c / "results.json").exists()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _dask_env(root: Path) -> dict[str, str]:
    """Dask's scratch space (the scheduler's lock files too) under ``root``, not in $TMPDIR."""
    return {**os.environ, "DASK_TEMPORARY_DIRECTORY": str(root / "dask")}


def _dask(port: int, root: Path, workers: int) -> list[subprocess.Popen[bytes]]:
    """A real `dask scheduler` on ``port`` and ``workers`` admitted `dask worker` processes."""
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "env": _dask_env(root)}
    procs = [subprocess.Popen([f"{BIN}/dask", "scheduler", "--host", "127.0.0.1", "--port",
                               str(port), "--no-dashboard"], **quiet)]
    for i in range(workers):
        procs.append(subprocess.Popen(
            [f"{BIN}/dask", "worker", f"tcp://127.0.0.1:{port}", "--nthreads", "1", "--preload",
             "sandbox.grading.cluster", "--no-dashboard", "--local-directory", str(root / f"w{i}")],
            **quiet))
    return procs


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in reversed(procs):  # workers first: a worker outliving its scheduler waits for it
        if p.poll() is None:
            p.terminate()
        p.wait(60)


def test_scheduler_crash_is_recovered_with_resume(tmp_path, no_leftovers):
    """SIGKILL the scheduler mid-run: the grader ends (exit 1, no traceback), its rows name the
    lost scheduler, and `--resume` against a new one grades only the rest: every submission
    recorded once, the local pool's exact scores."""
    c = _slow_course(tmp_path / "c", 6)
    r = subprocess.run(grade_cmd(c, "-j", "2"), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    local = summary(c)
    os.unlink(c / "results.json")
    os.unlink(c / "results.json.journal")
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    procs = _dask(port, tmp_path, 2)
    try:
        p = subprocess.Popen(grade_cmd(c, "--scheduler", addr), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and p.poll() is None:
            if (c / "results.json.journal").exists() and journal(c):
                break  # a first submission is durable: the rest are queued or running
            time.sleep(0.05)
        procs[0].kill()
        procs[0].wait(30)
        out, err = p.communicate(timeout=120)
        before = [e["row"]["name"] for e in journal(c)]
        assert p.returncode == 1 and "Traceback" not in err, err
        lost = {n for n, row in rows(c).items() if row["error"] is not None}
        assert lost and lost.isdisjoint(before) and len(lost) + len(before) == 6, err
        assert all(f"the connection to the scheduler {addr} was lost" in rows(c)[n]["error"]
                   and "--resume" in rows(c)[n]["error"] for n in lost)
        _stop(procs)
        procs = _dask(port, tmp_path, 2)  # the scheduler is back (new workers: the old left)
        r = subprocess.run(grade_cmd(c, "--scheduler", addr, "--resume"), capture_output=True,
                           text=True, timeout=300)
        assert r.returncode == 0, r.stderr
    finally:
        _stop(procs)
    assert summary(c) == local
    names = [e["row"]["name"] for e in journal(c)]
    assert names[: len(before)] == before and sorted(names) == sorted(local)  # each once


def test_only_as_many_submissions_out_as_boxes(tmp_path, no_leftovers):
    """Dask hands a worker every task it is given, and a dying worker counts against all it
    held, waiting or not: the grader keeps only as many out as the workers have boxes."""
    from distributed import Client

    def processing(dask_scheduler):  # in the scheduler (nested: pickled by value)
        return sum(len(ws.processing) for ws in dask_scheduler.workers.values())

    c = _slow_course(tmp_path / "c", 6)
    port = _free_port()
    procs = _dask(port, tmp_path, 2)
    seen = []
    try:
        with Client(f"tcp://127.0.0.1:{port}", timeout=30) as cl:
            cl.wait_for_workers(2, timeout=60)
            p = subprocess.Popen(grade_cmd(c, "--scheduler", f"tcp://127.0.0.1:{port}"),
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            while p.poll() is None:
                seen.append(cl.run_on_scheduler(processing))
                time.sleep(0.05)
            out, err = p.communicate(timeout=60)
    finally:
        _stop(procs)
    assert p.returncode == 0, err
    assert {n: r["score"] for n, r in rows(c).items()} == {f"s{i}": i % 2 for i in range(6)}
    assert max(seen) == 2, seen  # both workers busy, never more: 6 submissions, 2 boxes


def test_bad_scheduler_is_a_usage_error(tmp_path):
    c = _slow_course(tmp_path / "c", 1)
    for bad in ("local:0", "local:x", "ftp://h:1", "tcp://nohost"):
        r = subprocess.run(grade_cmd(c, "--scheduler", bad), capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and f"--scheduler {bad}:" in r.stderr and "Traceback" not in r.stderr


DENY_USERNS = """
import errno, os, sys
import pyseccomp as s
NEWUSER = 0x10000000
f = s.SyscallFilter(s.ALLOW)
for call in ("unshare", "clone"):
    f.add_rule(s.ERRNO(errno.EPERM), call, s.Arg(0, s.MASKED_EQ, NEWUSER, NEWUSER))
f.add_rule(s.ERRNO(errno.ENOSYS), "clone3")  # its flags are in memory: make libc use clone
f.load()
os.execv(sys.argv[1], sys.argv[1:])
"""


@pytest.mark.parametrize("nanny", [True, False])
def test_worker_that_cannot_make_boxes_refuses_to_join(tmp_path, nanny):
    pytest.importorskip("pyseccomp", reason="pyseccomp is needed to deny user namespaces")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sched = subprocess.Popen([f"{BIN}/dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
                              "--no-dashboard"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=_dask_env(tmp_path))
    try:
        (tmp_path / "deny.py").write_text(DENY_USERNS)
        cmd = [sys.executable, str(tmp_path / "deny.py"), sys.executable, f"{BIN}/dask", "worker",
               f"tcp://127.0.0.1:{port}", "--preload", "sandbox.grading.cluster", "--no-dashboard"]
        w = subprocess.run(cmd + ([] if nanny else ["--no-nanny"]), capture_output=True, text=True,
                           timeout=120, env=_dask_env(tmp_path))
        assert w.returncode != 0
        assert "refuses to join: boxes cannot be made here: user namespaces: trial failed" in w.stderr
        assert "Operation not permitted" in w.stderr
        from distributed import Client

        with Client(f"tcp://127.0.0.1:{port}", timeout=30) as cl:
            assert cl.scheduler_info()["workers"] == {}
    finally:
        sched.terminate()
        sched.wait(30)


def test_admitted_worker_advertises_boxes():
    from sandbox.grading.cluster import admission

    why, res = admission()
    assert why == []
    assert set(res) <= {"cgroup"}
