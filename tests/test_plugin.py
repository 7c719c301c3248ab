"""The pytest plugin, exercised through pytester with real sandboxes (as the unprivileged user
in CI)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest_plugins = ["pytester", "test_plugin_support"]


SAMPLE = """
    import logging, sys, unittest, pytest

    @pytest.fixture
    def broken():
        raise RuntimeError("fixture broke")

    @pytest.fixture
    def bad_teardown():
        yield 1
        raise ValueError("teardown broke")

    def test_pass(capsys):
        print("out"); print("err", file=sys.stderr)
        assert capsys.readouterr() == ("out\\n", "err\\n")

    def test_fail():
        logging.getLogger("t").warning("a log line")
        print("captured line"); print("to stderr", file=sys.stderr)
        x = {"a": [1, 2], "b": "text"}
        assert x == {"a": [1, 3], "b": "text"}

    def test_chained():
        try:
            {}["missing"]
        except KeyError as e:
            raise TypeError("while handling") from e

    def test_error(broken):
        pass

    def test_teardown_error(bad_teardown):
        pass

    def test_skip():
        pytest.skip("not today")

    @pytest.mark.skipif(True, reason="never here")
    def test_skipif():
        pass

    @pytest.mark.xfail(reason="known")
    def test_xfail():
        assert 0

    @pytest.mark.xfail(strict=True)
    def test_xpass_strict():
        pass

    @pytest.mark.parametrize("n", [1, 2])
    def test_param(n):
        assert n == 1

    class TestClass:
        def test_method(self):
            assert "abc" in "xyz"

    class TestUnit(unittest.TestCase):
        def test_unit(self):
            self.assertEqual(1, 2)
"""


def _normalized(result: pytest.RunResult) -> list[str]:
    import re

    lines, table = [], False
    for line in result.stdout.lines:
        if line.startswith(("sandbox: every test", "rootdir:", "platform ")):
            continue
        if "sandbox:" in line and "sandboxed test(s)" in line:
            table = True
            continue
        if table and line.startswith("="):
            table = False
        if not table:
            lines.append(re.sub(r"0x[0-9a-f]+", "0x?", re.sub(r"in [0-9.]+s", "in Ns", line)))
    return lines


@pytest.mark.parametrize("ci", ["", "true"], ids=["local", "CI=true"])
@pytest.mark.parametrize("mode", ["-rA", "--tb=native", "-vv"])
def test_output_is_identical_to_unsandboxed(run, mode, ci, monkeypatch):
    """The same file, once plainly and once with every test boxed: every line pytest prints
    (outcomes, tracebacks, assertion rewriting, captured output and logs, skip reasons) is the
    same, except the timings and the sandbox's own table. Under CI=true pytest stops truncating
    assertion diffs; the box must see that variable too."""
    if ci:
        monkeypatch.setenv("CI", ci)
    else:
        monkeypatch.delenv("CI", raising=False)
        monkeypatch.delenv("BUILD_NUMBER", raising=False)
    plain = run(SAMPLE, mode)
    boxed = run(SAMPLE, mode, "--sandbox-all")
    plain.assert_outcomes(passed=3, failed=6, errors=2, skipped=2, xfailed=1)
    boxed.assert_outcomes(passed=3, failed=6, errors=2, skipped=2, xfailed=1)
    assert _normalized(boxed) == _normalized(plain)
    assert "sandbox: 13 sandboxed test(s)" in boxed.stdout.str()


def test_fixtures_live_in_the_box_and_teardown_stays_consistent(run, pytester):
    """A module fixture set up outside for an unsandboxed test is set up afresh inside the box
    (and torn down there); outside, pytest's own teardown still happens where it would."""
    pytester.makepyfile(test_z="def test_next_module(): pass\n")
    r = run("""
        import os, pytest

        @pytest.fixture(scope="module")
        def modfix():
            print("setup in", "box" if os.getpid() == 2 else "host")
            yield os.getpid()
            print("teardown in", "box" if os.getpid() == 2 else "host")

        def test_outside(modfix):
            assert modfix != 2

        @pytest.mark.sandboxed
        def test_inside(modfix):
            assert modfix == 2
        """, "-rA")
    r.assert_outcomes(passed=3)
    out = r.stdout.str()
    assert "previous item was not torn down" not in out
    r.stdout.fnmatch_lines(["*_ test_inside _*", "*Captured stdout setup*", "setup in box",
                            "*Captured stdout teardown*", "teardown in box",
                            "*Captured stdout teardown*", "teardown in host"])


