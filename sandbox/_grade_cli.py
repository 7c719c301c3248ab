"""``sandbox grade``: a trusted pytest suite × a folder of untrusted submissions → a score table.

``-j N`` pytest runs (``sandbox.grading.runner``) grade one whole submission after another;
every use of a submission happens in its own box. A submission that crashes, hangs, forks
wildly, fills its disk or eats memory only loses its own points; one that exceeds ``--timeout``
is given up alone, with a row saying so. Each finished submission is journaled (fsynced) next
to ``--out``, so Ctrl-C or a crash lose only what was in flight and ``--resume`` continues.
Everything is checked before grading: a wrong path or value is a one-line usage error (exit 2),
broken teacher tests stop the run before any student is blamed (exit 3).

Exit codes: 0 every submission graded; 1 some could not be (their rows say why); 2 usage
error; 3 the teacher's tests are broken; 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import tempfile
from typing import Any

MAX_FILE = 16 * 1024 * 1024


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise ValueError(message)


class _Help(argparse.HelpFormatter):
    """Shows each option's default (when it has one)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="sandbox grade", formatter_class=_Help,
                description="grade untrusted submissions with a trusted pytest suite")
    p.add_argument("--tests", required=True, help="directory (or file) of the teacher's pytest tests")
    p.add_argument("--submissions", required=True, help="directory with one sub-folder per submission")
    p.add_argument("-j", "--jobs", type=int, default=2, help="submissions graded in parallel")
    p.add_argument("--out", default="results.json", help="JSON results; its journal is OUT.journal")
    p.add_argument("--csv", help="also write a CSV table")
    p.add_argument("--junitxml", help="also write JUnit XML (a testsuite per submission)")
    p.add_argument("--feedback", metavar="DIR", help="write one Markdown feedback file per submission")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT.journal: skip submissions already graded with the same "
                        "content, tests and options")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per submission (all its tests)")
    p.add_argument("--run-timeout", type=float, help="seconds for the whole run (default: none)")
    p.add_argument("--call-timeout", type=float, default=2.0, help="seconds per proxied call")
    p.add_argument("--memory", default="256M", help="memory limit per submission box")
    p.add_argument("--wall-time", default="10s", help="wall time per test")
    p.add_argument("--image", metavar="NAME", help="every box's root is this stored image "
                   "(`sandbox image ls`; default: the host's /usr)")
    p.add_argument("--file-name", metavar="NAME", help="a single-file submission's name in its box, "
                   "e.g. solution.py for the tests' import_module('solution') (default: its own)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--scheduler", default=os.environ.get("SANDBOX_SCHEDULER") or None,
                   metavar="local:N|tcp://HOST:PORT",
                   help="grade over a Dask cluster, one task per submission (instead of -j; "
                        "default: $SANDBOX_SCHEDULER, else the local pool)")
    return p


def _writable_file(opt: str, path: str | None) -> None:
    if path is None:
        return
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise ValueError(f"{opt} {path}: is a directory (a file name is expected)")
    if not os.path.isdir(parent):
        raise ValueError(f"{opt} {path}: no such directory {parent}")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ValueError(f"{opt} {path}: directory {parent} is not writable")


