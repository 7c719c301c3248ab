"""Capabilities and process attributes set through prctl (python-prctl + two raw prctls).

python-prctl's C module ``_prctl`` is called directly: its Python wrapper ``prctl`` builds
per-capability property objects at import (~0.7 ms of the CLI's start) that nothing here uses;
``prctl.set_pdeathsig(s)`` and friends are exactly ``_prctl.prctl(PR_SET_PDEATHSIG, s)``.

Why each step exists:
* The box's init is the user namespace's creator, so it holds *every* capability inside it.
  The payload must hold none: bounding, ambient, inheritable, permitted and effective sets are
  all emptied, or an execve of a uid-0 program would regain them (capabilities(7), "root exec").
* ``no_new_privs`` makes setuid/setgid/file-capability binaries harmless and is what lets an
  unprivileged process install a seccomp filter at all.
* ``PDEATHSIG`` ties a box to its parent: if the launcher dies, the box's init dies, and with it
  the whole pid namespace.
* Non-dumpable init: the payload runs with the same uid, and without this it could ptrace or
  read ``/proc/1/mem`` of init and forge the status report.
"""

from __future__ import annotations

import os
import select

import _prctl

from sandbox import _clib as ctypes  # the ctypes names, without ctypes/__init__ (see _clib)
from sandbox._syscalls import _libc, check, read_file  # symbols pre-resolved in the parent

_PR_CAP_AMBIENT = 47
_PR_CAP_AMBIENT_CLEAR_ALL = 4


def _raw_prctl(option: int, arg2: int = 0) -> None:
    check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(0),
                      ctypes.c_ulong(0), ctypes.c_ulong(0)), f"prctl({option})")


def set_parent_death_signal(sig: int, parent_pidfd: int) -> None:
    """PDEATHSIG, then check the parent is still alive: if it died before the prctl took effect
    we were already reparented and would never get the signal (the classic race). getppid()
    cannot tell us (it is 0 for a pid namespace's init), so we poll a pidfd of the parent."""
    _prctl.prctl(_prctl.PR_SET_PDEATHSIG, sig)
    if parent_pidfd >= 0 and select.select([parent_pidfd], [], [], 0)[0]:
        os._exit(1)


def set_dumpable(flag: bool) -> None:
    _prctl.prctl(_prctl.PR_SET_DUMPABLE, int(flag))


def _last_cap() -> int:
    """The kernel's highest capability number (newer than python-prctl's table, maybe)."""
    try:
        return int(read_file("/proc/sys/kernel/cap_last_cap"))
    except (OSError, ValueError):
        return int(_prctl.CAP_LAST_CAP)


_LAST_CAP = _last_cap()  # read in the parent: the child may no longer see the host's /proc
_PR_CAPBSET_DROP = 24
_PR_SET_SECUREBITS = 28
# SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_KEEP_CAPS_LOCKED: uid 0 gains nothing on exec,
# and nobody can turn that off again.
_SECUREBITS = 0x01 | 0x02 | 0x20


def drop_bounding_set() -> None:
    """Empty the bounding and ambient sets and lock securebits so no later execve (even of a
    uid-0 program) can bring a capability back. Needs CAP_SETPCAP: call before changing uid.

    Raw prctl calls (one per capability) instead of python-prctl's capbset: this runs on every
    box start and the library's per-capability bookkeeping costs ~0.3 ms."""
    for cap in range(_LAST_CAP + 1):
        _raw_prctl(_PR_CAPBSET_DROP, cap)
    try:
        _raw_prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError:
        pass  # kernel < 4.3 has no ambient set; nothing to clear
    _raw_prctl(_PR_SET_SECUREBITS, _SECUREBITS)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def clear_capabilities() -> None:
    """Empty inheritable, effective and permitted in one capset(2) (python-prctl needs three
    round trips per set, ~0.1 ms on every box start). The process holds nothing from here on."""
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    check(_libc.capset(ctypes.byref(hdr), data), "capset")


def set_no_new_privs() -> None:
    _prctl.prctl(_prctl.PR_SET_NO_NEW_PRIVS, 1)


def effective_capabilities() -> int:
    """CapEff of this process as a bitmask (for tests and the doctor)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    return 0
