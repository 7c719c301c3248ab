"""Module and session scope (``--sandbox-scope``): one box runs a module's, or the session's,
sandboxed tests in turn, so their module- and session-scoped fixtures are set up once per box.

Host protection is the same as one box per test: the box is a fresh clone of pytest, in its
own namespaces, with its limits, and what it sends is checked report by report (``boxed.judge``).
What changes is what the tests share: the box's memory, files and processes, and the state one
test leaves for the next, as in a plain pytest run of that module.

How one box serves many tests while the host runs pytest's loop item by item: the host does
not know which test comes after the next (under xdist the scheduler decides as it goes), but
pytest hands every test its ``nextitem``. So the box is a loop inside a clone that waits on a
command pipe: "run test K, then tear down for test N (or for none)". It answers on an ack pipe
once the test's reports are in the channel memfd (the host reads them then: the progress line
appears as each test ends). When the next test belongs to another group (or there is none), the
box tears everything down and ends. The box is forked from a thread of ours (``scopebox``),
because ``sandbox.run_sync`` blocks until the box ends, and the main thread waits, holding no
lock, until that fork is made.

The box runs one test ahead: once test K's reports are read, the host sends the command for
K's ``nextitem`` (with that item's own ``nextitem``, which pytest's default loop takes from
``session.items``) before it checks and replays K's, so the two run at once. The host sends it
only where nothing can tell (``may_run_ahead``), and runs a test anew in a new box if pytest
then asks for something else. In the same way the next group's box is started while this
group's last test runs (``_start_next``): its clone overlaps that test on another CPU.

Wall time is watched per test inside the box (faulthandler's timer, a C thread: it fires even
while a test holds the GIL, writes the stack and ends the box; one timer serves a run of tests,
``boxserve.Watchdog``, so a test is ended between T and 1.25 T); the box's own limits, which the
kernel and the supervisor enforce, are that per-test budget times the tests it may run. A test
the watchdog ends, or the kernel stops, fails with that reason; the tests after it run in a new box.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

import pytest

from pytest_plugin import boxed, boxrun, boxserve, boxtee, boxtimeout, reportcheck
from pytest_plugin.scopebox import JOIN_TIMEOUT, ScopeBox
from sandbox import Result, SandboxConfig, Status

SCOPES = ("test", "module", "session")
_OPEN = pytest.StashKey["ScopeBox | None"]()
_INDEX = pytest.StashKey[dict[int, int]]()
_PER_FILE = pytest.StashKey[dict[str, list[pytest.Item]]]()
_NEXT = pytest.StashKey["ScopeBox | None"]()  # started for the next group, not yet used
_STALE = pytest.StashKey[list["ScopeBox"]]()  # boxes still ending after a test they failed
NextBox = tuple[str, Callable[[int], SandboxConfig]]  # a box's scope, and its limits for N tests


def group_key(item: pytest.Item, scope: str) -> tuple[str, str, str, str]:
    """Tests with equal keys may share a box: same scope, module (for module scope), marker
    keywords (the same config) and working directory."""
    marker = item.get_closest_marker("sandboxed")
    return (scope, _file(item) if scope == "module" else "", repr(marker.kwargs) if marker else "",
            os.getcwd())


def _file(item: pytest.Item) -> str:
    return item.nodeid.split("::", 1)[0]


def group_items(item: pytest.Item, scope: str) -> list[pytest.Item]:
    """The tests a box opened at ``item`` may run, at most: its module's, or all."""
    if scope == "session":
        return item.session.items
    per_file = item.config.stash.get(_PER_FILE, None)
    if per_file is None:
        per_file = item.config.stash[_PER_FILE] = {}
        for i in item.session.items:
            per_file.setdefault(_file(i), []).append(i)
    return per_file.get(_file(item), [item])


# ---- on the host ----------------------------------------------------------------------------


