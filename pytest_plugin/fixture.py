"""The ``sandbox`` fixture: run untrusted programs or functions in fresh boxes from a trusted
test. Everything the box returns crosses as bytes (``Result.stdout``), files read through
``sandbox.safefs`` (no planted symlink is followed), or tagged JSON (``call``) — never pickle.
"""

from __future__ import annotations

import os
import shutil
import stat
import traceback
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from pytest_plugin import boxrun
from sandbox import Limits, Result, SandboxConfig, Status, codec, memdir
from sandbox._syscalls import openat2
from sandbox.config import MountSpec
from sandbox.direct import run_direct
from sandbox.safefs import RESOLVE, UnsafePath, box_writable_dir, open_beneath, read_beneath

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
    Files live in a per-test tmpfs mounted read-write at ``/work`` (the default cwd): the
    test's boxes share it, it is capped at the tmpfs size (``--sandbox-tmpfs-size``, else
    ``sandbox run``'s default) in bytes and files, and it takes no host disk (``memdir``).
    Where the kernel cannot bind such a tmpfs into a box, /work is a private host directory
    instead (as before: the host disk then bounds it, and ``RLIMIT_FSIZE`` each file)."""

    def __init__(self, config: Any) -> None:
        self._config = config
        self._work = -1  # an fd of /work's directory for our own reads and writes, made on first use
        self._mount: MountSpec | None = None
        self._top: str | None = None  # the host directory of the fallback
        self.results: list[Result] = []

    def _workdir(self) -> int:
        if self._work < 0:
            size = self._config.getoption("sandbox_tmpfs_size") or self._config.getini("sandbox_tmpfs_size")
            fd = memdir.create(Limits.parse(**({"tmpfs_size": size} if size else {})).tmpfs_size)
            if fd is not None:
                self._mount = MountSpec("bind", "/work", fd=fd)
            else:
                self._top, path = box_writable_dir("sandbox-fixture-")
                fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                self._mount = MountSpec("bind", "/work", path)
            self._work = fd
        return self._work

    def config(self, network: bool = False, cwd: str = "/work",
               mounts: Sequence[MountSpec] = (), **limits: Any) -> SandboxConfig:
        unknown = set(limits) - set(LIMIT_KEYS)
        if unknown:
            raise TypeError(f"unknown sandbox option(s) {sorted(unknown)}; valid: {LIMIT_KEYS}")
        project, _ = boxrun.pytest_mounts(self._config, temp=False)  # so tracebacks can show source lines
        self._workdir()
        assert self._mount is not None
        return SandboxConfig(limits=Limits.parse(**limits), network="host" if network else "none",
                             mounts=[*project, self._mount, *mounts],
                             cwd=cwd).validate()

    def put(self, name: str, data: bytes) -> None:
        """Write ``/work/<name>`` for the next box. A box that ran before may have planted a
        symlink or FIFO under that name: nothing is followed, only regular files are written."""
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if not parts or name.startswith("/") or ".." in parts:
            raise ValueError(f"file name {name!r} must be relative, inside /work")
        dfd = os.dup(self._workdir())
        try:
            for part in parts[:-1]:
                try:
                    os.mkdir(part, 0o755, dir_fd=dfd)
                except FileExistsError:
                    pass
                sub = open_beneath(dfd, part, directory=True)
                os.close(dfd)
                dfd = sub
            fd = openat2(dfd, parts[-1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                         | os.O_NONBLOCK | os.O_CLOEXEC, RESOLVE, 0o644)
        except OSError as e:
            raise UnsafePath(e.errno, f"{name}: cannot write it safely into the box ({e.strerror})") from None
        finally:
            os.close(dfd)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafePath(22, f"{name}: not a regular file (planted by an earlier box?)")
            os.fchmod(fd, 0o666 if os.geteuid() == 0 else 0o644)  # as root the box is another uid
            boxrun.write_all(fd, data)
        finally:
            os.close(fd)

    def read(self, name: str, max_bytes: int = 16 << 20) -> bytes:
        """A file the box wrote under /work, read without following anything it planted."""
        return read_beneath(self._workdir(), name, max_bytes)

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

        result, data = boxrun.run_in_box(body, self.config(**dict(sandbox_options or {})),
                                         limit=codec.MAX_BYTES)
        self.results.append(result)
        if result.status != Status.OK:
            raise SandboxCallError(f"sandbox: {result.reason or result.error or result.status}",
                                   result=result)
        if data is None:
            raise SandboxCallError(f"sandbox: the box sent more than {codec.MAX_BYTES >> 20} MiB",
                                   result=result)
        try:
            msg = codec.decode(data)
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
        if self._work >= 0:
            os.close(self._work)  # the last reference to a memdir: it and its files are freed
            self._work = -1
        if self._top is not None:
            shutil.rmtree(self._top, ignore_errors=True)
            self._top = None
