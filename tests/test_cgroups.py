"""Real cgroup v2 behaviour. Runs inside the User-Mode Linux guest (ci/uml-tests.sh), where
the hierarchy is pure v2 with a subtree delegated to the unprivileged test user. Elsewhere the
module is skipped with the concrete reason."""

from __future__ import annotations

import os
import time

import pytest
import trio

import sandbox
from sandbox import Limits, SandboxConfig, Status, _cgroups

ENV = _cgroups.detect()
pytestmark = pytest.mark.skipif(bool(ENV.reason), reason=ENV.reason or "")


def cfg(**limits: object) -> SandboxConfig:
    return SandboxConfig(require_cgroup=True, limits=Limits.parse(**limits))


def py(code: str, **limits: object) -> sandbox.Result:
    return sandbox.run_sync(["python3", "-c", code], cfg(**limits))


def _base() -> str:
    from sandbox._boxcgroup import _MANAGERS

    mgr = _MANAGERS.get(os.getpid())
    assert mgr is not None
    return mgr.base  # type: ignore[attr-defined]


def test_aaa_no_internal_process_move_path():
    """Runs first (before this process enabled any controller): a helper that is alone in the
    delegated cgroup, whose parent is not ours, must move itself into a leaf before enabling
    controllers, and put everything back at exit."""
    import subprocess
    import sys

    top = os.environ.get("SANDBOX_UML_CGROUP", "")
    if not top or open(os.path.join(top, "cgroup.subtree_control")).read().strip():
        pytest.skip("needs a fresh delegated cgroup with no controllers enabled yet")
    script = (
        "import os\n"
        f"open({top!r} + '/cgroup.procs', 'w').write('0')\n"
        "import sandbox\n"
        "from sandbox import Limits, SandboxConfig\n"
        "from sandbox._boxcgroup import _MANAGERS\n"
        "r = sandbox.run_sync(['python3', '-c', 'x = bytearray(200 << 20)'],\n"
        "                     SandboxConfig(require_cgroup=True, limits=Limits.parse(memory='64M')))\n"
        "m = _MANAGERS[os.getpid()]\n"
        "print(r.status, m.moved_from, open('/proc/self/cgroup').read().strip())\n")
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    status, moved_from, cg = p.stdout.split()
    assert (status, moved_from) == ("ML", top), p.stderr
    assert cg.startswith("0::/" + os.path.basename(top) + "/supervisor-")
    leftovers = [d for d in os.listdir(top) if d.startswith(("supervisor-", "sandbox-"))]
    assert leftovers == [] and open(os.path.join(top, "cgroup.procs")).read().strip() == ""


def test_every_limit_is_enforced_by_cgroup():
    r = sandbox.run_sync(["cat", "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/pids.max"],
                         cfg(memory="64M", pids=32, cpus=0.5))
    assert r.status == Status.OK, r
    assert r.stdout.split() == [b"67108864", b"32"]
    for k in ("memory", "pids", "cpu_time", "cpus"):
        assert r.enforcement[k] == "cgroup", r.enforcement
    r = sandbox.run_sync(["sh", "-c", "cat /proc/self/cgroup; echo 1 > /sys/fs/cgroup/memory.max"],
                         cfg())
    assert r.stdout.startswith(b"0::/\n")  # its own cgroup namespace, rooted at the leaf
    assert b"Read-only" in r.stderr or b"ermission" in r.stderr


def test_memory_hog_is_ml_with_oom_kill_counted():
    r = py("x = []\nwhile True: x.append(bytearray(8 << 20))", memory="64M", wall_time="20s")
    assert r.status == Status.ML and "OOM" in (r.reason or ""), r
    assert r.cgroup and r.cgroup["oom_kill"] >= 1


def test_fork_bomb_stopped_by_pids_max():
    r = py("import os\nwhile True:\n  try: os.fork()\n  except OSError: pass", pids=20, wall_time="3s")
    assert r.status == Status.TO and r.cgroup and r.cgroup["pids_max_events"] > 0, r


def test_cpu_max_throttles_a_spinning_loop():
    r = py("import time\nt = time.time()\nwhile time.time() - t < 2: pass", cpus=0.25, wall_time="20s")
    assert r.status == Status.OK, r
    ratio = r.cpu_time / r.wall_time
    assert ratio < 0.45, (r.cpu_time, r.wall_time)  # ~0.25 of a CPU, not a whole one
    assert r.cgroup and r.cgroup["throttled_usec"] > 0