def run_item(item: pytest.Item, scope: str, cfg: SandboxConfig,
             total: Callable[[int], SandboxConfig],
             continues: Callable[[pytest.Item, pytest.Item | None], bool],
             nextitem: pytest.Item | None, timeout: float | None,
             next_box: Callable[[], NextBox | None]) -> boxed.Outcome:
    """One test of a module or session box; opens the box at the group's first test and ends
    it at its last (or when it died: the tests after run in a new one). ``continues(a, b)``:
    whether test ``b`` runs in ``a``'s box after it; ``next_box()``: the box ``nextitem`` opens."""
    config = item.config
    index = config.stash.get(_INDEX, None)
    if index is None or id(item) not in index:
        index = config.stash[_INDEX] = {id(i): n for n, i in enumerate(item.session.items)}
    key = group_key(item, scope)
    box = config.stash.get(_OPEN, None)
    wall = cfg.limits.wall_time
    seconds = min(x for x in (wall, timeout, float("inf")) if x is not None)
    seconds = 0 if seconds == float("inf") else seconds
    k = index[id(item)]
    nk = _index_in_box(index, item, nextitem, continues)
    if box is not None and (box.key != key or box.ahead not in (None, (k, nk, seconds))):
        close(config)  # the previous test said it was not the last, or the box ran ahead wrong
        box = None
    if box is None:
        box = config.stash[_OPEN] = _started(config, key)
    for attempt in (0, 1):
        if box is None:
            group = group_items(item, scope)
            box = ScopeBox(item, key, group, total(len(group)))
            config.stash[_OPEN] = box
        fresh, box.first = box.first, False
        sent = box.ahead is not None or _send(box, k, nk, seconds)  # (ahead: sent during the replay)
        _wait_forks(config)
        if nk < 0 and nextitem is not None:
            _start_next(item, nextitem, next_box, seconds)
        box.ahead, acked = None, box.wait_ack(k) if sent else False
        _wait_forks(config)  # before we run pytest's code again (see ``scopebox``)
        data = boxrun.read_memfd(box.channel, reportcheck.MAX_CHANNEL)
        if acked is True:
            if nk >= 0 and may_run_ahead(item, nextitem):
                _run_ahead(box, nextitem, nk, seconds, index, continues)
            out = boxed.judge(item, cfg, timeout, None, data, "", [])
            if nk < 0 or out.exit_request is not None:
                _end_after(item, config, out)
            return out
        config.stash[_OPEN] = None
        result = box.end()
        if (not fresh and attempt == 0 and acked is False and data == b"" and box.error is None
                and (box.refused or _ended_between_tests(box, result))):
            box.release()
            box = None  # it ended between two tests (the one before stopped it): a new box
            continue
        try:
            return _died(item, box, cfg, timeout, result, data, seconds, scope, acked)
        finally:
            box.release()
            if box.thread.is_alive():  # its fds are closed in ``close``
                config.stash.setdefault(_STALE, []).append(box)
    raise AssertionError("unreachable")


def _ended_between_tests(box: ScopeBox, result: Result | None) -> bool:
    """Whether the box ended by itself after a test (not in the one it was asked for next)."""
    return (result is not None and result.status == Status.OK
            and os.pread(box.stack, boxed.STACK_MAX, 0).endswith(boxserve.ENDED))


def _start_next(item: pytest.Item, nextitem: pytest.Item, next_box: Callable[[], NextBox | None],
                seconds: float) -> None:
    """The group's last test: the box ``nextitem`` opens is started now, so its start overlaps
    this test. Only where nothing else runs in between (pytest's own loop, nothing of the
    host's set up): the box is a clone of the host as it is now. Its wall clock runs while it
    waits: it gets this test's time on top (at most ``1.25 seconds``, its watchdog's, and a
    second for the host's replay), and is not used if the wait was longer."""
    config = item.config
    if (config.stash.get(_NEXT, None) is None and _pytests_own_loop(config) and not item.session._setupstate.stack
            and not faulthandler_timeout(config)):  # (its clone may come after the next arming)
        spec = next_box()
        if spec is not None:
            scope, total = spec
            group = group_items(nextitem, scope)
            wait = seconds * (1 + boxserve.Watchdog.SLACK) + 1.0
            config.stash[_NEXT] = ScopeBox(nextitem, group_key(nextitem, scope), group, total(len(group)), wait)


def faulthandler_timeout(config: pytest.Config) -> float:
    """pytest's ``faulthandler_timeout``: a timer it arms around each test, which a clone made
    while it is armed can never re-arm (``plugin.pytest_runtest_protocol`` cancels it first)."""
    try:
        return float(config.getini("faulthandler_timeout") or 0)
    except ValueError:  # -p no:faulthandler
        return 0.0


def _wait_forks(config: pytest.Config) -> None:
    """Wait (holding no lock) until the boxes we started are forked (``scopebox._note_fork``)."""
    for box in (config.stash.get(_OPEN, None), config.stash.get(_NEXT, None)):
        if box is not None:
            box.forked.wait(JOIN_TIMEOUT)


def _started(config: pytest.Config, key: tuple[str, ...]) -> ScopeBox | None:
    """The box started for this test during the one before, if it is this test's group's."""
    box = config.stash.get(_NEXT, None)
    config.stash[_NEXT] = None
    if box is not None and (box.key != key or (box.deadline is not None and time.monotonic() > box.deadline)):
        _end_unused(config, box)  # (one that waited too long has less than its tests' time left)
        return None
    return box


def _end_unused(config: pytest.Config, box: ScopeBox, timeout: float | None = None) -> None:
    box.end(timeout)
    box.release()
    if box.thread.is_alive():
        config.stash.setdefault(_STALE, []).append(box)


def _index_in_box(index: dict[int, int], item: pytest.Item, nextitem: pytest.Item | None,
                  continues: Callable[[pytest.Item, pytest.Item | None], bool]) -> int:
    """``nextitem``'s number when it runs in ``item``'s box after it, else -1."""
    return index.get(id(nextitem), -1) if nextitem is not None and continues(item, nextitem) else -1


