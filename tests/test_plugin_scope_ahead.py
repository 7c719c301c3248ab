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

