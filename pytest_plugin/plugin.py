"""pytest plugin: ``@pytest.mark.sandboxed``, ``--sandbox-all``, the ``sandbox`` fixture.

A sandboxed test runs its whole protocol (setup, call, teardown) in a fresh box cloned from
the pytest process (``boxed``); its reports come back as JSON and are replayed here, so pass/
fail/skip/xfail, assertion rewriting, captured output and tracebacks look exactly as without
the box. The *verdict* of the box (time, memory, output limits, crashes) comes from the kernel:
if the box did not finish cleanly the test fails with that reason, whatever the box wrote.

Trust model (docs/pytest-plugin.md): this protects the host from the test. It cannot stop a
hostile test body from forging its own "passed" report (the report is produced by code in the
same process as the test). For untrusted code, assert outside the box: the ``sandbox``
fixture's ``run``/``call``.
"""

from __future__ import annotations

import faulthandler
import inspect
import os
from collections.abc import Iterator
from typing import Any

import pytest

from pytest_plugin import boxcov, boxed, boxrun, boxscope, boxtimeout, boxwarnings, probe, sequence
from pytest_plugin.fixture import LIMIT_KEYS, SandboxFixture
from pytest_plugin.summary import record, write_summary
from sandbox import ENV_ALLOWLIST, ConfigError, Limits, SandboxConfig

INI_DEFAULTS = {"memory": "512M", "wall_time": "60s", "cpu_time": "60s", "pids": "256"}
# What a Python program the test starts (``sys.executable``) imports and how it runs, as plain
# pytest's subprocesses would: a src layout on PYTHONPATH (click's import test ran the venv's
# click without it). Host paths, not secrets; entries outside the box's mounts do not exist there.
PYTHON_ENV = ("PYTHONPATH", "PYTHONSAFEPATH", "PYTHONHASHSEED", "PYTHONWARNINGS",
              "PYTHONDONTWRITEBYTECODE", "PYTHONUTF8", "PYTHONIOENCODING", "PYTHONDEVMODE")
# Variables pytest and pytest-xdist themselves read while a test runs, so a boxed test reports
# exactly as it would outside: CI/BUILD_NUMBER switch off assertion-diff truncation, the xdist
# ones name the worker (tests use them for per-worker resources). None of them carries secrets;
# everything else stays out of the box unless the marker's ``inherit_env``/``env`` adds it.
PYTEST_ENV = ("CI", "BUILD_NUMBER", "PYTEST_THEME", "PYTEST_THEME_MODE", "PYTEST_VERSION",
              "PYTEST_XDIST_WORKER", "PYTEST_XDIST_WORKER_COUNT", "PYTEST_XDIST_TESTRUNUID",
              *PYTHON_ENV)
