#!/usr/bin/env python3
"""pytest overhead: N trivial tests unsandboxed vs `--sandbox-all` (a box per test, and one box
for the module: ``--sandbox-scope module``) vs pytest-isolate (fork per test), measured in one
run. Goal: ours <= 1.5x pytest-isolate's wall time.

    python bench/pytest_overhead.py [--n 500] [--repeat 3] [--venv /tmp/sandbox-bench-venv]

Each configuration runs ``--repeat`` times, interleaved, and the median is reported (a shared
2-CPU machine is noisy).

pytest-isolate 0.0.17 does not work with pytest 9 (it calls a removed private function), so the
bench builds its own venv with pytest<9, pytest-isolate and this project, and runs all three
configurations with that same interpreter.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def bench_python(venv: Path) -> str:
    py = venv / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "pytest<9", "pytest-isolate",
                        "trio", "python-prctl", "pyseccomp", "rich"], check=True)
    return str(py)


PY = sys.executable


def timed(args: list[str], cwd: Path) -> float:
    t = time.perf_counter()
    # this checkout, not an installed copy; temp files (pytest-isolate leaves its resource
    # files in $TMPDIR) go to our temp dir, removed at the end
    tmp = cwd / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(cwd / "src"), "TMPDIR": str(tmp)}
    p = subprocess.run([PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                       cwd=cwd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t
    if p.returncode != 0:
        sys.exit(f"pytest {' '.join(args)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    return dt


def main() -> None:
    # pytest-isolate keeps a few fds per test until the session ends: give it room.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--venv", type=Path, default=Path(tempfile.gettempdir()) / "sandbox-bench-venv")
    a = ap.parse_args()
    global PY
    PY = bench_python(a.venv)
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "src").mkdir()  # only the packages: an egg-info would register the plugin twice
        for pkg in ("sandbox", "pytest_plugin"):
            (root / "src" / pkg).symlink_to(REPO / pkg)
        (root / "test_many.py").write_text(
            "import pytest\n\n@pytest.mark.parametrize('i', range(" + str(a.n) + "))\n"
            "def test_t(i):\n    assert i >= 0\n")
        configs = {"plain": ["-p", "no:pytest_isolate"],
                   "ours": ["-p", "pytest_plugin.plugin", "--sandbox-all", "--sandbox-no-summary",
                            "-p", "no:pytest_isolate"],
                   "module": ["-p", "pytest_plugin.plugin", "--sandbox-all", "--sandbox-no-summary",
                              "--sandbox-scope", "module", "-p", "no:pytest_isolate"],
                   "isolate": ["--isolate"]}
        times: dict[str, list[float]] = {k: [] for k in configs}
        for _ in range(a.repeat):
            for name, args in configs.items():
                times[name].append(timed(args, root))
    plain, ours, module, isolate = (statistics.median(times[k])
                                    for k in ("plain", "ours", "module", "isolate"))
    print(f"{a.n} trivial tests, median wall time of {a.repeat} runs:")
    print(f"  unsandboxed           {plain:6.2f} s")
    print(f"  ours (--sandbox-all)  {ours:6.2f} s   ({(ours - plain) / a.n * 1000:.2f} ms per test)")
    print(f"  ours, one module box  {module:6.2f} s   ({(module - plain) / a.n * 1000:.2f} ms per test;"
          " --sandbox-scope module)")
    print(f"  pytest-isolate        {isolate:6.2f} s   ({(isolate - plain) / a.n * 1000:.2f} ms per test)")
    print(f"  ratio ours / pytest-isolate: {ours / isolate:.2f}x (goal <= 1.5x)")


if __name__ == "__main__":
    main()
