"""_caps.py through python-prctl: what a box's payload holds, read from inside a real box."""

from __future__ import annotations

import _prctl
import pytest

import sandbox
from sandbox import SandboxConfig, _caps

PR_GET_SECUREBITS = 27
# SECBIT_NOROOT | SECBIT_NOROOT_LOCKED | SECBIT_KEEP_CAPS_LOCKED
LOCKED = 0x01 | 0x02 | 0x20


def test_the_bounding_drop_covers_every_capability_the_kernel_has():
    """python-prctl drops what it knows, libc the rest: together exactly 0..cap_last_cap.
    (The rest exists because python-prctl refuses a number above its build's table, before
    any syscall: if that ever changes, the libc path can go.)"""
    last = int(open("/proc/sys/kernel/cap_last_cap").read())
    dropped = list(_caps._KNOWN_CAPS) + list(_caps._NEWER_CAPS)
    assert dropped == list(range(last + 1))
    with pytest.raises(ValueError, match="Unknown capability"):
        _prctl.prctl(_prctl.PR_CAPBSET_DROP, _prctl.CAP_LAST_CAP + 1)


def test_the_payload_runs_with_root_exec_disabled_and_locked(no_leftovers):
    """securebits (set with python-prctl) as the payload sees them: uid 0 gains nothing on
    exec, and neither that nor keep-caps can be turned off again."""
    code = ("import ctypes; print(ctypes.CDLL(None, use_errno=True).prctl("
            f"{PR_GET_SECUREBITS}, 0, 0, 0, 0))")
    r = sandbox.run_sync(["python3", "-c", code], SandboxConfig(uid=0, gid=0))
    assert r.ok and int(r.stdout) == LOCKED, r
