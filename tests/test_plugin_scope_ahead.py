"""How module boxes overlap the host: the next test run ahead while the host replays one, the
next module's box started early, and the one watchdog timer that serves a run of tests
(``boxscope``, ``boxserve``), each next to what plain pytest does."""

from __future__ import annotations

import textwrap
import time

import pytest
from test_plugin_support import host_pauses_after

from pytest_plugin import boxscope, scopebox

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


def test_the_next_modules_box_starts_while_the_last_test_before_it_runs(pytester, run, monkeypatch,
                                                                        no_leftovers):
    """The box of module B is started while module A's box runs A's last test (the clone
    overlaps that test); B's tests still see a fresh module. Stopped after A (``-x``), B's box, never used, is ended
    with nothing left; a test that runs elsewhere (its own box) does not get it."""
    opened: list[tuple[str, int]] = []  # (the test a box opens for, tests passed by then)
    real_init = boxscope.ScopeBox.__init__

    def init(self, item, *a):
        stats = item.config.pluginmanager.get_plugin("terminalreporter").stats
        opened.append((item.name, len(stats.get("passed", []))))
        real_init(self, item, *a)

    monkeypatch.setattr(boxscope.ScopeBox, "__init__", init)
    module_a = "STATE = []\ndef test_a1():\n    STATE.append(1)\ndef test_a2():\n    assert STATE == [1]\n"
    pytester.makepyfile(test_a=module_a)
    src = """
        import test_a

        def test_b1():
            assert test_a.STATE == []  # a fresh clone, not module A's box
        """
    r = run(src, "--sandbox-all", "--sandbox-scope", "module")
    assert outcomes(r) == {"passed": 3}
    assert opened == [("test_a1", 0), ("test_b1", 1)]  # after test_a1, with test_a2
    opened.clear()
    pytester.makepyfile(test_a="def test_a1():\n    pass\ndef test_a2():\n    assert False\n")
    r = run(src, "--sandbox-all", "--sandbox-scope", "module", "-x")
    assert outcomes(r) == {"passed": 1, "failed": 1}
    assert opened == [("test_a1", 0), ("test_b1", 1)]  # after test_a1, with test_a2
    opened.clear()
    pytester.makepyfile(test_a=module_a)
    own_box = src.replace("def test_b1():", "@pytest.mark.sandboxed(scope='test')\n        def test_b1():")
    r = run("import pytest\n" + textwrap.dedent(own_box), "--sandbox-all", "--sandbox-scope", "module")
    assert outcomes(r) == {"passed": 3}
    assert opened == [("test_a1", 0)]


HOST_SLOW = """
    import time
    from pytest_plugin import boxed

    def pytest_runtest_logreport(report):
        if boxed.CHANNEL is None and report.when == "call":  # on the host only: the box idles
            time.sleep(1.6)
    """


def test_a_box_waiting_for_the_host_is_not_ended_by_the_last_tests_watchdog(pytester, run):
    """The watchdog's timer outlives a test (one serves many); a box that waits longer than it
    would fire for the host's next command must not die of it between tests."""
    pytester.makeconftest(HOST_SLOW)
    src = """
        RAN = []

        def test_a():
            RAN.append("a")

        def test_b():
            RAN.append("b")

        def test_c():
            assert RAN == ["a", "b"]  # the same box
        """
    r = run(src, "--sandbox-all", "--sandbox-scope", "module", "--sandbox-wall-time", "1s", "-rf")
    assert outcomes(r) == {"passed": 3}


def test_a_test_ended_in_its_setup_runs_once(run, monkeypatch):
    """A box killed while a test sets up has sent no report for it, as a box that ended by
    itself between two tests has not: only the latter is a reason to run the test in a new box
    (a hanging test run twice doubles its wait and repeats what it did)."""
    src = """
        import time
        import pytest

        @pytest.fixture
        def hangs():
            time.sleep(30)

        def test_first():
            pass

        def test_hang(hangs):
            pass
        """
    opened = []
    real_init = boxscope.ScopeBox.__init__
    monkeypatch.setattr(boxscope.ScopeBox, "__init__",
                        lambda self, *a: (opened.append(a[0].name), real_init(self, *a))[1])
    r = run(src, "--sandbox-all", "--sandbox-scope", "module", "--sandbox-wall-time", "1s", "-rE")
    assert outcomes(r) == {"passed": 1, "errors": 1}
    assert opened == ["test_first"]  # and not a second box for test_hang
    r.stdout.fnmatch_lines(["ERROR test_it.py::test_hang - sandbox: wall time 1s exceeded (this test's*"])


def test_a_test_holding_the_gil_is_ended_at_its_wall_time(run, monkeypatch, no_leftovers):
    """The watchdog is a C thread: a test stuck in one long C call (here the regular expression
    engine, which never releases the GIL) is still ended at its own wall time."""
    monkeypatch.setenv("COLUMNS", "250")
    src = """
        import re

        def test_backtracks():
            re.match(r"(a+)+$", "a" * 64 + "b")

        def test_after():
            pass
        """
    r = run(src, "--sandbox-all", "--sandbox-scope", "module", "--sandbox-wall-time", "1s", "-rf")
    assert outcomes(r) == {"passed": 1, "failed": 1}
    r.stdout.fnmatch_lines(["FAILED test_it.py::test_backtracks - sandbox: wall time 1s exceeded "
                            "(this test's; the module box ended with it*"])


