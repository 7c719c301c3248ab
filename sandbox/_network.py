"""``Network``: boxes that talk to each other, and to the trusted side, over a bridge of their own.

The host half (the hub process is ``sandbox._network_hub``, which says why boxes on a network
are cloned there). One ``Network`` is one hub: a user and network namespace with a bridge, a
subnet (10.89.0.0/24) and no route anywhere else. A box joins it at its start
(``Box(config, network=net, name="server")``) and leaves it when it ends.

    with sandbox.Network() as net, \\
         sandbox.Box(cfg, network=net, name="server") as srv, \\
         sandbox.Box(cfg, network=net, name="client") as cli:
        srv.start(["python3", "-m", "http.server", "8000"])
        cli.exec(["python3", "-c", "import urllib.request as u; u.urlopen('http://server:8000')"])
        s = srv.connect(8000)                  # a socket from the trusted side into the box

Thread-safe (one lock around each request to the hub): ``AsyncBox`` opens boxes in worker
threads.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading

from sandbox import _fdpass
from sandbox._boxlife import BoxError, xx_result
from sandbox._spawn import BoxProcess

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any

    from sandbox._config import SandboxConfig

START_TIMEOUT = 30.0
SOCKETS_AHEAD = 8  # connect(): unconnected sockets of the bridge's namespace, fetched in batches


class NetworkError(Exception):
    """The network could not be made or used (the hub's reason), or was used after it closed."""


class Network:
    """A bridge for boxes; a context manager (``close`` ends its boxes and the hub)."""

    def __init__(self, *, latency: float | str | None = None, loss: float | str | None = None,
                 rate: str | None = None, allow_hosts: Sequence[str] = ()) -> None:
        from sandbox._config import split_host_port

        self.shaping = shaping(latency, loss, rate)
        self.allow_hosts = tuple(allow_hosts)  # for every box on it (each box adds its own)
        for item in self.allow_hosts:
            split_host_port(item)
        self._sock: socket.socket | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()
        self._sockets: list[int] = []
        self._relays: dict[tuple[str, int], Any] = {}  # (address, port) → its PortRelay (url)
        self._closing = False  # (under the lock: no relay is added once close took them)
        self.subnet = self.address = ""

    def __enter__(self) -> Network:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self) -> Network:
        if self._sock is not None:
            raise NetworkError("this network is already open")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "sandbox._network_hub", str(theirs.fileno()), str(os.getpid()),
                 json.dumps(self.shaping), json.dumps(self.allow_hosts)],
                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        self._sock = ours
        try:
            ours.settimeout(START_TIMEOUT)
            reply = self._reply([])
            ours.settimeout(None)
        except BaseException:
            self.close()
            raise
        if reply.get("op") != "ready":
            self.close()
            raise NetworkError(f"the network could not be made: {reply.get('error', 'no reason given')}")
        self.subnet, self.address = reply["subnet"], reply["address"]
        return self

    def close(self) -> None:
        """Kill every box still on the network, end the hub (its namespaces go with it)."""
        if self._sock is None:
            return
        with self._lock:
            relays, self._relays, self._closing = list(self._relays.values()), {}, True
        for relay in relays:
            relay.close()
        with self._lock:
            for fd in self._sockets:
                os.close(fd)
            self._sockets.clear()
        self._sock.close()  # EOF: the hub kills and reaps its boxes, reports each, exits
        assert self._proc is not None
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    @property
    def closed(self) -> bool:
        return self._proc is None or self._proc.poll() is not None

    def _reply(self, fds: list[int]) -> dict[str, Any]:
        assert self._sock is not None
        try:
            msg, got = _fdpass.recv(self._sock)
        except OSError as e:
            raise NetworkError(f"the network's hub did not answer: {e}") from None
        if not msg:
            raise NetworkError("the network's hub has ended")
        fds += got
        return json.loads(msg)  # type: ignore[no-any-return]

    def _request(self, obj: dict[str, Any], fds: Sequence[int]) -> tuple[dict[str, Any], list[int]]:
        if self._sock is None or self.closed:
            raise NetworkError("this network is closed")
        with self._lock:
            try:
                _fdpass.send(self._sock, obj, list(fds))
            except OSError as e:
                raise NetworkError(f"the network's hub has ended: {e}") from None
            got: list[int] = []
            return self._reply(got), got

    def spawn(self, config: SandboxConfig, name: str, enforced: Sequence[str], *, serve: bool,
              stdio: Sequence[int], status_w: int, pass_fds: Sequence[int] = (),
              cgroup_fd: int | None = None,
              argv: list[str] | None = None) -> tuple[BoxProcess, str, socket.socket]:
        """The hub clones the box's init on this network (``BoxLife.spawn``): its process, its
        address, and the socket the hub reports its end on (see ``exit_waiter``)."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        fds = [*stdio, status_w, theirs.fileno(), *pass_fds] + ([cgroup_fd] if cgroup_fd is not None else [])
        try:
            reply, got = self._request({"op": "spawn", "name": name, "config": config.to_dict(),
                                        "serve": serve, "cgroup_enforced": sorted(enforced), "argv": argv,
                                        "cgroup": cgroup_fd is not None}, fds)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        if reply.get("op") != "spawned" or len(got) != 1:
            for fd in got:
                os.close(fd)
            ours.close()
            err = reply.get("errno")
            if err:
                raise OSError(err, reply.get("error", "the hub could not start the box"))
            r = xx_result("network", str(reply.get("error", "the hub could not start the box")))
            raise BoxError(r.error or "network", r)  # (the box's XX verdict: run_direct's result)
        return BoxProcess(int(reply["pid"]), got[0]), str(reply["address"]), ours

    def connect(self, address: str, port: int, timeout: float | None = 10.0) -> socket.socket:
        """A TCP connection from the trusted side to ``address:port`` on this network."""
        _check_port(port)
        with self._lock:
            fd = self._sockets.pop() if self._sockets else -1
        if fd < 0:  # a few at a time: each request is a round trip to the hub
            reply, got = self._request({"op": "sockets", "count": SOCKETS_AHEAD}, [])
            if not got:
                raise NetworkError(f"the hub gave no socket: {reply.get('error', '')}")
            fd = got.pop()
            with self._lock:
                self._sockets += got
        s = socket.socket(fileno=fd)
        try:
            s.settimeout(timeout)
            s.connect((address, port))
        except BaseException:
            s.close()
            raise
        return s


    def close_relays(self, address: str) -> None:
        """Close the ``url`` relays to ``address`` (its box closed: the network may give the
        address to a later box, which an old URL must not reach)."""
        with self._lock:
            gone = [k for k in self._relays if k[0] == address]
            relays = [self._relays.pop(k) for k in gone]
        for relay in relays:
            relay.close()

    def url(self, address: str, port: int, scheme: str = "http") -> str:
        """``scheme://127.0.0.1:N/``: a loopback port of the host relayed to ``address:port``
        on this network (``sandbox._portrelay``), open until the network closes."""
        key = (address, port)
        with self._lock:
            relay = self._relays.get(key)
        if relay is None:
            from sandbox._portrelay import PortRelay

            _check_port(port)
            if self._sock is None or self.closed:
                raise NetworkError("this network is closed")
            new = PortRelay(lambda: self.connect(address, port))
            with self._lock:  # (another thread's relay for the key wins; none once close began)
                relay = None if self._closing else self._relays.setdefault(key, new)
            if relay is not new:
                new.close()
            if relay is None:
                raise NetworkError("this network is closed")
        return f"{scheme}://127.0.0.1:{relay.port}/"


def _check_port(port: object) -> None:
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ValueError(f"port {port!r} is not valid; use a number from 1 to 65535")


RATE_UNITS = {"bit": 1, "kbit": 10**3, "mbit": 10**6, "gbit": 10**9}
MAX_RATE = ((1 << 32) - 1) * 8  # tbf holds the rate as 32-bit bytes per second
MIN_RATE = 1000  # bits per second: below ~94 the bucket's buffer (its burst in ticks) overflows u32
MAX_LATENCY = 60  # seconds of netem delay, well inside its 32-bit ticks


def shaping(latency: float | str | None = None, loss: float | str | None = None,
            rate: str | None = None) -> dict[str, int | float]:
    """Every box's link shaping: netem's ``delay`` (microseconds) and ``loss`` (percent); a
    token bucket's ``rate`` (bits per second, ``tc``'s units: 500kbit, 1mbit, 1gbit)."""
    from sandbox._config import ConfigError, parse_duration

    out: dict[str, int | float] = {}
    if latency is not None:
        secs = parse_duration(latency, "latency")
        assert secs is not None
        if secs > MAX_LATENCY:  # (netem holds it as 32-bit ticks: ~274 s)
            raise ConfigError(f"latency {latency!r} is not valid; at most {MAX_LATENCY}s (e.g. 50ms)")
        out["delay"] = round(secs * 1e6)
    if loss is not None:
        text = str(loss).strip().removesuffix("%")
        try:
            pct = float(text)
        except ValueError:
            pct = -1.0
        if not 0 <= pct <= 100:
            raise ConfigError(f"loss {loss!r} is not valid; use a percentage from 0 to 100 (e.g. 1%)")
        out["loss"] = pct
    if rate is not None:
        text = str(rate).strip().lower()
        unit = next((u for u in ("kbit", "mbit", "gbit", "bit") if text.endswith(u)), "")
        try:
            bits = round(float(text.removesuffix(unit)) * RATE_UNITS[unit]) if unit else 0
        except (ValueError, OverflowError):  # (not a number; nan; inf)
            bits = 0
        if not MIN_RATE <= bits <= MAX_RATE:
            raise ConfigError(f"rate {rate!r} is not valid; give bits per second with tc's units "
                              "from 1kbit to 34gbit, e.g. 500kbit, 1mbit, 1gbit")
        out["rate"] = bits
    return out


def exit_waiter(sock: socket.socket, life: Any) -> Any:
    """``BoxLife``'s waiter for a box the hub cloned: its wait status, CPU seconds and max RSS
    as the hub reaped them (SIGKILL's status if the hub ended first); its egress counts go to
    ``life.egress``."""
    def wait(_pid: int) -> tuple[int, float, int | None]:
        try:
            msg, fds = _fdpass.recv(sock)
        except OSError:
            msg, fds = b"", []
        finally:
            sock.close()
        for fd in fds:
            os.close(fd)
        if not msg:
            return 9, 0.0, None
        got = json.loads(msg)
        life.egress = got.get("egress")
        return int(got["wait_status"]), float(got["cpu_time"]), int(got["max_rss"])
    return wait
