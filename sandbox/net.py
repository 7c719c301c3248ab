"""Networking inside the box's own network namespace.

A fresh network namespace has only ``lo``, and it is down. Bringing it up is the only network
setup a box needs by default (``--net none`` still lets programs talk to themselves over
127.0.0.1). Two ways, measured (bench/launch.py prints both):

* ``loopback_up()``: one ``SIOCSIFFLAGS`` ioctl on a throwaway socket, ~10 µs, no imports
  (the socket comes from libc's socket(): the ``_socket`` extension would be ~0.15 ms of every
  cold start just to load). This is the hot path.
* ``loopback_up_pyroute2()``: the same through netlink with pyroute2; importing pyroute2 in the
  child costs tens of milliseconds, so it is only used when richer setup is needed.
"""

from __future__ import annotations

import fcntl
import os
from _struct import pack, unpack  # struct.py only re-exports these

from sandbox._syscalls import _libc, check

AF_INET, SOCK_DGRAM, SOCK_CLOEXEC = 2, 2, 0o2000000

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFF_RUNNING = 0x40


def loopback_up() -> None:
    fd = check(_libc.socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0), "socket")
    try:
        req = pack("16sh14x", b"lo", 0)
        flags = unpack("16sh14x", fcntl.ioctl(fd, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(fd, SIOCSIFFLAGS, pack("16sh14x", b"lo", flags | IFF_UP | IFF_RUNNING))
    finally:
        os.close(fd)


def loopback_up_pyroute2() -> None:
    from pyroute2 import IPRoute  # lazy: never on the hot path

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=idx, state="up")
