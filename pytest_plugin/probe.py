"""Can this pytest process create sandboxes? Asked once per process, with a real box.

Why a real box rather than reading sysctls: Docker's seccomp profile, AppArmor's userns
restriction, a hardened or old kernel all block boxes in different places (clone, the uid
map, a mount), and only a trial sees every one of them. When the trial fails, ``sandbox
doctor``'s checks name the concrete cause and its fix, which becomes the skip reason.
"""

from __future__ import annotations

from typing import Any

import pytest

_KEY = pytest.StashKey[str | None]()


def unavailable(config: pytest.Config) -> str | None:
    """None when boxes work here; otherwise why not and how to fix it (one line)."""
    if _KEY not in config.stash:
        config.stash[_KEY] = _probe()
    return config.stash[_KEY]


def _probe() -> str | None:
    from sandbox import SandboxConfig, Status, run_sync

    r = run_sync(lambda: 0, SandboxConfig(use_cgroup=False))
    if r.status == Status.OK:
        return None
    return explain(r)


def explain(r: Any) -> str:
    why = r.error or r.reason or str(r.status)
    try:
        from sandbox import diagnose

        failed = [c for c in diagnose() if c.status == "fail"]
    except Exception as e:  # noqa: BLE001 - the diagnosis is a nicety; the trial's error stands
        failed, why = [], f"{why}; sandbox doctor failed too: {e!r}"
    if failed:
        c = failed[0]
        fix = f"; fix: {c.fix}" if c.fix else ""
        return f"sandbox unavailable: {c.name}: {c.detail}{fix} (run `sandbox doctor`)"
    return f"sandbox unavailable: {why} (run `sandbox doctor` for the fix)"
