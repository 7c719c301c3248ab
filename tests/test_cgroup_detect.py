"""cgroup detection and the rlimit fallback on this kind of host (no delegated cgroup v2), plus
the doctor. The real cgroup v2 behaviour is tested in tests/test_cgroups.py inside a UML guest."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import sandbox
from sandbox import Limits, SandboxConfig, Status, cgroups

ENV = cgroups.detect()
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
    p = subprocess.run([sys.executable, "-m", "sandbox.cli", "run", "--require-cgroup", "--", "true"],
                       capture_output=True, text=True)
    assert p.returncode == 125 and "cgroup" in p.stderr


def test_doctor_text_and_json():
    p = subprocess.run([sys.executable, "-m", "sandbox.cli", "doctor"], capture_output=True, text=True)
    assert p.returncode == 0 and "sandboxes can run here" in p.stdout
    assert "user namespaces" in p.stdout and "cgroup v2" in p.stdout
    if ENV.reason:
        assert "fix:" in p.stdout and "Delegate=" in p.stdout
    p = subprocess.run([sys.executable, "-m", "sandbox.cli", "doctor", "--json"], capture_output=True, text=True)
    d = json.loads(p.stdout)
    assert d["can_run"] is True and {c["name"] for c in d["checks"]} >= {"kernel", "user namespaces", "cgroup v2"}