def _send(box: ScopeBox, k: int, nk: int, seconds: float) -> bool:
    """Test ``k``'s command; False when the box had ended (it closed its command pipe, or
    stopped after the test before: pytest.exit, a shouldstop) and so never reads it."""
    os.ftruncate(box.channel, 0)  # from here on, what the box sends is this test's
    try:
        box.send(k, nk, seconds)
    except BrokenPipeError:
        box.refused = True
        return False
    return True


def _run_ahead(box: ScopeBox, nextitem: pytest.Item, nk: int, seconds: float,
               index: dict[int, int], continues: Callable[[pytest.Item, pytest.Item | None], bool]) -> None:
    """Send ``nextitem``'s command now, with the item pytest's default loop runs after it."""
    items = nextitem.session.items
    nnk = _index_in_box(index, nextitem, items[nk + 1] if nk + 1 < len(items) else None, continues)
    if _send(box, nk, nnk, seconds):
        box.ahead = (nk, nnk, seconds)


def may_run_ahead(item: pytest.Item, nextitem: pytest.Item | None) -> bool:
    """Whether running ``nextitem`` while the host replays ``item`` changes nothing anyone can
    see. Not when pytest may stop after ``item`` (``-x``, ``--sw``: the box would have run a
    test plain pytest does not); not when a plugin runs the tests in its own loop (xdist's
    scheduler picks each ``nextitem`` as it goes: the box's teardown would be for a test that
    does not come next); not when the box's output reaches the terminal (``-s``, tee-sys) or the host has set
    up unsandboxed tests (their teardown here reads the capture files the box writes to); and
    not when either test has its own pytest-timeout (the command carries the watchdog's time)."""
    config = item.config
    capman = config.pluginmanager.getplugin("capturemanager")
    return (nextitem is not None and not config.option.maxfail and not config.getoption("stepwise", False)
            and _pytests_own_loop(config) and not item.session._setupstate.stack
            and getattr(capman, "_method", None) in ("fd", "sys")
            and item.get_closest_marker("timeout") is None and nextitem.get_closest_marker("timeout") is None)


def _pytests_own_loop(config: pytest.Config) -> bool:
    """Whether the tests run in pytest's ``pytest_runtestloop`` (in ``session.items`` order,
    each with the next as its ``nextitem``), wrapped or not."""
    return all(impl.plugin_name == "main" or impl.hookwrapper or impl.wrapper
               for impl in config.hook.pytest_runtestloop.get_hookimpls())


def _end_after(item: pytest.Item, config: pytest.Config, out: boxed.Outcome) -> None:
    """The group's last test: the box ends by itself; its verdict is this test's row."""
    box = config.stash[_OPEN]
    config.stash[_OPEN] = None
    if box is None:
        return
    out.result = result = box.end()
    box.release()
    if result is not None and result.status != Status.OK:
        boxed.complete(item, out.reports, f"sandbox: the box of this test's {box.key[0]} ended "
                       f"badly after it: {result.reason or result.status}")


def _died(item: pytest.Item, box: ScopeBox, cfg: SandboxConfig, timeout: float | None,
          result: Result | None, data: bytes | None, seconds: float, scope: str,
          acked: bool | None) -> boxed.Outcome:
    if box.error is not None or result is None or acked is None:
        out = boxed.Outcome([], result)
        boxed.complete(item, out.reports, "sandbox: test process sent an invalid report (not this "
                       "test's acknowledgement)" if acked is None else
                       f"sandbox: could not run the {scope} box: {box.error}")
        return out
    stack_text = os.pread(box.stack, boxed.STACK_MAX, 0).decode("utf-8", "replace")
    for tmpfile_fd, spool in box.spools.items():
        boxrun.unspool(spool, tmpfile_fd, cfg.limits.output_limit)
    unfinished = boxed.drain_capture(item.config) + boxtee.sections(box.tees)
    reason = None
    if result.status == Status.RE and result.exit_code == 1 and stack_text.startswith("Timeout ("):
        reason = (f"sandbox: wall time {seconds:g}s exceeded (this test's; the {scope} box ended "
                  "with it, the tests after it run in a new one)")
        if timeout is not None and timeout <= seconds:
            reason = f"{boxtimeout.MESSAGE % timeout}\n{reason}"
    elif result.status == Status.TO and (result.reason or "").startswith("wall time") and box.wall:
        reason = (f"sandbox: the {scope} box's wall time {box.wall:g}s exceeded ({seconds:g}s per "
                  f"test × {box.tests} tests; the test's own watchdog did not end it)")
    return boxed.judge(item, cfg, timeout, result, data, stack_text, unfinished, reason)


def close(config: pytest.Config, timeout: float | None = None) -> None:
    """The session ends with a box still waiting for a test (``-x``, ``pytest.exit``, Ctrl-C):
    EOF on its command pipe, and it tears down and ends. Boxes that outlived the wait after a
    test they failed (a garbled ack, the test still running) get that wait once more."""
    boxes = [b for b in (config.stash.get(_OPEN, None), config.stash.get(_NEXT, None)) if b is not None]
    config.stash[_OPEN] = config.stash[_NEXT] = None
    boxes += config.stash.get(_STALE, [])
    config.stash[_STALE] = []
    for b in boxes:
        _end_unused(config, b, timeout)
