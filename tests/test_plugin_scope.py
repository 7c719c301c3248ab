"""``--sandbox-scope module|session``: one box runs a module's (or the session's) sandboxed tests
in turn, so what they share is what plain pytest's tests of that module share; host protection,
limits per test and the report checks stay. Real boxes, in process (``pytester``), as this user;
each boxed run next to a plain pytest run of the same files."""

from __future__ import annotations

import threading

import pytest
from test_plugin_support import host_pauses_after

from pytest_plugin import scopebox

pytest_plugins = ["pytester", "test_plugin_support"]

SHARED = """
    import os, pytest

    STATE = []

    @pytest.fixture(scope="module")
    def mod():
        STATE.append("setup")
        yield len(STATE)
        print("module teardown")

    def test_one(mod):
        STATE.append("one")

    def test_two(mod):
        assert STATE == ["setup", "one"]  # what test_one left: the same process

    def test_tmp(tmp_path, mod):
        (tmp_path / "x").write_text("1")
        assert STATE[0] == "setup" and len(STATE) == 2
    """


def outcomes(r: pytest.RunResult) -> dict[str, int]:
    out = r.stdout.str()
    assert "INTERNALERROR" not in out, out[-3000:]
    return r.parseoutcomes()


def test_module_scope_shares_a_modules_state_and_fixtures_as_plain_pytest(run, no_leftovers):
    threads = threading.active_count()
    plain = run(SHARED, "-p", "no:sandbox")
    per_test = run(SHARED, "--sandbox-all")
    module = run(SHARED, "--sandbox-all", "--sandbox-scope", "module", "-rA")
    assert outcomes(plain) == outcomes(module) == {"passed": 3}
    assert outcomes(per_test) == {"passed": 1, "failed": 2}  # one box per test: fresh state
    module.stdout.fnmatch_lines(["*Captured stdout teardown*", "module teardown"])
    assert threading.active_count() == threads


def test_session_scope_spans_modules_and_module_scope_does_not(pytester, run):
    pytester.makepyfile(test_a="import conftest\ndef test_a():\n    conftest.SEEN.append('a')\n",
                        conftest="SEEN = []\n")
    src = "import conftest\ndef test_b():\n    assert conftest.SEEN == ['a']\n"
    plain = run(src, "-p", "no:sandbox")
    session = run(src, "--sandbox-all", "--sandbox-scope", "session")
    module = run(src, "--sandbox-all", "--sandbox-scope", "module")
    assert outcomes(plain) == outcomes(session) == {"passed": 2}
    assert outcomes(module) == {"passed": 1, "failed": 1}


WATCHED = """
    import os, signal, time

    STATE = []

    def test_first():
        STATE.append(1)

    def test_hangs():
        print("before the hang")
        time.sleep(30)

    def test_after_the_hang():
        assert STATE == []  # a new box

    def test_crashes():
        os.kill(os.getpid(), signal.SIGSEGV)

    def test_after_the_crash():
        STATE.append(2)

    def test_last():
        assert STATE == [2]
    """


def test_limits_hold_per_test_in_a_module_box_and_the_next_tests_run_in_a_new_one(run, monkeypatch,
                                                                                     no_leftovers):
    monkeypatch.setenv("COLUMNS", "250")
    r = run(WATCHED, "--sandbox-all", "--sandbox-scope", "module", "--sandbox-wall-time", "1s", "-rf")
    assert outcomes(r) == {"passed": 4, "failed": 2}
    r.stdout.fnmatch_lines([
        "FAILED test_it.py::test_hangs - sandbox: wall time 1s exceeded (this test's; the module "
        "box ended with it, the tests after it run in a new one)",
        "FAILED test_it.py::test_crashes - sandbox: killed by signal 11 (SIGSEGV)*",
    ])
    text = r.stdout.str()
    assert "before the hang" in text and 'test_it.py", line 10 in test_hangs' in text


def test_pytest_timeout_is_watched_per_test_in_a_module_box(run, monkeypatch):
    pytest.importorskip("pytest_timeout", reason="pytest-timeout is not installed (the dev extra)")
    monkeypatch.setenv("COLUMNS", "250")
    r = run(WATCHED, "--sandbox-all", "--sandbox-scope", "module", "--timeout", "1",
            "-k", "first or hangs or after_the_hang", "-rf")
    assert outcomes(r) == {"passed": 2, "failed": 1, "deselected": 3}
    r.stdout.fnmatch_lines(["FAILED test_it.py::test_hangs - Timeout (>1.0s) from pytest-timeout."])
    assert "sandbox: wall time 1s exceeded (this test's" in r.stdout.str()


def test_the_marker_chooses_the_scope_of_its_tests(run):
    src = SHARED.replace("def test_", "@pytest.mark.sandboxed(scope='module')\n    def test_")
    assert outcomes(run(src)) == {"passed": 3}
    bad = run(SHARED.replace("def test_one", "@pytest.mark.sandboxed(scope='class')\n    def test_one"),
              "-rf")
    bad.stdout.fnmatch_lines(["*sandbox: @pytest.mark.sandboxed(scope='class') is not valid; use "
                              "test, module, session*"])