_ROWS = pytest.StashKey[list[Any]]()
_CONFIGS = pytest.StashKey[dict[tuple[str, bool, str, float | None], SandboxConfig]]()
TIMEOUT = pytest.StashKey[float]()  # pytest-timeout's timeout of a boxed test, see below


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("sandbox", "rootless sandbox (run tests in fresh Linux namespaces)")
    g.addoption("--sandbox-all", action="store_true", default=None,
                help="sandbox every test (ini: sandbox_all); tests using the `sandbox` fixture "
                     "stay outside, since that fixture boxes what it runs")
    g.addoption("--sandbox-strict", action="store_true", default=None,
                help="fail (instead of skip) sandboxed tests when sandboxes cannot be created")
    g.addoption("--sandbox-network", action="store_true", default=None,
                help="give sandboxed tests the host network (default: none, only lo)")
    g.addoption("--sandbox-no-summary", action="store_true", help="no sandbox table at the end")
    g.addoption("--sandbox-scope", choices=boxscope.SCOPES, default=None,
                help="one box per test (default), per module, or per session (xdist: per worker); "
                     "tests of a module or session box share its fixtures, state and limits "
                     "(ini: sandbox_scope; marker: scope=)")
    parser.addini("sandbox_scope", "one box per test, module or session", default="test")
    parser.addini("sandbox_all", "sandbox every test (like --sandbox-all)", type="bool", default=False)
    parser.addini("sandbox_strict", "fail instead of skip without sandboxes", type="bool", default=False)
    parser.addini("sandbox_network", "host network in sandboxed tests", type="bool", default=False)
    for key in LIMIT_KEYS:
        what = key.replace("_", " ")
        g.addoption(f"--sandbox-{key.replace('_', '-')}", default=None, dest=f"sandbox_{key}",
                    metavar="VALUE", help=f"{what} for sandboxed tests (ini: sandbox_{key}; "
                    f"default {INI_DEFAULTS.get(key, 'as `sandbox run`')})")
        parser.addini(f"sandbox_{key}", f"default {what} for sandboxed tests",
                      default=INI_DEFAULTS.get(key))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "sandboxed(memory=, wall_time=, cpu_time=, pids=, output_limit=, tmpfs_size=, "
        "nofile=, fsize=, network=False, ...): run this test (fixtures included) inside a fresh "
        "rootless sandbox; other keywords are SandboxConfig fields")
    config.stash[_ROWS] = []
    if config.getini("sandbox_scope") not in boxscope.SCOPES:
        raise pytest.UsageError(f"sandbox_scope = {config.getini('sandbox_scope')!r} is not valid; "
                                f"use {', '.join(boxscope.SCOPES)}")
    config.pluginmanager.register(boxcov, "sandbox-coverage")  # merges boxes' coverage data


def _flag(config: pytest.Config, name: str) -> bool:
    opt = config.getoption(f"sandbox_{name}")
    return bool(opt) if opt is not None else bool(config.getini(f"sandbox_{name}"))


def scope_of(item: pytest.Item) -> str:
    """Marker keyword > command line > ini."""
    marker = item.get_closest_marker("sandboxed")
    scope = marker.kwargs.get("scope") if marker is not None else None
    scope = scope or item.config.getoption("sandbox_scope") or item.config.getini("sandbox_scope")
    if scope not in boxscope.SCOPES:
        raise ConfigError(f"@pytest.mark.sandboxed(scope={scope!r}) is not valid; use "
                          f"{', '.join(boxscope.SCOPES)}")
    return str(scope)


def box_config(item: pytest.Item, grouped: bool = False) -> SandboxConfig:
    """Defaults < ini < command line < marker kwargs. Tests with the same marker share one
    validated config (validation stats every mount source; the box plan is cached per config).
    ``grouped``: the per-test config of a module or session box (its tests may use temporary
    directories; pytest-timeout's timeout is watched per test in the box)."""
    marker = item.get_closest_marker("sandboxed")
    needs_tmp = grouped or not boxrun.TMP_FIXTURES.isdisjoint(getattr(item, "fixturenames", ()))
    timeout = None if grouped else item.stash.get(TIMEOUT, None)
    key = (repr(marker.kwargs) if marker else "", needs_tmp, os.getcwd(), timeout)
    cache = item.config.stash.setdefault(_CONFIGS, {})
    if key not in cache:
        cache[key] = _build_config(item, needs_tmp, timeout)
    return cache[key]


