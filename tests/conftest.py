"""Shared test helpers: host-state snapshots for the "nothing left behind" checks."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest


def descendants(pid: int) -> set[int]:
    """Every live process whose ancestry includes ``pid``."""
    parent: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    parent[int(name)] = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
    out: set[int] = set()
    for p in parent:
        q = p
        while q in parent and q not in (0, 1):
            q = parent[q]
            if q == pid:
                out.add(p)
                break
    return out


@dataclass
class HostState:
    children: set[int]
    mounts: int
    tmp: set[str]
    fds: set[str]


def host_state() -> HostState:
    with open("/proc/self/mountinfo") as f:
        mounts = sum(1 for _ in f)
    return HostState(descendants(os.getpid()), mounts, set(os.listdir("/tmp")),
                     set(os.listdir("/proc/self/fd")))


@pytest.fixture
def no_leftovers():
    """Assert the test left no process, mount, /tmp entry or fd behind on the host."""
    before = host_state()
    yield
    after = host_state()
    assert after.children - before.children == set(), "processes left behind"
    assert after.mounts == before.mounts, "host mount table changed"
    assert after.tmp - before.tmp == set(), "temp files/dirs left in /tmp"
    assert after.fds - before.fds == set(), "file descriptors leaked"


ROOT_MODE = os.geteuid() == 0


@pytest.fixture
def box_tmp():
    """A host temp dir the box's init can traverse in both modes (in root mode the box runs as
    an unprivileged high uid, so pytest's 0700 tmp_path would be unreachable — by design)."""
    import shutil
    import tempfile
    from pathlib import Path

    d = tempfile.mkdtemp(prefix="sbx-test-")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)
