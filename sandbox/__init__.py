"""Rootless Linux sandbox for running untrusted code.

Public, typed API (see README); ``__all__`` is all of it, every other module is private:

    import sandbox
    with sandbox.Box(config) as box:                                  # a box you hold
        r = box.exec(["gcc", "x.c"]); box.put(...); box.get(...); box.changes()
    result = sandbox.run_sync(["python3", "-c", "print(1)"], sandbox.SandboxConfig())
    result = await sandbox.run(["python3", "x.py"], config)          # inside trio
    async with sandbox.Supervisor() as sup:                           # many boxes, warm launcher
        result = await sup.run(argv, config, stdin=b"...")
        async with sup.box(config) as box: ...                        # a held box in trio
    with sandbox.Network() as net, sandbox.Box(cfg, network=net, name="db") as db: ...
    with sandbox.Workspace("64M") as ws: ...                          # files shared by boxes

Imports stay light: trio is only imported when the async API is used, so the CLI and the
in-box code paths never pay for it.
"""

from __future__ import annotations

from sandbox._config import ENV_ALLOWLIST, ConfigError, Limits, MountSpec, SandboxConfig
from sandbox._result import Result, Status

__version__ = "0.1.0"  # the one place it is written: pyproject.toml reads it (dynamic)

for _cls in (ConfigError, Limits, MountSpec, SandboxConfig, Result, Status):
    _cls.__module__ = "sandbox"  # as trio does: help() and reprs name the public home
del _cls

TYPE_CHECKING = False  # no typing import at run time: the CLI's start-up is measured
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

    from sandbox._box import Box
    from sandbox._box_files import Changes, Checkpoint
    from sandbox._box_proc import Process
    from sandbox._boxlife import BoxError, Usage
    from sandbox._doctor import diagnose
    from sandbox._images import ImageError, ImageStore
    from sandbox._layers import LayerError
    from sandbox._network import Network, NetworkError
    from sandbox._plan import Prepared as Plan
    from sandbox._supervisor import Supervisor
    from sandbox._worker_host import CallError, Worker, WorkerError
    from sandbox._workspace import Workspace

__all__ = ["ENV_ALLOWLIST", "Box", "BoxError", "CallError", "Changes", "Checkpoint", "ConfigError",
           "ImageError", "ImageStore", "LayerError", "Limits", "MountSpec", "Network", "NetworkError", "Plan", "Process",
           "Result", "SandboxConfig", "Status", "Supervisor", "Usage", "Worker", "WorkerError",
           "Workspace", "cgroup_fallbacks", "diagnose", "prepare", "run", "run_sync"]

_LAZY = {"Box": "sandbox._box", "Plan": "sandbox._plan", "Workspace": "sandbox._workspace", "BoxError": "sandbox._boxlife", "diagnose": "sandbox._doctor", "Changes": "sandbox._box_files",
         "Checkpoint": "sandbox._box_files", "Worker": "sandbox._worker_host",
         "WorkerError": "sandbox._worker_host", "CallError": "sandbox._worker_host",
         "Usage": "sandbox._boxlife", "Process": "sandbox._box_proc", "Supervisor": "sandbox._supervisor",
         "ImageStore": "sandbox._images", "ImageError": "sandbox._images", "LayerError": "sandbox._layers",
         "Network": "sandbox._network", "NetworkError": "sandbox._network"}


def cgroup_fallbacks(config: SandboxConfig | None = None) -> dict[str, str]:
    """Before a box runs: limit → why no cgroup will hold it, for each limit of ``config`` a
    cgroup would hold (memory, pids, cpus, cpu_time; memfd and kernel_buffers with memory) that
    will fall back, as the verdict's ``Result.fallback_reasons`` will say; empty when all are
    held. ``cpus`` without a cgroup is not enforced at all. Opens this process's delegated
    cgroup subtree if it was not yet (the first box would), creates no box."""
    from sandbox._boxcgroup import expected_fallbacks

    return expected_fallbacks((config or SandboxConfig()).validate())


def prepare(config: SandboxConfig | None = None) -> Plan:
    """The parent-side plan of a box for ``config`` (its root filesystem, rlimits, compiled
    seccomp program: most of a box's start on our side), computed once for many ``run_sync``
    calls with the same config (``plan=``). Immutable: it keeps the config as it was (and the
    host files it read) when made. Where the box gets a cgroup leaf, the plan depends on what the
    leaf holds, and each box is planned afresh."""
    from sandbox._plan import prepare as _prepare

    return _prepare((config or SandboxConfig()).validate(), ())


