"""pytest plugin for grading (loaded by ``sandbox grade`` with ``-p sandbox.grading.plugin``):
the ``submission`` fixture, the ``points`` marker, and a JSON report of the run.

This plugin runs in the trusted grader process. It never imports or executes submission code
itself: the fixture's proxies and ``run`` go to fresh boxes.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from sandbox.grading import submission as _submission
from sandbox.grading.submission import Submission

_RESULTS = pytest.StashKey[dict[str, dict[str, Any]]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("sandbox-grade", "grading untrusted submissions")
    g.addoption("--submission", action="append", default=[],
                help="submission directory to grade (repeat; the fixture is parametrized over them)")
    g.addoption("--grade-log", help="append one JSON line per finished test here")
    g.addoption("--call-timeout", type=float, default=2.0, help="seconds per proxied call")
    g.addoption("--grade-memory", default="256M", help="memory limit of each submission box")
    g.addoption("--grade-wall-time", default="10s", help="wall time of each submission box")
    g.addoption("--grade-pids", default="64", help="process limit of each submission box")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "points(n): points this test is worth (default 1)")
    config.stash[_RESULTS] = {}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One test item per (test, submission): the grader parametrizes ``submission``."""
    if "submission" in metafunc.fixturenames:
        subs = metafunc.config.getoption("submission")
        metafunc.parametrize("submission", subs, indirect=True, ids=[_name(p) for p in subs])


@pytest.fixture
def submission(request: pytest.FixtureRequest) -> Any:
    if not hasattr(request, "param"):
        pytest.skip("no --submission given (run through `sandbox grade`)")
    cfg = request.config
    spec = getattr(_STATE.get("next"), "callspec", None)
    sub = Submission(request.param, {"memory": cfg.getoption("grade_memory"),
                                     "wall_time": cfg.getoption("grade_wall_time"),
                                     "pids": cfg.getoption("grade_pids")}, cfg.getoption("call_timeout"),
                     next_path=spec.params.get("submission") if spec is not None else None)
    props = request.node.user_properties
    props.append(("grade_submission", sub.name))
    try:
        yield sub
    finally:
        sub.close()  # the verdicts below ride to the controller on the teardown report
        props.append(("grade_worst", sub.worst()))
        props.append(("grade_peak_memory", max((r.peak_memory or 0 for r in sub.results), default=0)))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """Remember which test comes next: its submission's box is kept (see submission.py)."""
    _STATE["next"] = nextitem
    yield


def pytest_sessionfinish(session: pytest.Session) -> None:
    _submission.shutdown()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Within each test module, run one submission's tests after another: each submission has a
    box of its own, with a clean worker that serves that submission alone
    (``sandbox.grading.submission``), opened once per submission and module."""
    order = {p: i for i, p in enumerate(config.getoption("submission"))}
    modules: dict[str, int] = {}

    def key(item: pytest.Item) -> tuple[int, int]:
        spec = getattr(item, "callspec", None)
        sub = spec.params.get("submission") if spec is not None else None
        return modules.setdefault(str(item.path), len(modules)), order.get(sub, -1)
    items.sort(key=key)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    m = item.get_closest_marker("points")
    item.user_properties.append(("grade_points", float(m.args[0]) if m and m.args else 1.0))


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Runs in the controlling process (also under xdist): collect phases per test and append
    one line per finished test to the log, so nothing is lost if the run is cut short."""
    results = _STATE.setdefault("results", {})
    e = results.setdefault(report.nodeid, {"nodeid": report.nodeid, "outcome": "passed",
                                           "duration": 0.0, "message": ""})
    e["duration"] += report.duration
    for k, v in report.user_properties:
        if k.startswith("grade_"):
            e[k[6:]] = v
    if (report.failed or report.skipped) and e["outcome"] == "passed":
        e["outcome"] = "failed" if report.failed else "skipped"
        e["message"] = _short(report)
    if report.when == "teardown":
        e["earned"] = e.get("points", 1.0) if e["outcome"] == "passed" else 0.0
        path = _STATE.get("log")
        if path:
            with open(path, "a") as f:
                f.write(json.dumps(e) + "\n")


_STATE: dict[str, Any] = {}


def _name(path: str) -> str:
    """A submission's name: its directory's (the test id, and the key the grader reports by)."""
    return os.path.basename(path.rstrip("/"))


def pytest_collection_finish(session: pytest.Session) -> None:
    """Announce how many tests each submission gets, before running any (the grader's
    progress and its "only k of n tests reported" check need it; no separate collect run)."""
    path = _STATE.get("log")
    if not path:
        return
    counts: dict[str, int] = {}
    for item in session.items:
        spec = getattr(item, "callspec", None)
        if spec is not None and "submission" in spec.params:
            name = _name(str(spec.params["submission"]))
            counts[name] = counts.get(name, 0) + 1
    with open(path, "a") as f:
        f.write(json.dumps({"collected": counts}) + "\n")


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    # under pytest-xdist only the controller writes the log (workers forward their reports)
    is_worker = hasattr(session.config, "workerinput")
    _STATE["log"] = None if is_worker else session.config.getoption("grade_log")


def _short(rep: Any) -> str:
    crash = getattr(getattr(rep, "longrepr", None), "reprcrash", None)
    text = crash.message if crash is not None else str(rep.longrepr)
    # The first line names the failure ("AssertionError: assert b'' == b'5'"); the last is
    # often just pytest's "Use -v to get more diff".
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[0][:300] if lines else ""
