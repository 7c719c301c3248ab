"""``Network(rate="4mbit")``: a token bucket (tbf) on both ends of every box's link, so what a box
receives and what it sends are both held to the rate (this kernel has tbf; it has no netem).
Measured with a lower bound only (shaping can only make a transfer slower, however loaded the
machine): 1 MiB at 4 Mbit/s takes at least ~2 s each way; unshaped it takes milliseconds."""

from __future__ import annotations

import socket
import time

import pytest

import sandbox
from tests.test_network import CFG

MIB = 1 << 20
SINK_AND_SOURCE = ("import socket, sys\n"
                   "s = socket.create_server(('0.0.0.0', 9000))\n"
                   "c, _ = s.accept()\n"          # the first connection: read 1 MiB
                   "n = 0\n"
                   "while n < 1 << 20 and (b := c.recv(65536)):\n"
                   "    n += len(b)\n"
                   "c.sendall(b'k')\n"
                   "c2, _ = s.accept()\n"         # the second: send 1 MiB
                   "c2.sendall(b'x' * (1 << 20))\n"
                   "c2.close()\n")


def _connect(box: sandbox.Box) -> socket.socket:
    deadline = time.monotonic() + 10
    while True:
        try:
            return box.connect(9000, timeout=30)
        except ConnectionRefusedError:
            assert time.monotonic() < deadline, "the box's server never listened"
            time.sleep(0.05)


def _transfer_times(rate: str | None) -> tuple[float, float]:
    with sandbox.Network(**({"rate": rate} if rate else {})) as net, \
            sandbox.Box(CFG, network=net, name="b") as box:
        box.start(["python3", "-c", SINK_AND_SOURCE])
        with _connect(box) as s:
            t0 = time.monotonic()
            s.sendall(b"y" * MIB)
            assert s.recv(1) == b"k"
            into = time.monotonic() - t0
        with _connect(box) as s:
            t0, n = time.monotonic(), 0
            while n < MIB and (b := s.recv(65536)):
                n += len(b)
            out = time.monotonic() - t0
            assert n == MIB
        return into, out


def test_a_rate_holds_both_directions() -> None:
    into, out = _transfer_times("4mbit")
    assert into >= 1.6 and out >= 1.6, (into, out)  # 1 MiB = 8.4 Mbit: ~2.1 s at 4 Mbit/s
    assert into < 20 and out < 20, (into, out)
    fast_in, fast_out = _transfer_times(None)
    assert fast_in < into / 2 and fast_out < out / 2, (fast_in, fast_out)


@pytest.mark.parametrize("bad", ["fast", "10", "1mbps", "0bit", "8bit", "999bit", "100gbit", "-1kbit", "infkbit", "1e400bit", "nanmbit"])
def test_a_bad_rate_is_one_clear_error(bad: str) -> None:
    with pytest.raises(sandbox.ConfigError, match=f"rate '{bad}' is not valid; give bits per second"):
        sandbox.Network(rate=bad)


@pytest.mark.parametrize("latency", ["61s", "275s", "4000s"])
def test_a_latency_netem_cannot_hold_is_one_clear_error(latency: str) -> None:
    """netem holds the delay as 32-bit ticks (~274 s): a longer one was a struct error in the
    hub, seen as an AssertionError traceback by ``sandbox run``."""
    with pytest.raises(sandbox.ConfigError, match=f"latency '{latency}' is not valid; at most 60s"):
        sandbox.Network(latency=latency)
    with pytest.raises(sandbox.ConfigError, match=f"latency '{latency}' is not valid; at most 60s"):
        sandbox.SandboxConfig(link={"latency": latency}).validate()


def test_a_box_s_own_link_and_the_cli(tmp_path) -> None:
    """``SandboxConfig(link={"rate": ...})``: a box on a network gets its own shaping (a
    neighbour keeps the network's: none); ``sandbox run --rate`` shapes a one-shot box (on a
    network of its own, as ``--allow-host`` makes) and a bad value is exit 2 with one line."""
    import subprocess
    import sys

    shaped = sandbox.SandboxConfig(limits=sandbox.Limits(wall_time=20), link={"rate": "4mbit"})
    with sandbox.Network() as net, sandbox.Box(shaped, network=net, name="slow") as slow, \
            sandbox.Box(CFG, network=net, name="fast") as fast:
        times = {}
        for name, box in (("slow", slow), ("fast", fast)):
            box.start(["python3", "-c", SINK_AND_SOURCE])
            with _connect(box) as s:
                t0 = time.monotonic()
                s.sendall(b"y" * MIB)
                assert s.recv(1) == b"k"
                times[name] = time.monotonic() - t0
        assert times["slow"] >= 1.6 and times["fast"] < times["slow"] / 2, times
    cli = [sys.executable, "-m", "sandbox._cli", "run", "--allow-host", "example.invalid:80"]
    code = "import socket; print(socket.if_nameindex())"
    r = subprocess.run([*cli, "--rate", "1mbit", "--", "python3", "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "eth0" in r.stdout, (r.stdout, r.stderr)
    r = subprocess.run([*cli, "--rate", "fast", "--", "true"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "rate 'fast' is not valid" in r.stderr, r.stderr
    with pytest.raises(sandbox.ConfigError, match="link 'jitter' is not a shaping"):
        sandbox.SandboxConfig(link={"jitter": "1ms"}).validate()


def test_the_slowest_rate_allowed_makes_a_network() -> None:
    """1kbit, the least rate accepted, is a tbf the kernel takes (below ~94bit the bucket's
    buffer, a 3200-byte burst in ticks, overflowed: an 8bit network failed with a struct error)."""
    with sandbox.Network(rate="1kbit") as net, sandbox.Box(CFG, network=net, name="b") as b:
        assert b.exec(["true"]).status == "OK"
