"""Capabilities and process attributes, through python-prctl where it can do the job.

python-prctl's C module ``_prctl`` is called directly: its Python module ``prctl`` builds
per-capability property objects at import (1.35 ms of every CLI start, measured: median of 50
fresh processes) that nothing here uses, and ``prctl.set_pdeathsig(s)``,
``prctl.capbset_drop(c)`` and friends are exactly ``_prctl.prctl(PR_..., x)``. Long-lived
processes (the launcher) use ``prctl`` itself. Three calls go around the
library, each because it cannot make them (docs/architecture.md):

* ``PR_CAPBSET_DROP`` of a capability newer than python-prctl's build (it refuses numbers above
  the ``CAP_LAST_CAP`` of the headers it was compiled with: ``ValueError``);
* ``PR_CAP_AMBIENT`` (python-prctl 1.8 has no such option: "Unknown prctl option");
* ``capset(2)``: python-prctl (libcap) clears only the capabilities of its own table; one
  capset of zeros clears every bit the kernel has, and is one syscall (3.9 µs against 45 µs
  for ``prctl.set_caps``, 118 µs for the three ``cap_*.limit()``).

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
    """prctl(2) through libc, for what python-prctl refuses (see the module's docstring)."""
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
_KNOWN_CAPS = range(min(_LAST_CAP, _prctl.CAP_LAST_CAP) + 1)  # python-prctl drops these
_NEWER_CAPS = range(_prctl.CAP_LAST_CAP + 1, _LAST_CAP + 1)  # the kernel's, unknown to it
# SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_KEEP_CAPS_LOCKED: uid 0 gains nothing on exec,
# and nobody can turn that off again.
_SECUREBITS = 0x01 | 0x02 | 0x20


def drop_bounding_set() -> None:
    """Empty the bounding and ambient sets and lock securebits so no later execve (even of a
    uid-0 program) can bring a capability back. Needs CAP_SETPCAP: call before changing uid.
    Every capability the *kernel* has (``cap_last_cap``), not only those python-prctl knows."""
    for cap in _KNOWN_CAPS:
        _prctl.prctl(_prctl.PR_CAPBSET_DROP, cap)
    for cap in _NEWER_CAPS:
        _raw_prctl(_prctl.PR_CAPBSET_DROP, cap)
    try:
        _raw_prctl(_PR_CAP_AMBIENT, _PR_CAP_AMBIENT_CLEAR_ALL)
    except OSError:
        pass  # kernel < 4.3 has no ambient set; nothing to clear
    _prctl.prctl(_prctl.PR_SET_SECUREBITS, _SECUREBITS)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                ("inheritable", ctypes.c_uint32)]


_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def clear_capabilities() -> None:
    """Empty inheritable, effective and permitted in one capset(2): every bit, including
    capabilities newer than python-prctl's table. The process holds nothing from here on."""
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
