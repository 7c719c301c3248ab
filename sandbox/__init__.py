"""Rootless Linux sandbox for running untrusted code.

Public, typed API (see README):

    import sandbox
    result = sandbox.run_sync(["python3", "-c", "print(1)"], sandbox.SandboxConfig())
    result = await sandbox.run(["python3", "x.py"], config)          # inside trio
    async with sandbox.Supervisor() as sup:                           # many boxes, warm launcher
        result = await sup.run(argv, config, stdin=b"...")

Imports stay light: trio is only imported when the async API is used, so the CLI and the
in-box code paths never pay for it.
"""

from __future__ import annotations

from sandbox.config import ConfigError, Limits, MountSpec, SandboxConfig
from sandbox.result import Result, Status

TYPE_CHECKING = False  # no typing import at run time: the CLI's start-up is measured
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from sandbox._box import Box, BoxError, Usage
    from sandbox._box_files import Changes
    from sandbox._box_proc import Process
    from sandbox.supervisor import Supervisor

__all__ = ["Box", "BoxError", "Changes", "ConfigError", "Limits", "MountSpec", "Process",
           "Result", "SandboxConfig", "Status", "Supervisor", "Usage", "run", "run_sync"]

_LAZY = {"Box": "sandbox._box", "BoxError": "sandbox._box", "Changes": "sandbox._box_files",
         "Usage": "sandbox._box", "Process": "sandbox._box_proc", "Supervisor": "sandbox.supervisor"}


def run_sync(argv: Sequence[str], config: SandboxConfig | None = None, *,
             stdin: bytes | None = None) -> Result:
    """Run one box and wait for its verdict (blocking).

    From a single-threaded process the box is cloned directly (fastest path). When other
    threads exist, cloning here would be unsafe, so a trio supervisor with its own
    single-threaded launcher process does it instead.
    """
    import threading

    if threading.active_count() == 1:
        from sandbox.direct import run_direct

        return run_direct(argv, config, stdin=stdin)
    import trio

    return trio.run(lambda: run(argv, config, stdin=stdin))


async def run(argv: Sequence[str], config: SandboxConfig | None = None, *,
              stdin: bytes | None = None, supervisor: Supervisor | None = None) -> Result:
    """Run one box from trio. Pass a long-lived ``supervisor`` to reuse its warm launcher."""
    from sandbox.supervisor import Supervisor

    if supervisor is not None:
        return await supervisor.run(argv, config, stdin=stdin)
    async with Supervisor() as sup:
        return await sup.run(argv, config, stdin=stdin)


def __getattr__(name: str) -> Any:
    """The rest of the API, imported on first use (the CLI's start pays for none of it)."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sandbox' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
