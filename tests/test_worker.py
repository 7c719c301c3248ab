"""``sandbox.Worker`` (a clean interpreter in a held box) and the Box features it stands on:
``Box.start(stdout="pipe")``, ``checkpoint``/``changes(since=)``. Run as the unprivileged user
(and as root by CI's root-mode list)."""

from __future__ import annotations

import os
import time

import pytest

from sandbox import (
    Box,
    CallError,
    ConfigError,
    MountSpec,
    SandboxConfig,
    Status,
    Worker,
    WorkerError,
)
from tests.conftest import ROOT_MODE

MODULE = """
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

def die():
    os._exit(7)

def big():
    return "x" * (9 << 20)
"""


@pytest.fixture
def code_dir(box_tmp):
    (box_tmp / "mod.py").write_text(MODULE)
    os.chmod(box_tmp / "mod.py", 0o644)
    os.chmod(box_tmp, 0o777 if ROOT_MODE else 0o755)  # as root the box's high uid writes here
    return str(box_tmp)


def _box(code_dir: str) -> Box:
    return Box(SandboxConfig(mounts=[MountSpec("overlay", "/code", code_dir)], cwd="/code"))


def test_calls_forks_errors_and_timeouts(code_dir, no_leftovers):
    with _box(code_dir) as box:
        w = Worker(box, ["/code"])
        assert [w.call("mod", "count", timeout=10) for _ in range(2)] == [1, 2]
        ended = w.fresh()
        assert ended is not None and ended.status is Status.OK
        assert w.call("mod", "count", timeout=10) == 1  # a new fork: fresh module state
        with pytest.raises(CallError, match="AttributeError") as e:
            w.call("mod", "nope", timeout=10)
        assert e.value.type_name == "AttributeError"
        with pytest.raises(WorkerError, match="fork died"):
            w.call("mod", "die", timeout=10)
        assert w.fresh().exit_code == 7  # how the fork ended, and the next one is new
        assert w.call("mod", "count", timeout=10) == 1
        with pytest.raises(WorkerError, match="time limit") as e:
            w.call("time", "sleep", [30], timeout=0.3)
        assert e.value.result is not None and e.value.result.status is Status.TO
        assert not w.alive
        with pytest.raises(WorkerError, match="gone"):
            w.call("mod", "count", timeout=10)
        w2 = Worker(box, ["/code"])  # the box outlives its worker
        assert w2.get("os", "sep", timeout=10) == "/"
        assert w2.close().status is Status.OK


def test_a_fork_alone_in_the_box_ends_the_daemons_before_it(code_dir, no_leftovers):
    with _box(code_dir) as box:
        for alone, survives in ((True, False), (False, True)):
            w = Worker(box, ["/code"], alone=alone)
            pid = w.call("mod", "daemon", timeout=10)
            w.fresh()
            assert w.call("mod", "alive", [pid], timeout=10) is survives
            w.close()


def test_hostile_replies_kill_the_worker_not_the_host(code_dir, no_leftovers):
    """Code in the box can write anything on the worker's reply pipe: a frame over the limit or
    one that is not tagged JSON kills the worker (``invalid``); an honest reply that is too big
    is refused in the box, as the code's own error."""
    liar = ("import os\nfor f in os.listdir('/proc/self/fd'):\n"
            "    try: os.write(int(f), {frame!r})\n    except OSError: pass\n")
    with _box(code_dir) as box:
        box.put("/code/huge.py", liar.format(frame=b"\xff\xff\xff\xff").encode())
        box.put("/code/garbage.py", liar.format(frame=b'\x00\x00\x00\x05{"x":').encode())
        w = Worker(box, ["/code"])
        with pytest.raises(CallError, match="exceeds"):
            w.call("mod", "big", timeout=30)
        for module, why in (("huge", "limit"), ("garbage", "invalid reply")):
            w = Worker(box, ["/code"])
            with pytest.raises(WorkerError, match=why) as e:
                w.import_module(module, timeout=10)
            assert e.value.invalid and not w.alive


def test_a_dead_box_gives_a_worker_error_not_a_closed_fd(code_dir, no_leftovers):
    """The box's death closes its processes' pipes: a call then says the worker is gone (it
    used to select on the closed, perhaps reused, fd number: EBADF)."""
    with _box(code_dir) as box:
        w = Worker(box, ["/code"])
        assert w.call("mod", "count", timeout=10) == 1
        box.kill_box()
        deadline = time.monotonic() + 10
        while box.alive and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(WorkerError):
            w.call("mod", "count", timeout=10)
        assert not w.alive


def test_arguments_that_cannot_cross_fail_in_the_caller(code_dir, no_leftovers):
    assert Worker.crossing_error({"a": object()}) is not None
    assert Worker.crossing_error({"a": [1, b"2", (3,)]}) is None
    with _box(code_dir) as box:
        w = Worker(box, ["/code"])
        with pytest.raises(Exception, match="cannot cross"):
            w.call("mod", "count", [object()], timeout=10)
        assert w.call("mod", "count", timeout=10) == 1  # nothing was sent: the worker is fine


def test_checkpoints_and_piped_stdout(code_dir, no_leftovers):
    with _box(code_dir) as box:
        assert box.exec(["sh", "-c", "echo a > /tmp/early.txt; echo b > /tmp/kept.txt"]).ok
        mark = box.checkpoint()
        assert box.exec(["sh", "-c", "echo c > /tmp/late.txt; echo d >> /tmp/kept.txt; rm /tmp/early.txt"]).ok
        ch = box.changes(since=mark)
        assert (ch.created, ch.modified, ch.deleted) == (["/tmp/late.txt"], ["/tmp/kept.txt"], ["/tmp/early.txt"])
        assert box.changes().created == ["/tmp/kept.txt", "/tmp/late.txt"]  # since the start
        assert box.changes(since=box.checkpoint()) == type(ch)()
        if not ROOT_MODE:  # (as root the overlay's lower is not the box user's to change)
            assert box.exec(["rm", "/code/mod.py"]).ok
            later = box.checkpoint()
            assert box.changes(since=mark).deleted == ["/code/mod.py", "/tmp/early.txt"]
            assert box.changes(since=later).deleted == []  # deleted before it: not this window's
        with _box(code_dir) as other, pytest.raises(ConfigError, match="another box"):
            other.changes(since=mark)
        with pytest.raises(ConfigError, match="'capture' or 'pipe'"):
            box.start(["true"], stdout="file")
        p = box.start(["sh", "-c", "echo out; echo err >&2; sleep 0.5; echo more"], stdout="pipe")
        assert p.wait_stdout(10) and p.stdout.read(4) == b"out\n"
        assert not p.wait_stdout(0.05)  # nothing yet: the time ran out first
        r = p.wait()
        assert r.status is Status.OK and r.stdout == b"" and r.stderr == b"err\n"
        assert p.stdout.read() == b"more\n"
        p.stdout.close()
