"""The grading runs of ``sandbox grade``: ``-j N`` plain pytest processes, each grading its share
of the submissions (dealt round-robin) one whole submission after another.

Plain processes, not pytest-xdist: an xdist worker is multi-threaded (execnet's I/O thread), so
each of its boxes would have to come from a forked helper (a box cloned from a threaded process
can inherit a lock another thread holds); single-threaded runs clone their boxes directly, ~2x
the throughput on 2 cores.

Each run reports through its JSON-lines log (``sandbox.grading.plugin``), which is read as it
grows. ``--timeout`` limits each submission: one that exceeds it is given up (its run is killed)
and a new run takes the rest of that share, so a hanging submission costs only itself. A run
that ends early (crashed, killed) is restarted for the submissions it did not start, as long as
it started at least one (so a run that cannot start is not retried for ever). The teacher's
mistakes — tests that do not collect, a fixture failing before the submission is used, a
conftest that does not load — raise ``TeacherError``: nothing is blamed on the students.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any, Protocol


class TeacherError(Exception):
    """The teacher's tests are broken (``info``: what, where, error, text)."""

    def __init__(self, info: dict[str, str]) -> None:
        super().__init__(info.get("error", ""))
        self.info = info


class Sink(Protocol):
    def collected(self, tests: dict[str, list[list[Any]]]) -> None: ...
    def started(self, name: str) -> None: ...
    def test(self, line: dict[str, Any]) -> None: ...
    def finished(self, name: str, error: str | None) -> None: ...


@dataclass
class _Shard:
    index: int
    todo: list[tuple[str, str]]  # (name, path) not started yet
    proc: subprocess.Popen[bytes] | None = None
    out: IO[bytes] | None = None
    log: IO[str] | None = None
    partial: str = ""
    current: str | None = None
    since: float = 0.0  # start of the current submission, or of the run (none yet)
    started_any: bool = False
    runs: int = 0
    names: set[str] = field(default_factory=set)


def pytest_cmd(a: Any, subs: list[str], log: str) -> list[str]:
    cmd = [sys.executable, "-m", "pytest", os.path.abspath(a.tests), "-q", "--color=no",
           "-p", "no:cacheprovider", "-p", "no:pytest_isolate", "-p", "no:xdist",
           "-p", "sandbox.grading.plugin", "--call-timeout", str(a.call_timeout),
           "--grade-memory", a.memory, "--grade-wall-time", a.wall_time, "--sandbox-no-summary"]
    if getattr(a, "image", None):
        cmd += ["--grade-image", a.image]
    return cmd + [x for s in subs for x in ("--submission", s)] + ["--grade-log", log]


def _launch(s: _Shard, a: Any, tmp: str) -> None:
    s.runs += 1
    tag = f"{s.index}-{s.runs}"
    log = os.path.join(tmp, f"grade-{tag}.log")
    open(log, "w").close()
    # Everything a run creates in temp space (pytest's own temp base; overlay uppers are in each
    # box's tmpfs) lives under our temp dir, removed at the end even when a run was killed.
    run_tmp = os.path.join(tmp, f"tmp-{tag}")
    os.mkdir(run_tmp)
    os.chmod(run_tmp, 0o711)  # traversable (root mode: the box is another uid), not listable
    s.out = open(os.path.join(tmp, f"pytest-{tag}.out"), "wb")  # noqa: SIM115
    s.proc = subprocess.Popen(pytest_cmd(a, [p for _, p in s.todo], log), stdout=s.out,
                              stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              env={**os.environ, "TMPDIR": run_tmp})
    s.log = open(log)  # noqa: SIM115
    s.partial, s.current, s.since, s.started_any = "", None, time.monotonic(), False
    s.names = {n for n, _ in s.todo}


def _stop(s: _Shard) -> int | None:
    """End the shard's run (killed if still going): its exit code."""
    rc = None
    if s.proc is not None:
        if s.proc.poll() is None:
            s.proc.kill()
        rc = s.proc.wait()
    for f in (s.out, s.log):
        if f is not None:
            f.close()
    s.proc = s.out = s.log = None
    return rc


