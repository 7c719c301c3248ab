#!/usr/bin/env python3
"""CLI cold start: `sandbox run -- /bin/true` vs `bwrap --ro-bind / / --unshare-all /bin/true`.

    python bench/cold_start.py [--n 50] [--env NAME=VALUE ...] [LABEL=SANDBOX_SCRIPT ...]

Each SANDBOX_SCRIPT (default: this checkout's .venv/bin/sandbox) and bwrap are started with
subprocess, interleaved round by round (so the machine's drift hits every side alike), after
3 warm-up rounds. Prints each side's median wall time and its ratio to bwrap's, and the median
CPU time (user + system of the command and every process it waited for: steadier than wall
time when other work shares the machine). The issue's goal: the CLI <= 5x bwrap. ``--env`` sets a variable for the sandbox commands only (e.g. an
unwritable ``HOME`` to measure a cache miss).
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import time

BWRAP = ["bwrap", "--ro-bind", "/", "/", "--unshare-all", "/bin/true"]
HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def once(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(wall, CPU) seconds of one run."""
    c, t = cpu(), time.perf_counter()
    p = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)
    dt, dc = time.perf_counter() - t, cpu() - c
    if p.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({p.returncode}): {p.stderr.decode()[-500:]}")
    return dt, dc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=50)
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    ap.add_argument("trees", nargs="*", metavar="LABEL=SANDBOX_SCRIPT")
    args = ap.parse_args()
    trees = dict(t.split("=", 1) for t in args.trees) or {
        "this": os.path.join(HERE, ".venv", "bin", "sandbox")}
    env = {**os.environ, **dict(e.split("=", 1) for e in args.env)}
    sides = {label: [script, "run", "--", "/bin/true"] for label, script in trees.items()}
    sides["bwrap"] = BWRAP
    times: dict[str, list[float]] = {k: [] for k in sides}
    cpus: dict[str, list[float]] = {k: [] for k in sides}
    for i in range(args.n + 3):
        for label, argv in sides.items():
            dt, dc = once(argv, os.environ if label == "bwrap" else env)
            if i >= 3:
                times[label].append(dt)
                cpus[label].append(dc)
    bw, bw_cpu = statistics.median(times["bwrap"]), statistics.median(cpus["bwrap"])
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.2f}")
    for label, ts in times.items():
        med, mc = statistics.median(ts), statistics.median(cpus[label])
        print(f"{label:>10}: median {med * 1000:6.2f} ms  (min {min(ts) * 1000:6.2f})  "
              f"{med / bw:5.2f}x bwrap | CPU {mc * 1000:6.2f} ms  {mc / bw_cpu:5.2f}x  n={len(ts)}")


if __name__ == "__main__":
    main()
