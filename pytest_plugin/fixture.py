"""The ``sandbox`` fixture: run untrusted programs or functions in fresh boxes from a trusted
test. Everything the box returns crosses as bytes (``Result.stdout``), files read through
``sandbox.safefs`` (no planted symlink is followed), or tagged JSON (``call``) — never pickle.
"""

from __future__ import annotations

import os
import shutil
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pytest_plugin import boxrun
from sandbox import Limits, Result, SandboxConfig, Status, codec
from sandbox.config import MountSpec
from sandbox.direct import run_direct
from sandbox.safefs import read_beneath

LIMIT_KEYS = ("memory", "wall_time", "cpu_time", "pids", "output_limit", "tmpfs_size",
              "nofile", "fsize")


class SandboxCallError(Exception):
    """A function run by ``sandbox.call`` raised, or its box failed. Carries a *description*
    of the exception (type name, message, traceback text), never the object itself."""

    def __init__(self, message: str, *, type_name: str = "", traceback_text: str = "",
                 result: Result | None = None) -> None:
        super().__init__(message)
        self.type_name, self.traceback_text, self.result = type_name, traceback_text, result


class SandboxFixture:
    """``sandbox.run(argv, stdin=b"", wall_time="1s", files={"in.txt": b"..."})`` → Result;
    ``sandbox.call(func, *args)`` → func's return value; ``sandbox.read("out.txt")`` → bytes.
    Files live in a per-test host directory mounted read-write at ``/work`` (the default cwd)."""

    def __init__(self, config: Any) -> None:
        self._config = config
        self.workdir = boxrun.scratch_dir()
        os.chmod(self.workdir, 0o777)  # in root mode the box is an unprivileged high uid
        self.results: list[Result] = []

    def config(self, network: bool = False, cwd: str = "/work",
               mounts: Sequence[MountSpec] = (), **limits: Any) -> SandboxConfig:
        unknown = set(limits) - set(LIMIT_KEYS)
        if unknown:
            raise TypeError(f"unknown sandbox option(s) {sorted(unknown)}; valid: {LIMIT_KEYS}")
        project, _ = boxrun.pytest_mounts(self._config)  # so tracebacks can show source lines
        return SandboxConfig(limits=Limits.parse(**limits), network="host" if network else "none",
                             mounts=[*project, MountSpec("bind", "/work", self.workdir), *mounts],
                             cwd=cwd).validate()

    def put(self, name: str, data: bytes) -> None:
        rel = os.path.normpath(name)
        if rel.startswith(("/", "..")):
            raise ValueError(f"file name {name!r} must be relative, inside /work")
        path = os.path.join(self.workdir, rel)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)

    def read(self, name: str, max_bytes: int = 16 << 20) -> bytes:
        """A file the box wrote under /work, read without following anything it planted."""
        return read_beneath(self.workdir, name, max_bytes)

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None,
            files: Mapping[str, bytes] | None = None, **opts: Any) -> Result:
        for name, data in (files or {}).items():
            self.put(name, data)
        r = run_direct(list(argv), self.config(**opts), stdin=stdin)
        self.results.append(r)
        return r

    def call(self, func: Callable[..., Any], *args: Any, sandbox_options: Mapping[str, Any] | None = None,
             **kwargs: Any) -> Any:
        """Run ``func(*args, **kwargs)`` in a fresh box; return its result decoded from tagged
        JSON (None, bool, int, float, str, bytes, list, tuple, dict)."""
        def body(ch: int) -> None:
            try:
                payload: Any = {"ok": func(*args, **kwargs)}
                data = codec.encode(payload)
            except BaseException as e:  # noqa: BLE001 - described, never shipped as an object
                data = codec.encode({"error": {"type": type(e).__name__, "message": str(e)[:10000],
                                               "traceback": traceback.format_exc()[-20000:]}})
            boxrun.write_all(ch, data)

        result, data = boxrun.run_in_box(body, self.config(**dict(sandbox_options or {})))
        self.results.append(result)
        if result.status != Status.OK:
            raise SandboxCallError(f"sandbox: {result.reason or result.error or result.status}",
                                   result=result)
        try:
            msg = codec.decode(data or b"")
        except codec.CodecError as e:
            raise SandboxCallError(f"sandbox: the box sent invalid data ({e})", result=result) from None
        if isinstance(msg, dict) and set(msg) == {"ok"}:
            return msg["ok"]
        if isinstance(msg, dict) and set(msg) == {"error"} and isinstance(msg["error"], dict):
            err = msg["error"]
            raise SandboxCallError(f"{err.get('type')}: {err.get('message')}",
                                   type_name=str(err.get("type")),
                                   traceback_text=str(err.get("traceback", "")), result=result)
        raise SandboxCallError("sandbox: the box sent an unexpected message", result=result)

    def close(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
