"""Subtests and nested pytest sessions in sandboxed tests: each subtest's report (pytest 9's
``subtests`` fixture, ``unittest.TestCase.subTest``) is replayed as plain pytest shows it, an
in-process ``pytester`` session inside a boxed test keeps its reports to itself, and a box that
forges subtest reports gets an invalid-report failure. Real boxes, as the unprivileged user;
every boxed run is compared with a plain pytest run of the same file."""

from __future__ import annotations

import re

import pytest
from test_plugin_trust import FORGE

pytest_plugins = ["pytester", "test_plugin_support"]

pytest.importorskip("_pytest.subtests", reason="pytest < 9 has no built-in subtests")

SUBTESTS = """
    import pytest

    def test_mixed(subtests):
        print("outer output")
        for i in range(4):
            with subtests.test(msg="even", i=i):
                print(f"inside subtest {i}")
                assert i % 2 == 0

    def test_all_pass(subtests):
        for i in range(3):
            with subtests.test(i=i):
                pass

    def test_skipped_subtest(subtests):
        with subtests.test("skips"):
            pytest.skip("not here")

    def test_fails_after_subtests(subtests):
        with subtests.test("fine"):
            pass
        assert 1 == 2, "the test's own failure"
    """

UNITTEST = """
    import unittest

    class Case(unittest.TestCase):
        def test_some_fail(self):
            for i in range(4):
                with self.subTest(i=i):
                    print(f"case {i}")
                    self.assertEqual(i % 3, 0)

        def test_all_pass(self):
            for i in range(2):
                with self.subTest(i=i):
                    pass
    """


def summary(r: pytest.RunResult) -> list[str]:
    """The -rA summary lines, failure headers and captured sections, without the progress line
    and timings (plain pytest writes the "u" of a failed unittest subTest into that test's
    captured stdout, a pytest quirk the replay on the host does not repeat)."""
    keep = [x for x in r.stdout.lines
            if re.match(r"(SUB)?(PASSED|FAILED|SKIPPED|XFAIL)|_{3,} .* _{3,}$|-{3,} Captured|"
                        r"(outer output|inside subtest|case \d)$|E   |contains \d+ failed", x)]
    return keep


def both(run, src: str, *args: str) -> tuple[pytest.RunResult, pytest.RunResult]:
    plain = run(src, "-rA", *args)
    boxed = run(src, "-rA", "--sandbox-all", *args)
    assert "INTERNALERROR" not in boxed.stdout.str()
    assert "invalid report" not in boxed.stdout.str()
    return plain, boxed


