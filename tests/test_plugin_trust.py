"""The plugin's trust boundary, attacked from inside real boxes (run as the unprivileged user):
forged or garbage reports must neither crash nor fool pytest, and the ``sandbox`` fixture's
run/call path must only ever hand the host bytes and tagged JSON."""

from __future__ import annotations

pytest_plugins = ["pytester", "test_plugin_support"]


FORGE = '''
    import json, os, pytest

    def channel():
        for fd in os.listdir("/proc/self/fd"):
            try:
                if "sandbox-channel" in os.readlink(f"/proc/self/fd/{fd}"):
                    return int(fd)
            except OSError:
                pass
        raise AssertionError("no channel")

    def forge(data):
        fd = channel()
        os.lseek(fd, 0, 0)
        os.ftruncate(fd, 0)
        os.write(fd, data)
        os._exit(0)

    def here():
        """The running test's item, as the plugin inside the box has it (a caller's local)."""
        import sys
        f = sys._getframe()
        while not isinstance(f.f_locals.get("item"), pytest.Item):
            f = f.f_back
        return f.f_locals["item"]

    def report(when, outcome="passed", **extra):
        d = {"nodeid": NODE, "location": list(here().location), "keywords": {}, "outcome": outcome,
             "longrepr": None, "when": when, "user_properties": [], "sections": [],
             "duration": 0.1, "start": 1.0, "stop": 1.1, "$report_type": "TestReport"}
        d.update(extra)
        return json.dumps(d).encode() + b"\\n"
'''


def test_garbage_reports_are_plain_failures(run):
    bad_entry = {"reprcrash": {"path": "x", "lineno": 1, "message": "m"}, "sections": [], "chain": None,
                 "reprtraceback": {"reprentries": [{"type": "ReprEntry", "data": {"lines": 5}}],
                                   "extraline": None, "style": "long"}}
    r = run(FORGE + f'''
    NODE = "test_it.py::test_x"

    @pytest.mark.sandboxed
    @pytest.mark.parametrize("kind", ["pickle", "huge", "deep", "nan", "other_test", "bad_types",
                                      "bad_traceback", "shadow", "order", "extra_lines", "truncated"])
    def test_x(kind, request):
        global NODE
        NODE = request.node.nodeid
        import pickle
        forge({{
            "pickle": lambda: pickle.dumps(Exception("boom")),
            "huge": lambda: b"[" * (40 << 20),
            "deep": lambda: b"[" * 100000 + b"]" * 100000,
            "nan": lambda: report("setup").replace(b"0.1", b"NaN"),
            "other_test": lambda: report("setup").replace(NODE.encode(), b"test_it.py::other"),
            "bad_types": lambda: report("setup", outcome="passed", location="nope"),
            "bad_traceback": lambda: report("setup", outcome="failed", longrepr={bad_entry!r}),
            "shadow": lambda: report("setup", _get_verbose_word_with_markup="x", passed=False),
            "order": lambda: report("call") + report("setup"),
            "extra_lines": lambda: report("setup") + report("call") + report("teardown") * 2,
            "truncated": lambda: report("setup")[:-20],
        }}[kind]())
    ''', "-rf")
    r.assert_outcomes(failed=11)
    assert "INTERNALERROR" not in r.stdout.str() and "Traceback" not in r.stderr.str()
    for kind in ("pickle", "huge", "deep", "nan", "other_test", "bad_types", "bad_traceback",
                 "shadow", "order", "extra_lines", "truncated"):
        # a method-shadowing key is dropped; the missing call/teardown is what fails "shadow"
        r.stdout.fnmatch_lines([f"_* test_x[[]{kind}[]] _*",
                                "sandbox: test process sent an invalid report (*)"])


def test_kernel_verdict_beats_a_forged_pass(run):
    """A well-formed forged report is the documented limit of @sandboxed (the test and the
    reporter share a process) — but it cannot hide a box the kernel had to stop."""
    r = run(FORGE + '''
    NODE = "test_it.py::test_forged_then_hang"

    @pytest.mark.sandboxed(wall_time="0.5s")
    def test_forged_then_hang():
        os.write(channel(), report("setup") + report("call") + report("teardown"))
        import time; time.sleep(30)

    @pytest.mark.sandboxed
    def test_prints_fake_pass():
        print("test_it.py::test_prints_fake_pass PASSED")
        print("1 passed in 0.01s")
        assert False
    ''')
    r.assert_outcomes(failed=2, passed=0)
    r.stdout.fnmatch_lines(["FAILED test_it.py::test_forged_then_hang - sandbox: wall time 0.5s exceeded"])
    r.stdout.fnmatch_lines(["FAILED test_it.py::test_prints_fake_pass - assert False"])


CALLS = r'''
import os


def values(a, b):
    return {"sum": a + b, "raw": b"\x00", "t": (1, 2)}


def divide():
    return 1 / 0


class Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def evil():
    return Evil()


class Thing:
    def method(self):
        return 1


def liar():
    """Answers for the worker on its reply pipe: a frame that is not tagged JSON."""
    for f in os.listdir("/proc/self/fd"):
        try:
            if os.readlink(f"/proc/self/fd/{f}").startswith("pipe:"):
                os.write(int(f), b"\x00\x00\x00\x09\x80\x04garbage")
        except OSError:  # a read end
            pass
    os._exit(0)
'''


