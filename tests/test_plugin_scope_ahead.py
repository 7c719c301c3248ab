"""Module boxes started ahead of their first test, and the one watchdog timer that serves a
run of tests (``boxscope``, ``boxserve``): found in review, each next to what plain pytest does."""

from __future__ import annotations

import pytest

from pytest_plugin import boxscope

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


def test_a_test_that_ends_its_box_cleanly_in_its_setup_runs_once(run, monkeypatch):
    """``os._exit(0)`` in a fixture: the box ended with status OK but inside that test, not
    between two tests, so the test is not run again in a new box (what it did would repeat)."""
    src = """
        import os, pytest

        @pytest.fixture
        def exits():
            os._exit(0)

        def test_first():
            pass

        def test_exits(exits):
            pass

        def test_last():
            pass
        """
    opened = []
    real_init = boxscope.ScopeBox.__init__
    monkeypatch.setattr(boxscope.ScopeBox, "__init__",
                        lambda self, *a: (opened.append(a[0].name), real_init(self, *a))[1])
    r = run(src, "--sandbox-all", "--sandbox-scope", "module", "-rf")
    assert outcomes(r) == {"passed": 2, "failed": 1}
    assert opened == ["test_first", "test_last"]  # and not a second box for test_exits
    r.stdout.fnmatch_lines(["sandbox: test process sent an invalid report (the test process ended "
                            "without finishing the test)"])


def test_pytest_exit_in_a_module_box_tears_its_fixtures_down_as_plain_pytest(pytester, run):
    out = pytester.mkdir("out")
    out.chmod(0o777)
    src = f"""
        import pytest
        from sandbox import MountSpec

        pytestmark = pytest.mark.sandboxed(mounts=[MountSpec("bind", {str(out)!r}, {str(out)!r})])

        @pytest.fixture(scope="module")
        def mod():
            yield
            open({str(out / "torn-down")!r}, "a").write("x")

        def test_a(mod):
            pass

        def test_b(mod):
            pytest.exit("enough")

        def test_c(mod):
            pass
        """
    plain = run(src, "-p", "no:sandbox")
    assert (out / "torn-down").read_text() == "x" and plain.ret == pytest.ExitCode.INTERRUPTED
    (out / "torn-down").unlink()
    r = run(src, "--sandbox-all", "--sandbox-scope", "module")
    assert r.ret == pytest.ExitCode.INTERRUPTED and "enough" in r.stdout.str()
    assert (out / "torn-down").read_text() == "x"


def test_a_box_started_early_counts_the_failure_of_the_test_before_it(pytester, run):
    """The next module's box is a clone from while the last test before it ran: the host's
    count of failed tests, which the last one may have raised, is the box's from its first test."""
    pytester.makepyfile(test_a="def test_a1():\n    assert 0\n")
    src = "def test_b1(request):\n    assert request.session.testsfailed == 1\n"
    assert outcomes(run(src, "-p", "no:sandbox")) == {"passed": 1, "failed": 1}
    assert outcomes(run(src, "--sandbox-all", "--sandbox-scope", "module")) == {"passed": 1, "failed": 1}


@pytest.mark.parametrize("scope", ["test", "module"])
def test_pytests_faulthandler_timeout_does_not_hang_the_box(pytester, run, scope):
    """pytest arms faulthandler's timer around each test (``faulthandler_timeout``); a box
    cloned meanwhile inherits a timer whose thread it does not have, and arming its own there
    waited for that thread forever (every test ran to its wall time)."""
    pytester.makeini("[pytest]\nfaulthandler_timeout = 30\n")
    src = "def test_a():\n    pass\n\ndef test_b():\n    pass\n"
    r = run(src, "--sandbox-all", "--sandbox-scope", scope, "--sandbox-wall-time", "3s")
    assert outcomes(r) == {"passed": 2}
