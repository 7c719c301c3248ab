"""``--sandbox-all`` on real suites: a boxed test sees the process plain pytest would give it
(signals, gc, the venv's scripts, a resolvable localhost, threads under the RLIMIT_AS fallback),
and the end-of-run table stays short. Real boxes through pytester, as the unprivileged user."""

from __future__ import annotations

import os
import sys

pytest_plugins = ["pytester", "test_plugin_support"]


def test_signal_dispositions_are_the_host_test_process_ones(run, pytester):
    # the conftest runs on the host: its handler must be the box's too
    pytester.makeconftest("""
        import signal
        def on_usr1(sig, frame):
            raise LookupError("usr1")
        signal.signal(signal.SIGUSR1, on_usr1)
        """)
    r = run("""
        import os, signal, socket, time, pytest

        def test_sigpipe_is_ignored_as_cpython_sets_it():
            a, b = socket.socketpair()
            b.close()
            with pytest.raises(BrokenPipeError):
                for _ in range(3):
                    a.send(b"x")

        def test_self_sent_sigint_raises_keyboardinterrupt():
            with pytest.raises(KeyboardInterrupt):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(1)

        def test_a_conftest_handler_is_in_place():
            with pytest.raises(LookupError, match="usr1"):
                os.kill(os.getpid(), signal.SIGUSR1)
                time.sleep(1)

        def test_sigxfsz_stays_the_kernels_verdict():
            assert signal.getsignal(signal.SIGXFSZ) == signal.SIG_DFL
        """, "--sandbox-all")
    r.assert_outcomes(passed=4)


def test_gc_sees_objects_from_before_the_clone(run, pytester):
    r = run("""
        import gc, pytest

        class Mark:
            pass
        MARK = Mark()

        def test_referrers_and_objects():
            assert gc.get_freeze_count() == 0
            assert any(isinstance(o, Mark) for o in gc.get_objects())
            assert globals() in gc.get_referrers(MARK)
        """, "--sandbox-all")
    r.assert_outcomes(passed=1)


def test_a_suite_that_froze_objects_keeps_them_frozen(run, pytester):
    pytester.makeconftest("import gc\ngc.freeze()\n")
    r = run("""
        import gc, pytest

        @pytest.mark.sandboxed
        def test_boxed():
            assert gc.get_freeze_count() > 0

        def test_host_after_the_box():  # the library froze and unfroze around the clone
            assert gc.get_freeze_count() > 0
        """)
    r.assert_outcomes(passed=2)


def test_the_active_venvs_scripts_are_on_path(run, pytester, monkeypatch):
    assert sys.prefix != sys.base_prefix, "the project's tests run from its venv"
    venv_bin = os.path.join(sys.prefix, "bin")
    monkeypatch.setenv("PATH", f"/nowhere/bin{os.pathsep}{venv_bin}{os.pathsep}/usr/bin")
    monkeypatch.setenv("VIRTUAL_ENV", sys.prefix)
    r = run(f"""
        import os, shutil, subprocess

        def test_console_script_runs_by_name():
            path = os.environ["PATH"].split(os.pathsep)
            assert {venv_bin!r} in path and "/nowhere/bin" not in path
            assert os.environ["VIRTUAL_ENV"] == {sys.prefix!r}
            assert shutil.which("pytest") is not None
            out = subprocess.run(["pytest", "--version"], capture_output=True, text=True)
            assert out.returncode == 0 and "pytest" in out.stdout + out.stderr
        """, "--sandbox-all")
    r.assert_outcomes(passed=1)


def test_a_python_subprocess_imports_from_pythonpath_as_unboxed(run, pytester, monkeypatch):
    # a src layout on PYTHONPATH: the subprocess a test starts must import the project's
    # module, not another copy (click's own import test ran the venv's click)
    (pytester.path / "src").mkdir()
    (pytester.path / "src" / "onpath.py").write_text("WHERE = 'src'\n")
    monkeypatch.setenv("PYTHONPATH", str(pytester.path / "src"))
    monkeypatch.setenv("PYTHONHASHSEED", "7")
    monkeypatch.setenv("SANDBOX_TEST_SECRET", "hunter2")
    src = """
        import os, subprocess, sys

        def test_subprocess_imports():
            out = subprocess.run([sys.executable, "-c", "import onpath, os; print(onpath.WHERE, "
                                  "os.environ['PYTHONHASHSEED'], os.environ.get('SANDBOX_TEST_SECRET'))"],
                                 capture_output=True, text=True)
            assert out.stdout.split() == ["src", "7", "None"], out.stderr
        """
    assert run(src.replace('"None"', '"hunter2"'), "-p", "no:sandbox").ret == 0
    run(src, "--sandbox-all").assert_outcomes(passed=1)


def test_localhost_resolves_with_ai_addrconfig_and_servers_bind(run):
    r = run("""
        import asyncio, socket

        def test_getaddrinfo_addrconfig():
            for family, addr in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                found = socket.getaddrinfo("localhost", 8080, family, socket.SOCK_STREAM, 0,
                                           socket.AI_ADDRCONFIG)
                assert addr in [a[4][0] for a in found]

        def test_asyncio_server_on_localhost():
            async def main():
                srv = await asyncio.start_server(lambda r, w: w.close(), "localhost", 0,
                                                 family=socket.AF_INET)
                port = srv.sockets[0].getsockname()[1]
                _, w = await asyncio.open_connection("localhost", port, family=socket.AF_INET)
                w.close()
                srv.close()
                await srv.wait_closed()
            asyncio.run(main())

        def test_nothing_outside_is_reachable():
            s = socket.socket()
            try:
                s.connect(("192.0.2.1", 80))
            except OSError as e:
                assert e.errno == 101  # ENETUNREACH: the extra addresses route nowhere
            else:
                raise AssertionError("connected")
        """, "--sandbox-all")
    r.assert_outcomes(passed=3)


