"""The host's replay of a box's reports, attacked from inside real boxes (run as the
unprivileged user): a report sequence that passes validation must not crash the host's
terminal or JUnit writer, ``pytest.exit()`` before the first report must stop the session
cleanly, and a channel of tiny JSON values must not cost the host many times its size."""

from __future__ import annotations

import pytest
from test_plugin_subtests import SUB, forging
from test_plugin_trust import FORGE

pytest_plugins = ["pytester", "test_plugin_support"]


def test_exit_before_the_first_report_stops_the_session(run):
    """pytest.exit() in a fixture's setup: no report at all, and an earlier unboxed test left
    the module set up on the host (the replay then tears it down with no report to attach to)."""
    src = """
        import pytest

        def test_plain_first():
            pass

        @pytest.fixture
        def stop():
            pytest.exit("stopping in setup", returncode=3)

        @pytest.mark.sandboxed
        def test_exits(stop):
            pass

        def test_never_runs():
            pass
        """
    r = run(src, "-rA")
    assert "INTERNALERROR" not in r.stdout.str() and "Traceback" not in r.stderr.str()
    assert r.ret == 3
    r.stdout.fnmatch_lines(["*Exit: stopping in setup*"])
    assert "test_never_runs" not in r.stdout.str()


@pytest.mark.parametrize(("code", "failed_first", "later", "want"),
                         [(0, True, False, 1), (256, False, False, 2), (0, False, True, 2),
                          (0, False, False, 0), (5, True, True, 5)])
def test_a_box_cannot_make_a_run_with_failures_exit_0(run, code, failed_first, later, want):
    """``pytest.exit(returncode=0)`` (or 256, which a shell reads as 0) from a box after a
    failed test, or with tests left to run: the session stops, but its status says tests
    failed (1) or the run was interrupted (2); as the last test with nothing failed, or with
    another code, the box's code stands as in plain pytest."""
    src = f"""
        import pytest

        def test_fails_first():
            assert {not failed_first}

        @pytest.mark.sandboxed
        def test_exits():
            pytest.exit("all good, honest", returncode={code})
        """ + ("""
        def test_would_fail():
            assert False
        """ if later else "")
    r = run(src, "-rA")
    assert r.ret == want, (r.ret, r.stdout.str()[-2000:])
    assert "INTERNALERROR" not in r.stdout.str()


SHAPES = {
    "main_none": 'report("setup", "skipped") + report("teardown")',
    "main_text": 'report("setup", "skipped", longrepr="why") + report("teardown")',
    "sub_none": 'report("setup") + sub("skipped") + report("call") + report("teardown")',
    "sub_traceback": 'report("setup") + sub("skipped", longrepr=TB) + report("call") + report("teardown")',
    "failed_none": 'report("setup") + report("call", "failed") + report("teardown")',
    "error_none": 'report("setup", "failed") + report("teardown")',
    "sub_failed_none": 'report("setup") + sub("failed", longrepr=None) + report("call") + report("teardown")',
}
TB = {"reprcrash": None, "sections": [], "chain": None,
      "reprtraceback": {"reprentries": [], "extraline": None, "style": "long"}}


@pytest.mark.parametrize("args", [("-rA",), ("-v", "-rs", "--junitxml=out.xml")])
def test_a_skip_without_its_location_or_a_failure_without_its_text_is_invalid(run, args):
    """pytest's terminal summary and JUnit writer assert that a skip's longrepr is (path,
    lineno, reason) and that a failure has one: anything else crashed the host at the end of
    the run."""
    r = run(forging(SHAPES, f"    TB = {TB!r}\n"), *args)
    assert "INTERNALERROR" not in r.stdout.str() and "Traceback" not in r.stderr.str()
    r.assert_outcomes(failed=len(SHAPES))
    for kind in SHAPES:
        r.stdout.fnmatch_lines([f"*test_x[[]{kind}[]]*", "*sandbox: test process sent an invalid report (*)*"])


def test_a_report_naming_another_tests_location_is_invalid(run):
    """The failure header (``____ test_other ____``), ``-v``'s line and JUnit's file and line
    come from the report's location: it must be this test's own."""
    r = run(FORGE + """
    NODE = "test_it.py::test_x"

    @pytest.mark.sandboxed
    def test_x():
        forge(report("setup") + report("call", "failed", longrepr="boom",
                                       location=["test_it.py", 1, "test_other"]) + report("teardown"))
    """, "-rf")
    r.assert_outcomes(failed=1)
    r.stdout.fnmatch_lines(["_* test_x _*", "*sandbox: test process sent an invalid report (location: *)"])
    assert not [x for x in r.stdout.lines if x.startswith("_") and "test_other" in x]