def test_output_modes_stack_warnings_and_exit(pytester):
    src = """
        import os, pytest, sys, time, warnings

        @pytest.mark.sandboxed
        def test_prints():
            print("via print")
            os.write(1, b"via fd 1\\n")

        @pytest.mark.sandboxed
        def test_warns():
            warnings.warn("careful now", DeprecationWarning)

        @pytest.mark.sandboxed(wall_time="0.5s")
        def test_where_it_hangs():
            print("before the hang")
            time.sleep(30)
        """
    pytester.makepyfile(test_it=textwrap.dedent(src))
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:pytest_isolate", "-s")
    out = r.stdout.str()
    assert "via print" in out and "via fd 1" in out          # -s: live on the terminal
    r.assert_outcomes(passed=2, failed=1, warnings=1)
    assert "careful now" in out                               # warnings summary
    r.stdout.fnmatch_lines(["sandbox: wall time 0.5s exceeded", "*Python stack*", "Timeout*",
                            "*test_it.py*line 15 in test_where_it_hangs"])
    pytester.makepyfile(test_it=textwrap.dedent(src + """
        @pytest.mark.sandboxed
        def test_stops():
            pytest.exit("enough", returncode=3)

        def test_never_runs():
            pass
        """))
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:pytest_isolate", "-v",
                                      "--capture=sys")
    assert r.ret == 3 and "enough" in r.stdout.str() and "test_never_runs" not in r.stdout.str()
    assert "via fd 1" in r.stdout.str()


def test_sandbox_all_with_fixture_users_and_network(run, pytester):
    pytester.makeini("[pytest]\nsandbox_all = true\n")
    r = run("""
        import os, socket, pytest

        def test_boxed_no_network():
            assert os.getpid() == 2 and [n for _, n in socket.if_nameindex()] == ["lo"]

        @pytest.mark.sandboxed(network=True)
        def test_boxed_host_network():
            assert len(socket.if_nameindex()) > 1

        def test_fixture_user_stays_outside(sandbox):
            assert os.getpid() != 2 and sandbox.run(["true"]).ok

        @pytest.mark.sandboxed
        def test_marker_and_fixture(sandbox):
            pass

        @pytest.mark.sandboxed(colour="blue")
        def test_bad_option():
            pass
        """, "-rE")
    r.assert_outcomes(passed=3, errors=2)
    r.stdout.fnmatch_lines(["*ERROR at setup of test_marker_and_fixture*",
                            "sandbox: a @sandboxed test cannot use the `sandbox` fixture*",
                            "*ERROR at setup of test_bad_option*",
                            "sandbox: @pytest.mark.sandboxed: unknown option(s) colour; valid: memory,*"])


def test_limits_fail_with_clear_messages(run):
    r = run("""
        import pytest, sys

        @pytest.mark.sandboxed(wall_time="0.5s")
        def test_hang():
            import time; time.sleep(60)

        @pytest.mark.sandboxed(memory="128M")
        def test_oom():
            x = bytearray(1 << 30)

        @pytest.mark.sandboxed(output_limit="64K")
        def test_flood():
            import os
            while True: os.write(1, b"x" * 65536)

        @pytest.mark.sandboxed
        def test_crash():
            import os; os.kill(os.getpid(), 9)

        def test_next_one_runs():
            pass
        """)
    r.assert_outcomes(failed=4, passed=1)
    out = r.stdout.str()
    assert "sandbox: wall time 0.5s exceeded" in out
    assert "sandbox: memory limit 128M exceeded" in out
    assert "sandbox: output limit 64K exceeded" in out
    assert "sandbox: killed by signal 9 (SIGKILL)" in out


def test_sandbox_all_ini_defaults_and_marker_override(run, pytester):
    pytester.makeini("[pytest]\nsandbox_wall_time = 0.5s\n")
    r = run("""
        import os, pytest, time

        def test_boxed_by_option():
            assert os.getpid() == 2

        def test_ini_wall_time():
            time.sleep(5)

        @pytest.mark.sandboxed(wall_time="3s")
        def test_marker_wins():
            time.sleep(1)
        """, "--sandbox-all")
    r.assert_outcomes(passed=2, failed=1)
    assert "sandbox: wall time 0.5s exceeded" in r.stdout.str()


def test_help_and_marker_registration(pytester):
    r = pytester.runpytest("--help")
    assert "rootless sandbox" in r.stdout.str() and "--sandbox-all" in r.stdout.str()
    r = pytester.runpytest("--markers")
    assert "@pytest.mark.sandboxed" in r.stdout.str()


