"""Nothing of the teacher crosses into the box that runs a submission's code (issue 13, escape 1).

A hostile submission with no real implementation looks for the expected answers where a clone
of the grader would have them: the caller's stack frames and globals, every object the
collector knows, ``linecache``, ``sys.modules`` (the teacher's test module, the grading
plugin's state with the other submissions' results), ``sys.argv`` and the environment, and
finally every readable byte of its own address space (``/proc/self/mem``: where a cloned
process keeps the grader's environment block even after ``os.environ`` was cleared).

Each channel is one test of a small course worth one point, passed only if the channel leaked
the secret answer, a string that only appears in the teacher's test file, a secret from the
grader's environment, or another submission's name. Control tests hand a value *in* as an
argument and must find it (the scanners work: finding nothing is not a broken scanner). The
same hostile code then runs through the ``sandbox`` fixture's ``call``.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.escape._memscan import READABLE_MEMORY

HOSTILE = READABLE_MEMORY + r'''
import gc, linecache, os, re, sys

LIMIT = 2_000_000  # strings looked at per channel


def _walk(obj, out, seen, depth):
    """str values reachable from obj through containers, modules and instance dicts."""
    if len(out) > LIMIT or id(obj) in seen:
        return
    if isinstance(obj, str):
        out.append(obj)
        return
    if isinstance(obj, (bytes, bytearray)):
        out.append(bytes(obj).decode("latin-1"))
        return
    seen.add(id(obj))
    if depth <= 0:
        return
    try:
        if isinstance(obj, dict):
            items = [*obj.keys(), *obj.values()]
        elif isinstance(obj, (list, tuple, set, frozenset)):
            items = list(obj)
        elif hasattr(obj, "__dict__") and isinstance(vars(obj), dict):
            items = [vars(obj)]
        else:
            return
    except Exception:
        return
    for x in items:
        _walk(x, out, seen, depth - 1)


def _frames():
    out, seen, f = [], set(), sys._getframe(2)
    while f is not None:
        _walk(f.f_locals, out, seen, 4)
        _walk(f.f_globals, out, seen, 4)
        out.extend(c for c in f.f_code.co_consts if isinstance(c, str))
        f = f.f_back
    return out


def _gc():
    for o in gc.get_objects():
        try:
            if isinstance(o, dict):
                yield from (x for x in [*o.keys(), *o.values()] if isinstance(x, str))
            elif isinstance(o, (list, tuple)):
                yield from (x for x in o if isinstance(x, str))
        except Exception:
            pass


def _linecache():
    return [line for entry in list(linecache.cache.values()) if len(entry) > 2 for line in entry[2]]


def _modules():
    out, seen = [], set()
    for name, mod in list(sys.modules.items()):
        out.append(name)
        out.append(str(getattr(mod, "__file__", "")))
        _walk(getattr(mod, "__dict__", {}), out, seen, 4)
    return out


def _argv():
    out = list(sys.argv) + list(os.environ.values())
    for p in ("/proc/self/cmdline", "/proc/self/environ", "/proc/1/cmdline", "/proc/1/environ"):
        try:
            with open(p, "rb") as f:
                out.extend(x.decode("latin-1") for x in f.read().split(b"\0"))
        except OSError:
            pass
    return out


def _mem(patterns):
    """Every readable mapping of this process, searched as bytes (``readable_memory``)."""
    rx = [re.compile(p.encode()) for p in patterns]
    found = set()
    for data in readable_memory(1 << 20, 64):
        for r in rx:
            found.update(m.decode("latin-1") for m in r.findall(data))
    return sorted(found)


def find(channel, patterns, decoy=None):
    """Matches of the patterns the channel exposes (``decoy``: a control value handed in)."""
    if channel == "mem":
        return _mem(patterns)
    texts = {"frames": _frames, "gc": _gc, "linecache": _linecache, "modules": _modules,
             "argv": _argv}[channel]()
    rx, found, batch = re.compile("|".join(patterns)), set(), []
    for t in texts:  # searched in batches: one string per object would be slow, one for all too big
        batch.append(t)
        if len(batch) >= 20000:
            found.update(rx.findall("\n".join(batch)))
            batch.clear()
    found.update(rx.findall("\n".join(batch)))
    return sorted(found)
'''

CHANNELS = ("frames", "gc", "linecache", "modules", "argv", "mem")
CONTROLS = ("frames", "gc", "mem")  # where an argument must be visible


def _secrets() -> dict[str, str]:
    return {"answer": f"ANSWER-{secrets.token_hex(8)}", "marker": f"MARKER-{secrets.token_hex(8)}",
            "env": f"ENVSECRET-{secrets.token_hex(8)}", "peer": f"peer_{secrets.token_hex(4)}",
            "control": f"CONTROL-{secrets.token_hex(8)}"}


def _teacher_tests(s: dict[str, str], fixture: str, ask: str, with_peer: bool) -> str:
    """The teacher's test file: the answer and the marker exist only here. ``ask`` defines
    ``ask(box, *args)``, which runs the submission's ``find`` the way the course does."""
    peer_rx, peer = (', "peer_[0-9a-f]{8}"', f', "{s["peer"]}"') if with_peer else ("", "")
    return textwrap.dedent(f'''
        import os
        import pytest

        ANSWER = "{s["answer"]}"  # the secret expected value
        # {s["marker"]}: a string that only appears in this file
        PATTERNS = ["ANSWER-[0-9a-f]{{16}}", "MARKER-[0-9a-f]{{16}}", "ENVSECRET-[0-9a-f]{{16}}"{peer_rx}]
        TARGETS = {{ANSWER, "{s["marker"]}", os.environ["GRADER_SECRET"]{peer}}}
        ''') + textwrap.dedent(ask) + textwrap.dedent(f'''

        @pytest.mark.parametrize("channel", {CHANNELS!r})
        def test_leak(channel, {fixture}):
            found = ask({fixture}, "find", channel, PATTERNS)
            assert TARGETS & set(found), "nothing leaked"

        @pytest.mark.parametrize("channel", {CONTROLS!r})
        def test_control(channel, {fixture}):
            control = "{s["control"]}"
            assert control in ask({fixture}, "find", channel, ["CONTROL-[0-9a-f]{{16}}"], control)
        ''')


