"""The hub's half of egress by allow-list: what a box may reach, and the count of what it tried.

(The other half is ``sandbox._egress``, the forwarder that connects out.) In the bridge's
namespace, every destination outside the boxes' subnet is made *local* (a ``local 0.0.0.0/0``
route in the local table, the boxes' subnet routed on the bridge above it), and each box's
default route leads to the hub. So whatever a box sends out — TCP to any address and port, UDP,
DNS queries — arrives at the hub's own kernel, where nothing listens but the forwarder's
sockets: TCP is refused with a reset, UDP with port-unreachable, at once and fail-closed (no
uplink exists to leak through), and raw sockets are not the box's to open at all.

An allowed ``NAME:PORT`` gets an address of the subnet (shown to the boxes allowed it as NAME in
their /etc/hosts) and a listening socket there, which goes to the forwarder. The forwarder only
relays for a box whose address holds that pair; a box that connects to another box's pair is
turned away there and counted here.

Counting: two raw sockets (TCP, UDP) see every packet delivered to the hub; a SYN from a box
counts as allowed when it is for one of that box's pairs and as refused otherwise, as does
every UDP datagram. The counts (and the first refused destinations) end up in the box's usage.
"""

from __future__ import annotations

import socket

from sandbox import _fdpass
from sandbox._config import split_host_port

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ipaddress
    from collections.abc import Callable, Iterable
    from typing import Any

LOCAL_TABLE = 255
RT_SCOPE_LINK, RT_SCOPE_HOST = 253, 254
KEEP_REFUSED = 10  # destinations listed per box; the count is exact
TCP_SYN, TCP_ACK = 0x02, 0x10


class Gate:
    def __init__(self, ipr: Any, bridge: int, subnet: ipaddress.IPv4Network, hub: str,
                 forwarder: socket.socket, take_address: Callable[[], str]) -> None:
        self.ipr, self.bridge, self.subnet, self.hub = ipr, bridge, subnet, hub
        self.forwarder, self.take_address = forwarder, take_address
        lo = ipr.link("get", ifname="lo")[0]["index"]
        ipr.link("set", index=lo, state="up")
        ipr.route("add", dst="0.0.0.0/0", type="local", table=LOCAL_TABLE, oif=lo, scope=RT_SCOPE_HOST)
        ipr.route("add", dst=str(subnet), table=LOCAL_TABLE, oif=bridge, scope=RT_SCOPE_LINK, prefsrc=hub)
        self.addresses: dict[str, str] = {}  # allowed NAME → its address on the bridge
        self.listening: set[tuple[str, int]] = set()
        self.pairs: dict[str, set[tuple[str, int]]] = {}  # box address → what it may reach
        self.stats: dict[str, dict[str, Any]] = {}
        self.raw = [socket.socket(socket.AF_INET, socket.SOCK_RAW, proto)
                    for proto in (socket.IPPROTO_TCP, socket.IPPROTO_UDP)]
        for s in self.raw:
            s.setblocking(False)

    def admit(self, box: str, allow: Iterable[str]) -> dict[str, str]:
        """Open the box's pairs (listeners made on first use); its /etc/hosts names for them."""
        pairs = {split_host_port(item) for item in allow}
        hosts = {}
        for name, port in sorted(pairs):
            addr = self.addresses.get(name)
            if addr is None and _is_ipv4(name):  # every address is local here: listen on it
                addr = self.addresses[name] = name
            elif addr is None:
                addr = self.addresses[name] = self.take_address()
                self.ipr.addr("add", index=self.bridge, address=addr, prefixlen=32)
            if (name, port) not in self.listening:
                listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                try:
                    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    listener.bind((addr, port))
                    listener.listen(64)
                    _fdpass.send(self.forwarder, {"op": "listen", "name": name, "port": port},
                                 [listener.fileno()])
                finally:
                    listener.close()
                self.listening.add((name, port))
            if addr != name:
                hosts[name] = addr
        self.pairs[box] = pairs
        self.stats[box] = {"allowed": 0, "refused": 0, "refused_to": []}
        _fdpass.send(self.forwarder, {"op": "allow", "address": box, "pairs": sorted(pairs)})
        return hosts

    def forget(self, box: str) -> dict[str, Any]:
        """The box ended: its counts (counted up to now), and its pairs closed."""
        self.count()
        self.pairs.pop(box, None)
        _fdpass.send(self.forwarder, {"op": "forget", "address": box})
        return self.stats.pop(box, {"allowed": 0, "refused": 0, "refused_to": []})

    def count(self) -> None:
        """Drain both raw sockets (non-blocking) into the counts."""
        for s in self.raw:
            while True:
                try:
                    pkt = s.recv(128)
                except (BlockingIOError, InterruptedError):
                    break
                self._packet(pkt)

    def _packet(self, pkt: bytes) -> None:
        if len(pkt) < 20:
            return
        ihl = (pkt[0] & 0x0F) * 4
        src, dst = socket.inet_ntoa(pkt[12:16]), socket.inet_ntoa(pkt[16:20])
        stats = self.stats.get(src)
        tcp = pkt[9] == socket.IPPROTO_TCP
        if stats is None or len(pkt) < ihl + (14 if tcp else 4):
            return
        dport = int.from_bytes(pkt[ihl + 2:ihl + 4], "big")
        if tcp:
            if pkt[ihl + 13] & (TCP_SYN | TCP_ACK) != TCP_SYN:
                return  # only the first packet of a connection attempt
            names = [n for n, a in self.addresses.items() if a == dst]
            if names and (names[0], dport) in self.pairs.get(src, ()):
                stats["allowed"] += 1
                return
            where = f"{names[0] if names else dst}:{dport}"
        else:
            where = f"udp {dst}:{dport}"
        stats["refused"] += 1
        if len(stats["refused_to"]) < KEEP_REFUSED:
            stats["refused_to"].append(where)


def _is_ipv4(name: str) -> bool:
    try:
        socket.inet_aton(name)
    except OSError:
        return False
    return name.count(".") == 3
