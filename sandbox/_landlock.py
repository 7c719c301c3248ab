"""Landlock (Linux ≥ 5.13): an optional second wall on filesystem *writes*, inside the box.

The mount layout already decides what a box can reach. Landlock adds value as defense in depth:
should a mount ever be writable by mistake (a ``--bind`` of the wrong directory, a future bug
in the rootfs code), writes are still confined to the places a box is meant to write: /tmp,
/dev/shm, the device nodes, /proc, and the targets of ``--bind``/``--overlay``/``--tmpfs``.
Reads are not restricted (the mount layout does that). Applied by the box's init just before
the seccomp filter; ``Result.landlock`` says whether it was.
"""

from __future__ import annotations

import os

from sandbox import _clib as ctypes  # the ctypes names, without ctypes/__init__ (see _clib)
from sandbox._syscalls import _syscall, check

_NR_CREATE, _NR_ADD_RULE, _NR_RESTRICT = 444, 445, 446  # same on x86-64 and aarch64
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1

EXECUTE, WRITE_FILE, READ_FILE, READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
WRITES_V1 = sum(1 << i for i in (1, 4, 5, 6, 7, 8, 9, 10, 11, 12))  # write, remove, make_*
REFER, TRUNCATE = 1 << 13, 1 << 14


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def abi_version() -> int:
    v = _syscall(ctypes.c_long(_NR_CREATE), None, ctypes.c_size_t(0),
                 ctypes.c_uint32(_CREATE_RULESET_VERSION))
    return max(0, int(v))


def write_rights(abi: int) -> int:
    rights = WRITES_V1
    if abi >= 2:
        rights |= REFER
    if abi >= 3:
        rights |= TRUNCATE
    return rights


def restrict_writes(writable: list[str], abi: int) -> None:
    """Allow write-type access only beneath ``writable`` (paths inside the box), for this
    process and everything it starts. Needs no_new_privs (set earlier in the sequence)."""
    rights = write_rights(abi)
    attr = _RulesetAttr(rights)
    rfd = _syscall(ctypes.c_long(_NR_CREATE), ctypes.byref(attr), ctypes.c_size_t(ctypes.sizeof(attr)),
                   ctypes.c_uint32(0))
    check(rfd, "landlock_create_ruleset")
    try:
        for path in writable:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue
            try:
                is_dir = os.path.isdir(f"/proc/self/fd/{fd}")
                rule = _PathBeneath(rights if is_dir else rights & (WRITE_FILE | TRUNCATE), fd)
                check(_syscall(ctypes.c_long(_NR_ADD_RULE), ctypes.c_int(rfd),
                               ctypes.c_int(_RULE_PATH_BENEATH), ctypes.byref(rule),
                               ctypes.c_uint32(0)), f"landlock_add_rule {path}")
            finally:
                os.close(fd)
        check(_syscall(ctypes.c_long(_NR_RESTRICT), ctypes.c_int(rfd), ctypes.c_uint32(0)),
              "landlock_restrict_self")
    finally:
        os.close(rfd)
