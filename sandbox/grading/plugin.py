"""pytest plugin for grading (loaded by ``sandbox grade`` with ``-p sandbox.grading.plugin``):
the ``submission`` fixture, the ``points`` and ``visibility`` markers, and a JSON-lines log of
the run that the grader reads as it goes (``sandbox.grading.runner``).

This plugin runs in the trusted grader process. It never imports or executes submission code
itself: the fixture's proxies and ``run`` go to the submission's box. The log's events:
``collected`` (every submission's tests with their points, before any test runs), ``start`` /
``done`` (a submission's first test begins / its last one ended: the grader's progress and
per-submission ``--timeout`` count by them), one line per finished test, and ``teacher_error``
(the teacher's tests did not collect, or a fixture failed before the submission was touched:
the grader stops rather than blame every student).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

from sandbox.grading import submission as _submission
from sandbox.grading.feedback import failure_text, student_error, teacher_error
from sandbox.grading.submission import Submission, SubmissionError

_SUB = pytest.StashKey[Submission]()
MAX_TEXT = 16 * 1024  # a message or failure body in the log (the grader bounds what it reads)


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("sandbox-grade", "grading untrusted submissions")
    g.addoption("--submission", action="append", default=[],
                help="submission directory to grade (repeat; the fixture is parametrized over them)")
    g.addoption("--grade-log", help="append one JSON line per event (see the module docstring)")
    g.addoption("--call-timeout", type=float, default=2.0, help="seconds per proxied call")
    g.addoption("--grade-memory", default="256M", help="memory limit of each submission box")
    g.addoption("--grade-wall-time", default="10s", help="wall time of each submission box")
    g.addoption("--grade-pids", default="64", help="process limit of each submission box")
    g.addoption("--grade-image", default=None, help="stored image every submission box's root is")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "points(n): points this test is worth (default 1)")
    config.addinivalue_line("markers", 'visibility("hidden"): feedback shows only pass/fail and points')


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
                     next_path=spec.params.get("submission") if spec is not None else None,
                     image=cfg.getoption("grade_image"))
    request.node.stash[_SUB] = sub
    props = request.node.user_properties
    props.append(("grade_submission", sub.name))
    try:
        yield sub
    finally:
        sub.close()  # the verdicts below ride on the teardown report
        props += [("grade_worst", sub.worst()),
                  ("grade_peak_memory", max((r.peak_memory or 0 for r in sub.results), default=0)),
                  ("grade_cpu_time", round(sum(r.cpu_time for r in sub.results), 3)),
                  ("grade_verdicts", sub.verdicts()), ("grade_output", sub.outputs)]


def _sub_of(item: pytest.Item | None) -> str | None:
    spec = getattr(item, "callspec", None)
    return _name(str(spec.params["submission"])) if spec is not None and "submission" in spec.params else None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    """Remember which test comes next (its submission's box is kept, see submission.py), and
    log a submission's ``start`` before its first test and ``done`` after its last."""
    _STATE["next"] = nextitem
    name = _sub_of(item)
    if name is not None and name != _STATE.get("current"):
        _STATE["current"] = name
        _log({"start": name})
    yield
    if name is not None and _sub_of(nextitem) != name:
        _log({"done": name})


def pytest_sessionfinish(session: pytest.Session) -> None:
    _submission.shutdown()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """One submission's tests after another, all modules of it: each submission has one box,
    with a clean worker that serves that submission alone (``sandbox.grading.submission``), and
    the grader's progress and ``--timeout`` count whole submissions. (A teacher's module-scoped
    fixture is set up once per submission and module.)"""
    order = {p: i for i, p in enumerate(config.getoption("submission"))}
    modules: dict[str, int] = {}
    for item in items:
        modules.setdefault(str(item.path), len(modules))

    def key(item: pytest.Item) -> tuple[int, int]:
        spec = getattr(item, "callspec", None)
        sub = spec.params.get("submission") if spec is not None else None
        return order.get(sub, -1), modules[str(item.path)]
    items.sort(key=key)  # stable: within a module, pytest's own order


def _points(item: pytest.Item) -> float:
    m = item.get_closest_marker("points")
    return float(m.args[0]) if m and m.args else 1.0


def _hidden(item: pytest.Item) -> bool:
    m = item.get_closest_marker("visibility")
    return bool(m and m.args and m.args[0] == "hidden")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    item.user_properties += [("grade_points", _points(item)), ("grade_hidden", _hidden(item)),
                             ("grade_classname", _classname(item))]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """The student's exception (type, message, traceback text) rides on the report; a setup
    that failed before the submission was touched is the teacher's error: the run stops."""
    outcome = yield
    report = outcome.get_result()
    exc = call.excinfo.value if call.excinfo is not None else None
    sub = item.stash.get(_SUB, None)
    if isinstance(exc, SubmissionError) and sub is not None:
        if exc.type_name:  # the student's code raised (not a box failure: its Result says that)
            sub.raised.append(exc.type_name)
        report.user_properties.append(("grade_student", student_error(exc)))
    elif call.when == "setup" and report.failed and (sub is None or not sub.touched):
        assert call.excinfo is not None
        _log({"teacher_error": teacher_error(call.excinfo, f"a fixture of {item.nodeid} failed "
                                             "before the submission was used")})
        item.session.shouldstop = "the teacher's fixture failed"


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed:
        _STATE["collect_failed"] = True


@pytest.hookimpl(tryfirst=True)
def pytest_exception_interact(node: Any, call: pytest.CallInfo[Any], report: Any) -> None:
    """A test module that does not import (syntax error, bad import, module-level error): the
    teacher's file and line, before any box was made (pytest stops after collection errors)."""
    if isinstance(report, pytest.CollectReport) and call.excinfo is not None:
        _log({"teacher_error": teacher_error(call.excinfo, f"{report.nodeid or 'the tests'} did not collect")})


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Collect phases per test and append one line per finished test to the log."""
    results = _STATE.setdefault("results", {})
    e = results.setdefault(report.nodeid, {"nodeid": report.nodeid, "outcome": "passed",
                                           "duration": 0.0, "message": ""})
    e["duration"] += report.duration
    for k, v in report.user_properties:
        if k.startswith("grade_"):
            e[k[6:]] = v
    if (report.failed or report.skipped) and e["outcome"] == "passed":
        e["outcome"] = "failed" if report.failed else "skipped"
        e["message"], e["failure"] = failure_text(report, MAX_TEXT)
        e["phase"] = report.when
    if report.when == "teardown":
        del results[report.nodeid]
        e["earned"] = e.get("points", 1.0) if e["outcome"] == "passed" else 0.0
        _log(e)


_STATE: dict[str, Any] = {}


def _log(event: dict[str, Any]) -> None:
    path = _STATE.get("log")
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(event) + "\n")


def _name(path: str) -> str:
    """A submission's name: its directory's (the test id, and the key the grader reports by)."""
    return os.path.basename(path.rstrip("/"))


def _classname(item: pytest.Item) -> str:
    """JUnit's classname, as pytest's own junitxml makes it: module path (dotted) and class."""
    parts = item.nodeid.split("::")[:-1]
    parts[0] = parts[0].removesuffix(".py").replace("/", ".")
    return ".".join(parts)


def pytest_collection_finish(session: pytest.Session) -> None:
    """Announce every submission's tests (node id, points, hidden) before running any: the
    grader's progress, its full maximum score, and rows for tests that never reported."""
    tests: dict[str, list[list[Any]]] = {}
    for item in session.items:
        name = _sub_of(item)
        if name is not None:
            tests.setdefault(name, []).append([item.nodeid, _points(item), _hidden(item), _classname(item)])
    _log({"collected": {n: len(t) for n, t in tests.items()}, "tests": tests})


@pytest.hookimpl(trylast=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    # under pytest-xdist only the controller writes the log (workers forward their reports)
    is_worker = hasattr(session.config, "workerinput")
    _STATE["log"] = None if is_worker else session.config.getoption("grade_log")
