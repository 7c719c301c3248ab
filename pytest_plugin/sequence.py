"""The order of the reports a box sends: what pytest's own run of one test could have made.

A test's protocol makes a setup report, a call report if setup passed, and a teardown report.
Subtests (pytest's ``subtests`` fixture, ``unittest.TestCase.subTest``) add "call" reports of
their own while a phase runs; they are accepted only as pytest's subtests plugin makes them
(``reportcheck.check_report``), for this test's nodeid and location, before its teardown report, and at most
``MAX_SUBTESTS`` of them. Anything else is an ``InvalidReport``.
"""

from __future__ import annotations

from typing import Any

import pytest

from pytest_plugin import boxcov, boxwarnings
from pytest_plugin import reportcheck as rc
from pytest_plugin.reportcheck import InvalidReport


def is_subtest(rep: Any) -> bool:
    """A rebuilt subtest report (pytest's ``SubtestReport``), as opposed to a phase's own."""
    return type(rep).__name__ == "SubtestReport"


def main_reports(reports: list[pytest.TestReport]) -> list[pytest.TestReport]:
    return [r for r in reports if not is_subtest(r)]


def parse(item: pytest.Item, data: bytes, out: Any) -> None:
    """Fill ``out`` (a ``boxed.Outcome``) from the channel's bytes, or raise InvalidReport."""
    ended = False
    subtests = 0
    last: pytest.TestReport | None = None  # the last phase report (not a subtest's)
    for msg in rc.parse_lines(data):
        if ended:
            raise InvalidReport("data after the end of the test")
        if isinstance(msg, dict) and boxcov.KEY in msg:  # (sent last but for the warnings)
            boxcov.receive(item.config, msg)
            continue
        if isinstance(msg, dict) and "$warnings" in msg:
            boxwarnings.CHECK(msg, "warnings")
            out.warnings, ended = msg["$warnings"][:boxwarnings.MAX_WARNINGS], True
            continue
        if out.exit_request is not None:
            raise InvalidReport("a report after pytest.exit()")
        if isinstance(msg, dict) and "$failed_subtests" in msg:
            rc.obj({"$failed_subtests": rc.INT})(msg, "failed subtests")
            failed = sum(1 for r in out.reports if is_subtest(r) and r.failed)
            if out.failed_subtests or not 0 < msg["$failed_subtests"] <= failed:
                raise InvalidReport(f"failed subtests: not 1 to {failed}, once")
            out.failed_subtests = msg["$failed_subtests"]
            continue
        if out.failed_subtests:
            raise InvalidReport("a report after the count of failed subtests")
        if isinstance(msg, dict) and "$exit" in msg:
            rc.obj({"$exit": rc.STR, "returncode": rc.maybe(rc.INT)})(msg, "exit")
            out.exit_request = (msg["$exit"][:4096], msg["returncode"])
            continue
        allowed = next_phases(item, last)
        if rc.claims_subtest(msg):
            if not allowed:
                raise InvalidReport("a subtest report after the test's teardown")
            subtests += 1
            if subtests > rc.MAX_SUBTESTS:
                raise InvalidReport(f"more than {rc.MAX_SUBTESTS} subtest reports")
            d = rc.check_report(msg, item.nodeid, item.location, "call")
        elif not isinstance(msg, dict) or msg.get("when") not in allowed:
            raise InvalidReport(f"expected a report for {' or '.join(allowed) or 'nothing more'}")
        else:
            d = rc.check_report(msg, item.nodeid, item.location, msg["when"])
        out.reports.append(rc.rebuild(item.config, d))
        last = last if rc.claims_subtest(d) else out.reports[-1]


def next_phases(item: pytest.Item, prev: pytest.TestReport | None) -> tuple[str, ...]:
    """The phases pytest's runtestprotocol may report next (a failed or skipped setup has no
    call; --setup-only has none either)."""
    if prev is None:
        return ("setup",)
    if prev.when == "setup":
        return ("call",) if prev.passed and not item.config.option.setuponly else ("teardown",)
    return ("teardown",) if prev.when == "call" else ()


def failed_subtests_count(item: pytest.Item) -> Any:
    """pytest's count of failed subtests per test (from its ``subtests`` fixture only: a
    failed ``unittest`` subTest does not fail its test), or None before pytest 9."""
    try:
        from _pytest.subtests import failed_subtests_key
    except ImportError:
        return None
    return item.config.stash.get(failed_subtests_key, None)


def count_failed_subtests(item: pytest.Item, reports: list[pytest.TestReport], n: int) -> None:
    """On the host, before replaying: add what the subtests plugin counted inside the box.
    pytest fails a test that passed but has failed subtests ("contains 1 failed subtest") from
    this count when the test's call report is shown."""
    counts = failed_subtests_count(item)
    main = main_reports(reports)
    if n and counts is not None and main:
        counts[main[0].id] += n
