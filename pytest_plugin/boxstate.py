"""The process state a boxed test would have had unboxed, put back inside the box.

The box's test process is a clone of pytest, but the library makes the clone a clean payload:
every signal disposition back to the kernel default, and (to keep the clone's copy-on-write
pages untouched by a collection) the whole heap in gc's permanent generation. A test then sees
a process plain pytest never gives it:

* SIGPIPE at its default kills the test without a stack, where CPython (which ignores it at
  start-up) raises ``BrokenPipeError``; SIGINT kills the box instead of raising
  ``KeyboardInterrupt``; a handler the suite installed (a conftest's SIGALRM, SIGUSR1) is gone;
* ``gc.get_referrers``/``gc.get_objects`` do not see anything made before the clone.

``capture()`` takes the host's state just before the box is cloned; ``restore()`` runs first
thing in the box. Two signals stay at their default: SIGXFSZ and SIGXCPU are how the kernel
ends a box at its file-size (the output limit) and CPU limits, and CPython ignores SIGXFSZ.

Under the RLIMIT_AS fallback the memory limit counts address space, not memory: each new thread
reserves its 8 MiB stack and glibc a 64 MiB malloc arena, so 512M on top of pytest held about
six threads (``ThreadPoolExecutor(16)`` failed). ``fit_threads`` makes threads cheap in address
space there: one malloc arena (``mallopt(M_ARENA_MAX, 1)``, and ``MALLOC_ARENA_MAX=1`` for the
programs the test starts) and 4 MiB thread stacks unless the suite chose a size itself.
"""

from __future__ import annotations

import _signal  # not signal.py: its enum conversions made capture() cost ~0.25 ms a test
import gc
import os
import resource
import sys
import threading
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

KEPT_DEFAULT = frozenset({_signal.SIGKILL, _signal.SIGSTOP, _signal.SIGXFSZ, _signal.SIGXCPU})
THREAD_STACK = 4 << 20
M_ARENA_MAX = -8  # glibc's mallopt parameter
_MALLOPT: list[Any] = []  # libc's mallopt, resolved on the host once (the box inherits it)


@dataclass(frozen=True)
class HostState:
    handlers: dict[int, Any]  # signal → SIG_IGN or a Python handler (SIG_DFL ones are omitted)
    blocked: frozenset[int]
    gc_frozen: int
    venv: dict[str, str]  # see _venv_env


def capture() -> HostState:
    """The signal dispositions and gc freeze of this (the host's test) process, now."""
    handlers: dict[int, Any] = {}
    for sig in _signal.valid_signals():
        if sig in KEPT_DEFAULT:
            continue
        try:
            h = _signal.getsignal(sig)
        except (OSError, ValueError):
            continue
        if h is not None and h != _signal.SIG_DFL:
            handlers[sig] = h
    if not _MALLOPT:
        _MALLOPT.append(_resolve_mallopt())
    blocked = frozenset(_signal.pthread_sigmask(_signal.SIG_BLOCK, []))
    venv = _venv_env(os.environ.get("PATH", ""), os.environ.get("VIRTUAL_ENV"), sys.prefix)
    return HostState(handlers, blocked - KEPT_DEFAULT, gc.get_freeze_count(), venv)


def restore(state: HostState) -> None:
    """Inside the box, before anything of the test runs."""
    for sig, handler in state.handlers.items():
        try:
            _signal.signal(sig, handler)
        except (OSError, ValueError):
            pass
    _signal.pthread_sigmask(_signal.SIG_SETMASK, state.blocked)
    if state.gc_frozen == 0:  # the library froze the heap for the clone; the host had nothing frozen
        gc.unfreeze()
    if "PATH" in state.venv:  # ahead of the box's PATH (a marker's env= PATH included)
        path = os.environ.get("PATH", "").split(os.pathsep)
        os.environ["PATH"] = os.pathsep.join(
            [*(p for p in state.venv["PATH"].split(os.pathsep) if p not in path), *path])
    if "VIRTUAL_ENV" in state.venv:
        os.environ.setdefault("VIRTUAL_ENV", state.venv["VIRTUAL_ENV"])
    fit_threads()


@lru_cache(maxsize=8)  # realpath of each PATH entry: ~0.1 ms, the same for every test
def _venv_env(path: str, virtual_env: str | None, prefix: str) -> dict[str, str]:
    """An active venv's part of the environment, so its console scripts (``pytest``, ``black``,
    a project's own entry points) run by name in the box as outside. A venv is active when its
    ``bin`` is on the host PATH: ``$VIRTUAL_ENV/bin`` (activated) or ``sys.prefix/bin`` (pytest
    runs from a venv whose bin is on PATH, as under tox or nox). Only those entries go in, in
    their host order: the box sees the running venv at its host path (``expose_python="host"``),
    while the rest of the host PATH names the user's home and tools the box does not see."""
    venvs = {os.path.realpath(os.path.join(d, "bin")) for d in (
        virtual_env, prefix if prefix != sys.base_prefix else None) if d}
    keep: list[str] = []
    for p in path.split(os.pathsep):
        real = os.path.realpath(p) if p else ""
        if real in venvs:  # the box exposes the venv at its resolved path, so that one too
            keep.extend(x for x in dict.fromkeys((p, real)) if x not in keep)
    env = {"PATH": os.pathsep.join(keep)} if keep else {}
    if keep and virtual_env:
        env["VIRTUAL_ENV"] = virtual_env
    return env


def address_space_limited() -> bool:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return soft != resource.RLIM_INFINITY


def fit_threads() -> None:
    if not address_space_limited():
        return  # a cgroup holds the memory: virtual reservations cost nothing there
    arenas = os.environ.setdefault("MALLOC_ARENA_MAX", "1")  # a marker's env= wins
    mallopt = _MALLOPT[0] if _MALLOPT else None
    if mallopt is not None and arenas.isdigit():  # glibc read the variable at pytest's start
        mallopt(M_ARENA_MAX, int(arenas))
    if threading.stack_size() == 0:
        threading.stack_size(THREAD_STACK)


def _resolve_mallopt() -> Any:
    try:
        import ctypes

        return ctypes.CDLL(None).mallopt
    except (ImportError, OSError, AttributeError):  # not glibc (musl has no arenas to cap)
        return None


THREAD_FAILURE = "can't start new thread"


def memory_refusal(message: str) -> str | None:
    """What an RLIMIT_AS refusal looks like in a test's failure message, if it is one."""
    if "MemoryError" in message:
        return "allocation refused: MemoryError"
    if THREAD_FAILURE in message:
        return f"{THREAD_FAILURE}: each thread reserves its stack in the address space"
    return None
