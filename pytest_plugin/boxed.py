"""One sandboxed test: its whole protocol runs in a fresh box, its reports come back as JSON.

Like pytest-forked, the box is a clone of the pytest process and runs ``runtestprotocol`` for
the item (setup, call, teardown), so fixtures, assertion rewriting, capture and tracebacks are
pytest's own. Unlike pytest-forked:

* every fixture the test uses is set up *and torn down inside the box*, fresh (an inherited
  wider-scope fixture would hold descriptors the box has closed, and tearing down the parent's
  copy inside the box would run its finalizers twice);
* each report is sent as one JSON line the moment it is made, so when the kernel stops the box
  the host knows which phase was running, and shows the captured output and the Python stack
  of that phase;
* the verdict comes from the kernel (``Result.status``): whatever the box said, a box that was
  killed, timed out or crashed fails the test. The JSON itself is validated strictly
  (``reportcheck``): garbage becomes "sandbox: test process sent an invalid report".
"""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import warnings
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest

from pytest_plugin import (
    boxcov,
    boxrun,
    boxstack,
    boxstate,
    boxtee,
    boxtimeout,
    boxwarnings,
    reportcheck,
    sequence,
)
from pytest_plugin.reportcheck import InvalidReport
from sandbox import Limits, Result, SandboxConfig, Status

SECTION_MAX = 1 << 20  # captured output kept per section (head and tail), inside the box
STACK_MAX = 64 * 1024
ESCAPED = "sandbox: escaped the test: "  # a line in the stack memfd, see _escaped
CHANNEL: int | None = None  # set inside a box only: where the report hook sends reports


@dataclass
class Outcome:
    reports: list[pytest.TestReport]
    result: Result | None = None
    exit_request: tuple[str, int | None] | None = None
    warnings: list[dict[str, Any]] = field(default_factory=list)
    failed_subtests: int = 0  # counted by pytest's subtests fixture inside the box


# ---- inside the box -------------------------------------------------------------------------

class _Sender:
    """Inside the box, the only reader of the test's reports besides pytest's session (which
    counts failures for ``-x``, as subtests expect): each report goes to the host as one JSON
    line the moment it is logged, and the host replays it to everyone else (terminal, junitxml,
    xdist...). Subtests log their own reports in the middle of a phase, so the reports are taken
    where pytest logs them. Registered in this clone's plugin manager only: a pytest session
    the test itself runs (``pytester.runpytest()`` in process) has its own, and its reports stay
    in it."""

    def __init__(self, config: Any) -> None:
        self.config = config

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        send_report(self.config, report)


def _take_reports(item: pytest.Item) -> None:
    """Make the ``_Sender`` (and the session) the only ``pytest_runtest_logreport`` hooks of
    this clone. A subset caller in the hook relay's place: every proxy pytest makes later
    (``item.ihook``, the one the ``subtests`` fixture keeps) is derived from it."""
    pm = item.config.pluginmanager
    sender = _Sender(item.config)
    pm.register(sender, "sandbox-report-sender")
    others = [impl.plugin for impl in pm.hook.pytest_runtest_logreport.get_hookimpls()
              if impl.plugin is not sender and impl.plugin is not item.session]
    pm.hook.pytest_runtest_logreport = pm.subset_hook_caller("pytest_runtest_logreport", others)


def send_report(config: Any, rep: pytest.TestReport) -> None:
    """One report, one JSON line."""
    d = config.hook.pytest_report_to_serializable(config=config, report=rep)
    d["sections"] = [(t, _cut(c)) for t, c in d.get("sections", [])]
    d["user_properties"] = [(str(k), v if isinstance(v, reportcheck.SCALAR) else str(v))
                            for k, v in d.get("user_properties", [])]
    _send(d)
    if not sequence.is_subtest(rep):  # the tees hold the phase's output until its own report
        boxtee.reset()


def _send(obj: Any) -> None:
    assert CHANNEL is not None
    boxrun.write_all(CHANNEL, (json.dumps(obj, default=str) + "\n").encode())


def _cut(text: str) -> str:
    if len(text) <= SECTION_MAX:
        return text
    half = SECTION_MAX // 2
    return f"{text[:half]}\n... [sandbox: {len(text) - SECTION_MAX} characters cut] ...\n{text[-half:]}"


