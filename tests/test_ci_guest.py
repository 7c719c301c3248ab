"""The cgroup v2 guest (ci/uml-run.sh, ci/uml-tests.sh) on every kind of host CI draws.

On AVX-512/AMX hosts Debian's UML 6.1 cannot boot without ci/uml-xstate-shim.c. These tests
make this host look like one (tests/ci/strict_xstate.c, preloaded into linux.uml: an 11008-byte
XSAVE area and EFAULT for a shorter SETREGSET, as those kernels do), so the detection, the
shim and the skip line are tested wherever the suite runs, not only where CI happens to land.
What the double cannot show: on this host the real registers fit UML's buffer, so the shim's
per-guest-thread copies of the wide registers are exercised only on a real AMX host (CI runs
the cgroup tests there through the same path).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if not shutil.which("linux.uml") or not os.path.exists("/bin/busybox"):
    pytest.skip("needs user-mode-linux and busybox-static (ci/setup.sh installs them)",
                allow_module_level=True)
if not shutil.which("gcc"):
    pytest.skip("needs gcc to build the shim and the test double", allow_module_level=True)


@pytest.fixture
def amx_host(tmp_path: Path) -> dict[str, str]:
    """Environment for ci/ scripts that makes linux.uml see an AMX host's kernel."""
    lib = tmp_path / "strict_xstate.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(lib),
                    str(REPO / "tests/ci/strict_xstate.c"), "-ldl"], check=True)
    return {**os.environ, "LD_PRELOAD": str(lib), "XDG_CACHE_HOME": str(tmp_path / "cache")}


# guest processes hashing and copying in parallel: any register state lost between guest
# threads shows up as a wrong digest or a crash
PARALLEL_HASHES = """if 1:
    import hashlib, multiprocessing
    def h(i):
        return hashlib.sha256(bytes(range(256)) * 4000 + bytes([i % 2])).hexdigest()
    if __name__ == "__main__":
        with multiprocessing.Pool(3) as p:
            got = p.map(h, range(12))
        print(len(set(got)), got == [h(i) for i in range(12)])
"""


def uml(env: dict[str, str], *cmd: str, script: str = "ci/uml-run.sh") -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", script, *cmd], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def test_guest_on_an_amx_host_boots_with_the_shim_and_remembers_it(amx_host, tmp_path):
    plain = uml({**amx_host, "SANDBOX_UML_SHIM": "never"}, "--", "/bin/true")
    assert plain.returncode == 125, plain  # the failure the shim is for really happens here
    assert "guest failed: userspace - ptrace set fp regs failed, errno = 14" in plain.stderr

    first = uml(amx_host, "--", "/bin/sh", "-c", "echo booted; cat /proc/sys/kernel/osrelease")
    assert first.returncode == 0 and first.stdout.startswith("booted\n"), first
    assert "booting with" in first.stderr and "xstate-shim" in first.stderr  # said, not silent
    cache = tmp_path / "cache/sandbox-uml"
    assert any(n.startswith("needs-shim-") for n in os.listdir(cache))

    # Next time straight to the shim (one boot, no notice); the guest's programs keep their
    # wide registers across switches between guest threads (hashing in parallel processes).
    again = uml(amx_host, "--", "/usr/bin/python3", "-c", PARALLEL_HASHES)
    assert (again.returncode, again.stdout, again.stderr) == (0, "2 True\n", ""), again


def test_a_guest_that_cannot_boot_is_one_skip_line(amx_host):
    p = uml({**amx_host, "SANDBOX_UML_SHIM": "never"}, script="ci/uml-tests.sh")
    assert p.returncode == 0, p
    assert p.stdout == ("cgroup v2 guest tests: SKIPPED (userspace - ptrace set fp regs failed, "
                        "errno = 14)\n"), p


def test_without_uml_the_guest_tests_are_skipped_with_the_reason(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in os.listdir("/usr/bin"):
        if name != "linux.uml":
            os.symlink(f"/usr/bin/{name}", bin_dir / name)
    p = uml({**os.environ, "PATH": str(bin_dir)}, script="ci/uml-tests.sh")
    assert (p.returncode, p.stdout) == (0, "cgroup v2 guest tests: SKIPPED (no linux.uml "
                                        "(apt-get install user-mode-linux busybox-static))\n"), p


def test_a_guest_that_boots_and_fails_its_tests_fails(tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    p = uml(env, "--no-such-pytest-option", script="ci/uml-tests.sh")
    assert p.returncode != 0 and "SKIPPED" not in p.stdout, p
    assert "no-such-pytest-option" in p.stderr + p.stdout
