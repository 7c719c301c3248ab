"""User namespace id maps.

Three modes, chosen in the parent before the clone:

* ``single`` (unprivileged, the default): the box's init writes its own maps right after the
  clone: ``setgroups`` → ``deny`` first (required since Linux 3.19, so an unprivileged user can
  never drop supplementary groups to escape a negative group ACL), then one line each mapping
  inside 0 to our own host uid/gid. No round trip to the parent: this is the fast path. init is
  thus uid 0 of the box's user namespace, as with a range map, which the kernel requires of
  whoever sets the box's IPC limits (``sandbox._ipclimits``); when its set-up is done it enters
  a nested user namespace mapping the box user (1000) onto itself (``enter_box_user``), and the
  payload starts there: one host id throughout, seen as 1000 inside, with no capability in the
  box's own user namespace (the one that owns its mount, net and IPC namespaces).
* ``range`` as root: the parent writes a 65536-id map onto an unused high host block, so the box
  holds no host identity that owns anything; the child waits on a pipe until the maps exist.
* ``range`` via ``newuidmap``/``newgidmap`` for a plain user with an ``/etc/subuid`` range.
"""

from __future__ import annotations

import os

from sandbox import _syscalls as sc
from sandbox._record import record

ROOT_BLOCK_BASE = 0x40000000
BLOCK = 65536


@record(frozen=True)
class IdPlan:
    """How the box's uid/gid maps are written, and which ids the payload runs as."""

    mode: str  # "single" | "root-range" | "subid-range"
    inside_uid: int
    inside_gid: int
    outside_uid: int
    outside_gid: int
    subuid: tuple[int, int] | None = None  # (start, count) for newuidmap
    subgid: tuple[int, int] | None = None

    @property
    def parent_writes(self) -> bool:
        return self.mode != "single"


def _subid_range(path: str, name: str, uid: int) -> tuple[int, int] | None:
    try:
        with open(path) as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[0] in (name, str(uid)):
                    return int(parts[1]), int(parts[2])
    except OSError:
        return None
    return None


def plan_ids(inside_uid: int, inside_gid: int, id_map: str = "auto") -> IdPlan:
    uid, gid = os.geteuid(), os.getegid()
    if id_map in ("auto", "range") and uid == 0:
        return IdPlan("root-range", inside_uid, inside_gid, uid, gid)
    if id_map == "range":
        import pwd
        import shutil

        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        su = _subid_range("/etc/subuid", name, uid)
        sg = _subid_range("/etc/subgid", name, uid)
        if su and sg and shutil.which("newuidmap") and shutil.which("newgidmap"):
            return IdPlan("subid-range", inside_uid, inside_gid, uid, gid, su, sg)
    return IdPlan("single", inside_uid, inside_gid, uid, gid)


_write = sc.write_file


def write_own_maps(plan: IdPlan) -> None:
    """In the child, right after clone(CLONE_NEWUSER): the unprivileged single-id map, of
    inside 0 (the box user's comes with ``enter_box_user``)."""
    write_single_maps(0, plan.outside_uid, 0, plan.outside_gid)


def enter_box_user(plan: IdPlan) -> None:
    """Single-id map, at the end of init's set-up: a nested user namespace mapping the box
    user onto init's uid 0, so init and the payload are the box user from here on. We keep
    every capability in the new namespace (to drop them as the hardening says) and none in the
    box's: nothing after this step needs one there."""
    if plan.parent_writes or (plan.inside_uid, plan.inside_gid) == (0, 0):
        return
    sc.unshare(sc.CLONE_NEWUSER)
    write_single_maps(plan.inside_uid, 0, plan.inside_gid, 0)


def write_single_maps(uid: int, outside_uid: int, gid: int, outside_gid: int) -> None:
    """Our own new user namespace's one-id maps, setgroups denied first (an unprivileged writer
    may map only its own ids, and gid_map only after setgroups is denied: user_namespaces(7))."""
    _write("/proc/self/setgroups", "deny")
    _write("/proc/self/uid_map", f"{uid} {outside_uid} 1\n")
    _write("/proc/self/gid_map", f"{gid} {outside_gid} 1\n")


def write_maps_for(pid: int, plan: IdPlan) -> None:
    """In the parent: a full 65536-id map (root: high block; user: /etc/subuid via newuidmap).

    Inside id 0 maps to the first id of the block; the box user ``inside_uid`` to block+uid.
    """
    if plan.mode == "root-range":
        base = ROOT_BLOCK_BASE + (pid % 8192) * BLOCK
        _write(f"/proc/{pid}/uid_map", f"0 {base} {BLOCK}\n")
        _write(f"/proc/{pid}/gid_map", f"0 {base} {BLOCK}\n")
        return
    import subprocess  # only for the subordinate-id mode; keeps the CLI's cold start low

    assert plan.subuid and plan.subgid
    for tool, (start, count), own in (("newuidmap", plan.subuid, plan.outside_uid),
                                      ("newgidmap", plan.subgid, plan.outside_gid)):
        n = min(count, BLOCK - 1)
        # inside 0 → our own id (so files we own stay ours), 1..n → the subordinate range
        subprocess.run([tool, str(pid), "0", str(own), "1", "1", str(start), str(n)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def become_inside_root(plan: IdPlan) -> None:
    """Range maps: init was cloned as host root, which is unmapped inside (so every file it
    created would fail with EOVERFLOW); become inside 0, keeping our namespace capabilities."""
    if plan.parent_writes:
        os.setresgid(0, 0, 0)
        os.setgroups([])
        os.setresuid(0, 0, 0)


def become_inside_ids(plan: IdPlan) -> None:
    """With a range map the box's init starts as inside uid 0; switch to the box user ids.

    Capabilities survive only because init still needs them for mounts: this is called by the
    payload, not init, and the payload drops every capability right after.
    """
    if plan.parent_writes:
        os.setgroups([])
        os.setresgid(plan.inside_gid, plan.inside_gid, plan.inside_gid)
        os.setresuid(plan.inside_uid, plan.inside_uid, plan.inside_uid)