def test_fixture_run_and_call(run):
    r = run("""
        import pytest
        from pytest_plugin.fixture import SandboxCallError
        import calls

        def test_run(sandbox):
            r = sandbox.run(["python3", "-c", "print('1 passed'); print(int(input()) * 2)"],
                            stdin=b"21\\n", wall_time="2s")
            assert r.status == "OK" and r.stdout == b"1 passed\\n42\\n"

        def test_run_limits(sandbox):
            assert sandbox.run(["sleep", "10"], wall_time="0.3s").status == "TO"
            r = sandbox.run(["python3", "-c", "x = bytearray(1 << 30)"], memory="512M")
            assert r.status == "ML" and b"MemoryError" in r.stderr, (r.error, r.stderr)

        def test_files(sandbox):
            r = sandbox.run(["sh", "-c", "tr a-z A-Z < in.txt > out.txt"], files={"in.txt": b"abc"})
            assert r.ok and sandbox.read("out.txt") == b"ABC"

        def test_held_box_shares_work(sandbox):
            sandbox.put("main.sh", b"echo compiled > prog.out")
            with sandbox.box(wall_time="5s") as box:
                assert box.exec(["sh", "main.sh"]).ok        # cwd /work, the test's /work
                box.put("/work/data", b"x")
                r = box.exec(["sh", "-c", "cat prog.out data"])
                assert r.stdout == b"compiled\\nx"
            assert sandbox.read("prog.out") == b"compiled\\n"

        def test_call_values(sandbox):
            assert sandbox.call(calls.values, 2, 3) == {"sum": 5, "raw": b"\\x00", "t": (1, 2)}
            assert sandbox.call("calls:values", 2, 3)["sum"] == 5   # never imported here

        def test_call_exception_is_described(sandbox):
            with pytest.raises(SandboxCallError, match="ZeroDivisionError") as e:
                sandbox.call(calls.divide)
            assert "1 / 0" in e.value.traceback_text and e.value.type_name == "ZeroDivisionError"
            assert "sandbox" not in e.value.traceback_text  # the submission's frames, not the worker's

        def test_call_refuses_objects(sandbox):
            with pytest.raises(SandboxCallError, match="cannot cross"):
                sandbox.call(calls.evil)
            with pytest.raises(TypeError, match="arguments cannot cross"):
                sandbox.call(calls.values, object(), 1)

        def test_call_refuses_what_a_fresh_interpreter_cannot_import(sandbox):
            with pytest.raises(TypeError, match=r"call\\(test_it.*<lambda>\\): it is a lambda"):
                sandbox.call(lambda: 1)
            def inner():
                return 1
            with pytest.raises(TypeError, match=r"inner\\): it is defined inside a function .*module level"):
                sandbox.call(inner)
            with pytest.raises(TypeError, match="bound method"):
                sandbox.call(calls.Thing().method)

        def test_call_in_a_box(sandbox):
            import os
            assert sandbox.call(os.getpid) == 3  # init 1, the worker 2, its fork: a pid ns of its own

        def test_call_killed(sandbox):
            import time
            with pytest.raises(SandboxCallError, match="wall time 0.3s exceeded"):
                sandbox.call(time.sleep, 10, sandbox_options={"wall_time": "0.3s"})
        """, helpers=CALLS)
    r.assert_outcomes(passed=10)
    assert "unpickled!" not in r.stdout.str()


def test_fixture_is_immune_to_lies_and_planted_links(run, tmp_path):
    secret = tmp_path / "host-secret"
    secret.write_bytes(b"host data")
    r = run(f"""
        import os, pickle, pytest
        from pytest_plugin.fixture import SandboxCallError
        from sandbox._safefs import UnsafePath

        def test_fake_passed_lines_are_just_bytes(sandbox):
            r = sandbox.run(["sh", "-c", "echo '== 1 passed in 0.01s =='; echo PASSED; exit 1"])
            assert r.status == "RE" and r.exit_code == 1 and b"PASSED" in r.stdout

        def test_pickle_on_stdout_stays_bytes(sandbox):
            payload = pickle.dumps([1, b"2", "three"])
            r = sandbox.run(["python3", "-c", "import sys; sys.stdout.buffer.write(%r)" % payload])
            assert r.stdout == payload          # bytes; nothing on the host unpickles them

        def test_forged_call_answer(sandbox):
            with pytest.raises(SandboxCallError, match="invalid data"):
                sandbox.call("calls:liar")

        def test_planted_symlinks_are_not_followed(sandbox):
            r = sandbox.run(["sh", "-c", "ln -s {secret} in.txt; ln -s {secret} out.txt; mkfifo fifo"])
            assert r.ok
            with pytest.raises(UnsafePath):
                sandbox.put("in.txt", b"overwrite!")
            with pytest.raises(UnsafePath):
                sandbox.read("out.txt")
            with pytest.raises(UnsafePath):
                sandbox.put("fifo", b"x")
            with pytest.raises(ValueError):
                sandbox.put("../escape", b"x")
        """, helpers=CALLS)
    r.assert_outcomes(passed=4)
    assert secret.read_bytes() == b"host data"


def test_fixture_memory_limit_below_the_callers_size(run):
    r = run("""
        import mmap

        def test_big_caller(sandbox):
            reserved = mmap.mmap(-1, 1 << 30)     # 1 GiB of address space, never touched
            r = sandbox.run(["python3", "-c", "print(1)"], memory="256M")
            assert r.ok, r.error
            reserved.close()
        """)
    r.assert_outcomes(passed=1)