def test_whole_box_cpu_time_limit_is_to():
    code = "import os\nos.fork()\nwhile True: pass"  # two spinning processes share the budget
    t = time.monotonic()
    r = py(code, cpu_time="1s", wall_time="30s")
    assert r.status == Status.TO and "CPU time" in (r.reason or ""), r
    assert r.enforcement["cpu_time"] == "cgroup"
    assert time.monotonic() - t < 15


def test_peak_memory_within_tolerance():
    r = py("x = bytearray(100 << 20)\nfor i in range(0, len(x), 4096): x[i] = 1", memory="256M")
    assert r.status == Status.OK, r
    assert 100 << 20 <= (r.peak_memory or 0) <= 200 << 20, r.peak_memory


def test_daemonized_escapee_dies_with_the_box():
    r = sandbox.run_sync(["sh", "-c", "setsid sh -c 'sleep 1000 & sleep 1000' & echo started"], cfg())
    assert r.status == Status.OK
    time.sleep(0.2)
    assert not [d for d in os.listdir(_base()) if d.startswith("box-")]
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                assert not f.read().startswith(b"sleep\x001000")
        except OSError:
            pass


def test_hundred_runs_leave_no_cgroup_directories():
    for _ in range(100):
        assert sandbox.run_sync(["true"], cfg()).status == Status.OK
    assert [d for d in os.listdir(_base()) if d.startswith("box-")] == []


def test_no_internal_processes_rule_is_obeyed():
    """Boxes live in leaves of a subtree that distributes controllers and holds no process;
    our own process is never in a cgroup with controllers enabled for children."""
    sandbox.run_sync(["true"], cfg())
    base = _base()
    with open(os.path.join(base, "cgroup.procs")) as f:
        assert f.read().strip() == ""
    with open(os.path.join(base, "cgroup.subtree_control")) as f:
        assert {"memory", "pids", "cpu"} <= set(f.read().split())
    with open("/proc/self/cgroup") as f:
        mine = "/sys/fs/cgroup" + f.read().split("::", 1)[1].strip()
    with open(os.path.join(mine, "cgroup.subtree_control")) as f:
        assert f.read().strip() == ""


def test_supervisor_path_uses_cgroups_too():
    async def main() -> sandbox.Result:
        async with sandbox.Supervisor() as sup:
            return await sup.run(["python3", "-c", "x = bytearray(200 << 20)"], cfg(memory="64M"))

    r = trio.run(main)
    # (once, in CI, XX instead of ML, not reproduced in 80 runs since: say why, next time)
    assert r.status == Status.ML and r.enforcement["memory"] == "cgroup", (r.reason, r.error, r.cgroup)


def test_doctor_in_the_guest_says_cgroup():
    from sandbox import diagnose

    c = {x.name: x for x in diagnose()}["cgroup v2"]
    assert c.status == "ok" and "enforced by cgroup v2" in c.detail


def test_cli_runs_leave_no_cgroup_subtree_behind():
    import subprocess
    import sys

    top = os.path.dirname(_base())
    before = set(os.listdir(top))
    for _ in range(3):
        p = subprocess.run([sys.executable, "-m", "sandbox._cli", "run", "--require-cgroup", "--", "true"],
                           capture_output=True, timeout=120)
        assert p.returncode == 0, p.stderr
    assert set(os.listdir(top)) == before


# -- every path gives its box a cgroup: 4 processes x 30 MiB under 64 MiB is ML --------------
# Each process alone stays under the limit (under the RLIMIT_AS fallback, per process, all
# four survive); only a cgroup that holds the whole box sees 120 MiB.
HOG = '''
import os, time
def hog():
    kids = []
    for _ in range(4):
        pid = os.fork()
        if pid == 0:
            x = bytearray(30 << 20)
            for i in range(0, len(x), 4096):
                x[i] = 1
            time.sleep(3)
            os._exit(0)
        kids.append(pid)
    for k in kids:
        os.waitpid(k, 0)
    return "survived"
'''
HOG_LIMITS = {"memory": "64M", "wall_time": "30s"}


def _hog_is_ml(r: sandbox.Result) -> None:
    assert r.enforcement["memory"] == "cgroup", r.enforcement
    assert r.status == Status.ML and r.cgroup and r.cgroup["oom_kill"] >= 1, r
    assert "memory" not in r.fallback_reasons, r.fallback_reasons


def test_hog_exec_path_cli_json():
    import json
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "sandbox._cli", "run", "--memory", "64M", "--json",
                        "--", "python3", "-c", HOG + "hog()"], capture_output=True, text=True,
                       timeout=120)
    v = json.loads(p.stdout)
    assert v["status"] == "ML" and v["enforcement"]["memory"] == "cgroup", v
    assert v["cgroup"]["oom_kill"] >= 1 and v["fallback_reasons"] == {}, v


