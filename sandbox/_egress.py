"""The egress forwarder: the only way out of a network, to the ``allow_hosts`` pairs only.

A child the network hub forks before it leaves the host's network namespace (so this process
stays in it; ``sandbox._network_hub`` is the other half). The hub makes a listening socket in
the bridge's namespace for each allowed ``NAME:PORT`` (on an address of the bridge that the
boxes allowed it see as NAME in their /etc/hosts) and sends it here; a socket keeps the
namespace it was made in, so we accept there and connect out here. Per accepted connection the
box's address must hold that pair (``allow`` messages, per box), else it is closed at once. NAME
is resolved here, by the host's resolver, at each connection: a box never resolves anything
(it has no resolver to ask: the hub answers every other destination with a refusal).

Everything the box sends is relayed as bytes, never parsed. A thread per connection (this
process never clones a box, so threads cost nothing else), at most ``MAX_CONNECTIONS`` at once.
"""

from __future__ import annotations

import json
import selectors
import socket
import threading

from sandbox import _fdpass

MAX_CONNECTIONS = 256
CONNECT_TIMEOUT = 10.0
CHUNK = 65536


def _relay(inside: socket.socket, name: str, port: int) -> None:
    """Copy both ways until both sides have sent EOF (a half-close is passed on)."""
    try:
        outside = socket.create_connection((name, port), timeout=CONNECT_TIMEOUT)
    except OSError:
        inside.close()
        return
    outside.settimeout(None)
    inside.setblocking(True)
    sel = selectors.DefaultSelector()
    peer = {inside: outside, outside: inside}
    for s in peer:
        sel.register(s, selectors.EVENT_READ)
    try:
        while sel.get_map():
            for key, _ in sel.select():
                src: socket.socket = key.fileobj  # type: ignore[assignment]
                try:
                    data = src.recv(CHUNK)
                    if data:
                        peer[src].sendall(data)
                        continue
                    peer[src].shutdown(socket.SHUT_WR)
                except OSError:
                    return
                sel.unregister(src)
    finally:
        sel.close()
        inside.close()
        outside.close()


def serve(ctl: socket.socket) -> None:
    """The hub's messages on ``ctl``: ``listen`` (NAME, PORT + the socket), ``allow`` (a box's
    address and its pairs), ``forget`` (the box ended). Returns at the hub's EOF."""
    sel = selectors.DefaultSelector()
    sel.register(ctl, selectors.EVENT_READ, None)
    allowed: dict[str, set[tuple[str, int]]] = {}
    while True:
        for key, _ in sel.select():
            if key.data is None:
                msg, fds = _fdpass.recv(ctl)
                if not msg:
                    return
                m = json.loads(msg)
                if m["op"] == "listen" and fds:
                    listener = socket.socket(fileno=fds[0])
                    listener.setblocking(False)
                    sel.register(listener, selectors.EVENT_READ, (str(m["name"]), int(m["port"])))
                elif m["op"] == "allow":
                    allowed[m["address"]] = {(str(n), int(p)) for n, p in m["pairs"]}
                elif m["op"] == "forget":
                    allowed.pop(m["address"], None)
                continue
            listener: socket.socket = key.fileobj  # type: ignore[no-redef]
            try:
                conn, (peer, _port) = listener.accept()
            except OSError:
                continue
            if key.data not in allowed.get(peer, ()) or threading.active_count() > MAX_CONNECTIONS:
                conn.close()
                continue
            threading.Thread(target=_relay, args=(conn, *key.data), daemon=True).start()