def run_sync(target: Sequence[str] | Callable[[], int], config: SandboxConfig | None = None, *,
             stdin: bytes | int | None = None,
             on_output: Callable[[int, bytes], bool | None] | None = None,
             pass_fds: Sequence[int] = (), plan: Plan | None = None,
             forward_signals: bool = False, stop_timeout: float | str = 10.0,
             tty: bool = False) -> Result:
    """Run one fresh box and wait for its verdict (blocking): a box that lives for one command.

    ``target``: argv to exec in the box (a fresh program that has seen nothing of the caller).
    A Python callable instead runs in a *clone of this process* inside the box (its heap, its
    modules: trusted code only, as the plugin's ``@sandboxed`` tests; untrusted Python goes
    through ``Box.exec`` or the grader, which start a fresh interpreter). Its return value is
    the exit code; ``pass_fds`` are fds of ours it keeps.

    ``stdin``: bytes to feed, or an fd of ours streamed into the box's stdin pipe until its EOF
    (the box never receives the fd itself: it could reopen a file for writing through
    /proc/self/fd, or take over a terminal). ``on_output(1|2, chunk)`` sees output as it
    arrives, within the output cap (``Result.stdout``/``stderr`` then stay empty); returning
    False says that stream's reader is gone: the box's pipe is closed, and the program gets
    SIGPIPE/EPIPE on its next write, as in a shell pipeline.

    ``forward_signals`` (from the main thread, for a command-line tool running the box in its
    foreground): SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1/2 we receive go to the program;
    after SIGTERM/SIGHUP it has ``stop_timeout`` to end, a second SIGTERM kills the box; Ctrl-Z
    (SIGTSTP) stops the whole box and us, ``fg`` resumes both (no wall time passes meanwhile).
    ``tty`` with ``stdin`` a terminal fd of ours: the box gets a pty of its own (never our
    terminal), relayed to ours in raw mode and restored after; its output is one stream (stdout).

    The same life as a held ``Box`` (its cgroup leaf, plan, clone and end), with the command
    handed to init at the clone instead of a request afterwards. From a multi-threaded caller
    an argv box is cloned by a trio supervisor's small single-threaded launcher (init is then a
    clone of that process, not of ours: its size is not in the box's peak memory); anything
    else by a forked single-threaded helper (``_spawn.spawn_box``).
    """
    import _thread

    from sandbox._direct import run_direct

    if (_thread._count() > 0 and plan is None and not forward_signals and not tty and not callable(target) and not isinstance(stdin, int)
            and on_output is None and not pass_fds and not (cfg := config or SandboxConfig()).holds_fds()
            and not cfg.allow_hosts and not cfg.link):  # (egress, shaping: the direct runner's hub)
        import trio

        return trio.run(lambda: run(target, config, stdin=stdin))
    if plan is not None:
        if config is None:
            config = plan.config
        elif config is not plan.config and config != plan.config:
            raise ConfigError("plan: made for another config (sandbox.prepare(config))")
    feed: dict[str, Any] = ({"stdin_from": stdin} if isinstance(stdin, int) and not isinstance(stdin, bool)
                            else {"stdin": stdin})
    if tty:
        feed["tty"] = True
    if forward_signals:
        from sandbox._config import parse_duration

        feed.update(forward_signals=True, stop_timeout=parse_duration(stop_timeout, "stop_timeout"))
    return run_direct(target, config, on_output=on_output, pass_fds=pass_fds, prepared=plan, **feed)


async def run(argv: Sequence[str], config: SandboxConfig | None = None, *,
              stdin: bytes | None = None, supervisor: Supervisor | None = None) -> Result:
    """Run one box from trio. Pass a long-lived ``supervisor`` to reuse its warm launcher."""
    from sandbox._supervisor import Supervisor

    if supervisor is not None:
        return await supervisor.run(argv, config, stdin=stdin)
    async with Supervisor() as sup:
        return await sup.run(argv, config, stdin=stdin)


def __getattr__(name: str) -> Any:
    """The rest of the API, imported on first use (the CLI's start pays for none of it)."""
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name]), name)
        if isinstance(value, type) or callable(value):
            value.__module__ = "sandbox"
        globals()[name] = value
        return value
    raise AttributeError(f"module 'sandbox' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