def _fresh_fixtures(item: pytest.Item) -> None:
    """Forget, in this clone only, the fixtures and finalizers pytest set up outside the box."""
    ss = item.session._setupstate
    for node, (_, exc) in list(ss.stack.items()):
        ss.stack[node] = ([], exc)
    info = getattr(item, "_fixtureinfo", None)
    for defs in (info.name2fixturedefs.values() if info is not None else ()):
        for fixturedef in defs:
            fixturedef.cached_result = None
            fixturedef._finalizers.clear()


def enter(items: list[pytest.Item], host: boxstate.HostState, tees: dict[str, int],
          adopt: list[tuple[int, int]], spools: dict[int, int], stack_fd: int, ch: int) -> None:
    """Make this clone the test process plain pytest would have been for ``items`` (one test,
    or the tests a module or session box runs in turn, ``boxscope``)."""
    boxstate.restore(host)  # signals, gc: as the test would have had them unboxed
    global CHANNEL
    CHANNEL = ch
    for saved, std in adopt:
        os.dup2(std, saved)
    for tmpfile_fd, spool in spools.items():  # pytest's capture writes into the spool
        os.dup2(spool, tmpfile_fd)
    for item in items:
        _fresh_fixtures(item)
    _take_reports(items[0])
    boxtee.install(items[0].config, tees)
    boxtimeout.STACK_FD = stack_fd
    faulthandler.enable(file=stack_fd, all_threads=True)


def run_test(item: pytest.Item, nextitem: pytest.Item | None, stack_fd: int) -> bool:
    """pytest's own protocol for ``item``, its reports sent as they are made; False when the
    session is to stop (``pytest.exit()``, KeyboardInterrupt)."""
    from _pytest.runner import runtestprotocol

    counts = sequence.failed_subtests_count(item)
    key = getattr(item, "id", None)
    before = counts.get(key, 0) if counts is not None else 0
    go_on = True
    with warnings.catch_warnings(record=True) as log:  # keeps the filters pytest set up
        cov = boxcov.start()  # coverage measured here goes to the host's (boxcov says how)
        try:
            runtestprotocol(item, log=True, nextitem=nextitem)
            if counts is not None and counts.get(key, 0) > before:
                _send({"$failed_subtests": counts[key] - before})
        except pytest.exit.Exception as e:
            _send({"$exit": str(e.msg)[:4096], "returncode": e.returncode})
            go_on = False
        except KeyboardInterrupt:
            _send({"$exit": f"KeyboardInterrupt in {item.nodeid}", "returncode": 2})
            go_on = False
        except BaseException as e:  # out of pytest's own machinery (a plugin's hook): exit 1
            _escaped(stack_fd, e)
            raise
        boxcov.finish(cov, _send)
    if log:
        _send(boxwarnings.to_json(log))
    return go_on


def _child(item: pytest.Item, host: boxstate.HostState, tees: dict[str, int],
           adopt: list[tuple[int, int]], spools: dict[int, int], stack_fd: int,
           wall: float | None, ch: int) -> None:
    enter([item], host, tees, adopt, spools, stack_fd, ch)
    if wall is not None:  # the stack shortly before the host kills us, for the failure report
        faulthandler.dump_traceback_later(max(wall * 0.5, wall - min(0.25, wall * 0.1)),
                                          file=stack_fd)
    run_test(item, None, stack_fd)
    faulthandler.cancel_dump_traceback_later()


def _escaped(fd: int, e: BaseException) -> None:
    """Name the exception for the host in the stack memfd, with as little memory as may be
    left: the traceback the library prints next needs more, and under an exhausted address
    space (the RLIMIT_AS fallback) it never appears."""
    try:
        os.write(fd, f"\n{ESCAPED}{type(e).__name__}: {e}"[:1024].encode("utf-8", "replace") + b"\n")
    except BaseException:  # noqa: BLE001 - best effort; the exit status stands
        pass


# ---- on the host ----------------------------------------------------------------------------

