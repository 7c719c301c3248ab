"""Networking inside the box's own network namespace.

A fresh network namespace has only ``lo``, and it is down. Bringing it up is the only network
setup a box needs by default (``--net none`` still lets programs talk to themselves over
127.0.0.1). Two ways, measured (bench/launch.py prints both):

* ``loopback_up()``: one ``SIOCSIFFLAGS`` ioctl on a throwaway socket, ~10 µs (the socket is
  the ``_socket`` extension's, loaded in the parent: ``socket.py`` would bring enum and
  selectors). This is the hot path.
* ``loopback_up_pyroute2()``: the same through netlink with pyroute2; importing pyroute2 in the
  child costs tens of milliseconds, so it is only used when richer setup is needed.
"""

from __future__ import annotations

import fcntl
from _socket import AF_INET, SOCK_CLOEXEC, SOCK_DGRAM
from _socket import socket as _sock
from _struct import pack, unpack  # struct.py only re-exports these

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFF_RUNNING = 0x40


def loopback_up() -> None:
    s = _sock(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC)
    try:
        req = pack("16sh14x", b"lo", 0)
        flags = unpack("16sh14x", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, pack("16sh14x", b"lo", flags | IFF_UP | IFF_RUNNING))
    finally:
        s.close()


def loopback_up_pyroute2() -> None:
    from pyroute2 import IPRoute  # lazy: never on the hot path

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=idx, state="up")