def test_a_skip_made_by_pytest_is_accepted(run):
    """The shapes pytest itself makes for skips and xfails, in a box, pass the stricter check."""
    src = """
        import pytest

        @pytest.mark.skip(reason="marked")
        def test_marked():
            pass

        def test_inline():
            pytest.skip("inline")

        @pytest.mark.xfail(reason="known")
        def test_xfail():
            assert 0

        def test_sub(subtests):
            with subtests.test("s"):
                pytest.skip("in a subtest")
            with subtests.test("x"):
                pytest.xfail("xfail in a subtest")
        """
    plain = run(src, "-v", "-rA")
    r = run(src, "-v", "-rA", "--sandbox-all", "--junitxml=out.xml")
    assert "invalid report" not in r.stdout.str() and "INTERNALERROR" not in r.stdout.str()
    assert r.parseoutcomes() == plain.parseoutcomes() == {"passed": 1, "skipped": 3, "xfailed": 2}
    r.stdout.fnmatch_lines(["SKIPPED [[]1[]] test_it.py:*: marked", "SKIPPED [[]1[]] test_it.py:*: inline"])


def test_many_tiny_values_are_refused_before_parsing(run):
    """``[{},{},...]`` is 3 bytes a value on the channel and some 60 in the host's memory: the
    host counts the values before parsing and refuses a channel with too many."""
    r = run(FORGE + '''
    NODE = "test_it.py::test_x"

    @pytest.mark.sandboxed
    def test_x():
        forge(report("setup") + b'{"$warnings": [' + b'{},' * (8 << 20) + b'{}]}\\n')
    ''', "-rf")
    assert "INTERNALERROR" not in r.stdout.str()
    r.stdout.fnmatch_lines(["*sandbox: test process sent an invalid report (more than * JSON values)*"])


def test_commas_inside_strings_are_not_values(run):
    """Output full of commas (in the call and the teardown report's sections, 4 Mi of them)
    is over the raw count but not a value each: counted again without its strings, it passes."""
    r = run('''
    import sys
    import pytest

    @pytest.mark.sandboxed
    def test_csv():
        print("," * (1 << 20))
        sys.stderr.write("," * (1 << 20))
        assert 1 == 2
    ''', "-rf")
    assert "invalid report" not in r.stdout.str()
    r.stdout.fnmatch_lines(["FAILED test_it.py::test_csv - assert 1 == 2"])


def test_a_warning_cannot_make_the_host_read_its_files(run, tmp_path_factory):
    """The host's warnings summary shows a warning's source line: read on the host, from the
    file the box named, that was any file the host user can read (a secret the box cannot see
    printed into the CI log; /dev/zero or a FIFO: the host reading forever)."""
    secret = tmp_path_factory.mktemp("hostonly") / "secret.txt"
    secret.write_text("the host's secret\n")
    r = run(FORGE + f'''
    NODE = "test_it.py::test_x"
    SECRET = {str(secret)!r}

    @pytest.mark.sandboxed
    def test_x(request):
        assert not os.path.exists(SECRET)  # not in the box
        warning = {{"message": "look", "category": "UserWarning", "filename": SECRET, "lineno": 1,
                   "line": "the box's line"}}
        more = [dict(warning, lineno=n, line="") for n in (2, 0, -1, 2 ** 31, 2 ** 70)]
        more += [dict(warning, filename=f, line="x\\u2028y\\n") for f in ("", "a\\x00b", "../../etc/passwd")]
        forge(report("setup") + report("call") + report("teardown")
              + json.dumps({{"$warnings": [warning, *more]}}).encode() + b"\\n")
    ''', "-rA")
    assert "INTERNALERROR" not in r.stdout.str()
    assert "the host's secret" not in r.stdout.str() and "root:" not in r.stdout.str()
    r.assert_outcomes(passed=1, warnings=9)
    r.stdout.fnmatch_lines(["*secret.txt:1: UserWarning: look", "    the box's line"])


def test_ten_thousand_subtest_reports_cost_the_host_linear_time(run):
    """The replay found the test's last phase report again for every report it read: 10 000
    subtest reports (the most a box may send) cost the host some 12 s of that search alone."""
    r = run(FORGE + SUB + '''
    NODE = "test_it.py::test_x"

    @pytest.mark.sandboxed
    def test_x():
        forge(report("setup") + sub() * 10000 + report("call") + report("teardown"))
    ''', "-q")
    r.assert_outcomes(passed=1)
    assert r.duration < 8, r.duration


def test_a_boxed_warnings_summary_is_plain_pytests(run):
    """The box reads each warning's source line itself: the summary is the one plain pytest
    prints (the file, the line number, the category, the message and the source line)."""
    src = """
        import warnings

        def test_warns():
            warnings.warn("careful now", DeprecationWarning)
            warnings.warn_explicit("made up", UserWarning, "nowhere.py", 7)
        """
    plain = run(src)
    boxed = run(src, "--sandbox-all")

    def summary(r: pytest.RunResult) -> list[str]:
        lines = r.stdout.lines
        start = lines.index(next(x for x in lines if "warnings summary" in x))
        return lines[start:next(i for i, x in enumerate(lines) if x.startswith("-- Docs"))]
    assert summary(boxed) == summary(plain)
    assert '    warnings.warn("careful now", DeprecationWarning)' in summary(boxed)