def test_hog_submission_run_and_import_module(tmp_path):
    from sandbox.grading.submission import Submission, SubmissionError

    (tmp_path / "hogmod.py").write_text(HOG)
    sub = Submission(str(tmp_path), HOG_LIMITS, call_timeout=30)
    try:
        _hog_is_ml(sub.run(["python3", "-c", "import hogmod; hogmod.hog()"]))
        with pytest.raises(SubmissionError, match="memory limit"):
            sub.import_module("hogmod").hog()
    finally:
        sub.close()
    assert len(sub.results) == 2
    _hog_is_ml(sub.results[-1])  # the worker's verdict: the box's memory limit ended it


def test_hog_fixture_call(request):
    from pytest_plugin.fixture import SandboxCallError

    fx = request.getfixturevalue("sandbox")
    fx.put("hogmod.py", HOG.encode())
    with pytest.raises(SandboxCallError, match="memory limit"):
        fx.call("hogmod:hog", sandbox_options=HOG_LIMITS)
    _hog_is_ml(fx.results[-1])
    _hog_is_ml(fx.run(["python3", "-c", "import hogmod; hogmod.hog()"], **HOG_LIMITS))


PARTIAL = '''
import json, os, sys
os.makedirs(sys.argv[1], exist_ok=True)
open(os.path.join(sys.argv[1], "cgroup.procs"), "w").write("0")
import sandbox
from sandbox import Limits, SandboxConfig, _cgroup_env as cgroup_env
env = cgroup_env.detect()
r = sandbox.run_sync(["python3", "-c", sys.argv[2] + "hog()"], SandboxConfig(
    require_cgroup=True, limits=Limits.parse(memory="64M", pids=32, cpus=0.5, cpu_time="20s")))
from sandbox import diagnose
doc = {c.name: c for c in diagnose()}["cgroup v2"]
print(json.dumps({"reason": env.reason, "missing": env.missing, "status": r.status,
                  "enforcement": r.enforcement, "fallback_reasons": r.fallback_reasons,
                  "doctor": [doc.status, doc.detail]}))
'''


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write any subtree_control")
def test_only_memory_and_pids_delegated():
    """A subtree whose parent enables memory and pids for it but not cpu, and that we may not
    change (as systemd's Delegate=memory pids leaves it): the boxes use a cgroup for memory
    and pids (the hog is ML), cpu_time is counted by cpu.stat anyway, and cpus says it is not
    enforced, naming the file that lacks the cpu controller."""
    import json
    import subprocess
    import sys

    sandbox.run_sync(["true"], cfg())  # our subtree exists: its parent enables every controller
    top = os.path.dirname(_base())
    part = os.path.join(top, f"partial-{os.getpid()}")
    os.mkdir(part)
    ctl = os.path.join(part, "cgroup.subtree_control")
    try:
        with open(ctl, "w") as f:
            f.write("+memory +pids")
        os.chmod(ctl, 0o444)  # the delegating parent is not ours to change
        p = subprocess.run([sys.executable, "-c", PARTIAL, os.path.join(part, "main"), HOG],
                           capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        v = json.loads(p.stdout)
    finally:
        os.chmod(ctl, 0o644)
        for d in (os.path.join(part, "main"), part):
            if os.path.isdir(d):
                os.rmdir(d)
    assert v["reason"] == "" and list(v["missing"]) == ["cpu"], v
    enf, why = v["enforcement"], v["fallback_reasons"]
    assert v["status"] == "ML", v
    assert (enf["memory"], enf["pids"], enf["cpu_time"], enf["cpus"]) == ("cgroup", "cgroup", "cgroup", "none")
    assert list(why) == ["cpus"], why
    assert v["doctor"][0] == "warn" and why["cpus"] in v["doctor"][1], v["doctor"]
    assert why["cpus"] == (f"cpu controller not delegated to {part}/main: {ctl} lacks cpu, "
                           "which uid %d may not write" % os.getuid()), why


def test_hog_held_box():
    with sandbox.Box(cfg(**HOG_LIMITS)) as box:
        r = box.exec(["python3", "-c", HOG + "hog()"])
    assert r.enforcement["memory"] == "cgroup" and "memory" not in r.fallback_reasons, r
    assert box.usage is not None and box.usage.memory_exceeded, (r, box.usage)
    assert r.status == Status.ML, r
