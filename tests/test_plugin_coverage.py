"""pytest-cov with boxes: ``--cov --sandbox-all`` reports what plain ``--cov`` reports (the
lines and branches run inside boxes reach the host's data, ``pytest_plugin.boxcov``), and a
box cannot use that channel to make the host's report name files it could not see.

Each run is a real pytest subprocess (its own coverage, its own boxes), as this user."""

from __future__ import annotations

import importlib.util
import json
import sys
import textwrap
from typing import Any

import pytest

pytest_plugins = ["pytester"]

if importlib.util.find_spec("pytest_cov") is None:
    pytest.skip("pytest-cov is not installed (pip install -e '.[dev]'): the coverage hand-off "
                "is NOT tested", allow_module_level=True)

PKG = {
    "covpkg/__init__.py": """
        def double(x):
            return 2 * x


        def sign(x):
            if x > 0:
                return "pos"
            elif x < 0:
                return "neg"
            return "zero"
        """,
    "covpkg/late.py": """
        VALUE = 3  # run only where covpkg.late is first imported: inside a box


        def f(x):
            for _ in range(x):
                x -= 1
            return x
        """,
}
TESTS = """
    import covpkg

    def test_double():
        assert covpkg.double(2) == 4

    def test_sign():
        assert covpkg.sign(1) == "pos"
        assert covpkg.sign(-1) == "neg"
        assert covpkg.sign(0) == "zero"

    def test_late():
        import covpkg.late
        assert covpkg.late.f(covpkg.late.VALUE) == 0
    """


@pytest.fixture
def project(pytester: pytest.Pytester) -> pytest.Pytester:
    for name, src in PKG.items():
        path = pytester.path / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(textwrap.dedent(src))
    pytester.makepyfile(test_it=textwrap.dedent(TESTS))
    return pytester


def covrun(pytester: pytest.Pytester, *args: str, name: str = "cov.json",
           source: str = "covpkg") -> tuple[Any, dict]:
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-p", "no:pytest_isolate",
                                      f"--cov={source}", "--cov-branch", f"--cov-report=json:{name}",
                                      "--cov-report=term-missing", *args)
    report = json.loads((pytester.path / name).read_text())
    files = {f: {k: d[k] for k in ("executed_lines", "missing_lines", "executed_branches",
                                   "missing_branches") if k in d}
             for f, d in report["files"].items()}
    for f, d in report["files"].items():
        if "contexts" in d:  # line -> contexts, in no particular order
            files[f]["contexts"] = {n: sorted(c) for n, c in d["contexts"].items()}
    return r, {"files": files, "totals": report["totals"]}


def test_boxed_coverage_equals_plain(project):
    r, plain = covrun(project, name="plain.json")
    r.assert_outcomes(passed=3)
    assert plain["totals"]["percent_covered"] == 100.0
    r, boxed = covrun(project, "--sandbox-all", name="boxed.json")
    r.assert_outcomes(passed=3)
    assert "3 sandboxed test(s)" in r.stdout.str()
    assert boxed == plain
    assert "never imported" not in r.stdout.str() + r.stderr.str()


def test_a_package_imported_only_in_boxes_is_not_never_imported(project):
    # a module name (not a directory) is a source *package*: coverage warns at the end if the
    # host never imported it; the boxes did
    r, plain = covrun(project, name="plain.json", source="covpkg.late")
    assert "never imported" not in r.stdout.str() + r.stderr.str()
    r, boxed = covrun(project, "--sandbox-all", name="boxed.json", source="covpkg.late")
    r.assert_outcomes(passed=3)
    assert "never imported" not in r.stdout.str() + r.stderr.str()
    assert boxed == plain and boxed["totals"]["percent_covered"] == 100.0


def test_coverage_run_without_pytest_cov(project):
    # `coverage run -m pytest`: the Coverage the boxes hand their data to is coverage's own
    def total(*args: str) -> str:
        r = project.run(sys.executable, "-m", "coverage", "run", "--branch", "--source=covpkg",
                        "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:pytest_isolate",
                        "-p", "no:cov", *args)
        assert r.ret == 0, r.stdout.str()
        r = project.run(sys.executable, "-m", "coverage", "report")
        return r.stdout.lines[-1]
    plain, boxed = total().split(), total("--sandbox-all").split()
    assert plain[0] == "TOTAL" and plain[-1] == "100%"
    assert boxed == plain


def test_boxed_coverage_under_xdist(project):
    pytest.importorskip("xdist", reason="pytest-xdist is not installed: -n 2 NOT tested")
    _, plain = covrun(project, name="plain.json")
    r, boxed = covrun(project, "--sandbox-all", "-n", "2", name="boxed.json")
    r.assert_outcomes(passed=3)
    assert boxed == plain


@pytest.mark.parametrize("scope", ["test", "module"])
def test_per_test_contexts_come_back(project, scope):
    # one box, two contexts with data: its setup (the fixture) and its call; a module box
    # sends each test's data after that test
    (project.path / ".coveragerc").write_text("[json]\nshow_contexts = true\n")
    project.makepyfile(test_ctx=textwrap.dedent("""
        import pytest
        import covpkg

        @pytest.fixture
        def doubled():
            return covpkg.double(1)

        def test_ctx(doubled):
            assert covpkg.sign(doubled) == "pos"
        """))
    _, plain = covrun(project, "--cov-context=test", name="plain.json")
    r, boxed = covrun(project, "--cov-context=test", "--sandbox-all", "--sandbox-scope", scope,
                      name="boxed.json")
    r.assert_outcomes(passed=4)
    ctx = boxed["files"]["covpkg/__init__.py"]["contexts"]
    assert ctx["3"] == ["test_ctx.py::test_ctx|setup", "test_it.py::test_double|run"]  # double
    assert ctx["7"] == ["test_ctx.py::test_ctx|run", "test_it.py::test_sign|run"]  # sign
    assert boxed == plain


def test_a_box_cannot_name_host_files_or_send_garbage(project, tmp_path_factory):
    secret = tmp_path_factory.mktemp("secret") / "secret.py"  # outside the inner project
    secret.write_text("password = 'hunter2'\n")
    project.makepyfile(test_it=textwrap.dedent(f"""
        import os
        from pytest_plugin import boxed

        def test_names_a_host_file():
            assert not os.path.exists({str(secret)!r})
            boxed._send({{"$coverage": {{"arcs": True, "contexts": [["", {{
                {str(secret)!r}: [[-1, 1], [1, -1]], "/etc/passwd": [[-1, 1]],
                "relative.py": [[-1, 1]]}}]], "tracers": {{}}, "pkgs": []}}}})

        def test_garbage():
            boxed._send({{"$coverage": {{"arcs": True, "contexts": [["", {{
                "/x.py": [["1", 2]]}}]], "tracers": {{}}, "pkgs": []}}}})
        """))
    r, boxed = covrun(project, "--sandbox-all", "-rf")
    r.assert_outcomes(passed=1, failed=1)
    r.stdout.fnmatch_lines(["_*test_garbage*_", "sandbox: test process sent an invalid report "
                            "(coverage.contexts[[]0[]]: bad data for '/x.py')"])
    assert not [f for f in boxed["files"] if "secret" in f or f.startswith("/etc")
                or f == "relative.py"]
    assert "hunter2" not in r.stdout.str()