def test_sixteen_live_threads_fit_the_default_memory_limit(run):
    r = run("""
        import threading
        from concurrent.futures import ThreadPoolExecutor

        def test_pool():
            barrier = threading.Barrier(16)  # all 16 alive at once
            with ThreadPoolExecutor(16) as ex:
                assert sum(ex.map(lambda i: barrier.wait(timeout=10) * 0 + i, range(16))) == 120
        """, "--sandbox-all")
    r.assert_outcomes(passed=1)


def test_thread_refused_by_the_address_space_limit_names_it(run, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # the whole short summary line
    r = run("""
        import resource, threading, pytest

        @pytest.mark.sandboxed(memory="64M")
        def test_many_threads():
            if resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY:
                pytest.skip("a cgroup holds the memory here")
            stop = threading.Event()
            threads = []
            try:
                for _ in range(1000):
                    threads.append(threading.Thread(target=stop.wait))
                    threads[-1].start()
            finally:
                stop.set()
        """)
    if r.parseoutcomes().get("skipped"):
        return
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["FAILED test_it.py::test_many_threads - sandbox: memory limit 64M "
                            "exceeded (can't start new thread*"])


KILLED = """
    import logging, os, sys, pytest

    def test_passes():
        pass

    @pytest.fixture
    def noisy():
        print("printed in setup")
        logging.getLogger("t").warning("logged in setup")

    def test_killed(noisy):
        print("printed before")
        logging.getLogger("t").warning("logged before")
        os.kill(os.getpid(), 9)
    """


def test_summary_lists_only_stopped_tests_unless_verbose(run):
    r = run(KILLED, "--sandbox-all")
    r.assert_outcomes(passed=1, failed=1)
    r.stdout.fnmatch_lines(["*= sandbox: 2 sandboxed test(s), 1 stopped by the sandbox *=",
                            "test * outcome * status *",
                            "test_it.py::test_killed * failed * SG *"])
    assert "test_it.py::test_passes " not in r.stdout.str()
    r = run(KILLED, "--sandbox-all", "-v")
    r.stdout.fnmatch_lines(["*= sandbox: 2 sandboxed test(s), 1 stopped by the sandbox =*",
                            "test * outcome * status *",
                            "test_it.py::test_passes * passed * OK *",
                            "test_it.py::test_killed * failed * SG *"])
    r = run(KILLED, "--sandbox-all", "--sandbox-no-summary")
    assert "sandboxed test(s)" not in r.stdout.str()


def test_a_killed_test_shows_what_it_printed_and_logged(run):
    for capture in ("fd", "sys"):
        r = run(KILLED, "--sandbox-all", f"--capture={capture}")
        r.assert_outcomes(passed=1, failed=1)
        r.stdout.fnmatch_lines(["*_ test_killed _*",
                                "sandbox: killed by signal 9 (SIGKILL)",
                                "*- Captured stdout call -*",
                                "printed before",
                                "*- Captured log call -*",
                                "WARNING *t:test_it.py:* logged before"])
        call = r.stdout.str().split("- Captured stdout call -")[1].split("short test summary")[0]
        assert "in setup" not in call  # the setup report carried that; the tee holds one phase


def test_a_refused_thread_outside_the_test_names_the_limit(run, pytester, monkeypatch):
    """A plugin's hook that starts a thread (pytest-timeout's thread method does) after the
    test used up the address space: the exception escapes pytest's machinery, and the box
    exits 1 with its traceback on stderr — not "os._exit() inside the test?"."""
    monkeypatch.setenv("COLUMNS", "200")
    pytester.makeconftest("""
        import threading
        def pytest_runtest_makereport(item, call):
            if call.when == "call":
                threading.Thread(target=lambda: None).start()
        """)
    r = run("""
        import resource, threading, pytest

        STOP = threading.Event()

        @pytest.mark.sandboxed(memory="64M")
        def test_keeps_its_threads():
            if resource.getrlimit(resource.RLIMIT_AS)[0] == resource.RLIM_INFINITY:
                pytest.skip("a cgroup holds the memory here")
            with pytest.raises(RuntimeError):
                while True:
                    threading.Thread(target=STOP.wait, daemon=True).start()
        """)
    if r.parseoutcomes().get("skipped"):
        return
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["FAILED test_it.py::test_keeps_its_threads - sandbox: memory limit "
                            "64M exceeded (can't start new thread*outside the test's own code)"])


def test_an_exception_out_of_a_plugin_hook_is_named(run, pytester, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    pytester.makeconftest("""
        def pytest_runtest_makereport(item, call):
            if call.when == "call":
                raise LookupError("a hook broke")
        """)
    r = run("def test_fine(): pass\n", "--sandbox-all")
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["FAILED test_it.py::test_fine - sandbox: the test process failed "
                            "outside the test: LookupError: a hook broke"])