def _build_config(item: pytest.Item, needs_tmp: bool, timeout: float | None = None,
                  tests: int = 1) -> SandboxConfig:
    """``tests``: a module or session box's config, whose time limits are that many tests'."""
    cfg = item.config
    marker = item.get_closest_marker("sandboxed")
    kw: dict[str, Any] = dict(marker.kwargs) if marker else {}
    kw.pop("scope", None)
    limits: dict[str, Any] = {}
    for key in LIMIT_KEYS:
        v = cfg.getoption(f"sandbox_{key}") or cfg.getini(f"sandbox_{key}") or None
        if v is not None:
            limits[key] = v
        if key in kw:
            limits[key] = kw.pop(key)
    # The test's output goes to pytest's capture *files*, not through the box's pipes, so the
    # output limit is enforced as the file size limit unless fsize is given explicitly.
    if "fsize" not in limits and "output_limit" in limits:
        limits["fsize"] = limits["output_limit"]
    network = kw.pop("network", _flag(cfg, "network"))
    fields = set(inspect.signature(SandboxConfig).parameters) - {"limits", "network"}
    unknown = sorted(set(kw) - fields)
    if unknown:
        raise ConfigError(f"@pytest.mark.sandboxed: unknown option(s) {', '.join(unknown)}; valid: "
                          f"{', '.join(LIMIT_KEYS)}, network, {', '.join(sorted(fields))}")
    mounts, cwd = boxrun.pytest_mounts(cfg, temp=needs_tmp)
    kw.setdefault("inherit_env", (*ENV_ALLOWLIST, *PYTEST_ENV))
    kw.setdefault("expose_python", "host")  # a clone of pytest: imports from where it did
    lim = Limits.parse(**limits)
    if timeout is not None and (lim.wall_time is None or timeout < lim.wall_time):
        lim.wall_time = timeout
    if tests > 1:
        lim.wall_time = None if lim.wall_time is None else lim.wall_time * tests
        lim.cpu_time = None if lim.cpu_time is None else lim.cpu_time * tests
    sc = SandboxConfig(limits=lim, network="host" if network else "none",
                       mounts=[*mounts, *kw.pop("mounts", [])], cwd=kw.pop("cwd", cwd), **kw)
    return sc.validate()


def _wants_box(item: pytest.Item) -> bool:
    if item.get_closest_marker("sandboxed") is not None:
        return True
    return _flag(item.config, "all") and "sandbox" not in getattr(item, "fixturenames", ())


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> bool | None:
    if not _wants_box(item):
        return None
    if boxscope.faulthandler_timeout(item.config) > 0:
        # pytest's timer for this test (its faulthandler plugin wraps this hook): a box is a
        # clone, without the timer's thread, and arming its own (the wall time's) would wait
        # for that thread forever. The box's wall time watches the test instead.
        faulthandler.cancel_dump_traceback_later()
    item.ihook.pytest_runtest_logstart(nodeid=item.nodeid, location=item.location)
    out = boxed.Outcome([])
    scope = "test"
    try:
        if "sandbox" in getattr(item, "fixturenames", ()):
            raise ConfigError("a @sandboxed test cannot use the `sandbox` fixture (boxes do not "
                              "nest); drop the marker: the fixture boxes what it runs")
        reason = probe.unavailable(item.config)
        if reason is not None:
            strict = _flag(item.config, "strict")
            boxed.complete(item, out.reports, reason, outcome="failed" if strict else "skipped")
        elif (scope := scope_of(item)) == "test":
            out = boxed.run_item(item, box_config(item), item.stash.get(TIMEOUT, None))
        else:
            out = boxscope.run_item(item, scope, box_config(item, grouped=True),
                                    lambda n: _build_config(item, True, None, n),
                                    lambda a, b: _continues(a, b, scope), nextitem,
                                    item.stash.get(TIMEOUT, None), lambda: _next_box(nextitem))
    except ConfigError as e:
        boxed.complete(item, out.reports, f"sandbox: {e}")
    boxed.teardown_in_parent(item, nextitem, out.reports)
    if out.result is not None and scope == "test":
        props = _properties(out.result)
        for rep in out.reports:
            rep.user_properties.extend(props)
    boxwarnings.reemit(out.warnings)
    sequence.count_failed_subtests(item, out.reports, out.failed_subtests)
    for rep in out.reports:
        item.ihook.pytest_runtest_logreport(report=rep)
    if out.result is not None or scope != "test":
        record(item.config.stash[_ROWS], item.nodeid, out.result, out.reports, scope != "test")
    item.ihook.pytest_runtest_logfinish(nodeid=item.nodeid, location=item.location)
    if out.exit_request is not None:
        reason, code = out.exit_request
        pytest.exit(reason, _exit_code(item.session, code, nextitem is not None))
    return True


