"""``Box.url(port)``: a box's port as ``http://127.0.0.1:N/`` for ordinary HTTP clients of the
trusted side (``sandbox/_portrelay.py``), relayed through ``connect`` and closed with the
network: listener, connections and threads."""

from __future__ import annotations

import gc
import socket
import threading
import time
import urllib.request

import pytest

import sandbox
from tests.test_network import CFG, _serve

ECHO = ("import socket\n"
        "s = socket.create_server(('0.0.0.0', 9000))\n"
        "while True:\n"
        "    c, _ = s.accept()\n"
        "    data = b''\n"
        "    while chunk := c.recv(65536):\n"
        "        data += chunk\n"
        "    c.sendall(data[::-1])\n"
        "    c.close()\n")


def _relay_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("sandbox-relay-")]


def _get(url: str) -> int:
    deadline = time.monotonic() + 10
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.status
        except OSError:
            assert time.monotonic() < deadline, "the box's server never answered"
            time.sleep(0.05)


def test_an_http_client_here_reaches_a_box_server_by_url_until_the_network_closes() -> None:
    with sandbox.Network() as net, sandbox.Box(CFG, network=net, name="web") as web:
        _serve(web, 8000)
        url = web.url(8000)
        assert url.startswith("http://127.0.0.1:") and url.endswith("/") and web.url(8000) == url
        assert _get(url) == 200
        assert _get(url + "?again") == 200  # one relay, many connections
        port = int(url.rsplit(":", 1)[1].rstrip("/"))
        assert _relay_threads()
    assert not _relay_threads()  # joined at close
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_the_relay_passes_bytes_both_ways_and_a_half_close() -> None:
    with sandbox.Network() as net, sandbox.Box(CFG, network=net, name="echo") as box:
        box.start(["python3", "-c", ECHO])
        host, port = box.url(9000).removeprefix("http://").rstrip("/").split(":")
        deadline = time.monotonic() + 10
        while True:  # until the box's server listens (an empty exchange)
            try:
                box.connect(9000, timeout=2).close()
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline, "the box's server never listened"
                time.sleep(0.05)
        payload = bytes(range(256)) * 4096  # 1 MiB: more than one copy chunk
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(payload)
            s.shutdown(socket.SHUT_WR)  # the box sees EOF, then answers
            got = b""
            while chunk := s.recv(1 << 20):
                got += chunk
        assert got == payload[::-1], len(got)


def test_url_needs_a_network_and_a_valid_port() -> None:
    with sandbox.Box(CFG) as box, pytest.raises(sandbox.BoxError, match="on no network"):
        box.url(8000)
    with sandbox.Network() as net, sandbox.Box(CFG, network=net, name="b") as b, \
            pytest.raises(ValueError, match="port 70000 is not valid"):
        b.url(70000)


def test_a_closed_boxs_url_closes_with_it_not_left_for_the_next_box_at_its_address() -> None:
    """The network outlives its boxes and gives a freed address to a later box: a URL of a
    closed box must not stay open (a listener and thread per URL for the network's life) and
    reach whatever box is given that address next."""
    with sandbox.Network() as net:
        with sandbox.Box(CFG, network=net, name="gone") as box:
            _serve(box, 8000)
            url = box.url(8000)
            assert _get(url) == 200
        port = int(url.rsplit(":", 1)[1].rstrip("/"))
        assert not _relay_threads()
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
        with sandbox.Box(CFG, network=net, name="next") as nxt:  # the relay is made again
            _serve(nxt, 8000)
            assert _get(nxt.url(8000)) == 200


def _no_free_fd(keep: socket.socket) -> tuple[list[int], tuple[int, int]]:
    """Lower RLIMIT_NOFILE to the highest open fd and fill the holes below it (dups of
    ``keep``): the next fd anyone here asks for is EMFILE. Returns what to undo."""
    import os
    import resource

    limits = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = max(int(n) for n in os.listdir("/proc/self/fd"))
    resource.setrlimit(resource.RLIMIT_NOFILE, (top + 1, limits[1]))
    fills: list[int] = []
    while True:
        try:
            fills.append(os.dup(keep.fileno()))
        except OSError:
            break
    with pytest.raises(OSError, match="Too many open files"):
        socket.socket().close()
    return fills, limits


def _undo(fills: list[int], limits: tuple[int, int]) -> None:
    import os
    import resource

    for fd in fills:
        os.close(fd)
    resource.setrlimit(resource.RLIMIT_NOFILE, limits)


def test_the_relay_outlives_an_accept_that_failed_for_want_of_fds() -> None:
    """accept(2) can fail and the listener still be good (EMFILE, ECONNABORTED): the relay
    keeps accepting (a queued client is served once fds are free), not end its accept thread
    and leave every later client hanging in the backlog."""
    from sandbox._portrelay import PortRelay

    with socket.create_server(("127.0.0.1", 0)) as target:
        relay = PortRelay(lambda: socket.create_connection(target.getsockname(), timeout=5))
        try:
            client = socket.socket()
            client.settimeout(10)
            gc.collect()  # (no socket of an earlier test closed by the collector meanwhile)
            gc.disable()
            fills, limits = _no_free_fd(client)
            try:
                client.connect(("127.0.0.1", relay.port))  # queued; the relay's accept fails
                time.sleep(0.3)
            finally:
                _undo(fills, limits)
                gc.enable()
            # (the queued client is relayed once fds are free; had an fd come free in the
            # window, the relay accepted it and, unable to dial, closed it)
            with client, socket.create_connection(("127.0.0.1", relay.port), timeout=10):
                target.settimeout(10)
                target.accept()[0].close()  # a relayed connection: the relay still accepts
        finally:
            relay.close()
    assert not _relay_threads()
