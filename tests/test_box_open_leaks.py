"""A box whose start fails part-way (a held ``Box``, a grader's ``BoxSession``, ``run_sync``;
EMFILE while its socket, pipes, memfds, /dev/null, pidfd or sync pipe are made) leaves
nothing behind: no fd, no init, and (on a cgroup host) no leaf; a one-shot box's verdict is
then XX, not an exception.

Run in a child interpreter: the test lowers RLIMIT_NOFILE, which must not starve the pytest
process's other threads (xdist's channel) of fds.
"""

from __future__ import annotations

import os
import subprocess
import sys

_CHILD = r"""
import os, resource, sys
from sandbox import Box, SandboxConfig, Status, run_sync

def fds():
    out = {}
    for f in os.listdir("/proc/self/fd"):
        try:
            out[f] = os.readlink(f"/proc/self/fd/{f}")
        except OSError:  # the listing's own fd
            pass
    return out

def held():
    Box(SandboxConfig()).open().close()

def worker():
    from sandbox import Worker

    with Box(SandboxConfig()) as box:
        Worker(box).close()  # (its verdict may be XX: the worker's own EMFILE)

def one_shot():
    r = run_sync(["true"])
    if r.status is not Status.OK:
        raise RuntimeError(r.error)

soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
for how in (held, worker, one_shot):
    for extra in range(14):
        before = fds()
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(before) + extra, hard))
        try:
            how()
            failed = "ok"
        except RuntimeError:  # the XX verdict
            failed = "xx"
        except Exception as e:  # OSError, BoxError
            failed = "raised" if how is one_shot else "xx"
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        left = sorted(v for k, v in fds().items() if before.get(k) != v)
        kids = open(f"/proc/self/task/{os.getpid()}/children").read().split()
        print(how.__name__, extra, failed, len(left), len(kids), left, flush=True)
"""


def test_a_box_whose_start_hits_emfile_leaves_no_fd_or_init(no_leftovers) -> None:
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                         env=env, check=True).stdout
    rows = [line.split(None, 5) for line in out.splitlines()]
    assert len(rows) == 42, out
    for how in ("held", "worker", "one_shot"):  # the limit did bite, and was at last high enough
        assert {r[2] for r in rows if r[0] == how} == {"xx", "ok"}, out
    for how, extra, _failed, leaked, kids, _left in rows:
        assert (leaked, kids) == ("0", "0"), f"{how}, RLIMIT_NOFILE open fds + {extra}:\n{out}"
