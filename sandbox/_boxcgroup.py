"""A box's cgroup, for every runner: this process's delegated subtree (opened once), a fresh
leaf per box, which limits it holds, and why the others fell back (``Result.fallback_reasons``).

One subtree per process (keyed by pid), so pytest-xdist workers and forked helpers never share
or collide; on a host without delegation nothing but the detection is imported.
"""

from __future__ import annotations

import os

from sandbox._config import SandboxConfig

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


_MANAGERS: dict[int, object] = {}  # pid → CgroupManager | None: one subtree per process
_NO_MANAGER: dict[int, str] = {}  # pid → why it has none (for the verdicts' fallback reasons)


def open_box_cgroup(config: SandboxConfig) -> tuple[Any, str | None]:
    """A fresh cgroup v2 leaf for one box, or (None, None) to fall back to rlimits, or
    (None, reason) when ``require_cgroup`` forbids the fallback. The manager (our delegated
    subtree) is opened once per process, so pytest-xdist workers never collide."""
    if not config.use_cgroup:
        return None, None
    mgr: Any = cgroup_manager()
    if mgr is None:
        if config.require_cgroup:
            from sandbox import _cgroup_env

            return None, f"no usable delegated cgroup v2 subtree ({_cgroup_env.detect().reason})"
        return None, None
    try:
        return mgr.create_box(config.limits), None
    except OSError as e:
        if config.require_cgroup:
            return None, f"cannot create the box's cgroup: {e}"
        return None, None


def cgroup_manager() -> Any:
    """This process's delegated subtree (opened once: it may move us into a leaf), or None."""
    from sandbox import _cgroup_env  # the manager's module only where there is something to manage

    pid = os.getpid()
    if pid not in _MANAGERS:
        env = _cgroup_env.detect()
        _MANAGERS[pid], _NO_MANAGER[pid] = None, env.reason
        if not env.reason:
            from sandbox import _cgroups

            try:
                _MANAGERS[pid] = _cgroups.CgroupManager.open(require=True, env=env)
            except OSError as e:
                _NO_MANAGER[pid] = f"cannot set up a cgroup subtree in {env.own_path}: {e.strerror or e}"
        if _MANAGERS[pid] is not None:
            import atexit

            atexit.register(_MANAGERS[pid].close)  # type: ignore[union-attr]
    return _MANAGERS[pid]


def cgroup_enforced(box_cg: Any) -> frozenset[str]:
    if box_cg is None:
        return frozenset()
    return frozenset(k for k, v in box_cg.enforced.items() if v == "cgroup")


def cgroup_fallbacks(config: SandboxConfig, box_cg: Any) -> dict[str, str]:
    """limit → why no cgroup holds it (``Result.fallback_reasons``): the box's cgroup lacks the
    controller, or the box has none (why this process has no subtree, or its leaf failed)."""
    from sandbox import _cgroup_env

    if box_cg is not None:
        return dict(box_cg.fallback)
    mgr: Any = _MANAGERS.get(os.getpid())
    if not config.use_cgroup:
        why = "this box does not use cgroups (use_cgroup=False)"
    elif mgr is None:
        why = _NO_MANAGER.get(os.getpid()) or "no cgroup v2 subtree was opened"
    else:
        why = mgr.last_error or "the box's cgroup could not be created"
    return _cgroup_env.fallback_reasons(config.limits, frozenset(), why)


def expected_fallbacks(config: SandboxConfig) -> dict[str, str]:
    """What ``cgroup_fallbacks`` will say for this process's next box of ``config``, before it
    exists (``sandbox.cgroup_fallbacks``: the CLI's warning before the run). The subtree is
    opened as the box's start would (once per process); no leaf is made."""
    from sandbox import _cgroup_env

    if not config.use_cgroup:
        return cgroup_fallbacks(config, None)
    mgr: Any = cgroup_manager()
    if mgr is None:
        return cgroup_fallbacks(config, None)
    held = {lim for lim, ctl in _cgroup_env.CONTROLLER_OF.items() if not ctl or ctl in mgr.controllers}
    return _cgroup_env.fallback_reasons(config.limits, held, mgr.missing)
