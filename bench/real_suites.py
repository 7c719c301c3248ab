"""Real projects' own test suites: plain pytest vs ``--sandbox-all`` (vs ``--sandbox-all -n 2``).

Why: the plugin's promise is that sandboxing a suite changes nothing a test can observe except
isolation itself. Our own repros cover each mechanism; this runs suites we did not write, the
way a new user would: their sdists from PyPI (``pip download --no-binary NAME --no-deps``:
the source, tests included; build backends may come as wheels), each suite's own configuration,
as an unprivileged user (root runs them as ``--user``, default ``sbxtest``).

Each test's outcome (passed, failed, error, skipped, xfailed, xpassed) is read from pytest's
JUnit XML; every test whose outcome differs from plain pytest's must be listed in ``EXPECTED``
with the isolation effect that explains it, otherwise the script exits 1. A listed difference
that no longer happens is reported (the list can only shrink), but does not fail the run.

    python bench/real_suites.py                      # all suites, all three modes
    python bench/real_suites.py attrs --no-xdist     # one suite, plain vs --sandbox-all
    python bench/real_suites.py --keep --work /tmp/rs  # reuse downloads, keep the trees

Slow (minutes: attrs' hypothesis tests dominate), so not part of ci/test.sh; see
docs/performance.md for the last run's numbers.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import pwd
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Suite:
    spec: str  # what pip downloads: NAME==VERSION (pinned: outcomes are compared per test)
    deps: tuple[str, ...] = ()  # test dependencies, installed with --target into the tree
    install_self: bool = False  # a src/ layout: the project is installed next to its deps
    args: tuple[str, ...] = ("tests",)


SUITES = {
    "more-itertools": Suite("more-itertools==11.2.1"),
    "attrs": Suite("attrs==26.1.0", ("hypothesis", "pympler", "cloudpickle"), install_self=True),
    "pyparsing": Suite("pyparsing==3.3.3", ("railroad-diagrams", "jinja2")),
    # pytest 9 deprecates an iterator in parametrize, and click's filterwarnings=error turns
    # that into a collection error (in plain pytest too): the warning is ignored for all modes
    "click": Suite("click==8.3.1", install_self=True,
                   args=("-W", "ignore::pytest.PytestRemovedIn10Warning", "tests")),
    "jinja2": Suite("jinja2==3.1.6", ("markupsafe", "trio"), install_self=True),
}

# suite -> {test id pattern (fnmatch, over "file::name"): the isolation effect that explains
# why its outcome differs under --sandbox-all}. Each entry is an expected effect of running
# every test in a fresh box; anything not listed here fails the run.
EXPECTED: dict[str, dict[str, str]] = {
    "more-itertools": {},
    "attrs": {},
    "click": {},
    "jinja2": {},
    "pyparsing": {
        "tests.test_unit.Test0[468]_With*Packrat::test000_assert_packrat_status":
            "asserts that packrat is on, which Test03/05/07's runTest switched on for the whole "
            "process: state left by an earlier test is gone in a fresh box (by design)",
    },
}

MODES = {"plain": (), "sandbox": ("--sandbox-all",), "sandbox -n 2": ("--sandbox-all", "-n", "2"),
         "sandbox module": ("--sandbox-all", "--sandbox-scope", "module"),
         "sandbox session": ("--sandbox-all", "--sandbox-scope", "session")}
RUN_TIMEOUT = 3600


@dataclass
class Run:
    mode: str
    wall: float
    returncode: int
    summary: str
    outcomes: dict[str, str] = field(default_factory=dict)
    messages: dict[str, str] = field(default_factory=dict)  # test id -> first failure line


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("suites", nargs="*", help=f"default: all of {', '.join(SUITES)}")
    ap.add_argument("--work", help="working directory (default: a new temporary one)")
    ap.add_argument("--keep", action="store_true", help="keep the working directory")
    ap.add_argument("--no-xdist", action="store_true", help="skip the --sandbox-all -n 2 run")
    ap.add_argument("--modes", default=",".join(MODES),
                    help=f"comma-separated, from {', '.join(MODES)} (plain always runs)")
    ap.add_argument("--user", default="sbxtest", help="who runs the suites when we are root")
    ap.add_argument("--python", default=sys.executable, help="the venv with pytest and the plugin")
    opts = ap.parse_args(argv)
    unknown = [s for s in opts.suites if s not in SUITES]
    if unknown:
        ap.error(f"unknown suite(s) {', '.join(unknown)}; valid: {', '.join(SUITES)}")
    names = opts.suites or list(SUITES)
    wanted = {"plain", *opts.modes.split(",")}
    if wanted - set(MODES):
        ap.error(f"--modes: unknown {', '.join(sorted(wanted - set(MODES)))}; valid: {', '.join(MODES)}")
    modes = [m for m in MODES if m in wanted and not (opts.no_xdist and "-n" in MODES[m])]
    work = opts.work or tempfile.mkdtemp(prefix="sandbox-real-suites-")
    os.makedirs(work, exist_ok=True)
    user = opts.user if os.geteuid() == 0 else None
    if user is not None:
        try:
            pwd.getpwnam(user)
        except KeyError:
            ap.error(f"--user {user!r}: no such user (create it, or run as a normal user)")
    failures = 0
    try:
        for name in names:
            tree = prepare(name, SUITES[name], work, opts.python)
            if user is not None:
                shutil.chown(work, user)
                # and the user's group: a box cannot copy up (write) a file whose group
                # it cannot map, such as root's (EOVERFLOW), as in the user's own checkout
                subprocess.run(["chown", "-R", f"{user}:", tree], check=True)
            runs = [run_suite(tree, SUITES[name], mode, opts.python, user, work) for mode in modes]
            failures += report(name, runs)
    finally:
        if not opts.keep and not opts.work:
            shutil.rmtree(work, ignore_errors=True)
    print("\nOK: every difference is an expected isolation effect" if not failures
          else f"\nFAILED: {failures} unexpected outcome difference(s)")
    return 1 if failures else 0


def prepare(name: str, suite: Suite, work: str, python: str) -> str:
    """Download and unpack the sdist once; install the test dependencies into ``.deps`` inside
    the tree (the box sees the project, so lazily imported dependencies are there too)."""
    dl = os.path.join(work, "sdists")
    pkg = suite.spec.split("==")[0]
    norm = re.sub(r"[-_.]+", "_", pkg).lower()
    found = [f for f in os.listdir(dl) if f.lower().startswith(norm + "-")] if os.path.isdir(dl) else []
    if not found:
        subprocess.run([python, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", pkg,
                        "-d", dl, suite.spec], check=True)
        found = [f for f in os.listdir(dl) if f.lower().startswith(norm + "-")]
    sdist = os.path.join(dl, sorted(found)[-1])
    tree = os.path.join(work, os.path.basename(sdist).removesuffix(".tar.gz"))
    if not os.path.isdir(tree):
        with tarfile.open(sdist) as tf:
            extract(tf, work)
    deps = os.path.join(tree, ".deps")
    want = [*suite.deps, *([tree] if suite.install_self else [])]
    if want and not os.path.isdir(deps):
        subprocess.run([python, "-m", "pip", "install", "-q", "--target", deps, *want], check=True)
    print(f"{name}: {tree}", flush=True)
    return tree


def extract(tf: tarfile.TarFile, dest: str) -> None:
    """Only plain files and directories inside ``dest`` (this Python may predate tarfile's
    ``filter="data"``)."""
    members = []
    for m in tf.getmembers():
        path = os.path.normpath(m.name)
        if os.path.isabs(path) or path.split(os.sep)[0] == ".." or not (m.isfile() or m.isdir()):
            print(f"  skipping {m.name!r} in the sdist (not a plain file inside it)")
            continue
        m.mode = (m.mode & 0o755) | 0o644
        members.append(m)
    tf.extractall(dest, members=members)


def run_suite(tree: str, suite: Suite, mode: str, python: str, user: str | None, work: str) -> Run:
    xml = os.path.join(work, f"junit-{os.path.basename(tree)}-{mode.replace(' ', '')}.xml")
    paths = [os.path.join(tree, ".deps"), tree, os.environ.get("PYTHONPATH", "")]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": work, "LANG": "C.UTF-8",
           "PYTHONPATH": ":".join(p for p in paths if p), "PYTHONDONTWRITEBYTECODE": "1"}
    cmd = [python, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:pytest_isolate",
           "--sandbox-no-summary", f"--junitxml={xml}", "-o", "junit_family=xunit1",
           *MODES[mode], *suite.args]
    if user is not None:
        cmd = ["runuser", "-u", user, "--", "env", "-i", *(f"{k}={v}" for k, v in env.items()), *cmd]
        env = dict(os.environ)
    t0 = time.monotonic()
    p = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    wall = time.monotonic() - t0
    lines = [x for x in p.stdout.splitlines() if x.strip()]
    summary = lines[-1].strip("= ") if lines else p.stderr.strip()[-300:]
    run = Run(mode, wall, p.returncode, summary)
    if os.path.exists(xml):
        run.outcomes, run.messages = outcomes(xml)
    print(f"  {mode:13} {wall:7.1f} s  {summary}", flush=True)
    return run


def outcomes(path: str) -> tuple[dict[str, str], dict[str, str]]:
    """test id -> outcome, and -> the first line of its failure message, from pytest's JUnit
    XML (a test with subtests has several entries: their outcomes are joined with "+")."""
    out: dict[str, str] = {}
    why: dict[str, str] = {}
    for case in ET.parse(path).getroot().iter("testcase"):
        key = f"{case.get('classname')}::{case.get('name')}"
        kinds = {child.tag: child for child in case}
        if "error" in kinds:
            res = "error"
        elif "failure" in kinds:
            res = "failed"
        elif "skipped" in kinds:
            res = "xfailed" if kinds["skipped"].get("type") == "pytest.xfail" else "skipped"
        else:
            res = "passed"
        out[key] = res if key not in out else f"{out[key]}+{res}"
        bad = kinds.get("error", kinds.get("failure"))
        if bad is not None and key not in why:
            why[key] = (bad.get("message") or "").split("\n")[0][:160]
    return out, why


def report(name: str, runs: list[Run]) -> int:
    base = runs[0]
    expected = EXPECTED.get(name, {})
    unexpected = 0
    seen: set[str] = set()
    for run in runs[1:]:
        ratio = run.wall / base.wall if base.wall else float("nan")
        diffs = sorted(k for k in base.outcomes.keys() | run.outcomes.keys()
                       if base.outcomes.get(k) != run.outcomes.get(k))
        print(f"  {run.mode}: {ratio:.2f}x plain wall, {len(diffs)} outcome difference(s)")
        causes = Counter(run.messages.get(k, "(no failure message)") for k in diffs)
        for msg, n in causes.most_common():
            print(f"    {n:5} x {msg}")
        for k in diffs:
            why = next((r for pat, r in expected.items() if fnmatch.fnmatchcase(k, pat)), None)
            seen.update(p for p in expected if fnmatch.fnmatchcase(k, p))
            mark = f"expected: {why}" if why else "UNEXPECTED"
            print(f"    {k}: {base.outcomes.get(k, 'absent')} -> {run.outcomes.get(k, 'absent')}"
                  f"  [{mark}]")
            unexpected += why is None
    for pat in sorted(set(expected) - seen):
        print(f"  note: {pat!r} no longer differs: remove it from EXPECTED")
    return unexpected


if __name__ == "__main__":
    sys.exit(main())
