"""pytest plugin for grading (loaded by ``sandbox grade`` with ``-p sandbox.grading.plugin``):
the ``submission`` fixture, the ``points`` marker, and a JSON report of the run.

This plugin runs in the trusted grader process. It never imports or executes submission code
itself: the fixture's proxies and ``run`` go to fresh boxes.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

import pytest

from sandbox.grading.submission import SEVERITY, Submission

_RESULTS = pytest.StashKey[dict[str, dict[str, Any]]]()
_WORST = pytest.StashKey[dict[str, Any]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("sandbox-grade", "grading untrusted submissions")
    g.addoption("--submission", help="path of the submission to grade (a directory)")
    g.addoption("--grade-report", help="write the per-test JSON report here")
    g.addoption("--call-timeout", type=float, default=2.0, help="seconds per proxied call")
    g.addoption("--grade-memory", default="256M", help="memory limit of each submission box")
    g.addoption("--grade-wall-time", default="10s", help="wall time of each submission box")
    g.addoption("--grade-pids", default="64", help="process limit of each submission box")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "points(n): points this test is worth (default 1)")
    config.stash[_RESULTS] = {}
    config.stash[_WORST] = {}


@pytest.fixture
def submission(request: pytest.FixtureRequest) -> Any:
    path = request.config.getoption("submission")
    if not path:
        pytest.skip("no --submission given (run through `sandbox grade`)")
    cfg = request.config
    sub = Submission(path, {"memory": cfg.getoption("grade_memory"),
                            "wall_time": cfg.getoption("grade_wall_time"),
                            "pids": cfg.getoption("grade_pids")}, cfg.getoption("call_timeout"))
    try:
        yield sub
    finally:
        sub.close()
        cfg.stash[_WORST][request.node.nodeid] = {
            "worst": sub.worst(),
            "peak_memory": max((r.peak_memory or 0 for r in sub.results), default=0),
            "box_time": sum(r.wall_time for r in sub.results)}


def _points(item: pytest.Item) -> float:
    m = item.get_closest_marker("points")
    return float(m.args[0]) if m and m.args else 1.0


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: Any) -> Any:
    outcome = yield
    rep = outcome.get_result()
    results = item.config.stash[_RESULTS]
    entry = results.setdefault(item.nodeid, {"nodeid": item.nodeid, "points": _points(item),
                                             "outcome": "passed", "duration": 0.0, "message": ""})
    entry["duration"] += rep.duration
    if rep.failed or (rep.skipped and rep.when != "teardown"):
        if entry["outcome"] == "passed":
            entry["outcome"] = "failed" if rep.failed else "skipped"
            entry["message"] = _short(rep)


def _short(rep: Any) -> str:
    crash = getattr(getattr(rep, "longrepr", None), "reprcrash", None)
    text = crash.message if crash is not None else str(rep.longrepr)
    return text.strip().splitlines()[-1][:300] if text.strip() else ""


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    path = session.config.getoption("grade_report")
    if not path:
        return
    worst = session.config.stash[_WORST]
    tests = []
    for nodeid, e in session.config.stash[_RESULTS].items():
        w = worst.get(nodeid, {"worst": "OK", "peak_memory": 0, "box_time": 0.0})
        tests.append({**e, **w, "earned": e["points"] if e["outcome"] == "passed" else 0.0})
    report = {"tests": tests, "score": sum(t["earned"] for t in tests),
              "max_score": sum(t["points"] for t in tests),
              "worst": max((t["worst"] for t in tests), key=SEVERITY.__getitem__, default="OK"),
              "finished": time.time()}
    tmp = f"{path}.tmp"
    with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644), "w") as f:
        json.dump(report, f)
    os.replace(tmp, path)
