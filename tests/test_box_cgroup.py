"""A held box under a real delegated cgroup v2 (the User-Mode Linux guest, ci/uml-tests.sh):
box-wide memory and pids for the box's whole life; an OOM ends the box with ML."""

from __future__ import annotations

import pytest

from sandbox import Box, BoxError, Limits, SandboxConfig, Status, _cgroups

ENV = _cgroups.detect()
pytestmark = pytest.mark.skipif(bool(ENV.reason), reason=ENV.reason or "")

HOG = ("import os\n"
       "for _ in range(3):\n"
       "    if os.fork() == 0: break\n"
       "b = bytearray(30 << 20)\n"
       "for i in range(0, len(b), 4096): b[i] = 1\n"
       "import time; time.sleep(2)\n")


def test_a_memory_hog_ends_the_box_with_ml():
    with Box(SandboxConfig(require_cgroup=True, limits=Limits.parse(memory="64M"))) as box:
        assert box._prep.enforcement["memory"] == "cgroup"
        assert box.exec(["echo", "ok"]).ok
        r = box.exec(["python3", "-c", HOG], wall_time="20s")
        assert r.status is Status.ML, (r.status, r.reason)
        with pytest.raises(BoxError, match="closed"):
            box.exec(["true"])
    assert box.usage is not None and box.usage.memory_exceeded


def test_cpu_time_is_the_box_budget_under_a_cgroup():
    """Each exec holds the config's CPU time (or its own smaller one) as RLIMIT_CPU; the box's
    cgroup counts every process the box ever had against the same budget."""
    spin = ["sh", "-c", "while :; do :; done"]
    with Box(SandboxConfig(require_cgroup=True, limits=Limits.parse(cpu_time="2s"))) as box:
        r = box.exec(spin, cpu_time="1s", wall_time="10s")
        assert r.status is Status.TO and r.cpu_time >= 0.9
        assert box.exec(["true"]).ok
        r = box.exec(spin, wall_time="10s")  # what is left of the box's 2 s
        assert r.status is Status.TO and "all the box's processes" in (r.reason or ""), r.reason
        assert r.cpu_time >= 1.9
        with pytest.raises(BoxError, match="closed"):
            box.exec(["true"])
    assert box.usage is not None and box.usage.cpu_exceeded
    assert box.usage.enforcement["cpu_time"] == "cgroup"