def test_junit_properties_and_summary_table(run, pytester):
    r = run("""
        import pytest
        @pytest.mark.sandboxed
        def test_a(): b = b"x" * (8 << 20)  # a forked test's peak is what it grew

        @pytest.mark.sandboxed(wall_time="0.3s")
        def test_slow():
            import time; time.sleep(10)
        """, "--junitxml=out.xml")
    r.assert_outcomes(passed=1, failed=1)
    import xml.etree.ElementTree as ET

    cases = {c.get("name"): c for c in ET.parse(pytester.path / "out.xml").iter("testcase")}
    props = {n: {p.get("name"): p.get("value") for p in c.iter("property")} for n, c in cases.items()}
    assert props["test_a"]["sandbox_status"] == "OK" and int(props["test_a"]["sandbox_peak_memory"]) > 0
    assert props["test_slow"]["sandbox_status"] == "TO"
    assert 0.3 <= float(props["test_slow"]["sandbox_wall_time"]) < 2
    assert cases["test_slow"].find("failure").get("message").startswith("sandbox: wall time 0.3s")
    r.stdout.fnmatch_lines(["*= sandbox: 2 sandboxed test(s), 1 stopped by the sandbox (-v lists every one) =*",
                            "test * outcome * status * wall * cpu * peak",
                            "test_it.py::test_slow * failed * TO *"])
    assert "test_it.py::test_a " not in r.stdout.str()  # OK rows only with -v


def test_xdist_hang_and_oom_are_test_failures(run):
    r = run("""
        import pytest, time

        @pytest.mark.sandboxed(wall_time="1s")
        def test_hang():
            time.sleep(60)

        @pytest.mark.sandboxed(memory="128M")
        def test_oom():
            x = [bytearray(1 << 20) for _ in range(2000)]

        @pytest.mark.parametrize("i", range(4))
        def test_other(i):
            pass
        """, "-n", "2", "-rf")
    r.assert_outcomes(failed=2, passed=4)
    out = r.stdout.str()
    assert "node down" not in out and "crashed" not in out and "replacing" not in out
    r.stdout.fnmatch_lines(["FAILED test_it.py::test_hang - sandbox: wall time 1s exceeded"])
    r.stdout.fnmatch_lines(["FAILED test_it.py::test_oom - sandbox: memory limit 128M exceeded*"])


def test_threads_the_threading_module_does_not_list(run, pytester):
    """xdist workers run execnet's I/O thread, started with ``_thread``, which
    ``threading.active_count()`` does not count. Cloning a box while such a thread held the GIL
    copied a GIL nobody in the box could release: the box hung until its wall time. Here a
    ``_thread`` spinner holds the GIL most of the time, so that would happen at once."""
    pytester.makeconftest("""
        import _thread

        stop = []

        def spin():
            while not stop:
                sum(range(1000))

        _thread.start_new_thread(spin, ())

        def pytest_unconfigure(config):
            stop.append(1)     # pytester runs in-process: do not leave it spinning
        """)
    r = run("""
        import pytest

        @pytest.mark.sandboxed(wall_time="5s")
        @pytest.mark.parametrize("i", range(40))
        def test_many(i):
            pass
        """)
    r.assert_outcomes(passed=40)


BLOCK_USERNS = textwrap.dedent("""
    import os, sys, prctl, pyseccomp as s
    f = s.SyscallFilter(s.ALLOW)
    f.add_rule(s.ERRNO(1), "clone3")
    f.add_rule(s.ERRNO(1), "unshare", s.Arg(0, s.MASKED_EQ, 0x10000000, 0x10000000))
    f.add_rule(s.ERRNO(1), "clone", s.Arg(0, s.MASKED_EQ, 0x10000000, 0x10000000))
    prctl.set_no_new_privs(True)
    f.load()
    os.execv(sys.executable, [sys.executable, "-m", "pytest", *sys.argv[1:]])
""")


SYSCTL_BLOCK = ("echo 0 > /proc/sys/user/max_user_namespaces && "
                "exec \"$0\" -m pytest \"$@\"")


@pytest.mark.parametrize(("blocker", "strict", "fix"), [
    ("seccomp", False, "--security-opt seccomp=unconfined"),
    ("seccomp", True, "--security-opt seccomp=unconfined"),
    ("sysctl", False, "sysctl -w user.max_user_namespaces=")])
def test_no_user_namespaces_means_skip_with_reason(pytester, blocker, strict, fix):
    """Real blocked environments, no mocks: the inner pytest runs under a seccomp filter that
    refuses to create user namespaces (what Docker's default profile does), or inside a
    throwaway user namespace whose user.max_user_namespaces is 0."""
    pytester.makepyfile(test_it="import pytest\n@pytest.mark.sandboxed\ndef test_a(): pass\n"
                                "def test_b(): pass\n")
    args = ["-p", "no:cacheprovider", "-rs"] + (["--sandbox-strict"] if strict else [])
    if blocker == "seccomp":
        cmd = [sys.executable, "-c", BLOCK_USERNS, *args]
    else:
        cmd = ["unshare", "--user", "--map-root-user", "sh", "-c", SYSCTL_BLOCK, sys.executable, *args]
    p = subprocess.run(cmd, cwd=pytester.path, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.getcwd()})
    if strict:
        assert "1 passed, 1 error" in p.stdout, p.stdout  # strict: setup of the test fails
    else:
        assert "1 passed, 1 skipped" in p.stdout, p.stdout
    assert "sandbox unavailable: user namespaces: trial failed" in p.stdout, p.stdout
    assert fix in p.stdout, p.stdout
