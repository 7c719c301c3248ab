"""The ``sandbox`` fixture: run untrusted programs or functions in fresh boxes from a trusted
test. Everything the box returns crosses as bytes (``Result.stdout``), files read through
``sandbox._safefs`` (no planted symlink is followed), or tagged JSON (``call``) — never pickle.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sandbox import (
    Box,
    Limits,
    MountSpec,
    Result,
    SandboxConfig,
    Status,
    Worker,
    WorkerError,
    Workspace,
    run_sync,
)

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
    ``with sandbox.box() as box: box.exec(argv)`` → a held box (``sandbox.Box``) sharing /work;
    ``sandbox.call(func, *args)`` → func's return value; ``sandbox.read("out.txt")`` → bytes.
    Files live in a per-test tmpfs mounted read-write at ``/work`` (the default cwd): the
    test's boxes share it, it is capped at the tmpfs size (``--sandbox-tmpfs-size``, else
    ``sandbox run``'s default) in bytes and files, and it takes no host disk (``memdir``).
    Where the kernel cannot bind such a tmpfs into a box, /work is a private host directory
    instead (as before: the host disk then bounds it, and ``RLIMIT_FSIZE`` each file)."""

    def __init__(self, config: Any) -> None:
        self._config = config
        self._ws: Workspace | None = None  # /work, made on first use
        self.results: list[Result] = []

    def _workspace(self) -> Workspace:
        if self._ws is None:
            size = self._config.getoption("sandbox_tmpfs_size") or self._config.getini("sandbox_tmpfs_size")
            self._ws = Workspace(Limits.parse(**({"tmpfs_size": size} if size else {})).tmpfs_size)
        return self._ws

    def config(self, network: bool = False, cwd: str = "/work",
               mounts: Sequence[MountSpec] = (), image: str | None = None, **limits: Any) -> SandboxConfig:
        unknown = set(limits) - set(LIMIT_KEYS)
        if unknown:
            raise TypeError(f"unknown sandbox option(s) {sorted(unknown)}; valid: {LIMIT_KEYS}")
        root = str(self._config.rootpath)
        # The project at a neutral path, never its host one: the box runs untrusted code, and a
        # host path names the user and the checkout (tests/escape/test_worker_host_paths.py).
        project = [MountSpec("overlay", PROJECT, root)] if root != "/" and os.path.isdir(root) else []
        return SandboxConfig(limits=Limits.parse(**limits), network="host" if network else "none",
                             mounts=[*project, self._workspace().mount("/work"), *mounts],
                             cwd=cwd, image=image).validate()  # image: the store's (docs/images.md)

    def put(self, name: str, data: bytes) -> None:
        """Write ``/work/<name>`` for the next box. A box that ran before may have planted a
        symlink or FIFO under that name: nothing is followed, only regular files are written."""
        self._workspace().put(name, data)

    def read(self, name: str, max_bytes: int = 16 << 20) -> bytes:
        """A file the box wrote under /work, read without following anything it planted."""
        return self._workspace().read(name, max_bytes)

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None,
            files: Mapping[str, bytes] | None = None, **opts: Any) -> Result:
        for name, data in (files or {}).items():
            self.put(name, data)
        r = run_sync(list(argv), self.config(**opts), stdin=stdin)
        self.results.append(r)
        return r

    def box(self, network: bool = False, cwd: str = "/work", image: str | None = None, **limits: Any) -> Box:
        """A held box (``with sandbox.box() as box: box.exec(...)``) with this test's /work:
        compile once, run many; files in and out with ``box.put``/``box.get`` or ``put``/``read``."""
        return Box(self.config(network=network, cwd=cwd, image=image, **limits))

    def call(self, func: Callable[..., Any] | str, *args: Any,
             sandbox_options: Mapping[str, Any] | None = None, **kwargs: Any) -> Any:
        """Run ``func(*args, **kwargs)`` in a fresh box; return its result decoded from tagged
        JSON (None, bool, int, float, str, bytes, list, tuple, dict).

        The box runs a fresh interpreter (``sandbox._worker``) that has nothing of this process:
        ``func`` crosses as its module and qualified name and is imported inside the box (or
        give ``"module:function"``, so the untrusted module is never imported here at all);
        the arguments cross as tagged JSON, like the result. /work and the project's import
        directories come first on the box's ``sys.path``."""
        module, qualname = _reference(func)
        name = f"{module}.{qualname}"
        msg = {"op": "call", "module": module, "path": qualname.split("."), "args": list(args),
               "kwargs": kwargs}
        why = Worker.crossing_error(msg)  # before any box is made for it
        if why:
            raise TypeError(f"sandbox.call({name}): the arguments cannot cross into the box: {why}")
        cfg = self.config(**dict(sandbox_options or {}))
        cfg.expose_python = "venv"  # the worker imports what this Python has installed
        reply, error = None, ""
        with Box(cfg) as box:
            worker = Worker(box, _import_path(cfg, module))
            try:
                wall = cfg.limits.wall_time
                left = NO_LIMIT if wall is None else max(0.0, wall - (time.monotonic() - worker.started))
                reply = worker.request(msg, left)
            except WorkerError as e:
                error = f"sandbox: the box sent invalid data ({e})" if e.invalid else str(e)
            finally:
                result = worker.close()
                self.results.append(result)
        if result.status != Status.OK and not error.startswith("sandbox: the box sent"):
            error = f"sandbox: {result.reason or result.error or result.status}"
        if error or reply is None:
            raise SandboxCallError(error or "sandbox: no reply", result=result)
        if "ok" in reply:
            return reply["ok"]
        err = reply["error"] if isinstance(reply["error"], dict) else {}
        raise SandboxCallError(f"{err.get('type')}: {err.get('message')}", type_name=str(err.get("type")),
                               traceback_text=str(err.get("traceback", "")), result=result)

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()  # the last reference to /work's tmpfs: it and its files are freed
            self._ws = None


