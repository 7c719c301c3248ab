"""Module boxes started ahead of their first test, and the one watchdog timer that serves a
run of tests (``boxscope``, ``boxserve``): found in review, each next to what plain pytest does."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester", "test_plugin_support"]


def outcomes(r: pytest.RunResult) -> dict[str, int]:
    out = r.stdout.str()
    assert "INTERNALERROR" not in out, out[-3000:]
    return r.parseoutcomes()


def test_a_box_started_early_still_has_its_tests_wall_time(pytester, run):
    """Module B's box is started while module A's last test runs; the time it waits for that
    test is not taken from B's tests (1 s of B's 2 s budget was gone when test_b1 began)."""
    pytester.makepyfile(test_a="import time\ndef test_a1():\n    time.sleep(1.5)\n")
    src = "import time\ndef test_b1():\n    time.sleep(1.0)\n"
    assert outcomes(run(src, "-p", "no:sandbox")) == {"passed": 2}
    r = run(src, "--sandbox-all", "--sandbox-scope", "module", "--sandbox-wall-time", "2s", "-rf")
    assert outcomes(r) == {"passed": 2}


def test_a_test_using_faulthandlers_timer_leaves_the_next_one_watched(run, monkeypatch):
    """A test that arms and cancels faulthandler's timer itself (the one the watchdog uses):
    the next test is still ended at its own wall time, not after the box's (10 tests' worth)."""
    monkeypatch.setenv("COLUMNS", "250")
    src = """
        import faulthandler, time, pytest

        def test_uses_faulthandler():
            faulthandler.dump_traceback_later(100)
            faulthandler.cancel_dump_traceback_later()

        def test_hangs():
            time.sleep(60)

        @pytest.mark.parametrize("i", range(8))
        def test_more(i):
            pass
        """
    r = run(src, "--sandbox-all", "--sandbox-scope", "module", "--sandbox-wall-time", "1s", "-rf")
    assert outcomes(r) == {"passed": 9, "failed": 1}
    r.stdout.fnmatch_lines(["FAILED test_it.py::test_hangs - sandbox: wall time 1s exceeded (this test's*"])