def _check(a: argparse.Namespace) -> list[tuple[str, str]]:
    """Every option and path, before anything is graded; the submissions found."""
    from sandbox import Limits

    if not os.path.exists(a.tests):
        raise ValueError(f"--tests {a.tests}: no such file or directory")
    if not os.path.isdir(a.submissions):
        raise ValueError(f"--submissions {a.submissions}: not a directory (one sub-folder per submission)")
    if a.jobs < 1:
        raise ValueError(f"-j {a.jobs}: must be at least 1")
    for opt, v in (("--timeout", a.timeout), ("--run-timeout", a.run_timeout), ("--call-timeout", a.call_timeout)):
        if v is not None and not v > 0:
            raise ValueError(f"{opt} {v:g}: must be a positive number of seconds")
    Limits.parse(memory=a.memory, wall_time=a.wall_time)  # ConfigError: "--memory: ..."
    if a.scheduler is not None:
        from sandbox.grading.cluster import check

        check(a.scheduler, a.image)
    if a.image is not None:  # an unknown image: ConfigError, one line, before any box
        from sandbox import SandboxConfig

        SandboxConfig(image=a.image).validate()
    name = a.file_name
    if name is not None and (not name or name in (".", "..") or "/" in name or "\0" in name or len(name) > 255):
        raise ValueError(f"--file-name {name!r}: must be a plain file name such as solution.py (no '/')")
    for opt in ("out", "csv", "junitxml"):
        _writable_file(f"--{opt}", getattr(a, opt))
    if a.feedback is not None:
        if os.path.exists(a.feedback) and not os.path.isdir(a.feedback):
            raise ValueError(f"--feedback {a.feedback}: not a directory")
        if os.path.isdir(a.feedback):  # a folder of an earlier run: its files are replaced
            if not os.access(a.feedback, os.W_OK | os.X_OK):
                raise ValueError(f"--feedback {a.feedback}: not writable")
        else:
            _writable_file("--feedback", a.feedback.rstrip("/"))
    subs = discover(a.submissions)
    if not subs:
        raise ValueError(f"--submissions {a.submissions}: no submissions in it "
                         "(expected one sub-folder, or file, per submission)")
    if a.file_name is None:
        _not_one_submission(a.submissions, subs, a.tests)
    return subs


def _not_one_submission(root: str, subs: list[tuple[str, str]], tests: str) -> None:
    """``--submissions submissions/alice``: a folder of files only, some of which the teacher's
    tests name (``import_module("solution")``, ``"main.py"``), is one submission's folder, not
    a folder of single-file submissions (those are named after their students)."""
    if any(os.path.isdir(p) for _, p in subs):
        return
    named = _literals(tests)
    hits = [n for n, _ in subs if n in named or os.path.splitext(n)[0] in named]
    if hits:
        parent = os.path.dirname(os.path.abspath(root))
        raise ValueError(f"--submissions {root}: looks like one submission's folder (the tests use its "
                         f"{hits[0]}); pass the folder holding one sub-folder per submission, "
                         f"such as {parent}")


def _literals(tests: str) -> set[str]:
    """The string constants of the teacher's test files (parsed, never imported)."""
    import ast

    files = [tests] if os.path.isfile(tests) else [
        os.path.join(d, f) for d, _, fs in os.walk(tests) for f in fs if f.endswith(".py")]
    out: set[str] = set()
    for path in files[:200]:
        try:
            with open(path, "rb") as f:
                tree = ast.parse(f.read(MAX_FILE))
        except (OSError, SyntaxError, ValueError):
            continue  # the run's collection reports a broken test file
        out |= {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)}
    return out


def discover(root: str) -> list[tuple[str, str]]:
    """(name, path) of every submission; files are graded as a one-file directory."""
    import re

    def natural(name: str) -> list[Any]:  # s2 before s10
        return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]

    out = []
    for name in sorted(os.listdir(root), key=natural):
        path = os.path.join(root, name)
        if name.startswith(".") or os.path.islink(path):
            continue  # a symlinked "submission" could point anywhere on the host
        if os.path.isdir(path) or os.path.isfile(path):
            out.append((name, path))
    return out


class _Sink:
    """Where the runs' events go: rows built and journaled as each submission finishes."""

    def __init__(self, journal: Any, keys: dict[str, str], rows: dict[str, Any], progress: Any) -> None:
        self.journal, self.keys, self.rows, self.progress = journal, keys, rows, progress
        self.lines: dict[str, list[dict[str, Any]]] = {}
        self.announced: dict[str, list[list[Any]]] = {}

    def collected(self, tests: dict[str, list[list[Any]]]) -> None:
        self.announced.update(tests)

    def started(self, name: str) -> None:
        self.lines[name] = []  # a restarted run grades it from scratch
        self.progress.started(name)

    def test(self, line: dict[str, Any]) -> None:
        self.lines.setdefault(str(line.get("submission")), []).append(line)

    def finished(self, name: str, error: str | None) -> None:
        from sandbox.grading.report import build_row

        row = build_row(name, self.lines.get(name, []), self.announced, error)
        self.rows[name] = row
        if row["error"] is None:
            self.journal.append(self.keys[name], row)
        self.progress.finished(name, row["error"] is None)


