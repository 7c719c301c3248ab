#!/usr/bin/env python3
"""Grading throughput: 50 trivial submissions x 5 tests with `sandbox grade -j 2`, against
(1) one `podman run --rm` per submission doing the same work (import the solution, call it,
check the answer, 5 times) and (2) one `bwrap` sandbox per test, each run 2 at a time, in the
same run (ours: median of three runs; the peers' runs are long enough to average themselves).
Goal (issue 6): >= 10x podman's throughput.

    python bench/grade.py [--subs 50]

podman (Debian's, `apt-get install podman runc`) needs an image and these machines reach no
container registry, so the bench imports a minimal one offline: the host's python3, its stdlib
and the libraries it links (~64 MB, `podman import`), into a storage of its own (a temp dir:
the user's containers are not touched, and nothing is left), with podman's fastest driver that
works here: native overlay (podman's default may be vfs, which copies the whole image for each
container), else vfs. On a cgroup v1/v2 hybrid host crun refuses to start rootless containers;
runc is used there. Skipped, with the reason, when podman is missing or cannot run a container.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
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


IMAGE = "localhost/sandbox-bench-python"
PODMAN_WORK = "import solution\n" + "".join(
    f"assert solution.add({i}, 1) == {i + 1}\n" for i in range(5))


PODMAN_DRIVERS = ("overlay", "vfs")  # fastest first


def podman_setup(store: str, drivers: tuple[str, ...] = PODMAN_DRIVERS) -> tuple[list[str] | None, str]:
    """→ (podman command prefix, its storage driver) or (None, why podman is not measured).
    ``store``: an empty directory for the storage (``--root``/``--runroot``); ``drivers``: tried
    in turn."""
    if shutil.which("podman") is None:
        return None, "podman not installed (apt-get install podman runc)"
    why = "no storage driver tried"
    for driver in drivers:
        xdg = f"{store}/{driver}-xdg"  # podman's runtime dir (else /tmp/podman-run-UID, left behind)
        os.makedirs(xdg, mode=0o700, exist_ok=True)
        base = ["env", f"XDG_RUNTIME_DIR={xdg}", "podman", "--root", f"{store}/{driver}", "--runroot", f"{store}/{driver}-run",
                "--storage-driver", driver]
        cmd, why = _podman_try(base)
        if cmd is not None:
            return cmd, driver
    return None, why


def _podman_try(base: list[str]) -> tuple[list[str] | None, str]:
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "usr/bin").mkdir(parents=True)
        (root / "usr/lib").mkdir()
        for sub in ("tmp", "proc", "dev", "sub"):
            (root / sub).mkdir()
        # the running interpreter: the image gets its stdlib (os.__file__), so it must match
        # (a python3 on PATH may be a pyenv shim script, or another version)
        py = os.path.realpath(sys.executable)
        shutil.copy2(py, root / "usr/bin" / os.path.basename(py))
        if os.path.basename(py) != "python3":
            os.symlink(os.path.basename(py), root / "usr/bin/python3")
        stdlib = Path(os.__file__).parent
        shutil.copytree(stdlib, root / str(stdlib).lstrip("/"), symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "test", "site-packages"))
        ldd = subprocess.run(["ldd", py], capture_output=True, text=True).stdout.split()
        for lib in (w for w in ldd if w.startswith("/")):
            dst = root / lib.lstrip("/")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.realpath(lib), dst)
        tar = subprocess.Popen(["tar", "-C", d, "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run([*base, "import", "-q", "-", IMAGE], stdin=tar.stdout,
                             capture_output=True, text=True)
        tar.wait()
        if imp.returncode:
            podman_cleanup(base)  # what the failed import left in our storage
            return None, f"podman import failed: {imp.stderr.strip()[-200:]}"
    why = ""
    for runtime in ([], ["--runtime", "runc"]):
        cmd = [*base, "run", *runtime, "--rm", "--network", "none"]
        p = subprocess.run([*cmd, IMAGE, "python3", "-c", "pass"], capture_output=True, text=True)
        if p.returncode == 0:
            return cmd, ""
        why = p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"
    podman_cleanup(base)
    return None, f"podman cannot run a container here: {why}"


def podman_cleanup(base: list[str]) -> None:
    """Remove our image and storage (its files belong to the user namespace's uids: removed
    from inside it), and stop the pause process (catatonit) of our own runtime dir, so the
    bench leaves no process and no file behind."""
    subprocess.run([*base, "rmi", "-f", IMAGE], capture_output=True)
    root, runroot = base[base.index("--root") + 1], base[base.index("--runroot") + 1]
    subprocess.run([*base, "unshare", "rm", "-rf", root, runroot], capture_output=True)
    xdg = base[1].split("=", 1)[1]
    try:
        with open(f"{xdg}/libpod/tmp/pause.pid") as f:
            os.kill(int(f.read().strip()), signal.SIGKILL)
    except (OSError, ValueError):  # no pause process of ours
        pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--subs", type=int, default=50)
    ap.add_argument("--podman-driver", choices=PODMAN_DRIVERS, default=None,
                    help="podman's storage driver (default: overlay where it works, else vfs)")
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
        runs = []
        for _ in range(3):  # a grade run is short (~3 s): take the median of three
            t = time.perf_counter()
            subprocess.run([sys.executable, "-m", "sandbox._cli", "grade", "--tests",
                            str(root / "tests"), "--submissions", str(root / "subs"), "-j", "2",
                            "--no-progress", "--out", str(root / "r.json")], check=True,
                           stdout=subprocess.DEVNULL)
            runs.append(time.perf_counter() - t)
        ours = statistics.median(runs)

        def bwrap_submission(s: Path) -> None:
            for i in range(5):
                subprocess.run([*BWRAP, "--ro-bind", str(s), "/sub", "--chdir", "/sub", "python3", "-c",
                                f"import solution; assert solution.add({i}, 1) == {i + 1}"], check=True)

        t = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(bwrap_submission, sorted((root / "subs").iterdir())))
        peer = time.perf_counter() - t

        podman, why = podman_setup(str(root / "podman"),
                                   (a.podman_driver,) if a.podman_driver else PODMAN_DRIVERS)
        pod = None
        if podman is not None:
            def podman_submission(s: Path) -> None:
                subprocess.run([*podman, "-v", f"{s}:/sub:ro", "-w", "/sub", IMAGE, "python3", "-c",
                                PODMAN_WORK], check=True, stderr=subprocess.DEVNULL)

            try:
                t = time.perf_counter()
                with ThreadPoolExecutor(2) as pool:
                    list(pool.map(podman_submission, sorted((root / "subs").iterdir())))
                pod = time.perf_counter() - t
            finally:
                podman_cleanup(podman[:podman.index("run")])
    print(f"{a.subs} submissions x 5 tests, 2 at a time:")
    print(f"  sandbox grade        {ours:7.2f} s  {a.subs / ours:6.2f} submissions/s")
    if pod is not None:
        print(f"  podman per submission {pod:6.2f} s  {a.subs / pod:6.2f} submissions/s"
              f"  (storage driver {why})")
    else:
        print(f"  podman per submission: not measured ({why})")
    print(f"  bwrap per test       {peer:7.2f} s  {a.subs / peer:6.2f} submissions/s")
    if pod is not None:
        print(f"  throughput ratio ours / podman: {pod / ours:.2f}x (goal >= 10x)")
    print(f"  throughput ratio ours / bwrap:  {peer / ours:.2f}x")


if __name__ == "__main__":
    main()