def run_item(item: pytest.Item, cfg: SandboxConfig, timeout: float | None = None) -> Outcome:
    """``timeout``: pytest-timeout's for this test, already the box's wall time if the lower."""
    config = item.config
    share, adopt = boxrun.capture_plan(config)
    # pytest's capture tmpfiles are host files (on /tmp): the box gets a memfd spool in each
    # one's place, and what is left in a spool afterwards is copied over within the output cap
    spools = {fd: boxrun.memfd("sandbox-capture") for fd in share}
    stack = boxrun.memfd("sandbox-stack")
    tees = boxtee.make(config)
    try:
        body = partial(_child, item, boxstate.capture(), tees, adopt, spools, stack,
                       cfg.limits.wall_time)
        result, data = boxrun.run_in_box(body, cfg, [*spools.values(), stack, *tees.values()],
                                         limit=reportcheck.MAX_CHANNEL, on_output=boxrun.echo_output)
        stack_text = os.pread(stack, STACK_MAX, 0).decode("utf-8", "replace")
        for tmpfile_fd, spool in spools.items():
            boxrun.unspool(spool, tmpfile_fd, cfg.limits.output_limit)
        teed = boxtee.sections(tees)
    finally:
        for fd in (*spools.values(), stack, *tees.values()):
            os.close(fd)
    return judge(item, cfg, timeout, result, data, stack_text, drain_capture(config) + teed)


def judge(item: pytest.Item, cfg: SandboxConfig, timeout: float | None, result: Result | None,
          data: bytes | None, stack_text: str, unfinished: list[tuple[str, str]],
          reason: str | None = None) -> Outcome:
    """The test's outcome from what its box sent (``data``) and the kernel's verdict
    (``result``; None: a box that lives on and said the test is done, ``boxscope``).
    ``reason``: the failure's first line when the box's own account of its end says more than
    the verdict (a module box's watchdog ended one test)."""
    out = Outcome([], result)
    try:
        if data is None:
            raise InvalidReport(f"more than {reportcheck.MAX_CHANNEL >> 20} MiB")
        sequence.parse(item, data, out)
        invalid = None
    except InvalidReport as e:
        out.reports, out.exit_request, out.warnings, invalid = [], None, [], str(e)
        out.failed_subtests = 0
    if result is not None and result.status != Status.OK:
        lines = stack_text.splitlines()
        escaped = [x[len(ESCAPED):] for x in lines if x.startswith(ESCAPED)]
        fired = boxtimeout.FIRED in lines
        stack_text = "\n".join(x for x in lines if not x.startswith((ESCAPED, boxtimeout.FIRED)))
        text = reason or "sandbox: " + _reason(result, cfg.limits, escaped[-1] if escaped else "")
        text = boxtimeout.explain(item, text, result, cfg.limits, timeout, fired)
        if stack_text.strip():
            text += "\n\nPython stack of the test process (written inside the box):\n" + boxstack.trim(stack_text)
        complete(item, out.reports, text, sections=unfinished,
                 first="call" if invalid else "setup")
    elif out.exit_request is not None and invalid is None:
        pass  # pytest.exit() inside the test: the session stops, as it would unsandboxed
    elif invalid is not None or not out.reports or out.reports[-1].when != "teardown":
        why = invalid or "the test process ended without finishing the test"
        out.reports = [] if invalid else out.reports
        complete(item, out.reports, f"sandbox: test process sent an invalid report ({why})",
                 first="call")
    elif result is not None:
        _explain_memory_error(out.reports, cfg.limits, result)
    return out


def complete(item: pytest.Item, reports: list[pytest.TestReport], text: str,
             sections: list[tuple[str, str]] | None = None, outcome: str = "failed",
             first: str = "setup") -> None:
    """Make the phase the test had reached fail (or skip) with ``text``, then fill in the
    remaining phases, so every test ends with a teardown report (JUnit reads properties there).
    Reports arrive right after each phase, so with none the box was still in ``first``."""
    main = sequence.main_reports(reports)  # a subtest's "call" report is not the call phase's
    if main and main[-1].when == "teardown":
        phase = "teardown"
        reports.remove(main[-1])
    elif not main:
        phase = first
    else:
        phase = "call" if main[-1].when == "setup" and main[-1].passed else "teardown"
    if phase == "call" and not main:
        reports.append(synthetic(item, "setup", "passed", ""))
    rep = synthetic(item, phase, outcome, text)
    rep.sections.extend((f"Captured {name} {phase}", content) for name, content in sections or [])
    reports.append(rep)
    if phase != "teardown":
        reports.append(synthetic(item, "teardown", "passed", ""))


