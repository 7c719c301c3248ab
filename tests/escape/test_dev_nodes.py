"""A box's /dev nodes are the host's own inodes (issue 13, weak layer "inotify").

/dev/null, /dev/urandom ... are bound from the host's /dev: a user namespace can make no device
node (mknod is EPERM) and opens none on a filesystem it mounted (the kernel marks those
superblocks nodev), so there is no other inode to give. A watch on one reports every host
process that opens, reads, writes or closes it: ``cmd > /dev/null`` anywhere on the host. The
default policy refuses inotify and fanotify (``seccomp_rules``: ENOSYS, as on a kernel built
without them); ``seccomp_allow=("inotify",)`` gives them back, and then the channel is there.
"""

from __future__ import annotations

import os
import textwrap

import pytest

import sandbox
from sandbox import SandboxConfig
from tests.escape._watch import watch

DEV = ["/dev/null", "/dev/urandom"]


def _touch_dev() -> None:
    """What host processes do all day: open /dev/null, read and write it, read urandom."""
    for _ in range(3):
        with open("/dev/null", "r+b", buffering=0) as f:
            f.read(1)
            f.write(b"x")
        with open("/dev/urandom", "rb", buffering=0) as f:
            f.read(16)


@pytest.mark.parametrize("runner", ["run", "box"])
def test_a_box_cannot_watch_the_hosts_dev_nodes(runner, no_leftovers):
    last = watch(DEV, _touch_dev, None if runner == "run" else SandboxConfig())
    assert last == "refused ENOSYS", f"the box watched host /dev nodes: {last}"


FANOTIFY = """
    import ctypes, errno, os
    libc = ctypes.CDLL(None, use_errno=True)
    FAN_CLASS_NOTIF, FAN_REPORT_FID = 0, 0x200  # what an unprivileged user may ask for
    fd = libc.fanotify_init(FAN_CLASS_NOTIF | FAN_REPORT_FID, os.O_RDONLY)
    print("fd" if fd >= 0 else errno.errorcode[ctypes.get_errno()])
    """


def test_fanotify_is_refused_too(no_leftovers):
    """Unprivileged fanotify (Linux >= 5.13) marks an inode like inotify does."""
    r = sandbox.run_sync(["python3", "-c", textwrap.dedent(FANOTIFY)], SandboxConfig())
    assert r.status == "OK" and r.stdout == b"ENOSYS\n", r


def test_with_inotify_allowed_the_hosts_dev_activity_shows(no_leftovers):
    """Why the rule exists: with it relaxed, the box's watch on /dev/null reports the host's
    opens (the day a kernel stops notifying for device nodes, this fails and the rule can go)."""
    last = watch(DEV, _touch_dev, SandboxConfig(seccomp_allow=("inotify",)))
    host, own = map(int, last.split())
    assert own > 0 and host > 0, last


def test_programs_fall_back_without_inotify(no_leftovers):
    """``tail -f`` (GNU coreutils) says it polls and goes on, as on a kernel without inotify:
    it follows a writer until the writer ends (``--pid``: then it reads what is left, exits)."""
    if not os.path.exists("/usr/bin/tail"):
        pytest.skip("no tail")
    r = sandbox.run_sync(["sh", "-c", "echo one > /tmp/f; (sleep 0.3; echo two >> /tmp/f) & "
                          "tail -s 0.1 -f --pid=$! /tmp/f"], SandboxConfig())
    assert r.status == "OK", r
    assert r.stdout == b"one\ntwo\n", r
    assert b"reverting to polling" in r.stderr, r


DNOTIFY = textwrap.dedent("""
    import errno, fcntl, os
    fd = os.open("/shared", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.fcntl(fd, fcntl.F_NOTIFY, fcntl.DN_CREATE | fcntl.DN_MODIFY | fcntl.DN_MULTISHOT)
        print("watching")
    except OSError as e:
        print("refused", errno.errorcode[e.errno])
""")


@pytest.mark.parametrize("allow", [False, True])
def test_dnotify_on_a_shared_host_directory_is_refused(allow, box_tmp, no_leftovers):
    """dnotify (fcntl F_NOTIFY), inotify's ancestor, watches a directory: on a writable --bind
    it reports what host processes do there. Refused with inotify (EINVAL: a kernel without
    CONFIG_DNOTIFY); ``seccomp_allow=("inotify",)`` gives both back."""
    cfg = SandboxConfig(mounts=[sandbox.MountSpec("bind", "/shared", str(box_tmp))],
                        seccomp_allow=("inotify",) if allow else ())
    r = sandbox.run_sync(["python3", "-c", DNOTIFY], cfg)
    assert r.ok, r.stderr
    assert r.stdout.strip() == (b"watching" if allow else b"refused EINVAL"), r.stdout
