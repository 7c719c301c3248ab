"""The pytest plugin, exercised through pytester with real sandboxes (as the unprivileged user
in CI)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest_plugins = ["pytester"]


@pytest.fixture
def run(pytester: pytest.Pytester):
    def go(src: str, *args: str) -> pytest.RunResult:
        pytester.makepyfile(test_it=textwrap.dedent(src))
        return pytester.runpytest("-p", "no:cacheprovider", "-p", "no:pytest_isolate", *args)
    return go


def test_outcomes_and_output_look_unsandboxed(run):
    r = run("""
        import os, pytest

        @pytest.fixture
        def broken():
            raise RuntimeError("fixture broke")

        @pytest.mark.sandboxed
        def test_pass():
            assert os.getpid() == 2          # really inside a pid namespace

        @pytest.mark.sandboxed
        def test_fail():
            print("captured line")
            x = [1, 2]
            assert x == [1, 3]

        @pytest.mark.sandboxed
        def test_error(broken):
            pass

        @pytest.mark.sandboxed
        def test_skip():
            pytest.skip("not today")

        @pytest.mark.sandboxed
        @pytest.mark.xfail(reason="known")
        def test_xfail():
            assert 0
        """, "-rA", "--strict-markers")
    r.assert_outcomes(passed=1, failed=1, errors=1, skipped=1, xfailed=1)
    out = r.stdout.str()
    assert "assert [1, 2] == [1, 3]" in out          # assertion rewriting survives the box
    assert "captured line" in out                    # captured stdout is shown
    assert "RuntimeError: fixture broke" in out
    assert "not today" in out
    assert "sandbox: 5 sandboxed test(s)" in out     # summary table


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


def test_junit_properties(run, pytester):
    r = run("""
        import pytest
        @pytest.mark.sandboxed
        def test_a(): pass
        """, "--junitxml=out.xml")
    r.assert_outcomes(passed=1)
    xml = (pytester.path / "out.xml").read_text()
    assert 'name="sandbox_status" value="OK"' in xml and "sandbox_peak_memory" in xml


def test_fixture_run_and_call(run):
    r = run("""
        import pytest

        def test_run(sandbox):
            r = sandbox.run(["python3", "-c", "print('1 passed'); print(int(input()) * 2)"],
                            stdin=b"21\\n", wall_time="2s")
            assert r.status == "OK" and r.stdout == b"1 passed\\n42\\n"

        def test_run_limits(sandbox):
            assert sandbox.run(["sleep", "10"], wall_time="0.3s").status == "TO"

        def test_files(sandbox):
            r = sandbox.run(["sh", "-c", "tr a-z A-Z < in.txt > out.txt"], files={"in.txt": b"abc"})
            assert r.ok and sandbox.read("out.txt") == b"ABC"

        def test_call_values(sandbox):
            assert sandbox.call(lambda a, b: {"sum": a + b, "raw": b"\\x00", "t": (1, 2)}, 2, 3) == \\
                {"sum": 5, "raw": b"\\x00", "t": (1, 2)}

        def test_call_exception_is_described(sandbox):
            from pytest_plugin.fixture import SandboxCallError
            with pytest.raises(SandboxCallError, match="ZeroDivisionError") as e:
                sandbox.call(lambda: 1 / 0)
            assert "1 / 0" in e.value.traceback_text

        def test_call_refuses_objects(sandbox):
            from pytest_plugin.fixture import SandboxCallError
            class Evil:
                def __reduce__(self):
                    return (print, ("unpickled!",))
            with pytest.raises(SandboxCallError, match="cannot cross"):
                sandbox.call(lambda: Evil())

        def test_call_in_a_box(sandbox):
            import os
            assert sandbox.call(os.getpid) == 2
        """)
    r.assert_outcomes(passed=7)
    assert "unpickled!" not in r.stdout.str()


def test_forged_reports_do_not_fool_the_plugin(run):
    r = run("""
        import os, pytest

        def _channel():
            for fd in os.listdir("/proc/self/fd"):
                try:
                    if "sandbox-channel" in os.readlink(f"/proc/self/fd/{fd}"):
                        return int(fd)
                except OSError:
                    pass

        @pytest.mark.sandboxed
        def test_garbage():
            os.write(_channel(), b"\\x80\\x04garbage-pickle")
            os._exit(0)

        @pytest.mark.sandboxed
        def test_huge():
            fd = _channel()
            for _ in range(40):
                os.write(fd, b"[" * (1 << 20))
            os._exit(0)

        @pytest.mark.sandboxed
        def test_wrong_nodeid():
            os.write(_channel(), b'[{"nodeid": "other", "when": "call", "outcome": "passed"}]')
            os._exit(0)

        @pytest.mark.sandboxed
        def test_prints_fake_pass():
            print("test_it.py::test_prints_fake_pass PASSED")
            print("1 passed in 0.01s")
            assert False
        """)
    r.assert_outcomes(failed=4)
    for name in ("garbage", "huge", "wrong_nodeid"):
        r.stdout.fnmatch_lines([f"FAILED test_it.py::test_{name} - sandbox: test process sent an invalid*"])
    r.stdout.fnmatch_lines(["FAILED test_it.py::test_prints_fake_pass - assert False"])


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
        """, "-n", "2")
    r.assert_outcomes(failed=2, passed=4)
    assert "node down" not in r.stdout.str() and "crashed" not in r.stdout.str()


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


@pytest.mark.parametrize("strict", [False, True])
def test_no_user_namespaces_means_skip_with_reason(pytester, strict):
    """A real blocked environment: the inner pytest runs under a seccomp filter that refuses
    to create user namespaces (what Docker's default profile does)."""
    pytester.makepyfile(test_it="import pytest\n@pytest.mark.sandboxed\ndef test_a(): pass\n"
                                "def test_b(): pass\n")
    args = ["-p", "no:cacheprovider", "-rs"] + (["--sandbox-strict"] if strict else [])
    p = subprocess.run([sys.executable, "-c", BLOCK_USERNS, *args], cwd=pytester.path,
                       capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": os.getcwd()})
    if strict:
        assert "1 passed, 1 error" in p.stdout, p.stdout  # strict: setup of the test fails
    else:
        assert "1 passed, 1 skipped" in p.stdout, p.stdout
    assert "sandbox unavailable" in p.stdout and "user namespaces" in p.stdout