GRADE_ASK = """
    def ask(submission, name, *args):
        return getattr(submission.import_module("solution"), name)(*args)
    """
FIXTURE_ASK = """
    import hostile

    def ask(sandbox, name, *args):
        return sandbox.call(getattr(hostile, name), *args,
                            sandbox_options={"memory": "1G", "wall_time": "60s"})
    """


def test_graded_hostile_submission_finds_nothing_of_the_teacher(box_tmp: Path, no_leftovers):
    s = _secrets()
    (box_tmp / "tests").mkdir()
    (box_tmp / "tests" / "test_course.py").write_text(_teacher_tests(
        s, "submission", GRADE_ASK, with_peer=True))
    for name in (s["peer"], "zz_hostile"):  # same shard (-j 1); the peer is graded first
        (box_tmp / "subs" / name).mkdir(parents=True)
        (box_tmp / "subs" / name / "solution.py").write_text(HOSTILE)
    for p in box_tmp.rglob("*"):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    env = {**os.environ, "GRADER_SECRET": s["env"]}
    p = subprocess.run([sys.executable, "-m", "sandbox._cli", "grade", "--tests", str(box_tmp / "tests"),
                        "--submissions", str(box_tmp / "subs"), "-j", "1", "--call-timeout", "30",
                        "--wall-time", "60s", "--memory", "1G", "--no-progress",
                        "--out", str(box_tmp / "r.json")],
                       capture_output=True, text=True, env=env, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    rows = {r["name"]: r for r in json.loads((box_tmp / "r.json").read_text())["submissions"]}
    row = rows["zz_hostile"]
    outcome = {t["nodeid"].split("::")[-1]: (t["outcome"], t["message"]) for t in row["tests"]}
    assert all(outcome[f"test_control[zz_hostile-{c}]"][0] == "passed" for c in CONTROLS), outcome
    leaked = {k: v for k, v in outcome.items() if k.startswith("test_leak") and v[0] == "passed"}
    assert leaked == {}, leaked
    assert row["score"] == len(CONTROLS) and row["error"] is None, outcome


def test_fixture_call_finds_nothing_of_the_caller(box_tmp: Path, no_leftovers):
    """A pytest run of its own (in a directory the box can traverse in root mode too) whose
    process holds the secrets; ``hostile.find`` is called through the fixture."""
    s = _secrets()
    (box_tmp / "hostile.py").write_text(HOSTILE)
    (box_tmp / "test_it.py").write_text(_teacher_tests(s, "sandbox", FIXTURE_ASK, with_peer=False))
    for p in box_tmp.iterdir():
        os.chmod(p, 0o644)
    p = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:pytest_isolate",
                        "-rA", "--rootdir", str(box_tmp), str(box_tmp / "test_it.py")],
                       cwd=box_tmp, capture_output=True, text=True, timeout=900,
                       env={**os.environ, "GRADER_SECRET": s["env"]})
    out = p.stdout
    controls = [f"PASSED test_it.py::test_control[{c}]" for c in CONTROLS]
    assert all(c in out for c in controls), out[-4000:]
    leaked = [ln for ln in out.splitlines() if ln.startswith("PASSED test_it.py::test_leak")]
    assert leaked == [], out[-4000:]
    assert f"{len(CONTROLS)} passed" in out and f"{len(CHANNELS)} failed" in out, out[-4000:]


DAEMON = """
import os, time
calls = []

def count():
    calls.append(1)
    return len(calls)

def daemon():
    pid = os.fork()
    if pid == 0:
        os.setsid()
        while True:
            time.sleep(1)
    return pid

def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
"""


def test_each_submission_has_a_box_of_its_own_and_each_test_a_fresh_worker(box_tmp: Path, no_leftovers):
    """A submission's tests share its box (one trust domain: they all run its code), never
    another submission's; each test gets a fresh fork of the clean worker (module state starts
    again) that starts alone in the box (a daemon an earlier test left is gone)."""
    from sandbox.grading.submission import Submission

    paths = []
    for name in ("first", "second"):
        (box_tmp / name).mkdir()
        (box_tmp / name / "solution.py").write_text(DAEMON)
        os.chmod(box_tmp / name, 0o755)
        os.chmod(box_tmp / name / "solution.py", 0o644)
        paths.append(str(box_tmp / name))
    lim = {"memory": "256M", "wall_time": "10s", "pids": "64"}
    boxes, daemon = [], 0
    for i, (path, nxt) in enumerate(((paths[0], paths[0]), (paths[0], paths[1]), (paths[1], None))):
        sub = Submission(path, lim, 10.0, next_path=nxt)
        try:
            sol = sub.import_module("solution")
            assert sol.count() == 1 and sol.count() == 2  # fresh in every test
            if i == 0:
                daemon = sol.daemon()
                assert sol.alive(daemon)
            elif i == 1:
                assert not sol.alive(daemon), "an earlier test's daemon is still in the box"
            boxes.append(sub._held.box)
        finally:
            sub.close()
    assert boxes[0] is boxes[1] and boxes[2] is not boxes[0]
    assert boxes[0].usage is not None and boxes[2].usage is not None  # both closed