def main(argv: list[str]) -> int:
    try:
        a = _parser().parse_args(argv)
        subs = _check(a)
    except ValueError as e:
        sys.stderr.write(f"sandbox grade: error: {e}\n")
        return 2
    try:
        return _grade(a, subs)
    except KeyboardInterrupt:  # before grading started (hashing) or after the results were written
        sys.stderr.write("sandbox grade: interrupted\n")
        return 130


def _grade(a: argparse.Namespace, subs: list[tuple[str, str]]) -> int:
    from sandbox.grading import runner
    from sandbox.grading.journal import Journal, entry_key, run_key
    from sandbox.grading.progress import Progress, print_table
    from sandbox.grading.report import build_row, write_outputs

    config = {k: getattr(a, k) for k in ("call_timeout", "memory", "wall_time", "timeout", "image", "file_name")}
    if a.image is not None:  # the image's content: a re-imported NAME is graded again
        from sandbox import ImageStore

        config["image_id"] = ImageStore().get(a.image).get("id")
    run = run_key(a.tests, config)
    keys = {name: entry_key(path, run) for name, path in subs}
    journal = Journal(a.out + ".journal", a.resume)
    rows: dict[str, Any] = {}
    for name, _ in subs:
        row = journal.done(name, keys[name])
        if row is not None:
            rows[name] = row
    why, interrupted = None, False
    with tempfile.TemporaryDirectory(prefix="grade-run-") as tmp:
        os.chmod(tmp, 0o755)
        todo = [(n, _as_dir(n, p, tmp, a.file_name)) for n, p in subs if n not in rows]
        try:
            prog = Progress(len(subs), len(rows), enabled=not a.no_progress)
            sink = _Sink(journal, keys, rows, prog)
            with prog:
                if todo and a.scheduler is not None:
                    from sandbox.grading import cluster

                    why = cluster.run(todo, a, tmp, sink)
                elif todo:
                    why = runner.run(todo, a, tmp, sink)
        except KeyboardInterrupt:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # the results are written, whatever comes
            why, interrupted = "not graded: interrupted (Ctrl-C)", True
        except runner.TeacherError as e:
            journal.close()
            i = e.info
            text = "\n".join("  " + ln for ln in i.get("text", "").strip().splitlines()[-40:])
            sys.stderr.write(f"sandbox grade: error: {i.get('where') or a.tests}: {i.get('error')} "
                             f"({i.get('what')}; the teacher's tests are broken, nothing was graded)\n"
                             f"{text}\n")
            return 3
    journal.close()
    for name, _ in subs:
        if name not in rows:
            rows[name] = build_row(name, sink.lines.get(name, []), sink.announced, why or "not graded")
    ordered = [rows[n] for n, _ in subs]
    write_outputs(ordered, a)
    graded = sum(r["error"] is None for r in ordered)
    if interrupted:
        sys.stderr.write(f"sandbox grade: interrupted: {graded} of {len(ordered)} submissions graded, "
                         f"results in {a.out}; --resume continues\n")
        return 130
    print_table(ordered)
    if graded < len(ordered):
        sys.stderr.write(f"sandbox grade: {len(ordered) - graded} of {len(ordered)} submissions "
                         f"could not be graded (see their rows)\n")
        return 1
    return 0


def _as_dir(name: str, path: str, tmp: str, file_name: str | None = None) -> str:
    """A single-file submission is graded as a one-file directory, the file under its own name
    or ``--file-name``."""
    if os.path.isdir(path):
        return os.path.abspath(path)
    d = os.path.join(tmp, "files", name)
    os.makedirs(d)
    with open(path, "rb") as src, open(os.path.join(d, file_name or name), "wb") as dst:
        dst.write(src.read(MAX_FILE))
    os.chmod(d, 0o755)
    return d
