"""``Box.url(port)``: a box's port as an ``http://127.0.0.1:N/`` URL for ordinary HTTP clients
(urllib, httpx, requests) on the trusted side.

A box on a network has no address the host can route to (its bridge is in the hub's own
network namespace: ``sandbox._network``); ``Box.connect`` hands out sockets made in that
namespace. An HTTP client wants a host and port instead, so a relay listens on the host's
loopback at a free port and joins each connection it accepts to a fresh ``connect(port)``
socket, copying bytes both ways (a half-close is passed on). The box gains nothing: the relay
only ever dials that one port of that one box, and the box cannot reach the listener (no route
to the host's loopback). Like ``docker run -p 127.0.0.1::PORT``, other local users of the
host can connect to the listener while it is open. It closes with the network: its listener,
every relayed connection and its threads (joined), nothing left behind.
"""

from __future__ import annotations

import selectors
import socket
import threading
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

MAX_CONNECTIONS = 64  # relayed at once per URL; more wait in the listener's backlog
CHUNK = 65536
ACCEPT_RETRY = 0.05  # seconds between accepts that failed (out of fds: not a busy loop)


class PortRelay:
    """A loopback listener whose connections are relayed to ``dial()`` sockets."""

    def __init__(self, dial: Callable[[], socket.socket]) -> None:
        self._dial = dial
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=MAX_CONNECTIONS)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._open: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._closed = False
        self._thread("accept", self._accept)

    def _thread(self, what: str, target: Callable[..., None], *args: object) -> None:
        t = threading.Thread(target=target, args=args, name=f"sandbox-relay-{what}-{self.port}", daemon=True)
        with self._lock:
            self._threads = [x for x in self._threads if x.is_alive()] + [t]
        t.start()

    def _accept(self) -> None:
        while True:
            self._slots.acquire()
            try:
                conn, _peer = self._listener.accept()
            except OSError:
                self._slots.release()
                with self._lock:
                    if self._closed:  # close(): the listener was shut down
                        return
                time.sleep(ACCEPT_RETRY)  # EMFILE, ECONNABORTED...: the listener is still good
                continue
            self._thread("pipe", self._pipe, conn)

    def _track(self, s: socket.socket) -> bool:
        with self._lock:
            if self._closed:
                return False
            self._open.add(s)
            return True

    def _pipe(self, client: socket.socket) -> None:
        box = None
        try:
            if not self._track(client):
                return
            try:
                box = self._dial()
            except Exception:  # noqa: BLE001 - nothing listens there (yet), or the network closed: the client sees the close
                return
            if not self._track(box):
                return
            box.settimeout(None)
            try:
                _copy_both_ways(client, box)
            except OSError:  # no fd for the selector (EMFILE): the client sees the close
                pass
        finally:
            for s in (client, box):
                if s is not None:
                    with self._lock:
                        self._open.discard(s)
                    s.close()
            self._slots.release()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            conns, threads = list(self._open), list(self._threads)
        for s in [self._listener, *conns]:  # shutdown wakes a thread blocked on the socket
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for t in threads:
            t.join(5.0)
        self._listener.close()


def _copy_both_ways(a: socket.socket, b: socket.socket) -> None:
    """Copy until both directions have ended; an end of one is passed on as a half-close."""
    peer = {a.fileno(): b, b.fileno(): a}
    with selectors.DefaultSelector() as sel:
        for s in (a, b):
            sel.register(s, selectors.EVENT_READ)
        while sel.get_map():
            for key, _ in sel.select():
                src = key.fileobj
                assert isinstance(src, socket.socket)
                try:
                    data = src.recv(CHUNK)
                    if data:
                        peer[src.fileno()].sendall(data)
                        continue
                    peer[src.fileno()].shutdown(socket.SHUT_WR)
                except OSError:  # a reset on either side ends the pair
                    return
                sel.unregister(src)
