"""pytest-timeout with sandboxed tests: the timeout of a boxed test is its box's wall time, so a
test past it fails with pytest-timeout's own line and the session goes on (its timer on the
host used to escape as INTERNALERROR and end the run; under xdist the test went unreported).
Real boxes, as the unprivileged user; each boxed run next to a plain pytest run of the file."""

from __future__ import annotations

import time

import pytest

pytest_plugins = ["pytester", "test_plugin_support"]

pytest.importorskip("pytest_timeout", reason="pytest-timeout is not installed: these tests need "
                    "it (pip install -e '.[dev]'); run with -rs to see this")

HANGS = """
    import time, pytest

    def test_hangs():
        print("before the hang")
        time.sleep(30)

    def test_fine():
        pass
    """


def clean(r: pytest.RunResult) -> None:
    out = r.stdout.str() + r.stderr.str()
    assert "INTERNALERROR" not in out and "no tests ran" not in out, out[-3000:]


@pytest.mark.parametrize("method", ["signal", "thread"])
def test_a_boxed_test_past_its_timeout_fails_with_pytest_timeouts_line(run, method, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    plain = run(HANGS, "--timeout", "1", "--timeout-method", method, "-p", "no:sandbox") \
        if method == "signal" else None  # the thread method ends a plain run: os._exit(1)
    t0 = time.monotonic()
    r = run(HANGS, "--timeout", "1", "--timeout-method", method, "--sandbox-all", "-rf")
    took = time.monotonic() - t0
    clean(r)
    r.assert_outcomes(failed=1, passed=1)
    if plain is not None:
        assert plain.parseoutcomes() == r.parseoutcomes()
    r.stdout.fnmatch_lines([
        "FAILED test_it.py::test_hangs - Timeout (>1.0s) from pytest-timeout.",
    ])
    text = r.stdout.str()
    assert "sandbox: wall time 1s exceeded" in text and "pytest-timeout's timeout" in text
    assert "test_it.py\", line 5 in test_hangs" in text  # the test's stack, written in the box before its end
    assert "before the hang" in text
    assert took < 20


def test_the_timeout_marker_of_a_sandboxed_test(run, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    r = run("""
        import time, pytest

        @pytest.mark.sandboxed
        @pytest.mark.timeout(1)
        def test_marked():
            time.sleep(30)

        @pytest.mark.timeout(1)
        def test_unboxed_keeps_pytest_timeouts_own_timer():
            time.sleep(30)
        """, "-rf")
    clean(r)
    r.assert_outcomes(failed=2)
    r.stdout.fnmatch_lines(["FAILED test_it.py::test_marked - Timeout (>1.0s) from pytest-timeout.",
                            "FAILED test_it.py::test_unboxed_keeps_pytest_timeouts_own_timer - "
                            "Failed: Timeout (>1.0s) from pytest-timeout."])


def test_timeout_under_xdist(run, monkeypatch):
    pytest.importorskip("xdist")
    monkeypatch.setenv("COLUMNS", "200")
    r = run(HANGS, "--timeout", "1", "--sandbox-all", "-n", "2", "-rf")
    clean(r)
    r.assert_outcomes(failed=1, passed=1)
    r.stdout.fnmatch_lines(["FAILED test_it.py::test_hangs - Timeout (>1.0s) from pytest-timeout."])


def test_func_only_timeout_is_armed_in_the_box(run, monkeypatch):
    """A func_only timeout covers the test function only: pytest-timeout's own SIGALRM, armed
    inside the box around the call, fails the test as it would unboxed (teardown still runs)."""
    monkeypatch.setenv("COLUMNS", "200")
    src = """
        import time, pytest

        @pytest.fixture
        def slow_setup():
            time.sleep(1.5)  # not counted: func_only
            yield
            print("teardown ran")

        @pytest.mark.timeout(1, func_only=True)
        def test_call_hangs(slow_setup):
            time.sleep(30)
        """
    plain = run(src, "-rA", "-p", "no:sandbox")
    r = run(src, "--sandbox-all", "-rA")
    clean(r)
    assert r.parseoutcomes() == plain.parseoutcomes() == {"failed": 1}
    for res in (plain, r):
        res.stdout.fnmatch_lines(["FAILED test_it.py::test_call_hangs - Failed: Timeout (>1.0s) "
                                  "from pytest-timeout."])
    assert "teardown ran" in r.stdout.str()


def test_a_lower_sandbox_wall_time_stays_the_sandboxs_verdict(run, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    r = run(HANGS, "--timeout", "30", "--sandbox-all", "--sandbox-wall-time", "1s", "-rf")
    clean(r)
    r.assert_outcomes(failed=1, passed=1)
    r.stdout.fnmatch_lines(["FAILED test_it.py::test_hangs - sandbox: wall time 1s exceeded*"])
    assert "pytest-timeout" not in "\n".join(x for x in r.stdout.lines if x.startswith("FAILED"))


def test_func_only_thread_method_names_the_timeout(run, monkeypatch):
    """The thread method ends the test process with os._exit(1) at its timeout: in the box that
    ends the box only, and the failure says it was pytest-timeout (not "exited with code 1")."""
    monkeypatch.setenv("COLUMNS", "200")
    r = run("""
        import time, pytest

        @pytest.mark.timeout(1, func_only=True, method="thread")
        def test_call_hangs():
            time.sleep(30)

        def test_fine():
            pass
        """, "--sandbox-all", "-rf")
    clean(r)
    r.assert_outcomes(failed=1, passed=1)
    r.stdout.fnmatch_lines(["FAILED test_it.py::test_call_hangs - Timeout (>1.0s) from pytest-timeout."])
    assert "thread method ended the test process" in r.stdout.str()
    assert "exited with code 1" not in r.stdout.str()


def test_a_timeout_in_setup_is_an_error_at_setup(run, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    src = """
        import time, pytest

        @pytest.fixture
        def hangs():
            time.sleep(30)

        @pytest.mark.timeout(1)
        def test_setup_hangs(hangs):
            pass
        """
    plain = run(src, "-rE", "-p", "no:sandbox")
    r = run(src, "-rE", "--sandbox-all")
    clean(r)
    assert r.parseoutcomes() == plain.parseoutcomes() == {"errors": 1}
    r.stdout.fnmatch_lines(["ERROR test_it.py::test_setup_hangs - Timeout (>1.0s) from pytest-timeout."])


def test_a_box_cannot_claim_a_timeout_it_does_not_have(run, monkeypatch):
    """The line the thread timer leaves in the stack memfd is the box's word: the host shows its
    own reading of the test's timeout, and none for a test that has no func_only thread timer."""
    monkeypatch.setenv("COLUMNS", "200")
    r = run("""
        import os, pytest

        def stack():
            for fd in os.listdir("/proc/self/fd"):
                try:
                    if "sandbox-stack" in os.readlink(f"/proc/self/fd/{fd}"):
                        return int(fd)
                except OSError:
                    pass

        def test_no_timeout():
            os.write(stack(), b"\\nsandbox: pytest-timeout fired\\nsandbox: pytest-timeout fired: 123.0\\n")
            os._exit(1)

        @pytest.mark.timeout(20, func_only=True, method="thread")
        def test_other_value():
            os.write(stack(), b"\\nsandbox: pytest-timeout fired: 0.001\\nsandbox: pytest-timeout fired\\n")
            os._exit(1)
        """, "--sandbox-all", "-rf")
    clean(r)
    r.assert_outcomes(failed=2)
    r.stdout.fnmatch_lines(["FAILED test_it.py::test_no_timeout - sandbox: the test process exited with code 1*",
                            "FAILED test_it.py::test_other_value - Timeout (>20.0s) from pytest-timeout."])
    assert "123.0" not in r.stdout.str() and "0.001" not in r.stdout.str()
