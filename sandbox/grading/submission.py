"""What a teacher's test sees: ``submission.import_module("solution").add(2, 3)``,
``submission.run([...])``, ``submission.changes()``.

Built on the public API only: each submission gets a held ``sandbox.Box`` with its directory as
an overlay at /submission (writes land in the box's own size-capped tmpfs, never in the original
or on the host's disk), and in it a ``sandbox.Worker``, a fresh interpreter that has seen
nothing of the teacher. The box and its worker serve all of that submission's tests, which the
grading plugin runs one after another (``next_path``); each test gets a fresh fork of the
worker (fresh module state, no process of an earlier test left: the worker's fork server
imports nothing of the submission), ``changes()`` since the test started (a checkpoint), and
``run()`` in the same box (a program sees the files the test's calls wrote). A box that a
memory limit ended is replaced for the next test. One box per submission, not per test: the
tests of one submission are one trust domain (all of them run its code), and an interpreter
start per test was most of a test's cost.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sandbox import (
    Box,
    Checkpoint,
    Limits,
    MountSpec,
    Result,
    SandboxConfig,
    Status,
    Worker,
    WorkerError,
)
from sandbox.grading.interact import Interaction, run_interactive

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sandbox.grading.serve import Server

BOX_DIR = "/submission"
SEVERITY = {s: i for i, s in enumerate(["OK", "CE", "RE", "SG", "OL", "ML", "TO", "XX"])}
PER_EXEC = ("wall_time", "cpu_time", "output_limit")  # what a run() may set for itself


class SubmissionError(Exception):
    """The submission's code raised (type name, message and traceback *text* only) or its box
    failed (timeout, crash, memory)."""

    def __init__(self, message: str, type_name: str = "", traceback_text: str = "") -> None:
        super().__init__(message)
        self.type_name, self.traceback_text = type_name, traceback_text


class CompileError(SubmissionError):
    """The submission's build step failed (verdict CE): the message holds the compiler's
    output. Every test of that submission that asks for the build gets this same one."""


@dataclass
class Changes:
    created: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)


class _Proxy:
    def __init__(self, sub: Submission, module: str, path: tuple[str, ...] = ()) -> None:
        self._sub, self._module, self._path = sub, module, path

    def __getattr__(self, name: str) -> _Proxy:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Proxy(self._sub, self._module, (*self._path, name))

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._sub._request({"op": "call", "module": self._module, "path": list(self._path),
                                   "args": list(args), "kwargs": kwargs})

    def value(self) -> Any:
        """The attribute's value itself (for constants), decoded like a call's result."""
        return self._sub._request({"op": "get", "module": self._module, "path": list(self._path)})

    def __repr__(self) -> str:
        return f"<submission proxy {self._module}.{'.'.join(self._path)}>"


class _Held:
    """A submission's box and worker, kept while its tests run."""

    def __init__(self, config: SandboxConfig) -> None:
        self.box = Box(config).open()
        self.worker: Worker | None = None
        self.users = 0
        self.builds: dict[tuple[str, ...], Result] = {}  # argv → its verdict, once per box

    def close(self) -> None:
        if self.worker is not None and self.worker.alive:
            self.worker.close()
        self.box.close()


_held: dict[str, _Held] = {}


def shutdown() -> None:
    """End of the run: every submission's box."""
    _prune(None)


def _prune(keep: str | None) -> None:
    for path, held in list(_held.items()):
        if held.users <= 0 and path != keep:
            del _held[path]
            held.close()


