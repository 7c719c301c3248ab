#!/usr/bin/env python3
"""Grading throughput: 50 trivial submissions x 5 tests with `sandbox grade -j 2`, against one
`bwrap` sandbox per test doing the same work (import the solution, call it, check the answer),
run 2 at a time, in the same run.

    python bench/grade.py [--subs 50]

Why not podman: the issue asks for `podman run --rm` per submission, but podman needs an image,
and these machines reach no container registry (only PyPI, Debian and npm); building a base
image offline from the host's /usr is possible but would measure our image, not podman's usual
cost. bwrap is the lighter peer (no image, no daemon), so beating it is the harder bar.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

TESTS = "".join(f'''
def test_{i}(submission):
    assert submission.import_module("solution").add({i}, 1) == {i + 1}
''' for i in range(5))

BWRAP = ["bwrap", "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr",
         "--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64",
         "--symlink", "usr/bin", "/bin", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subs", type=int, default=50)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        os.chmod(root, 0o755)
        (root / "tests").mkdir()
        (root / "tests" / "test_bench.py").write_text(TESTS)
        for i in range(a.subs):
            s = root / "subs" / f"s{i:03}"
            s.mkdir(parents=True)
            (s / "solution.py").write_text("def add(a, b):\n    return a + b\n")
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", "sandbox.cli", "grade", "--tests", str(root / "tests"),
                        "--submissions", str(root / "subs"), "-j", "2", "--no-progress",
                        "--out", str(root / "r.json")], check=True, stdout=subprocess.DEVNULL)
        ours = time.perf_counter() - t

        def bwrap_submission(s: Path) -> None:
            for i in range(5):
                subprocess.run([*BWRAP, "--ro-bind", str(s), "/sub", "--chdir", "/sub", "python3", "-c",
                                f"import solution; assert solution.add({i}, 1) == {i + 1}"], check=True)

        t = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(bwrap_submission, sorted((root / "subs").iterdir())))
        peer = time.perf_counter() - t
    print(f"{a.subs} submissions x 5 tests, 2 at a time:")
    print(f"  sandbox grade  {ours:7.2f} s  {a.subs / ours:6.2f} submissions/s")
    print(f"  bwrap per test {peer:7.2f} s  {a.subs / peer:6.2f} submissions/s")
    print(f"  throughput ratio ours / bwrap: {peer / ours:.2f}x (issue goal: >= 10x podman; podman "
          "not runnable offline here, see docstring)")


if __name__ == "__main__":
    main()
