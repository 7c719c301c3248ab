"""pytest plugin: ``@pytest.mark.sandboxed``, ``--sandbox-all``, the ``sandbox`` fixture.

A sandboxed test runs its whole protocol (setup, call, teardown) in a fresh box cloned from
the pytest process; its reports come back as JSON and are replayed here, so pass/fail/skip/
xfail, assertion rewriting, captured output and tracebacks look exactly as without the box.
The *verdict* of the box (time, memory, output limits, crashes) comes from the kernel: if the
box did not finish cleanly the test fails with that reason, whatever the box wrote.

Trust model: this protects the host from the test. It cannot stop a hostile test body from
forging its own "passed" report (the report is produced by code in the same process as the
test). For untrusted code, assert outside the box: the ``sandbox`` fixture's ``run``/``call``.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from pytest_plugin import boxrun
from pytest_plugin.fixture import SandboxFixture
from pytest_plugin.summary import SummaryRow, record, write_summary
from sandbox import ConfigError, Limits, SandboxConfig, Status

LIMIT_KEYS = ("memory", "wall_time", "cpu_time", "pids", "output_limit", "tmpfs_size",
              "nofile", "fsize")
INI_DEFAULTS = {"memory": "512M", "wall_time": "60s", "cpu_time": "60s", "pids": "256"}


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("sandbox", "rootless sandbox (run tests in fresh Linux namespaces)")
    g.addoption("--sandbox-all", action="store_true", help="sandbox every test")
    g.addoption("--sandbox-strict", action="store_true",
                help="fail (instead of skip) sandboxed tests when sandboxes cannot be created")
    g.addoption("--sandbox-no-summary", action="store_true", help="no sandbox table at the end")
    for key in LIMIT_KEYS:
        g.addoption(f"--sandbox-{key.replace('_', '-')}", default=None, dest=f"sandbox_{key}",
                    help=f"default {key.replace('_', ' ')} for sandboxed tests")
        parser.addini(f"sandbox_{key}", f"default {key.replace('_', ' ')} for sandboxed tests",
                      default=INI_DEFAULTS.get(key))
    parser.addini("sandbox_network", "allow the host network in sandboxed tests (true/false)",
                  default="false")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sandboxed(memory=, wall_time=, cpu_time=, pids=, network=False, ...): "
        "run this test inside a fresh rootless sandbox")
    config.stash[_STATE] = _State()


class _State:
    def __init__(self) -> None:
        self.rows: list[SummaryRow] = []
        self.unavailable: str | None | bool = False  # False = not probed yet


_STATE = pytest.StashKey[_State]()


def box_config(item: pytest.Item) -> SandboxConfig:
    """Defaults < ini < command line < marker kwargs."""
    cfg = item.config
    marker = item.get_closest_marker("sandboxed")
    kw: dict[str, Any] = dict(marker.kwargs) if marker else {}
    limits: dict[str, Any] = {}
    for key in LIMIT_KEYS:
        v = cfg.getoption(f"sandbox_{key}") or cfg.getini(f"sandbox_{key}") or None
        if v is not None:
            limits[key] = v
        if key in kw:
            limits[key] = kw.pop(key)
    # The test's output goes to pytest's capture *files*, not through the supervisor's pipes,
    # so the output limit is enforced as the file size limit unless fsize is given explicitly.
    if "fsize" not in limits and "output_limit" in limits:
        limits["fsize"] = limits["output_limit"]
    network = kw.pop("network", str(cfg.getini("sandbox_network")).lower() in ("1", "true", "yes"))
    mounts, cwd = boxrun.pytest_mounts(cfg)
    try:
        sc = SandboxConfig(limits=Limits.parse(**limits), network="host" if network else "none",
                           mounts=mounts, cwd=cwd, **kw)
        return sc.validate()
    except TypeError as e:
        raise ConfigError(f"@pytest.mark.sandboxed: {e}") from None


def _wants_box(item: pytest.Item) -> bool:
    return item.config.getoption("sandbox_all") or item.get_closest_marker("sandboxed") is not None


def _availability(config: pytest.Config) -> str | None:
    """Probe once per session with a real box; None when boxes work, else the reason + fix."""
    state = config.stash[_STATE]
    if state.unavailable is False:
        from sandbox.direct import run_direct

        r = run_direct(lambda: 0, SandboxConfig())
        state.unavailable = None if r.status == Status.OK else _explain(r)
    return state.unavailable if isinstance(state.unavailable, str) else None


def _explain(r: Any) -> str:
    why = r.error or r.reason or str(r.status)
    if r.error_step in ("clone", "userns"):
        fix = ("unprivileged user namespaces are unavailable; fix: sysctl -w "
               "kernel.apparmor_restrict_unprivileged_userns=0 or user.max_user_namespaces=15000; "
               "in Docker run with --security-opt seccomp=unconfined (see `sandbox doctor`)")
    else:
        fix = "run `sandbox doctor` for the exact fix"
    return f"sandbox unavailable ({why}); {fix}"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    if not _wants_box(item):
        return None
    reason = _availability(item.config)
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    try:
        if reason is not None:
            reports = [_synthetic(item, "setup", "skipped" if not item.config.getoption(
                "sandbox_strict") else "failed", reason)]
            result = None
        else:
            reports, result = _run_boxed(item)
    except ConfigError as e:
        reports, result = [_synthetic(item, "setup", "failed", f"sandbox: {e}")], None
    for rep in reports:
        if result is not None:
            rep.user_properties.extend(_properties(result))
        item.ihook.pytest_runtest_logreport(report=rep)
    if result is not None:
        record(item.config.stash[_STATE].rows, item.nodeid, result)
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    return True


def _run_boxed(item: pytest.Item) -> tuple[list[Any], Any]:
    from _pytest.runner import runtestprotocol

    cfg = box_config(item)
    config = item.config

    def body(ch: int) -> None:
        reports = runtestprotocol(item, log=False, nextitem=None)
        data = [config.hook.pytest_report_to_serializable(config=config, report=r)
                for r in reports]
        boxrun.write_all(ch, json.dumps(data).encode())

    result, data = boxrun.run_in_box(body, cfg, boxrun.capture_fds(config))
    reports = boxrun.parse_reports(data, config, item.nodeid)
    if result.status != Status.OK:
        # The kernel's verdict wins: the box was stopped, so the test fails with that reason
        # (a box stopped mid-test has sent no report: setup counts as done, the call failed).
        setup = [r for r in reports or [] if r.when == "setup"][:1]
        if setup and setup[0].outcome != "passed":
            return setup, result
        setup = setup or [_synthetic(item, "setup", "passed", "")]
        return setup + [_synthetic(item, "call", "failed", "sandbox: " + _reason(result))], result
    if reports is None:
        return [_synthetic(item, "call", "failed",
                           "sandbox: test process sent an invalid report")], result
    _explain_memory_error(reports, cfg, result)
    return reports, result


def _explain_memory_error(reports: list[Any], cfg: SandboxConfig, result: Any) -> None:
    """Under the rlimit fallback a memory limit shows up as MemoryError inside the test: say so."""
    lim = cfg.limits.memory
    for rep in reports:
        if rep.failed and lim and "MemoryError" in str(rep.longrepr):
            how = result.enforcement.get("memory", "rlimit")
            rep.sections.append(("sandbox", f"sandbox: memory limit {lim >> 20}M exceeded "
                                            f"(enforced by {how}: allocation refused)"))


def _reason(result: Any) -> str:
    if result.status == Status.XX:
        return f"could not run the test in a sandbox: {result.error}"
    if result.signal == 25:  # SIGXFSZ: in a sandboxed test, fsize defaults to the output limit
        return f"output limit exceeded ({result.reason})"
    return result.reason or str(result.status)


def _synthetic(item: pytest.Item, when: str, outcome: str, text: str) -> pytest.TestReport:
    longrepr: Any = text or None
    if outcome == "skipped":
        path, lineno, _ = item.location
        longrepr = (str(path), (lineno or 0) + 1, text)
    return pytest.TestReport(item.nodeid, item.location, {x: 1 for x in item.keywords},
                             outcome, longrepr, when, user_properties=[])


def _properties(result: Any) -> list[tuple[str, Any]]:
    return [("sandbox_status", str(result.status)),
            ("sandbox_wall_time", round(result.wall_time, 4)),
            ("sandbox_cpu_time", round(result.cpu_time, 4)),
            ("sandbox_peak_memory", result.peak_memory or 0)]


@pytest.fixture
def sandbox(request: pytest.FixtureRequest) -> Any:
    """Run untrusted programs (``sandbox.run``) or functions (``sandbox.call``) in fresh boxes;
    assertions stay in the trusted test."""
    fx = SandboxFixture(request.config)
    yield fx
    fx.close()


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not config.getoption("sandbox_no_summary"):
        write_summary(terminalreporter, config.stash[_STATE].rows)


def pytest_report_header(config: pytest.Config) -> str | None:
    if config.getoption("sandbox_all"):
        return "sandbox: every test runs in a fresh rootless sandbox (--sandbox-all)"
    return None


