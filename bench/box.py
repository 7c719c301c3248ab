#!/usr/bin/env python3
"""A held box vs a fresh box per command vs bubblewrap, measured side by side in one run.

    python bench/box.py [--n 200]

1. `/bin/true` as an `exec` in a held `sandbox.Box`, as a fresh one-shot box (the direct runner,
   what `run_sync` uses from a single-threaded process), and as `bwrap --unshare-all`.
2. A judge's job: write a C program, compile it once, run it on 20 inputs — in one held box, or
   (as a box-per-command judge must) compile into a host directory and run each input in a fresh
   box that binds it.
Each of ours runs in its own single-threaded worker process (as a CLI or a judge would), and the
samples are interleaved so machine noise hits every side alike. Prints medians and ratios.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import time

sys.path.insert(0, __file__.rsplit("/bench/", 1)[0])
from launch import BWRAP  # noqa: E402

WORKER = r"""
import os, sys, tempfile, time
from sandbox import Box, SandboxConfig, MountSpec
from sandbox._direct import run_direct
PROG = b'#include <stdio.h>\nint main(){int x; if(scanf("%d",&x)!=1) return 1; printf("%d\\n", x*x); return 0;}\n'
box = Box().open()
box.exec(["/bin/true"])
for line in sys.stdin:
    what = line.strip()
    t = time.perf_counter()
    if what == "held":
        r = box.exec(["/bin/true"])
    elif what == "fresh":
        r = run_direct(["/bin/true"], SandboxConfig())
    elif what == "judge-held":
        with Box() as b:
            b.put("/src/a.c", PROG)
            r = b.exec(["gcc", "-O0", "-o", "/src/a", "/src/a.c"])
            for i in range(20):
                r = b.exec(["/src/a"], stdin=b"%d\n" % i)
                assert r.stdout == b"%d\n" % (i * i), r
    elif what == "judge-fresh":
        d = tempfile.mkdtemp()
        os.chmod(d, 0o755)
        with open(d + "/a.c", "wb") as f:
            f.write(PROG)
        cfg = SandboxConfig(mounts=[MountSpec("bind", "/src", d)])
        r = run_direct(["gcc", "-O0", "-o", "/src/a", "/src/a.c"], cfg)
        ro = SandboxConfig(mounts=[MountSpec("ro-bind", "/src", d)])
        for i in range(20):
            r = run_direct(["/src/a"], ro, stdin=b"%d\n" % i)
            assert r.stdout == b"%d\n" % (i * i), r
        import shutil; shutil.rmtree(d)
    assert r.ok, r
    print(time.perf_counter() - t, flush=True)
box.close()
"""


def med_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--judge", type=int, default=10, help="judge rounds (each: 1 compile + 20 runs)")
    n = ap.parse_args().n
    judge = ap.parse_args().judge
    if not shutil.which("bwrap"):
        sys.exit("bench/box.py: bwrap not found (apt-get install bubblewrap)")
    w = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         text=True, bufsize=1)
    assert w.stdin is not None and w.stdout is not None

    def ours(what: str) -> float:
        w.stdin.write(what + "\n")
        return float(w.stdout.readline())

    times: dict[str, list[float]] = {"held": [], "fresh": [], "bwrap": []}
    for _ in range(n):
        times["held"].append(ours("held"))
        times["fresh"].append(ours("fresh"))
        t = time.perf_counter()
        subprocess.run(BWRAP, check=True)
        times["bwrap"].append(time.perf_counter() - t)
    bw = med_ms(times["bwrap"])
    print(f"/bin/true, median of {n}:")
    print(f"  exec in a held Box       {med_ms(times['held']):7.2f} ms   {med_ms(times['held']) / bw:.2f}x bwrap")
    print(f"  fresh box (direct)       {med_ms(times['fresh']):7.2f} ms   {med_ms(times['fresh']) / bw:.2f}x bwrap")
    print(f"  bwrap --unshare-all      {bw:7.2f} ms")
    if shutil.which("gcc") and judge:
        jt: dict[str, list[float]] = {"judge-held": [], "judge-fresh": []}
        for _ in range(judge):
            for k in jt:
                jt[k].append(ours(k))
        h, f = med_ms(jt["judge-held"]), med_ms(jt["judge-fresh"])
        print(f"compile once + 20 runs, median of {judge}:")
        print(f"  one held Box             {h:7.1f} ms")
        print(f"  a fresh box per command  {f:7.1f} ms   (held: {h / f:.2f}x the time)")
    w.stdin.close()
    w.wait()


if __name__ == "__main__":
    main()
