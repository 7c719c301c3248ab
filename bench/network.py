#!/usr/bin/env python3
"""Boxes on a network vs boxes without one, and connect latency, measured side by side in one run.

    python bench/network.py [--n 40]

1. Box start: opening a held ``sandbox.Box`` (until its init is ready) with no network (cloned by its
   caller) vs on a ``sandbox.Network`` (cloned by the network's hub after it made the box's
   namespace and veth with pyroute2), and the network's own start (the hub: a Python start,
   pyroute2's import, the bridge).
2. Connect latency: a TCP connect + 1-byte echo round trip from the trusted side into a box
   (``box.connect``: a socket made in the bridge's namespace) vs the same over the host's own
   loopback to a host process (the floor), vs box to box over the bridge (inside a box).
Samples are interleaved so machine noise hits every side alike. Prints medians and ratios.
"""

from __future__ import annotations

import argparse
import socket
import statistics
import sys
import threading
import time

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
import sandbox  # noqa: E402

ECHO = ("import socket\ns = socket.create_server(('', 7000))\n"
        "while True:\n    c = s.accept()[0]; c.sendall(c.recv(1)); c.close()\n")
BOX_TO_BOX = ("import socket, time, sys\nn = int(sys.argv[1]); out = []\n"
              "for _ in range(n):\n    t = time.perf_counter(); c = socket.create_connection(('echo', 7000))\n"
              "    c.sendall(b'x'); c.recv(1); c.close(); out.append(time.perf_counter() - t)\n"
              "out.sort(); print(out[len(out) // 2])\n")


def host_echo() -> int:
    srv = socket.create_server(("127.0.0.1", 0))

    def loop() -> None:
        while True:
            c = srv.accept()[0]
            c.sendall(c.recv(1))
            c.close()
    threading.Thread(target=loop, daemon=True).start()
    return int(srv.getsockname()[1])


def round_trip(make: object) -> float:
    t = time.perf_counter()
    c = make()  # type: ignore[operator]
    c.sendall(b"x")
    c.recv(1)
    c.close()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=40)
    n = ap.parse_args().n
    cfg = sandbox.SandboxConfig()
    starts: dict[str, list[float]] = {"box": [], "box on a network": [], "network": []}
    ends: dict[str, list[float]] = {"box": [], "box on a network": []}

    def sample(kind: str, **kw: object) -> None:
        t = time.perf_counter()
        box = sandbox.Box(cfg, **kw).open()  # type: ignore[arg-type]
        starts[kind].append(time.perf_counter() - t)
        box.exec(["/bin/true"])  # a box lives a little: its end is then not its hub's busy time
        t = time.perf_counter()
        box.close()
        ends[kind].append(time.perf_counter() - t)

    for i in range(n):
        sample("box")
        if i % 4 == 0:
            t = time.perf_counter()
            net = sandbox.Network().open()
            starts["network"].append(time.perf_counter() - t)
        sample("box on a network", network=net, name=f"b{i}")
        if i % 4 == 3 or i == n - 1:
            net.close()
    ms = {k: statistics.median(v) * 1e3 for k, v in starts.items()}
    end = {k: statistics.median(v) * 1e3 for k, v in ends.items()}
    print("box start (open until ready) and end (close), median ms:")
    for k, v in ms.items():
        print(f"  {k:18s} {v:7.1f}" + (f"   end {end[k]:5.1f}" if k in end else "   (the hub: one per network)"))
    print(f"  start on a network / without: {ms['box on a network'] / ms['box']:.2f}x")

    port = host_echo()
    lat: dict[str, list[float]] = {"host loopback": [], "trusted side → box": []}
    with sandbox.Network() as net, sandbox.Box(cfg, network=net, name="echo") as box, \
            sandbox.Box(cfg, network=net, name="peer") as peer:
        box.start(["python3", "-c", ECHO])
        while True:
            try:
                box.connect(7000).close()
                break
            except ConnectionRefusedError:
                time.sleep(0.05)
        for _ in range(n * 5):
            lat["host loopback"].append(round_trip(lambda: socket.create_connection(("127.0.0.1", port))))
            lat["trusted side → box"].append(round_trip(lambda: box.connect(7000)))
        r = peer.exec(["python3", "-c", BOX_TO_BOX, str(n * 5)])
        b2b = float(r.stdout)
    print("connect + 1-byte round trip, median µs:")
    base = statistics.median(lat["host loopback"])
    for k, v in lat.items():
        print(f"  {k:20s} {statistics.median(v) * 1e6:7.0f}  ({statistics.median(v) / base:.2f}x loopback)")
    print(f"  {'box → box (bridge)':20s} {b2b * 1e6:7.0f}  ({b2b / base:.2f}x loopback)")


if __name__ == "__main__":
    main()
