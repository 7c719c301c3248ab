"""What a teacher's test sees: ``submission.import_module("solution").add(2, 3)``,
``submission.run([...])``, ``submission.changes()``.

Each test gets a fresh box holding the submission as an overlay at /submission (so it may
write scratch files that never reach the original). The overlay's upper directory is in the
box's own tmpfs (``--tmpfs-size`` caps it; nothing lands on the host's disk): the box's init
sends us an fd of it before the submission's code runs, and ``changes()`` reads through that
fd without following anything the submission planted. Holding the fd keeps the box's tmpfs
alive after the box is gone, until ``close()``.
"""

from __future__ import annotations

import os
import select
import socket
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sandbox import Limits, MountSpec, Result, SandboxConfig, Status, _fdpass, run_sync
from sandbox._safefs import exists_beneath, walk_beneath
from sandbox.grading.session import BoxSession, SessionError
from sandbox.grading.zygote import Zygote, stop_factory

BOX_DIR = "/submission"
SEVERITY = {s: i for i, s in enumerate(["OK", "RE", "SG", "OL", "ML", "TO", "XX"])}


class SubmissionError(Exception):
    """The submission's code raised (type name, message and traceback *text* only) or its box
    failed (timeout, crash, memory)."""

    def __init__(self, message: str, type_name: str = "", traceback_text: str = "") -> None:
        super().__init__(message)
        self.type_name, self.traceback_text = type_name, traceback_text


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


# Zygotes (sandbox.grading.zygote): per submission, a fork of one clean factory process that
# clones the submission's test boxes, so a worker's interpreter start-up is paid once per
# grading run, not per test. A zygote no open session uses is closed when another
# submission's test opens its box, or after a test that no submission test follows (the
# factory then stops too).
_zygotes: dict[str, Zygote] = {}


def shutdown() -> None:
    """End of the run: every box factory."""
    _prune(None)
    stop_factory()


def _prune(keep: str | None) -> None:
    for path, zygote in list(_zygotes.items()):
        if zygote.users <= 0 and path != keep:
            del _zygotes[path]
            zygote.close()


class Submission:
    """``next_path``: the submission of the test that runs after this one (the grading plugin
    knows pytest's order), whose box factory is kept when this one closes; None (the last
    test, or a Submission used on its own): every factory stops when this closes."""

    def __init__(self, path: str, limits: dict[str, Any], call_timeout: float,
                 next_path: str | None = None) -> None:
        self.path = os.path.realpath(path)
        self.name = os.path.basename(self.path.rstrip("/"))
        self.limits, self.call_timeout = limits, call_timeout
        self.next_path = None if next_path is None else os.path.realpath(next_path)
        self._session: BoxSession | None = None
        self._zygote: Zygote | None = None
        self._uppers: socket.socket | None = None  # where the session box's init sends its upper
        self._upper = -1  # that upper's fd, once received
        self.results: list[Result] = []

    def _config(self, upper_to: int | None = None, **limits: Any) -> SandboxConfig:
        return SandboxConfig(limits=Limits.parse(**{**self.limits, **limits}), cwd=BOX_DIR,
                             mounts=[MountSpec("overlay", BOX_DIR, self.path, upper_to=upper_to)])

    def _open(self) -> None:
        _prune(self.path)
        zygote = _zygotes.get(self.path)
        if zygote is None or not zygote.alive:
            if zygote is not None:
                zygote.close()  # it died: its sessions' verdicts say so
            zygote = _zygotes[self.path] = Zygote()
        self._uppers, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._session = BoxSession(self._config(theirs.fileno()), [BOX_DIR], factory=zygote)
        finally:
            theirs.close()  # init holds its own copy until it sent the upper
        self._zygote = zygote
        zygote.users += 1

    def import_module(self, name: str) -> _Proxy:
        if self._session is None:
            self._open()
        proxy = _Proxy(self, name)
        self._request({"op": "get", "module": name, "path": []}, describe_module=True)
        return proxy

    def _request(self, msg: dict[str, Any], describe_module: bool = False) -> Any:
        assert self._session is not None
        if describe_module:  # importing: only check it imports; a module is not a value
            msg = {**msg, "op": "import"}
        try:
            reply = self._session.request(msg, self.call_timeout)
        except SessionError as e:
            raise SubmissionError(f"submission {self.name}: {e}") from None
        if "error" in reply:
            err = reply["error"] if isinstance(reply["error"], dict) else {}
            raise SubmissionError(f"{err.get('type', 'Error')}: {err.get('message', '')}",
                                  str(err.get("type", "")), str(err.get("traceback", "")))
        return None if describe_module else reply["ok"]

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None, **limits: Any) -> Result:
        r = run_sync(list(argv), self._config(**limits), stdin=stdin)
        self.results.append(r)
        return r

    def changes(self) -> Changes:
        """Files the submission created/modified/deleted in this test's box so far."""
        ch = Changes()
        upper = self._upper_fd()
        if upper < 0:
            return ch
        lower = os.open(self.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for rel, st in walk_beneath(upper):
                if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                    ch.deleted.append(rel)  # an overlay whiteout
                elif not stat.S_ISDIR(st.st_mode):
                    (ch.modified if exists_beneath(lower, rel) else ch.created).append(rel)
        finally:
            os.close(lower)
        return ch

    def _upper_fd(self) -> int:
        """The session box's upper directory, as its init sent it (once the box started: a
        box that failed before its rootfs was made sends nothing, and its socket end closes)."""
        if self._upper < 0 and self._uppers is not None:
            if select.select([self._uppers], [], [], self.call_timeout)[0]:
                _, fds = _fdpass.recv(self._uppers, max_fds=1)
                for fd in fds[1:]:
                    os.close(fd)
                if fds and stat.S_ISDIR(os.fstat(fds[0]).st_mode):
                    self._upper = fds[0]
                elif fds:
                    os.close(fds[0])
            self._uppers.close()
            self._uppers = None
        return self._upper

    def close(self) -> None:
        if self._session is not None:
            self.results.append(self._session.close())
            self._session = None
            if self._zygote is not None:
                self._zygote.users -= 1
                self._zygote = None
        if self.next_path is None:
            shutdown()
        else:
            _prune(self.next_path)
        if self._uppers is not None:
            self._uppers.close()  # an upper still queued on it goes with it
            self._uppers = None
        if self._upper >= 0:
            os.close(self._upper)  # the last reference: the box's tmpfs is freed
            self._upper = -1

    def worst(self) -> str:
        return max((str(r.status) for r in self.results), key=SEVERITY.__getitem__, default="OK")


__all__ = ["Changes", "Status", "Submission", "SubmissionError"]
