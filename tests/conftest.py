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
    mounts: set[tuple[str, str]]
    fds: set[str]
    cgroups: set[str]


def _alive(pid: int) -> bool:
    return os.path.exists(f"/proc/{pid}")


def our_cgroups() -> set[str]:
    """The cgroup directories the project makes (``sandbox-PID`` subtrees, ``supervisor-PID``
    leaves, ``box-N`` leaves inside a subtree) next to or below our own cgroup, where cgroup v2
    is delegated; empty elsewhere. Names carry the creating process's pid, so a leftover can be
    told apart from a subtree another live process (a second xdist worker) is still using."""
    from sandbox import _cgroup_env

    env = _cgroup_env.detect()
    if env.reason or not env.own_dir:
        return set()
    found: set[str] = set()
    for top in {env.own_dir, os.path.dirname(env.own_dir)}:
        try:
            names = os.listdir(top)
        except OSError:
            continue
        for name in names:
            if name.startswith(("sandbox-", "supervisor-")):
                path = os.path.join(top, name)
                found.add(path)
                try:
                    found.update(os.path.join(path, n) for n in os.listdir(path) if n.startswith("box-"))
                except OSError:
                    pass
    return found


def _owner(path: str) -> int | None:
    """The pid in a ``sandbox-PID``/``supervisor-PID`` name (for a ``box-N``: its subtree's)."""
    if os.path.basename(path).startswith("box-"):
        path = os.path.dirname(path)
    try:
        return int(os.path.basename(path).rsplit("-", 1)[1])
    except ValueError:
        return None


# Where a box mounts before pivot_root (its tmpfs on /tmp, then /newroot, /scratch, /oldroot):
# a box mount that propagated into our namespace appears at one of these. Other processes of a
# shared machine (root's podman, a network namespace under /run/netns) mount elsewhere.
BOX_MOUNT_PLACES = ("/tmp", "/newroot", "/scratch", "/oldroot")


TEST_TMPDIR_PREFIX = "sbx-test-tmpdir-"


def box_like_mounts() -> set[tuple[str, str]]:
    """(mount id, mount point) of every mount in our namespace at a place a box mounts, except
    under another test's TMPDIR (a root-mode test that mounts on purpose, in a second xdist
    worker: that test checks its own)."""
    import tempfile

    own = tempfile.gettempdir()
    others = os.path.join(os.path.dirname(own) if TEST_TMPDIR_PREFIX in own else own,
                          TEST_TMPDIR_PREFIX)
    out = set()
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            point = fields[4]
            if point.startswith(others) and not (point + "/").startswith(own + "/"):
                continue
            if any(point == p or point.startswith(p + "/") for p in BOX_MOUNT_PLACES):
                out.add((fields[0], point))
    return out


def host_state() -> HostState:
    mounts = box_like_mounts()
    return HostState(descendants(os.getpid()), mounts, set(os.listdir("/proc/self/fd")),
                     our_cgroups())


def cgroups_left(before: HostState, after: HostState) -> set[str]:
    """New project cgroups that outlived their test: an empty box leaf, or any directory whose
    creating process is gone. Our own process's subtree may stay (it lives as long as the
    process does, like the cached manager that made it); other live processes' are theirs."""
    ours = {os.getpid()} | before.children | after.children
    left = set()
    for path in after.cgroups - before.cgroups:
        pid = _owner(path)
        if pid is None or not _alive(pid):
            left.add(path)
        elif os.path.basename(path).startswith("box-") and pid in ours and not _populated(path):
            # an empty leaf nobody removed; a populated one is a live box (a supervisor's warm
            # pool refills in its idle time), and a leaked process is caught by the pid check
            left.add(path)
    return left


def _populated(path: str) -> bool:
    try:
        with open(os.path.join(path, "cgroup.events")) as f:
            return "populated 1" in f.read()
    except OSError:
        return False


@pytest.fixture
def no_leftovers(monkeypatch, tmp_path_factory):
    """Assert the test left nothing behind, counting only what the test itself made: processes
    descending from this one, mounts at the places a box mounts (BOX_MOUNT_PLACES), our fds, the project's cgroups (see
    cgroups_left), and temp files. For the last, the test runs with a fresh TMPDIR of its own
    (tempfile's default and the environment of every program it starts), which must be empty
    afterwards: other processes' entries in a shared /tmp (pip builds, a guest run, a second
    xdist worker) never count."""
    import shutil
    import tempfile

    tmp_path_factory.getbasetemp()  # pytest's own temp root is fixed before TMPDIR moves
    tmp = tempfile.mkdtemp(prefix=TEST_TMPDIR_PREFIX)
    os.chmod(tmp, 0o755)  # root mode: a box's high uid must traverse what the test puts here
    monkeypatch.setenv("TMPDIR", tmp)
    monkeypatch.setattr(tempfile, "tempdir", tmp)
    before = host_state()
    yield
    after = host_state()
    left_tmp = os.listdir(tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    assert after.children - before.children == set(), "processes left behind"
    assert after.mounts - before.mounts == set(), "a box's mounts reached the host's table"
    assert left_tmp == [], f"temp files/dirs left behind: {left_tmp}"
    assert after.fds - before.fds == set(), "file descriptors leaked"
    assert cgroups_left(before, after) == set(), "cgroups left behind"


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
