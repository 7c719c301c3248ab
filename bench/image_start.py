#!/usr/bin/env python3
"""Box start on an image vs on the host's /usr vs ``podman run --rm`` of the same image, in one
run (as root: rootful podman; this machine has no subuid map for rootless podman).

    sudo python bench/image_start.py [--n 30]

The image is a busybox one podman builds here (``podman import`` of a static busybox, then a
``podman build`` with a ``RUN rm`` layer: two layers, one whiteout), saved with ``podman save``
and imported into a temporary store. Each sample runs ``/bin/true`` to completion through each
command-line tool (``sandbox run --image``, ``sandbox run``, ``podman run --rm --network none``),
interleaved so machine noise hits every side alike. Prints medians and ratios to podman.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

REPO = __file__.rsplit("/bench/", 1)[0]
SANDBOX = [sys.executable, os.path.join(REPO, "bin", "sandbox")]
TAG = "localhost/sbxbench-image:1"
# podman's rootful default rlimits are above this machine's hard limits (runc's raise is EPERM)
PODMAN_RUN = ["podman", "run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024",
              "--ulimit", "nproc=1024:1024", TAG, "/bin/true"]


def _build(work: str) -> str:
    os.makedirs(f"{work}/base/bin")
    shutil.copy("/bin/busybox", f"{work}/base/bin/busybox")
    for cmd in ("sh", "true", "rm"):
        os.symlink("busybox", f"{work}/base/bin/{cmd}")
    with open(f"{work}/base/gone", "w") as f:
        f.write("gone\n")
    subprocess.run(["tar", "-C", f"{work}/base", "-cf", f"{work}/base.tar", "."], check=True)
    subprocess.run(["podman", "import", f"{work}/base.tar", TAG + "-base"], check=True, capture_output=True)
    with open(f"{work}/Containerfile", "w") as f:
        f.write(f"FROM {TAG}-base\nRUN rm /gone\n")
    subprocess.run(["podman", "build", "-q", "--network", "none", "-t", TAG, work], check=True, capture_output=True)
    subprocess.run(["podman", "save", "--format", "oci-archive", "-o", f"{work}/image.tar", TAG], check=True,
                   capture_output=True)
    return f"{work}/image.tar"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=30)
    n = ap.parse_args().n
    if os.geteuid() != 0 or not shutil.which("podman"):
        print("bench/image_start.py: needs root and podman (apt-get install podman runc)", file=sys.stderr)
        return 2
    work = tempfile.mkdtemp(prefix="sbxbench-image-")
    os.chmod(work, 0o711)  # a root-mode box's init walks to the store (docs/images.md)
    env = {**os.environ, "SANDBOX_IMAGE_STORE": f"{work}/store"}
    try:
        archive = _build(work)
        subprocess.run([*SANDBOX, "image", "import", archive, "--name", "bench/busybox:1"], check=True, env=env,
                       capture_output=True)
        sides = {"sandbox run --image": [*SANDBOX, "run", "--image", "bench/busybox:1", "--", "/bin/true"],
                 "sandbox run (host /usr)": [*SANDBOX, "run", "--", "/bin/true"],
                 "podman run --rm": PODMAN_RUN}
        times: dict[str, list[float]] = {k: [] for k in sides}
        for i in range(n + 2):
            for name, argv in sides.items():
                t = time.perf_counter()
                subprocess.run(argv, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                if i >= 2:  # the first two: warm-up (page cache, podman's storage)
                    times[name].append(time.perf_counter() - t)
        peer = statistics.median(times["podman run --rm"])
        print(f"{n} samples each, interleaved; /bin/true to completion")
        for name, ts in times.items():
            med = statistics.median(ts)
            print(f"  {name:<26} median {med * 1000:7.1f} ms   {med / peer:5.2f}x podman")
    finally:
        subprocess.run(["podman", "rmi", "-f", TAG, TAG + "-base"], capture_output=True)
        subprocess.run(["chmod", "-R", "u+rwx", work], check=False)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