class Submission:
    """``next_path``: the submission of the test that runs after this one (the grading plugin
    knows pytest's order), whose box factory is kept when this one closes; None (the last
    test, or a Submission used on its own): every factory stops when this closes."""

    def __init__(self, path: str, limits: dict[str, Any], call_timeout: float,
                 next_path: str | None = None, image: str | None = None) -> None:
        self._path = os.path.realpath(path)
        self.name = os.path.basename(self._path.rstrip("/"))
        self.limits, self.call_timeout, self.image = limits, call_timeout, image
        self.next_path = None if next_path is None else os.path.realpath(next_path)
        self._lim = Limits.parse(**limits)  # the caller's mistake raises here, in the caller
        self._held: _Held | None = None
        self._since: Checkpoint | None = None
        self._t0 = time.monotonic()
        self._used = False  # this test asked the worker something
        self.touched = False  # the test used the submission (a fixture failing before: the teacher's)
        self.results: list[Result] = []
        self.raised: list[str] = []  # type names of the student's exceptions that failed the test
        self.outputs: list[dict[str, Any]] = []  # what run()'s programs printed (bounded)
        self.compiled = True  # False: this test's build failed (its worst verdict is CE)
        self._servers: list[Server] = []

    @property
    def path(self) -> str:
        """The submission's folder on the host (reading it counts as using the submission)."""
        self.touched = True
        return self._path

    def _box(self) -> _Held:
        """This submission's box: opened by its first test, or anew after its memory limit
        ended one (then this test's ``changes`` start again with it)."""
        held = self._held
        if held is not None and held.box.alive:
            return held
        if held is not None:
            held.users -= 1
            self._held = None
        _prune(self._path)
        held = _held.pop(self._path, None)
        if held is not None and not held.box.alive:
            held.close()
            held = None
        if held is None:
            # Box-wide: memory, pids, tmpfs. Per test: the wall time (deadlines) and the CPU
            # time (each fork of the worker starts its RLIMIT_CPU anew).
            held = _Held(self._config())
        _held[self._path] = held
        held.users += 1
        self._held = held
        self._since = held.box.checkpoint()
        held.box.cpu_budget(self._lim.cpu_time)  # this test's, for all the box's processes
        return held

    def _config(self) -> SandboxConfig:
        box_limits = {k: v for k, v in self.limits.items() if k not in PER_EXEC}
        return SandboxConfig(limits=Limits.parse(**box_limits), cwd=BOX_DIR, image=self.image,
                             mounts=[MountSpec("overlay", BOX_DIR, self._path)])

    def _worker(self) -> Worker:
        held = self._box()
        if held.worker is None or not held.worker.alive:
            held.worker = Worker(held.box, [BOX_DIR], cpu_time=self._lim.cpu_time, alone=True)
        return held.worker

    def import_module(self, name: str) -> _Proxy:
        self.touched = True
        self._request({"op": "import", "module": name, "path": []})
        return _Proxy(self, name)

    def _request(self, msg: dict[str, Any]) -> Any:
        try:
            worker = self._worker()
        except Exception as e:  # noqa: BLE001 - the box did not open: the test fails, with why
            raise SubmissionError(f"submission {self.name}: its box did not start ({e})") from None
        self._used = self.touched = True
        timeout, late = self.call_timeout, None
        wall = self._lim.wall_time
        if wall is not None and wall - (time.monotonic() - self._t0) < timeout:
            timeout, late = max(0.0, wall - (time.monotonic() - self._t0)), f"wall time {wall:g}s exceeded"
        try:
            reply = worker.request(msg, timeout)
        except WorkerError as e:
            why = late if late is not None and "time limit" in str(e) else str(e)
            raise SubmissionError(f"submission {self.name}: {why}") from None
        if "error" in reply:
            err = reply["error"] if isinstance(reply["error"], dict) else {}
            raise SubmissionError(f"{err.get('type', 'Error')}: {err.get('message', '')}",
                                  str(err.get("type", "")), str(err.get("traceback", "")))
        return None if msg["op"] == "import" else reply["ok"]

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None, **limits: Any) -> Result:
        """Run a program in the submission's box (it sees what this test's calls wrote)."""
        bad = sorted(set(limits) - set(PER_EXEC))
        if bad:
            raise TypeError(f"run(): {', '.join(bad)} cannot be set per program "
                            f"(the box's own holds); valid: {', '.join(PER_EXEC)}")
        self.touched = True
        lim = {k: getattr(self._lim, k) for k in PER_EXEC if getattr(self._lim, k) is not None}
        r = self._box().box.exec(list(argv), stdin=stdin, **{**lim, **limits})
        self.results.append(r)
        if len(self.outputs) < MAX_OUTPUTS:
            self.outputs.append({"argv": [str(a)[:200] for a in argv][:20], "status": str(r.status),
                                 "stdout": _tail(r.stdout, r.stdout_truncated),
                                 "stderr": _tail(r.stderr, r.stderr_truncated)})
        return r

    def build(self, argv: Sequence[str], *, wall_time: float | str = "60s",
              cpu_time: float | str | None = None, output_limit: int | str | None = None) -> Result:
        """Compile once, run many: run ``argv`` (``["gcc", "-O2", "-o", "prog", "main.c"]``)
        once in the submission's box; its outputs stay in /submission for every later test of
        this submission. Later calls with the same argv return the first verdict without
        running it again. A failed build (non-zero exit, a limit) raises ``CompileError`` with
        the compiler's output, in every test that asks for it: the test's verdict is CE.
        What the build wrote is not in ``changes()`` (it counts from after the build)."""
        key = tuple(str(a) for a in argv)
        self.touched = True
        held = self._box()
        r = held.builds.get(key)
        if r is None:
            r = held.box.exec(list(key), wall_time=wall_time, cpu_time=cpu_time,
                              output_limit=output_limit)
            held.builds[key] = r
            if r.status is Status.OK:
                self.results.append(r)  # its CPU and memory count in the test that built
            self._since = held.box.checkpoint()
        if r.status is Status.OK and r.exit_code == 0:
            return r
        self.compiled = False
        why = r.reason or f"exit code {r.exit_code}"
        out = _tail(r.stderr, r.stderr_truncated) + _tail(r.stdout, r.stdout_truncated)
        raise CompileError(f"compilation failed ({why}): {' '.join(key)[:200]}\n{out}", "CompileError")

    def interact(self, argv: Sequence[str], interactor: Sequence[str], *,
                 files: dict[str, Any] | None = None, interactor_limits: dict[str, Any] | None = None,
                 **limits: Any) -> Interaction:
        """An interactive task: ``argv`` runs in the submission's box, ``interactor`` (the
        teacher's program, ``files`` put under /judge: ``{"judge.py": Path(...)}``) in a box of
        its own (``interactor_limits``; default 256M, and a wall time 5 s past the
        submission's), their stdin/stdout joined through us. The interactor's exit decides:
        0 AC, 1 WA (its stderr says why), else JE. See ``sandbox.grading.interact``."""
        bad = sorted(set(limits) - set(PER_EXEC))
        if bad:
            raise TypeError(f"interact(): {', '.join(bad)} cannot be set per program; valid: {', '.join(PER_EXEC)}")
        self.touched = True
        lim = {k: getattr(self._lim, k) for k in PER_EXEC if getattr(self._lim, k) is not None}
        lim.update(limits)
        wall = Limits.parse(wall_time=lim.get("wall_time", "10s")).wall_time or 10.0
        judge = {"memory": "256M", "wall_time": wall + 5, "pids": 16, **(interactor_limits or {})}
        res = run_interactive(self._box().box, argv, interactor, files=files, limits=judge, sub_limits=lim)
        self.results.append(res.submission)
        if len(self.outputs) < MAX_OUTPUTS:
            self.outputs.append({"argv": [str(a)[:200] for a in argv][:20], "status": res.verdict,
                                 "stdout": f"({res.bytes_from} bytes to the interactor)",
                                 "stderr": _tail(res.submission.stderr, res.submission.stderr_truncated)})
        return res

    def serve(self, argv: Sequence[str], *, port: int, ready_timeout: float = 10.0, **limits: Any) -> Server:
        """Start the student's server ``argv`` in a box and network of its own (the submission's
        files as submitted, at /submission) and wait until it accepts on ``port``: a ``Server``
        with ``url`` (``http://127.0.0.1:N/``), ``connect()`` and ``stop()``, stopped when the
        test ends. Its crash counts in the verdict; see ``sandbox.grading.serve``."""
        from sandbox.grading.serve import Server, ServerError  # (only a server test pays for it)

        bad = sorted(set(limits) - set(PER_EXEC))
        if bad:
            raise TypeError(f"serve(): {', '.join(bad)} cannot be set per program; valid: {', '.join(PER_EXEC)}")
        self.touched = True
        lim = {k: getattr(self._lim, k) for k in PER_EXEC if getattr(self._lim, k) is not None}
        try:
            server = Server(self._config(), argv, port, ready_timeout, {**lim, **limits})
        except ServerError as e:
            if e.result is not None:
                self.results.append(e.result)
            raise SubmissionError(f"submission {self.name}: {e}", "ServerError") from None
        self._servers.append(server)
        return server

    def changes(self) -> Changes:
        """Files this test created/modified/deleted in /submission so far (relative paths)."""
        ch = Changes()
        held = self._held
        if held is None or not held.box.alive:
            return ch
        got = held.box.changes(since=self._since)
        top = BOX_DIR + "/"
        for mine, theirs in ((ch.created, got.created), (ch.modified, got.modified),
                             (ch.deleted, got.deleted)):
            mine += [p[len(top):] for p in theirs if p.startswith(top)]
        return ch

    def close(self) -> None:
        for server in self._servers:
            ended = server.stop()
            if ended is not None:
                self.results.append(ended)
        self._servers.clear()
        held, self._held = self._held, None
        if held is not None:
            held.users -= 1
            w = held.worker
            if w is not None and self._used:  # how this test's fork ended (or the worker)
                ended = w.fresh() if w.alive else w.result
                if ended is not None:
                    self.results.append(ended)
            if w is not None and not w.alive:  # killed (a time limit) or died: a new one next
                held.worker = None
        if self.next_path is None:
            shutdown()
        else:
            _prune(self.next_path)

    def worst(self) -> str:
        """The worst verdict of the test: its boxes' and, for a student's exception that failed
        it, RE (ML for a MemoryError): a SyntaxError is not OK, though its process exited 0."""
        raised = ["ML" if t == "MemoryError" else "RE" for t in self.raised if t != "CompileError"]
        if not self.compiled:  # nothing of it ran: CE says why, whatever the compiler's exit
            return "CE"
        return max([str(r.status) for r in self.results] + raised, key=SEVERITY.__getitem__, default="OK")

    def verdicts(self) -> list[str]:
        """Each non-OK verdict's reason, with its numbers ("memory limit 64M exceeded")."""
        return list(dict.fromkeys(str(r.reason)[:300] for r in self.results
                                  if r.status is not Status.OK and r.reason))[:10]


MAX_OUTPUTS, MAX_OUTPUT = 5, 4096  # per test: programs whose output is kept, bytes of each stream


def _tail(data: bytes, truncated: bool) -> str:
    """The end of a program's output (where its error usually is), as text."""
    text = data[-MAX_OUTPUT:].decode(errors="replace")
    return ("[…]" if truncated or len(data) > MAX_OUTPUT else "") + text


__all__ = ["Changes", "CompileError", "Status", "Submission", "SubmissionError"]
