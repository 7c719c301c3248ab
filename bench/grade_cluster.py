"""`sandbox grade` over N trivial submissions: the local pool (-j 2) vs a 2-worker Dask
LocalCluster on this machine (--scheduler local:2): the per-submission overhead of the cluster.

    PYTHONPATH=. .venv/bin/python bench/grade_cluster.py [N]   (default 200)

The cluster's cost is its start (scheduler + 2 worker processes + the admission trials of
sandbox.grading.cluster) plus, per submission, one task round trip and one pytest run per
submission (the local pool runs one pytest per shard for all its submissions). See
docs/grading-cluster.md for the
expected scaling to 10 000 submissions over 20 hosts.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

TESTS = "def test_add(submission):\n    assert submission.import_module('solution').add(2, 3) == 5\n"
SOL = "def add(a, b):\n    return a + b\n"


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 200
    with tempfile.TemporaryDirectory(prefix="bench-grade-cluster-") as root:
        os.chmod(root, 0o755)
        os.makedirs(f"{root}/tests")
        with open(f"{root}/tests/test_a.py", "w") as f:
            f.write(TESTS)
        for i in range(n):
            os.makedirs(f"{root}/subs/s{i}")
            with open(f"{root}/subs/s{i}/solution.py", "w") as f:
                f.write(SOL)
        times = {}
        for label, extra in (("local -j 2", ["-j", "2"]), ("--scheduler local:2", ["--scheduler", "local:2"])):
            t0 = time.monotonic()
            r = subprocess.run([sys.executable, "-m", "sandbox._cli", "grade", "--tests", f"{root}/tests",
                                "--submissions", f"{root}/subs", "--out", f"{root}/r.json",
                                "--no-progress", *extra], capture_output=True, text=True)
            times[label] = time.monotonic() - t0
            if r.returncode != 0:
                sys.exit(f"{label}: exit {r.returncode}: {r.stderr[-500:]}")
            print(f"{label:22s} {times[label]:7.2f}s  {1000 * times[label] / n:7.1f} ms/submission")
        extra_ms = 1000 * (times["--scheduler local:2"] - times["local -j 2"]) / n
        print(f"cluster overhead: {extra_ms:+.1f} ms/submission over {n} submissions (2 cores)")


if __name__ == "__main__":
    main()