def _continues(item: pytest.Item, nextitem: pytest.Item | None, scope: str) -> bool:
    """Whether ``nextitem`` runs in the same module or session box as ``item``."""
    if nextitem is None or not _wants_box(nextitem) or "sandbox" in getattr(nextitem, "fixturenames", ()):
        return False
    try:
        return boxscope.group_key(nextitem, scope_of(nextitem)) == boxscope.group_key(item, scope)
    except ConfigError:
        return False


def _next_box(item: pytest.Item | None) -> boxscope.NextBox | None:
    """The scope and limits of the module or session box ``item`` opens (None: it opens none,
    or its marker is bad and it will fail on its own), to start that box early."""
    if (item is None or not _wants_box(item) or "sandbox" in getattr(item, "fixturenames", ())
            or probe.unavailable(item.config) is not None):
        return None
    try:
        scope = scope_of(item)
        if scope == "test":
            return None
        box_config(item, grouped=True)  # (validates the marker: the box's config scales it)
    except ConfigError:
        return None
    return scope, lambda n: _build_config(item, True, None, n)


def _exit_code(session: pytest.Session, code: int | None, tests_left: bool) -> int | None:
    """A box's ``pytest.exit(returncode=...)`` stops the session as pytest would, but a box
    (hostile) cannot make the run look green when it was not: 0 becomes 1 after a failed test
    and 2 (interrupted) when tests were left unrun; a code that is not one byte (256 reads as
    0 to a shell) becomes 2."""
    if code is None:
        return None
    if not 0 <= code <= 255:
        code = 2
    if code == 0 and session.testsfailed:
        return 1
    return 2 if code == 0 and tests_left else code


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_set_timer(item: pytest.Item, settings: Any) -> bool | None:
    """For a boxed test, pytest-timeout's timer is not armed on the host (where its
    ``pytest.fail`` escaped as INTERNALERROR): the timeout becomes the box's wall time
    (``box_config``). Inside the box, a ``func_only`` timer is pytest-timeout's own, the thread
    method's marked for the host (``boxtimeout``, which says why)."""
    if boxed.CHANNEL is not None:  # in the box: func_only, see boxtimeout
        thread = settings.func_only and settings.method == "thread"
        return boxtimeout.arm_thread_timer(item, settings) if thread else None
    if settings.func_only or not _wants_box(item):
        return None
    item.stash[TIMEOUT] = float(settings.timeout)
    return True


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_timeout_cancel_timer(item: pytest.Item) -> bool | None:
    """Nothing was armed on the host for a test whose timeout is its box's wall time."""
    if boxed.CHANNEL is None and item.stash.get(TIMEOUT, None) is not None:
        return True
    return None


def _properties(result: Any) -> list[tuple[str, Any]]:
    return [("sandbox_status", str(result.status)),
            ("sandbox_wall_time", round(result.wall_time, 4)),
            ("sandbox_cpu_time", round(result.cpu_time, 4)),
            ("sandbox_peak_memory", result.peak_memory or 0)]


@pytest.fixture
def sandbox(request: pytest.FixtureRequest) -> Iterator[SandboxFixture]:
    """Run untrusted programs (``sandbox.run``) or functions (``sandbox.call``) in fresh boxes;
    assertions stay in the trusted test."""
    fx = SandboxFixture(request.config)
    yield fx
    fx.close()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # a box still waiting for a test the session will not run; after Ctrl-C it may be inside
    # a test: the process's end (or the box's own wall time) ends it, not a wait here
    boxscope.close(session.config, 1.0 if exitstatus == pytest.ExitCode.INTERRUPTED else 10.0)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    if not config.getoption("sandbox_no_summary"):
        write_summary(terminalreporter, config.stash[_ROWS], verbose=config.get_verbosity() > 0)


def pytest_report_header(config: pytest.Config) -> str | None:
    if _flag(config, "all"):
        return "sandbox: every test runs in a fresh rootless sandbox (--sandbox-all)"
    return None