def test_subtests_fixture_reports_as_plain_pytest(run, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    plain, boxed = both(run, SUBTESTS)
    assert boxed.parseoutcomes() == plain.parseoutcomes()
    assert plain.parseoutcomes() == {"failed": 4, "passed": 2}  # 2 subtests + 2 tests failed
    assert summary(boxed) == summary(plain)
    boxed.stdout.fnmatch_lines([
        "SUBFAILED[[]even[]] (i=1) test_it.py::test_mixed - assert (1 % 2) == 0",
        "SUBFAILED[[]even[]] (i=3) test_it.py::test_mixed - assert (3 % 2) == 0",
        "FAILED test_it.py::test_mixed - contains 2 failed subtests",
        "FAILED test_it.py::test_fails_after_subtests - AssertionError: the test's own failure*",
    ])
    out = boxed.stdout.str()
    for line in ("inside subtest 1", "inside subtest 3", "outer output"):  # each in its section
        assert line in out
    assert "inside subtest 0" not in out  # a passing subtest's output is not shown, as plain


def test_subtests_verbose_lines_match(run, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    plain, boxed = both(run, SUBTESTS, "-v")

    def lines(r: pytest.RunResult) -> list[str]:
        return sorted(re.sub(r"\s+\[\s*\d+%\]$", "", x).rstrip() for x in r.stdout.lines
                      if re.match(r"test_it\.py::\S+ (SUB)?[A-Z]+", x))  # not the -v box table
    assert lines(boxed) == lines(plain)
    assert any("SUBPASSED[even] (i=0)" in x for x in lines(boxed))
    assert any("SUBSKIPPED[skips]" in x for x in lines(boxed))


def test_unittest_subtest_reports_as_plain_pytest(run, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    plain, boxed = both(run, UNITTEST)
    assert boxed.parseoutcomes() == plain.parseoutcomes()
    assert plain.parseoutcomes() == {"failed": 2, "passed": 2}  # a failed subTest alone fails
    keep = [x for x in summary(plain) if x != "u"]
    assert summary(boxed) == keep
    boxed.stdout.fnmatch_lines(["SUBFAILED(i=1) test_it.py::Case::test_some_fail - AssertionError: 1 != 0",
                                "SUBFAILED(i=2) test_it.py::Case::test_some_fail - AssertionError: 2 != 0"])


def test_subtests_under_xdist(run):
    pytest.importorskip("xdist")
    plain = run(SUBTESTS, "-n", "2")
    boxed = run(SUBTESTS, "-n", "2", "--sandbox-all")
    assert boxed.parseoutcomes() == plain.parseoutcomes() == {"failed": 4, "passed": 2}


NESTED = """
    pytest_plugins = ["pytester"]

    INNER = "def test_ok(): pass\\ndef test_bad(): assert 0\\n"

    def test_runpytest_inprocess(pytester):
        pytester.makepyfile(test_inner=INNER)
        r = pytester.runpytest_inprocess("-p", "no:cacheprovider")
        r.assert_outcomes(passed=1, failed=1)

    def test_inline_run(pytester):
        pytester.makepyfile(test_inner=INNER)
        rec = pytester.inline_run("-p", "no:cacheprovider")
        rec.assertoutcome(passed=1, failed=1)
        assert [r.nodeid for r in rec.getreports("pytest_runtest_logreport") if r.when == "call"] == [
            "test_inner.py::test_ok", "test_inner.py::test_bad"]

    def test_inner_pass_outer_fail(pytester):
        pytester.makepyfile(test_inner="def test_ok(): pass\\n")
        pytester.inline_run("-p", "no:cacheprovider").assertoutcome(passed=1)
        assert False, "the outer test's own verdict"
    """


def test_an_inprocess_pytester_session_keeps_its_reports(run, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    plain, boxed = both(run, NESTED)
    assert boxed.parseoutcomes() == plain.parseoutcomes() == {"failed": 1, "passed": 2}
    boxed.stdout.fnmatch_lines(["FAILED test_it.py::test_inner_pass_outer_fail - AssertionError: "
                                "the outer test's own verdict*"])
    # the inner session's tests are not the outer session's (its own summary is in its output)
    lines = boxed.stdout.lines
    last = max(i for i, x in enumerate(lines) if "short test summary info" in x)
    # (only the outcome lines: with CI set, pytest prints a failure's whole message, over lines)
    outcomes = ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS")
    assert [x.split(" ")[1] for x in lines[last + 1:-1] if x.split(" ")[0] in outcomes] == [
        "test_it.py::test_runpytest_inprocess", "test_it.py::test_inline_run",
        "test_it.py::test_inner_pass_outer_fail"]


SUB = '''
    def sub(outcome="passed", **extra):
        d = {"nodeid": NODE, "location": list(here().location), "keywords": {}, "outcome": outcome,
             "longrepr": "boom" if outcome == "failed" else None, "when": "call", "user_properties": [], "sections": [],
             "duration": 0.1, "start": 1.0, "stop": 1.1, "_report_type": "SubTestReport",
             "_subtest.context": {"msg": "m", "kwargs": {"i": "1"}}}
        d.update(extra)
        return json.dumps(d).encode() + b"\\n"

    def count(n):
        return json.dumps({"$failed_subtests": n}).encode() + b"\\n"
'''

FORGERIES = {
    "after_teardown": 'report("setup") + report("call") + report("teardown") + sub()',
    "unknown_type": 'report("setup") + sub(_report_type="Other") + report("call") + report("teardown")',
    "both_types": 'report("setup") + sub(**{"$report_type": "TestReport"}) + report("call") + report("teardown")',
    "other_test": 'report("setup") + sub(nodeid="test_it.py::other") + report("call") + report("teardown")',
    "other_location": 'report("setup") + sub(location=["test_it.py", 1, "test_other"]) + report("call") + report("teardown")',
    "setup_phase": 'report("setup") + sub(when="setup") + report("call") + report("teardown")',
    "bad_kwargs": 'report("setup") + sub(**{"_subtest.context": {"msg": "m", "kwargs": {"i": [1]}}}) + report("call") + report("teardown")',
    "no_context": 'report("setup") + sub(**{"_subtest.context": None}) + report("call") + report("teardown")',
    "too_many": 'report("setup") + sub() * 10001 + report("call") + report("teardown")',
    "count_too_high": 'report("setup") + sub("failed") + report("call") + report("teardown") + count(2)',
    "count_twice": 'report("setup") + sub("failed") + report("call") + report("teardown") + count(1) + count(1)',
    "count_zero": 'report("setup") + report("call") + report("teardown") + count(0)',
    "report_after_count": 'report("setup") + sub("failed") + report("call") + count(1) + report("teardown")',
}


def forging(cases: dict[str, str], preamble: str = "") -> str:
    """A test file whose boxed ``test_x[KIND]`` forges ``cases[KIND]`` (an expression over
    FORGE's and SUB's helpers) on its channel; ``preamble``: more of the file's own lines."""
    table = "\n".join(f"        {k!r}: lambda: {v}," for k, v in cases.items())
    return FORGE + SUB + f'''
    NODE = "test_it.py::test_x"
{preamble}
    @pytest.mark.sandboxed
    @pytest.mark.parametrize("kind", {sorted(cases)!r})
    def test_x(kind, request):
        global NODE
        NODE = request.node.nodeid
        forge({{
{table}
        }}[kind]())
    '''


def test_forged_subtest_reports_are_invalid(run):
    r = run(forging(FORGERIES), "-rf")
    assert "INTERNALERROR" not in r.stdout.str() and "Traceback" not in r.stderr.str()
    r.assert_outcomes(failed=len(FORGERIES))
    for kind in FORGERIES:
        r.stdout.fnmatch_lines([f"_* test_x[[]{kind}[]] _*",
                                "sandbox: test process sent an invalid report (*)"])
    assert "SUBPASSED" not in r.stdout.str() and "SUBFAILED" not in r.stdout.str()


def test_a_well_formed_subtest_sequence_is_accepted(run):
    """The forging harness itself: the shapes pytest makes pass the checks (so the test above
    fails for the forgery, not for the harness)."""
    r = run(FORGE + SUB + '''
    NODE = "test_it.py::test_x"

    @pytest.mark.sandboxed
    def test_x(request):
        forge(report("setup") + sub() + sub("failed") + report("call") + report("teardown") + count(1))
    ''', "-rA")
    r.stdout.fnmatch_lines(["SUBFAILED[[]m[]] (i=1) test_it.py::test_x*",
                            "FAILED test_it.py::test_x - contains 1 failed subtest"])


def test_exitfirst_stops_at_the_first_failed_subtest_as_plain(run, monkeypatch):
    """Inside the box pytest's session still counts failures, so ``-x`` ends the subtest loop
    there as unboxed, and the host's replay stops the session."""
    monkeypatch.setenv("COLUMNS", "200")
    src = """
        def test_subs(subtests):
            for i in range(4):
                with subtests.test(i=i):
                    assert i < 1

        def test_after():
            pass
        """
    plain, boxed = both(run, src, "-x")
    assert boxed.parseoutcomes() == plain.parseoutcomes() == {"failed": 2}
    assert summary(boxed) == summary(plain)
    assert "(i=2)" not in boxed.stdout.str()
