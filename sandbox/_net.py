"""Networking inside the box's own network namespace.

A fresh network namespace has only ``lo``, and it is down. Bringing it up is the only network
setup a box needs by default (``--net none`` still lets programs talk to themselves over
127.0.0.1). Two ways, measured (bench/launch.py prints both):

* ``loopback_up()``: one ``SIOCSIFFLAGS`` ioctl on a throwaway socket, ~10 µs (the socket is
  the ``_socket`` extension's, loaded in the parent: ``socket.py`` would bring enum and
  selectors). This is the hot path.
* ``loopback_up_pyroute2()``: the same through netlink with pyroute2; importing pyroute2 in the
  child costs tens of milliseconds, so it is only used when richer setup is needed.

With only ``127.0.0.1`` and ``::1``, glibc's ``getaddrinfo(..., AI_ADDRCONFIG)`` sees no
configured address of either family (it skips exactly those two), so a lookup of "localhost"
for ``AF_INET`` fails ("Name or service not known") and asyncio or aiohttp servers on
localhost cannot bind. ``loopback_up`` therefore also gives ``lo`` two more addresses that
reach nothing outside the box: ``127.0.0.2/32`` and the link-local ``fe80::1/64``. They are
added with two raw netlink messages on one socket (~30 µs together): the issue's dummy
interface needs the ``dummy`` module, which a user namespace cannot load (``Unknown device
type`` on kernels without it built in), and pyroute2 would cost its import.
"""

from __future__ import annotations

import fcntl
from _socket import AF_INET, AF_INET6, SOCK_CLOEXEC, SOCK_DGRAM, SOCK_RAW
from _socket import socket as _sock
from _struct import pack, unpack  # struct.py only re-exports these

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFF_RUNNING = 0x40

AF_NETLINK, NETLINK_ROUTE = 16, 0
RTM_NEWADDR, NLMSG_ERROR = 20, 2
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
IFA_ADDRESS, IFA_LOCAL = 1, 2
IFA_F_NODAD = 0x02
RT_SCOPE_HOST, RT_SCOPE_LINK = 254, 253
LO_INDEX = 1  # lo is always the first interface of a network namespace
# (family, prefix length, flags, scope, address): what AI_ADDRCONFIG counts as configured
EXTRA_ADDRESSES = ((AF_INET, 32, 0, RT_SCOPE_HOST, bytes((127, 0, 0, 2))),
                   (AF_INET6, 64, IFA_F_NODAD, RT_SCOPE_LINK, b"\xfe\x80" + bytes(13) + b"\x01"))


def loopback_up() -> None:
    s = _sock(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC)
    try:
        req = pack("16sh14x", b"lo", 0)
        flags = unpack("16sh14x", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, pack("16sh14x", b"lo", flags | IFF_UP | IFF_RUNNING))
    finally:
        s.close()
    add_addresses(EXTRA_ADDRESSES)


def _attr(kind: int, data: bytes) -> bytes:
    return pack("HH", 4 + len(data), kind) + data + bytes(-len(data) % 4)


def add_addresses(addresses: tuple[tuple[int, int, int, int, bytes], ...],
                  index: int = LO_INDEX) -> None:
    """RTM_NEWADDR for each address on interface ``index``, each acknowledged. An IPv4 failure
    raises OSError (the box step fails with its errno); IPv6 may be off in the kernel
    (``ipv6.disable=1``): then there is no ``::1`` either, and nothing to fix."""
    s = _sock(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE)
    try:
        for seq, (family, prefix, flags, scope, addr) in enumerate(addresses, 1):
            body = pack("BBBBI", family, prefix, flags, scope, index)
            body += _attr(IFA_LOCAL, addr) + _attr(IFA_ADDRESS, addr)
            s.send(pack("IHHII", 16 + len(body), RTM_NEWADDR,
                        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL, seq, 0) + body)
            reply = s.recv(4096)
            kind = unpack("H", reply[4:6])[0]
            err = -unpack("i", reply[16:20])[0] if kind == NLMSG_ERROR else 0
            if err and family == AF_INET:
                raise OSError(err, f"adding 127.0.0.2 to lo: error {err}")
    finally:
        s.close()


def loopback_up_pyroute2() -> None:
    from pyroute2 import IPRoute  # lazy: never on the hot path

    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname="lo")[0]
        ipr.link("set", index=idx, state="up")