def test_a_bad_scope_is_a_usage_error(pytester, run):
    r = run(SHARED, "--sandbox-all", "--sandbox-scope", "class")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*--sandbox-scope: invalid choice: 'class' (choose from *test*module*session*"])
    pytester.makeini("[pytest]\nsandbox_scope = modul\n")
    r = run(SHARED, "--sandbox-all")
    assert r.ret == pytest.ExitCode.USAGE_ERROR
    r.stderr.fnmatch_lines(["*sandbox_scope = 'modul' is not valid; use test, module, session*"])


def test_stopping_early_ends_the_waiting_box(run, no_leftovers):
    src = SHARED.replace("assert STATE == [\"setup\", \"one\"]", "assert False")
    r = run(src, "--sandbox-all", "--sandbox-scope", "module", "-x")
    assert outcomes(r) == {"passed": 1, "failed": 1}
    r = run(src.replace("assert False", "pytest.exit('enough')"), "--sandbox-all",
            "--sandbox-scope", "module")
    assert "enough" in r.stdout.str() and r.ret == pytest.ExitCode.INTERRUPTED


def test_module_scope_under_xdist(run):
    pytest.importorskip("xdist", reason="pytest-xdist is not installed (the dev extra)")
    r = run(SHARED, "--sandbox-all", "--sandbox-scope", "module", "-n", "2", "--dist", "loadfile")
    assert outcomes(r) == {"passed": 3}
    r = run(WATCHED, "--sandbox-all", "--sandbox-scope", "module", "-n", "2", "--dist", "loadfile",
            "--sandbox-wall-time", "1s")
    assert outcomes(r) == {"passed": 4, "failed": 2}


FORGER = """
    import os, stat, time

    def test_first():
        pass

    def test_forges_its_ack():  # answers for itself on every pipe it finds, then runs on
        for fd in map(int, os.listdir("/proc/self/fd")):
            try:
                if stat.S_ISFIFO(os.fstat(fd).st_mode) and fd > 2:
                    os.write(fd, b"1\\n")
            except OSError:
                pass
        time.sleep(0.5)

    def test_garbles_its_ack():  # and outlives the host's wait for its box to end
        for fd in map(int, os.listdir("/proc/self/fd")):
            try:
                if stat.S_ISFIFO(os.fstat(fd).st_mode) and fd > 2:
                    os.write(fd, b"x" * 100)
            except OSError:
                pass
        time.sleep(3)

    def test_innocent():
        pass

    def test_last():
        pass
    """


def test_a_forged_acknowledgement_fails_the_forger_not_the_next_test(run, monkeypatch, no_leftovers):
    monkeypatch.setenv("COLUMNS", "250")
    monkeypatch.setattr(scopebox, "JOIN_TIMEOUT", 1.0)
    threads = threading.active_count()
    r = run(FORGER, "--sandbox-all", "--sandbox-scope", "module", "-rA")
    assert outcomes(r) == {"passed": 3, "errors": 2}
    r.stdout.fnmatch_lines(["ERROR test_it.py::test_forges_its_ack - sandbox: test process sent an "
                            "invalid report (not this test's acknowledgement)",
                            "ERROR test_it.py::test_garbles_its_ack - sandbox: test process sent an "
                            "invalid report (not this test's acknowledgement)"])
    assert threading.active_count() == threads  # the garbler's box too, at the session's end


def test_a_test_that_stops_its_watchdog_is_ended_by_the_boxs_wall_time_and_told_so(run, monkeypatch,
                                                                                  no_leftovers):
    monkeypatch.setenv("COLUMNS", "250")
    src = """
        import faulthandler, time

        def test_first():
            pass

        def test_unwatched():
            faulthandler.cancel_dump_traceback_later()
            time.sleep(30)

        def test_after():
            pass
        """
    r = run(src, "--sandbox-all", "--sandbox-scope", "module", "--sandbox-wall-time", "1s", "-rf")
    assert outcomes(r) == {"passed": 2, "failed": 1}
    r.stdout.fnmatch_lines(["FAILED test_it.py::test_unwatched - sandbox: the module box's wall time "
                            "3s exceeded (1s per test × 3 tests; the test's own watchdog did not end it)"])


def test_a_box_that_closed_its_command_pipe_ends_and_the_next_test_runs_in_a_new_one(pytester, run,
                                                                                     no_leftovers):
    host_pauses_after(pytester, "closes")
    src = """
        import fcntl, os, stat

        STATE = []

        def test_closes_its_command_pipe():
            STATE.append(1)
            for fd in map(int, os.listdir("/proc/self/fd")):
                try:
                    if (fd > 2 and stat.S_ISFIFO(os.fstat(fd).st_mode)
                            and fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE == os.O_RDONLY):
                        os.close(fd)
                except OSError:
                    pass

        def test_next():
            assert STATE == []  # a new box

        def test_last():
            pass
        """
    assert outcomes(run(src, "--sandbox-all", "--sandbox-scope", "module")) == {"passed": 3}