def _events(s: _Shard) -> list[dict[str, Any]]:
    """Whole new lines of the run's log (a line still being written waits for its end)."""
    assert s.log is not None
    data = s.partial + s.log.read()
    lines = data.split("\n")
    s.partial = lines.pop()
    out = []
    for line in lines:
        try:
            e = json.loads(line)
        except ValueError:
            continue
        if isinstance(e, dict):
            out.append(e)
    return out


def tail(path: str) -> str:
    """The last line of a run's output (pytest's summary, or its crash)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 4000))
            lines = f.read().decode(errors="replace").strip().splitlines()
        return lines[-1][:300] if lines else "no output"
    except OSError:
        return "no output"


def _handle(s: _Shard, e: dict[str, Any], sink: Sink) -> None:
    if "teacher_error" in e:
        raise TeacherError({k: str(v) for k, v in dict(e["teacher_error"]).items()})
    if "collected" in e:
        sink.collected({str(k): v for k, v in dict(e.get("tests", {})).items() if k in s.names})
    elif "start" in e:
        name = str(e["start"])
        s.current, s.since, s.started_any = name, time.monotonic(), True
        s.todo = [t for t in s.todo if t[0] != name]
        sink.started(name)
    elif "done" in e:
        if s.current is not None:
            sink.finished(s.current, None)
        s.current, s.since = None, time.monotonic()
    elif "nodeid" in e:
        sink.test(e)


def _ended(s: _Shard, rc: int | None, out: str, a: Any, sink: Sink, tmp: str) -> None:
    """The shard's run ended on its own: blame only what it was grading; go on with the rest."""
    why = f"the test run failed (pytest exit code {rc}): {tail(out)}"
    if s.current is not None:
        sink.finished(s.current, why)
        s.current = None
    if not s.todo:
        return
    if not s.started_any and rc in (3, 4, 5):  # internal or usage error, or no tests: not a student's
        what = "no tests were collected" if rc == 5 else "the teacher's test run failed before grading"
        text = _read(out)
        places = re.findall(r'File "([^"]+)", line (\d+)', text)  # a conftest's SyntaxError, say
        where = ":".join(places[-1]) if places else os.path.abspath(a.tests)
        raise TeacherError({"what": what, "where": where,
                            "error": tail(out).removeprefix("E").strip(), "text": text})
    if s.started_any:
        _launch(s, a, tmp)
        return
    for name, _ in s.todo:
        sink.finished(name, why)
    s.todo = []


def _read(path: str) -> str:
    try:
        with open(path, "rb") as f:
            return f.read()[-8000:].decode(errors="replace")
    except OSError:
        return ""


def run(subs: list[tuple[str, str]], a: Any, tmp: str, sink: Sink) -> str | None:
    """Grade ``subs``; None when every run got through them all, else why not (the run's own
    deadline, ``--run-timeout``). Ctrl-C (KeyboardInterrupt) and TeacherError propagate; the
    runs are killed either way."""
    jobs = max(1, min(a.jobs, len(subs)))
    shards = [_Shard(i, subs[i::jobs]) for i in range(jobs)]
    run_deadline = None if a.run_timeout is None else time.monotonic() + a.run_timeout
    try:
        for s in shards:
            _launch(s, a, tmp)
        while any(s.proc is not None for s in shards):
            for s in shards:
                if s.proc is None:
                    continue
                exited = s.proc.poll() is not None
                for e in _events(s):
                    _handle(s, e, sink)
                now = time.monotonic()
                if exited:
                    out = s.out.name if s.out is not None else ""
                    _ended(s, _stop(s), str(out), a, sink, tmp)
                elif now - s.since > a.timeout:
                    _stop(s)
                    if s.current is not None:
                        sink.finished(s.current, f"grading did not finish within --timeout {a.timeout:g}s")
                        s.current = None
                    else:  # its pytest did not even reach a submission
                        for name, _ in s.todo:
                            sink.finished(name, f"the test run did not start within --timeout {a.timeout:g}s")
                        s.todo = []
                    if s.todo:
                        _launch(s, a, tmp)
            if run_deadline is not None and time.monotonic() > run_deadline:
                return f"not graded: the run reached --run-timeout {a.run_timeout:g}s"
            time.sleep(0.05)
        return None
    finally:
        for s in shards:
            _stop(s)
