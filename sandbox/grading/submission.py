"""What a teacher's test sees: ``submission.import_module("solution").add(2, 3)``,
``submission.run([...])``, ``submission.changes()``.

Each test gets a fresh box holding the submission as an overlay at /submission (so it may
write scratch files that never reach the original); the overlay's upper directory is on the
host and is read afterwards without following anything the submission planted.
"""

from __future__ import annotations

import os
import shutil
import stat
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from sandbox import Limits, SandboxConfig
from sandbox.config import MountSpec
from sandbox.direct import run_direct
from sandbox.grading.session import BoxSession, SessionError
from sandbox.result import Result, Status
from sandbox.safefs import box_writable_dir, walk_beneath

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


class Submission:
    def __init__(self, path: str, limits: dict[str, Any], call_timeout: float) -> None:
        self.path = os.path.realpath(path)
        self.name = os.path.basename(self.path.rstrip("/"))
        self.limits, self.call_timeout = limits, call_timeout
        # the overlay's upper and work dirs land in self._work; nobody else may write there
        self._tmp, self._work = box_writable_dir("grade-")
        self._session: BoxSession | None = None
        self.results: list[Result] = []

    def _config(self, upper: str | None = None, **limits: Any) -> SandboxConfig:
        return SandboxConfig(limits=Limits.parse(**{**self.limits, **limits}), cwd=BOX_DIR,
                             mounts=[MountSpec("overlay", BOX_DIR, self.path, upper=upper)])

    def import_module(self, name: str) -> _Proxy:
        if self._session is None:
            self._session = BoxSession(self._config(self._work), BOX_DIR)
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
        r = run_direct(list(argv), self._config(**limits), stdin=stdin)
        self.results.append(r)
        return r

    def changes(self) -> Changes:
        """Files the submission created/modified/deleted in this test's box so far."""
        upper = os.path.join(self._work, "upper")
        ch = Changes()
        if not os.path.isdir(upper):
            return ch
        for rel, st in walk_beneath(upper):
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                ch.deleted.append(rel)  # an overlay whiteout
            elif not stat.S_ISDIR(st.st_mode):
                (ch.modified if os.path.lexists(os.path.join(self.path, rel)) else ch.created).append(rel)
        return ch

    def close(self) -> None:
        if self._session is not None:
            self.results.append(self._session.close())
            self._session = None
        _rmtree(self._tmp)

    def worst(self) -> str:
        return max((str(r.status) for r in self.results), key=SEVERITY.__getitem__, default="OK")


__all__ = ["Changes", "Status", "Submission", "SubmissionError"]


def _rmtree(path: str) -> None:
    """rmtree that also removes overlayfs' mode-000 ``work/work`` dir. Directories are made
    searchable top-down first; symlinks are never followed (chmod would follow them)."""
    for dirpath, dirnames, _ in os.walk(path):
        for d in dirnames:
            p = os.path.join(dirpath, d)
            if not os.path.islink(p):
                try:
                    os.chmod(p, 0o700)
                except OSError:
                    pass
    shutil.rmtree(path, ignore_errors=True)
