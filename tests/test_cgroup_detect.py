"""cgroup detection and the rlimit fallback on this kind of host (no delegated cgroup v2), plus
the doctor. The real cgroup v2 behaviour is tested in tests/test_cgroups.py inside a UML guest."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import sandbox
from sandbox import Limits, SandboxConfig, Status, _cgroups

ENV = _cgroups.detect()
needs_fallback = pytest.mark.skipif(not ENV.reason, reason="this host has a usable delegated "
                                    "cgroup v2 subtree: the fallback is not exercised here")


def test_detect_reports_mode_and_reason():
    assert ENV.mode in ("unified", "hybrid", "legacy", "none")
    if ENV.reason:
        assert "cgroup" in ENV.reason


@needs_fallback
def test_rlimit_fallback_is_reported_in_every_verdict(no_leftovers):
    r = sandbox.run_sync(["true"], SandboxConfig(limits=Limits.parse(memory="256M", pids=50)))
    assert r.status == Status.OK and r.cgroup is None
    assert r.enforcement["memory"] == "rlimit" and r.enforcement["pids"] == "rlimit"
    assert r.enforcement["cpu_time"] == "rlimit+supervisor"  # RLIMIT_CPU + the box-wide watch


@needs_fallback
def test_require_cgroup_turns_the_fallback_into_an_error(no_leftovers):
    r = sandbox.run_sync(["true"], SandboxConfig(require_cgroup=True))
    assert r.status == Status.XX and r.error_step == "cgroup" and ENV.reason in (r.error or "")
    p = subprocess.run([sys.executable, "-m", "sandbox._cli", "run", "--require-cgroup", "--", "true"],
                       capture_output=True, text=True)
    assert p.returncode == 125 and "cgroup" in p.stderr


def test_doctor_text_and_json():
    p = subprocess.run([sys.executable, "-m", "sandbox._cli", "doctor"], capture_output=True, text=True)
    assert p.returncode == 0 and "sandboxes can run here" in p.stdout
    assert "user namespaces" in p.stdout and "cgroup v2" in p.stdout
    if ENV.reason:
        assert "fix:" in p.stdout and "Delegate=" in p.stdout
    p = subprocess.run([sys.executable, "-m", "sandbox._cli", "doctor", "--json"], capture_output=True, text=True)
    d = json.loads(p.stdout)
    assert d["can_run"] is True and {c["name"] for c in d["checks"]} >= {"kernel", "user namespaces", "cgroup v2"}


LIMITED = {"memory": "64M", "pids": 32, "cpus": 0.5, "cpu_time": "10s"}
NO_CPUS = {k: x for k, x in LIMITED.items() if k != "cpus"}  # (the fixture has no cpus option)
HELD_BY_A_CGROUP = {"memory", "pids", "cpus", "cpu_time"}  # and with memory: memfd, kernel_buffers


def _paths(request: pytest.FixtureRequest, tmp: str) -> dict[str, sandbox.Result]:
    """One verdict from each way a box is made: run_sync, a held Box (an exec and its usage),
    the trio supervisor, the CLI, the fixture's run and call, the grader's submission.run and
    import_module."""
    import trio

    from sandbox.grading.submission import Submission

    cfg = SandboxConfig(limits=Limits.parse(**LIMITED))
    out = {"exec": sandbox.run_sync(["true"], cfg)}
    with sandbox.Box(cfg) as box:
        out["Box.exec"] = box.exec(["true"])
    assert box.usage is not None
    out["Box.usage"] = sandbox.Result(Status.OK, enforcement=box.usage.enforcement,
                                      fallback_reasons=box.usage.fallback_reasons)

    async def sup() -> sandbox.Result:
        async with sandbox.Supervisor() as s:
            return await s.run(["true"], cfg)
    out["supervisor"] = trio.run(sup)
    p = subprocess.run([sys.executable, "-m", "sandbox._cli", "run", "--memory", "64M", "--pids", "32",
                        "--cpus", "0.5", "--cpu-time", "10s", "--json", "--", "true"],
                       capture_output=True, text=True)
    v = json.loads(p.stdout)
    out["cli"] = sandbox.Result(Status(v["status"]), enforcement=v["enforcement"],
                                fallback_reasons=v["fallback_reasons"])
    fx = request.getfixturevalue("sandbox")
    out["fixture run"] = fx.run(["true"], **NO_CPUS)
    fx.call("os:getpid", sandbox_options=NO_CPUS)
    out["fixture call"] = fx.results[-1]
    with open(os.path.join(tmp, "solution.py"), "w") as f:
        f.write("x = 1\n")
    os.chmod(tmp, 0o755)
    sub = Submission(tmp, LIMITED, call_timeout=30)
    try:
        out["submission.run"] = sub.run(["true"])
        assert sub.import_module("solution").x.value() == 1
    finally:
        sub.close()
    out["import_module"] = sub.results[-1]
    return out


@needs_fallback
def test_every_fallback_says_why_on_every_path(request, box_tmp, no_leftovers):
    """No delegated cgroup here: every limit a cgroup would hold is held by an rlimit (or not
    at all: cpus), and each says why, with the cause detect() found — in the Result, the JSON,
    and the CLI's verdict line when such a limit decided the verdict."""
    for path, r in _paths(request, str(box_tmp)).items():
        assert r.status == Status.OK, (path, r)
        want = HELD_BY_A_CGROUP | {"memfd", "kernel_buffers"}
        if path.startswith("fixture"):
            want.discard("cpus")  # (the fixture has no cpus option)
        assert set(r.fallback_reasons) == want, (path, r.fallback_reasons)
        assert all(why == ENV.reason for why in r.fallback_reasons.values()), (path, r.fallback_reasons)
        assert r.enforcement["memory"] == r.enforcement["pids"] == "rlimit"
        # RLIMIT_CPU per process, + the box-wide watch in the runners that have one
        assert r.enforcement["cpu_time"] in ("rlimit", "rlimit+supervisor"), (path, r.enforcement)
        assert r.enforcement.get("cpus", "none") == "none", (path, r.enforcement)
    p = subprocess.run([sys.executable, "-m", "sandbox._cli", "run", "--cpu-time", "1s", "--",
                        "python3", "-c", "while True: pass"], capture_output=True, text=True)
    assert p.returncode != 0
    assert p.stderr.strip().endswith(f"[cpu_time held by rlimit+supervisor: {ENV.reason}]"), p.stderr


@needs_fallback
def test_use_cgroup_false_says_so(no_leftovers):
    r = sandbox.run_sync(["true"], SandboxConfig(use_cgroup=False, limits=Limits.parse(memory="64M")))
    assert r.fallback_reasons["memory"] == "this box does not use cgroups (use_cgroup=False)"
    assert "cpus" not in r.fallback_reasons  # not asked for: nothing fell back
