#!/usr/bin/env python3
"""Per-sandbox launch latency, ours vs bubblewrap, measured side by side in one run.

    python bench/launch.py [--n 200]

1. library: median latency of `/bin/true` through a warm trio Supervisor (launcher already
   running) and through the trio-free direct runner, vs `bwrap --unshare-all ...` spawned with
   subprocess from this same Python. Goal: ours <= 0.8x bwrap. Then the same back to back.
2. CLI cold start: `sandbox run -- /bin/true` vs the `bwrap` CLI. Goal: <= 5x.
3. loopback bring-up inside a fresh network namespace: SIOCSIFFLAGS ioctl vs pyroute2.
Samples are interleaved so machine noise hits both sides alike. Prints medians and ratios.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

import trio

import sandbox
from sandbox import SandboxConfig

BWRAP = ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr",
         "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
         "--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin",
         "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "/bin/true"]


def med_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1000


DIRECT_WORKER = """
import sys, time
from sandbox import SandboxConfig
from sandbox._direct import run_direct
cfg = SandboxConfig()
run_direct(["/bin/true"], cfg)
for _ in sys.stdin:
    t = time.perf_counter()
    r = run_direct(["/bin/true"], cfg)
    assert r.ok, r
    print(time.perf_counter() - t, flush=True)
"""


def bench_library(n: int) -> tuple[list[float], list[float], list[float]]:
    """The direct runner is measured in its own single-threaded process, as the CLI uses it:
    this one runs trio, whose idle worker threads would (rightly) send it down the
    fork-helper path meant for multi-threaded callers."""
    sup_t: list[float] = []
    dir_t: list[float] = []
    bw_t: list[float] = []
    cfg = SandboxConfig()
    worker = subprocess.Popen([sys.executable, "-c", DIRECT_WORKER], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert worker.stdin is not None and worker.stdout is not None

    async def main() -> None:
        async with sandbox.Supervisor() as sup:
            await sup.run(["/bin/true"], cfg)  # warm
            for _ in range(n):
                t = time.perf_counter()
                r = await sup.run(["/bin/true"], cfg)
                sup_t.append(time.perf_counter() - t)
                assert r.ok, r
                worker.stdin.write("\n")
                worker.stdin.flush()
                dir_t.append(float(worker.stdout.readline()))
                t = time.perf_counter()
                subprocess.run(BWRAP, check=True)
                bw_t.append(time.perf_counter() - t)

    try:
        trio.run(main)
    finally:
        worker.stdin.close()
        worker.wait()
    return sup_t, dir_t, bw_t


def bench_back_to_back(n: int, block: int = 50) -> tuple[list[float], list[float]]:
    """Boxes with no pause in between (a tight loop): the pool's refills then compete with the
    running box for the 2 cores, where the interleaved figure above leaves them idle time.
    Blocks of ``block`` boxes, ours and bwrap's alternating."""
    ours: list[float] = []
    bw: list[float] = []
    cfg = SandboxConfig()

    async def main() -> None:
        async with sandbox.Supervisor() as sup:
            await sup.run(["/bin/true"], cfg)
            while len(ours) < n:
                for _ in range(block):
                    t = time.perf_counter()
                    r = await sup.run(["/bin/true"], cfg)
                    ours.append(time.perf_counter() - t)
                    assert r.ok, r
                for _ in range(block):
                    t = time.perf_counter()
                    subprocess.run(BWRAP, check=True)
                    bw.append(time.perf_counter() - t)

    trio.run(main)
    return ours, bw


def bench_cli(n: int) -> tuple[list[float], list[float]]:
    exe = shutil.which("sandbox") or os.path.join(os.path.dirname(sys.executable), "sandbox")
    ours: list[float] = []
    bw: list[float] = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run([exe, "run", "--", "/bin/true"], check=True)
        ours.append(time.perf_counter() - t)
        t = time.perf_counter()
        subprocess.run(BWRAP, check=True)
        bw.append(time.perf_counter() - t)
    return ours, bw


def bench_loopback(n: int) -> tuple[float, float]:
    """Median µs for bringing lo up in a fresh user+net namespace, both ways (pyroute2 figure
    includes its import, as the child would pay it)."""
    from sandbox import _net
    from sandbox import _syscalls as sc

    out = {}
    for name in ("ioctl", "pyroute2"):
        samples = []
        for _ in range(n):
            r, w = os.pipe()
            pid, pidfd = sc.clone3(sc.CLONE_NEWUSER | sc.CLONE_NEWNET, exit_signal=signal.SIGCHLD)
            if pid == 0:
                try:
                    t = time.perf_counter()
                    (_net.loopback_up if name == "ioctl" else _net.loopback_up_pyroute2)()
                    os.write(w, str(time.perf_counter() - t).encode())
                finally:
                    os._exit(0)
            os.close(w)
            samples.append(float(os.read(r, 64) or 0))
            os.close(r)
            os.waitpid(pid, 0)
            os.close(pidfd)
        out[name] = statistics.median(samples) * 1e6
    return out["ioctl"], out["pyroute2"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--cli-n", type=int, default=30)
    a = ap.parse_args()
    if not shutil.which("bwrap"):
        sys.exit("bench/launch.py: bwrap not found (apt-get install bubblewrap)")
    sup_t, dir_t, bw_t = bench_library(a.n)
    print(f"library, /bin/true, n={a.n}, median per sandbox:")
    print(f"  ours (warm trio supervisor)  {med_ms(sup_t):7.2f} ms   ratio vs bwrap {med_ms(sup_t) / med_ms(bw_t):.2f}x")
    print(f"  ours (direct, no trio)       {med_ms(dir_t):7.2f} ms   ratio vs bwrap {med_ms(dir_t) / med_ms(bw_t):.2f}x")
    print(f"  bwrap --unshare-all          {med_ms(bw_t):7.2f} ms   (goal: ours <= 0.8x)")
    b2b, b2b_bw = bench_back_to_back(a.n)
    print(f"  back to back (no pause between boxes): ours {med_ms(b2b):.2f} ms, bwrap "
          f"{med_ms(b2b_bw):.2f} ms, ratio {med_ms(b2b) / med_ms(b2b_bw):.2f}x")
    cli, cli_bw = bench_cli(a.cli_n)
    print(f"CLI cold start, n={a.cli_n}: sandbox run -- /bin/true {med_ms(cli):.2f} ms, "
          f"bwrap {med_ms(cli_bw):.2f} ms, ratio {med_ms(cli) / med_ms(cli_bw):.2f}x (goal <= 5x)")
    io, pr = bench_loopback(20)
    print(f"loopback up in a new netns: ioctl {io:.0f} us, pyroute2 (incl. import) {pr:.0f} us")


if __name__ == "__main__":
    main()