AHEAD = """
    import time
    from pytest_plugin import boxed

    REPLAYED = {}

    def pytest_runtest_logreport(report):
        if boxed.CHANNEL is not None or report.when != "call":
            return
        if report.nodeid.endswith("test_a"):  # the host replays test_a's report slowly
            time.sleep(0.5)
            REPLAYED["a"] = time.monotonic()
        elif report.nodeid.endswith("test_b"):
            started = dict(report.user_properties)["started"]
            print("\\nAHEAD" if started < REPLAYED["a"] else "\\nIN TURN")
    """


def test_the_box_runs_the_next_test_while_the_host_replays_one(pytester, run):
    """test_b starts in the box before the host is done with test_a's reports; not where pytest
    may stop after test_a (``-x``: plain pytest would not have run test_b)."""
    pytester.makeconftest(AHEAD)
    src = ("import time\n\ndef test_a():\n    pass\n\n"
           "def test_b(record_property):\n    record_property('started', time.monotonic())\n")
    r = run(src, "--sandbox-all", "--sandbox-scope", "module", "-s")
    assert outcomes(r) == {"passed": 2}
    assert "IN TURN" in r.stdout.str()  # -s: the box's output goes to the terminal as it runs
    r = run(src, "--sandbox-all", "--sandbox-scope", "module")
    assert outcomes(r) == {"passed": 2} and "AHEAD" in r.stdout.str()
    r = run(src, "--sandbox-all", "--sandbox-scope", "module", "-x")
    assert outcomes(r) == {"passed": 2} and "IN TURN" in r.stdout.str()


def test_tests_run_in_a_plugins_own_loop_are_not_run_ahead(pytester, run, monkeypatch):
    """A plugin that runs the tests in its own order: the box does not guess what comes next
    (outcomes as plain pytest's). Should it run ahead anyway, the test it ran is not the one
    pytest asks for, and that one runs again, in a new box (without what the tests before it
    left: test_a sees a fresh module)."""
    pytester.makeconftest("""
        def pytest_runtestloop(session):
            items = session.items[::-1]
            for i, item in enumerate(items):
                nextitem = items[i + 1] if i + 1 < len(items) else None
                item.config.hook.pytest_runtest_protocol(item=item, nextitem=nextitem)
            return True
        """)
    src = """
        import pytest

        RAN = []

        class TestX:
            def test_a(self):
                assert RAN == ["c", "b", "Y torn down"]  # after test_b, as its nextitem said

        @pytest.fixture(scope="class")
        def y():
            yield
            RAN.append("Y torn down")

        @pytest.mark.usefixtures("y")
        class TestY:
            def test_b(self):
                RAN.append("b")

            def test_c(self):
                RAN.append("c")
        """
    plain = run(src, "-p", "no:sandbox")
    module = run(src, "--sandbox-all", "--sandbox-scope", "module", "-rA")
    assert outcomes(plain) == outcomes(module) == {"passed": 3}
    monkeypatch.setattr(boxscope, "_pytests_own_loop", lambda config: True)
    guessed = run(src, "--sandbox-all", "--sandbox-scope", "module", "-rf")
    assert outcomes(guessed) == {"passed": 2, "failed": 1}
    guessed.stdout.fnmatch_lines(["FAILED test_it.py::TestX::test_a - AssertionError: assert [] == *"])


def test_a_box_that_died_between_two_tests_runs_the_next_in_a_new_one(pytester, run):
    """A test leaves a thread that ends its box (exit 3) after its turn, before the host sends
    the next command (``-x``: not sent ahead): that command meets a closed pipe, so the next
    test never ran there and runs in a new box (not failed with the box's exit)."""
    host_pauses_after(pytester, "leaves")
    src = """
        import os, threading, time

        STATE = []

        def test_leaves_a_killer():
            STATE.append(1)
            threading.Thread(target=lambda: (time.sleep(0.2), os._exit(3)), daemon=True).start()

        def test_next():
            assert STATE == []  # a new box
        """
    assert outcomes(run(src, "--sandbox-all", "--sandbox-scope", "module", "-x")) == {"passed": 2}


def test_a_box_started_early_is_forked_before_the_host_runs_pytest_on(pytester, run, monkeypatch):
    """The next module's box is forked from a thread of ours while the host goes on; a fork
    copies every lock as it is, so one the host's main thread held then (pytest takes the lock
    of ``Item.location``'s cached_property for each new test) would be held for ever in the box,
    and its first test hung to its wall time. The host now waits for that fork before it leaves
    the test it started it in. Here the fork comes late (0.5 s) and the host holds a lock of the
    conftest's after each test, which test_b1 then takes in its box."""
    pytester.makeconftest("""
        import threading, time
        LOCK = threading.Lock()

        def pytest_runtest_logfinish(nodeid):
            with LOCK:
                time.sleep(1.0)
        """)
    pytester.makepyfile(test_a="def test_a1():\n    pass\n")
    src = "import conftest\ndef test_b1():\n    with conftest.LOCK:\n        pass\n"
    real_run, real_start, started = scopebox.sandbox.run_sync, boxscope._start_next, []

    def late_run(body, *a, **k):
        if any(i.name == "test_b1" for i in getattr(body, "args", [[], []])[1]):  # (its group)
            time.sleep(0.5)
        return real_run(body, *a, **k)

    def start(item, *a):
        real_start(item, *a)
        started.append(item.config.stash.get(boxscope._NEXT, None) is not None)

    monkeypatch.setattr(scopebox.sandbox, "run_sync", late_run)
    monkeypatch.setattr(boxscope, "_start_next", start)
    r = run(src, "--sandbox-all", "--sandbox-scope", "module", "--sandbox-wall-time", "10s",
            "test_a.py", "test_it.py", "-rf")
    assert started == [True] and outcomes(r) == {"passed": 2}