NO_LIMIT = 365 * 86400.0  # a call's time limit when the box has no wall time
PROJECT = "/project"  # where the fixture's boxes see the pytest project (rootdir)


def _reference(func: Callable[..., Any] | str) -> tuple[str, str]:
    """(module, qualified name) by which a fresh interpreter can import ``func``; a TypeError
    naming the function and why, for what cannot be imported by name."""
    if isinstance(func, str):
        module, _, qualname = func.partition(":")
        if not module or not qualname:
            raise TypeError(f"sandbox.call({func!r}): give a function, or 'module:function'")
        return module, qualname
    module, qualname = getattr(func, "__module__", None), getattr(func, "__qualname__", None)
    why = ""
    if not isinstance(module, str) or not isinstance(qualname, str):
        why, module, qualname = "it has no module and qualified name (a partial or a callable object?)", "?", repr(func)
    elif "<lambda>" in qualname:
        why = "it is a lambda"
    elif "<locals>" in qualname:
        why = "it is defined inside a function (a closure)"
    elif module == "__main__":
        why = "it lives in __main__, which another interpreter cannot import"
    else:
        obj: Any = sys.modules.get(module)
        for part in qualname.split("."):
            obj = getattr(obj, part, None)
        if obj is not func and obj != func:
            why = "its module and name lead to something else (a decorated function or a bound method?)"
    if why:
        raise TypeError(f"sandbox.call({module}.{qualname}): {why}. The box runs a fresh Python that "
                        "has nothing of this test process (no closures, no globals) and imports the "
                        "function by module and name: define it at module level, or pass 'module:function'")
    return module, qualname


def _import_path(cfg: SandboxConfig, module: str) -> list[str]:
    """/work, then the directory ``module`` was imported from and this process's ``sys.path``
    entries, those in the project, as the box sees them (under ``PROJECT``)."""
    shared = {m.source: m.target for m in cfg.mounts if m.source is not None and m.target == PROJECT}
    mod = sys.modules.get(module)
    file = getattr(mod, "__file__", None)
    roots = list(sys.path)
    if isinstance(file, str):
        root = os.path.realpath(file)
        for _ in range(1 + module.count(".") + (os.path.basename(root) == "__init__.py")):
            root = os.path.dirname(root)
        roots.insert(0, root)
    seen = [os.path.realpath(p) for p in roots if p]
    return ["/work", *dict.fromkeys(t + p[len(s):] for p in seen for s, t in shared.items()
                                    if p == s or p.startswith(s + "/"))]