def synthetic(item: pytest.Item, when: str, outcome: str, text: str) -> pytest.TestReport:
    longrepr: Any = text or None
    if outcome == "skipped":
        path, lineno, _ = item.location
        longrepr = (str(path), (lineno or 0) + 1, text)
    return pytest.TestReport(item.nodeid, item.location, {x: 1 for x in item.keywords},
                             outcome, longrepr, when, sections=[], user_properties=[])  # type: ignore[arg-type]


def drain_capture(config: Any) -> list[tuple[str, str]]:
    """What the box wrote into pytest's capture files in a phase it never finished; reading
    also empties them, so it cannot show up as the next test's output."""
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is None or capman._global_capturing is None:
        return []
    out, err = capman.read_global_capture()
    return [(n, _cut(t)) for n, t in (("stdout", out), ("stderr", err)) if t]


def teardown_in_parent(item: pytest.Item, nextitem: pytest.Item | None,
                       reports: list[pytest.TestReport]) -> None:
    """Tear down, here, what earlier unsandboxed tests set up and ``nextitem`` does not need
    (pytest would have done it in this test's teardown). A failure there fails our teardown."""
    from _pytest.runner import CallInfo

    if not item.session._setupstate.stack or not reports:  # none: pytest.exit() before the
        return  # first report; the session is ending, and its own finish tears everything down
    capman = item.config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        capman.resume_global_capture()
    try:
        call = CallInfo.from_call(lambda: item.session._setupstate.teardown_exact(nextitem),
                                  when="teardown", reraise=(pytest.exit.Exception, KeyboardInterrupt))
    finally:
        captured = drain_capture(item.config) if capman is not None else []
        if capman is not None:
            capman.suspend_global_capture(in_=False)
    last = reports[-1]
    if call.excinfo is not None and last.passed:
        rep = pytest.TestReport.from_item_and_call(item, call)
        rep.user_properties = list(last.user_properties)
        reports[-1] = last = rep
    last.sections.extend((f"Captured {n} teardown", t) for n, t in captured)


def _reason(result: Result, lim: Limits, escaped: str = "") -> str:
    if result.status == Status.XX:
        hint = ""
        if result.error_step == "rootfs" and result.errno == 13 and os.geteuid() == 0:
            hint = ("; as root the box runs as an unprivileged high uid, so the project and every "
                    "directory above it must be searchable by others (chmod o+x), or run pytest "
                    "as a normal user")
        return f"could not run the test in a sandbox: {result.error}{hint}"
    if result.signal == signal.SIGXFSZ:
        size = _fmt(lim.fsize)
        if lim.fsize == lim.output_limit:
            return f"output limit {size} exceeded (the test's captured output is a file: SIGXFSZ)"
        return f"file size limit {size} exceeded (SIGXFSZ; captured output counts too)"
    if result.status == Status.RE:
        # exit 1 after an exception escaped pytest's own machinery (``_escaped`` named it)
        if result.exit_code == 1 and escaped:
            why = boxstate.memory_refusal(escaped)
            if why and lim.memory and result.enforcement.get("memory") == "rlimit":
                return f"memory limit {_fmt(lim.memory)} exceeded ({why}; outside the test's own code)"
            return f"the test process failed outside the test: {boxstack.printable(escaped[:300])}"
        return f"the test process exited with code {result.exit_code} (os._exit() inside the test?)"
    return result.reason or str(result.status)


def _fmt(n: int | None) -> str:
    if n is None:
        return "unlimited"
    for unit, shift in (("G", 30), ("M", 20), ("K", 10)):
        if n >= 1 << shift and n % (1 << shift) == 0:
            return f"{n >> shift}{unit}"
    return f"{n}B"


def _explain_memory_error(reports: list[pytest.TestReport], lim: Limits, result: Result) -> None:
    """Under the rlimit fallback a memory limit shows up inside the test as MemoryError, or as
    "can't start new thread" (a thread's stack is address space): say so in the summary line
    (the failure itself stands either way)."""
    if not lim.memory or result.enforcement.get("memory", "rlimit") != "rlimit":
        return
    for rep in reports:
        crash = getattr(rep.longrepr, "reprcrash", None)
        why = boxstate.memory_refusal(crash.message or "") if rep.failed and crash is not None else None
        if why is not None:
            crash.message = f"sandbox: memory limit {_fmt(lim.memory)} exceeded ({why})"
