"""No host path in what a box can read of its mounts (issue 13, weak layer "host paths").

The README's set-up runs the sandbox from a venv in the user's checkout: the box mounted that
venv at its host path, so /proc/self/mountinfo (mount point, and the overlay's
``lowerdir=/oldroot/home/USER/proj/.venv``) and a listing of /home named the user and the
checkout. Here the CLI runs from a venv made for the test under a directory with a name of its
own (``hostuser<random>``), and the box must not show that name, the checkout's path, the
test's own venv or the user's name; Python must still run. A `sandbox run` box has no venv
(its files name its host path); with ``expose_python="venv"`` (the fixture's call) it is at
/opt/venv and its own interpreter runs there.
"""

from __future__ import annotations

import getpass
import os
import re
import secrets
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandbox
from sandbox import SandboxConfig

CHECKOUT = str(Path(__file__).resolve().parents[2])
# the names every box's own / has (a host path made of them alone gives nothing away)
BOX_TOP_NAMES = {"bin", "dev", "etc", "lib", "lib64", "opt", "proc", "sbin", "tmp", "usr", "venv"}

PROBE = ("cat /proc/self/mountinfo; echo ====; cat /proc/mounts; echo ====; ls -a / /opt /opt/* 2>&1;"
         " ls -a /home 2>&1; echo ====; python3 -c 'import sys; print(sys.prefix)';"
         " /opt/venv/bin/python -c 'import sys; print(sys.prefix)' 2>&1")

# run by the venv's python: a default box (the CLI's) and one with expose_python="venv"
RUN_BOTH = f"""
import json, subprocess, sys
import sandbox
cli = subprocess.run([sys.executable, "-m", "sandbox._cli", "run", "--", "sh", "-c", {PROBE!r}],
                     capture_output=True, text=True)
venv = sandbox.run_sync(["sh", "-c", {PROBE!r}], sandbox.SandboxConfig(expose_python="venv"))
print(json.dumps({{"default": cli.stdout + cli.stderr, "venv": venv.stdout.decode()}}))
"""


def _user_venv(box_tmp: Path) -> tuple[Path, str]:
    """A venv of this interpreter at .../home/hostuser<random>/proj/.venv, importing the
    sandbox from the checkout (a .pth, like an editable install's)."""
    name = f"hostuser{secrets.token_hex(4)}"
    venv = box_tmp / "home" / name / "proj" / ".venv"
    subprocess.run([os.path.realpath(sys.executable), "-m", "venv", "--without-pip", str(venv)],
                   check=True, capture_output=True, timeout=120)
    site = next(venv.glob("lib/python*/site-packages"))
    ours = [p for p in sys.path if os.path.basename(p) in ("site-packages", "dist-packages")]
    (site / "hostpaths.pth").write_text("\n".join([CHECKOUT, *ours]) + "\n")
    for p in [box_tmp, *box_tmp.rglob("*")]:  # root mode: the box's high uid reads it too
        if not p.is_symlink():
            os.chmod(p, 0o755 if p.is_dir() else 0o644 | (p.stat().st_mode & 0o111))
    return venv, name


def _named(text: str, word: str) -> bool:
    """``word`` as a name of its own ("root" in "/oldroot" does not count)."""
    return re.search(rf"(?<![\w.-]){re.escape(word)}(?![\w.-])", text) is not None


@pytest.fixture(scope="module")
def probe() -> Iterator[tuple[dict[str, str], str, Path]]:
    import json
    import shutil
    import tempfile

    box_tmp = Path(tempfile.mkdtemp(prefix="sbx-test-"))
    os.chmod(box_tmp, 0o755)
    try:
        venv, name = _user_venv(box_tmp)
        p = subprocess.run([str(venv / "bin" / "python"), "-c", RUN_BOTH], capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        yield json.loads(p.stdout), name, venv
    finally:
        shutil.rmtree(box_tmp, ignore_errors=True)


def _forbidden(name: str, venv: Path) -> list[str]:
    return [str(venv), name, CHECKOUT, os.path.realpath(sys.prefix), os.path.expanduser("~")]


@pytest.mark.parametrize("mode", ["default", "venv"])
def test_the_mount_tables_name_no_host_path(probe, mode):
    """mountinfo and /proc/mounts: mount points and the overlays' options (lowerdir is given
    by fd) hold no host path of the venv, the checkout, the home directory or the user."""
    out, name, venv = probe
    mountinfo, mounts = out[mode].split("====\n")[:2]
    assert (" /opt/venv " in mountinfo) == (mode == "venv"), mountinfo  # at a neutral path
    for table in (mountinfo, mounts):
        for bad in _forbidden(name, venv):
            if bad not in ("/", "/tmp"):
                assert bad not in table, f"{bad} in\n{table}"
        assert not _named(table, getpass.getuser()), table


@pytest.mark.parametrize("mode", ["default", "venv"])
def test_listing_the_box_shows_no_host_name(probe, mode):
    out, name, _ = probe
    listing = out[mode].split("====\n")[2]
    assert ("venv" in listing) == (mode == "venv") and "No such file" in listing, listing  # no /home
    assert name not in listing and not _named(listing, getpass.getuser()), listing
    for part in Path(CHECKOUT).parts[1:]:  # (a checkout under /tmp or /opt: those the box has)
        if part not in BOX_TOP_NAMES:
            assert not _named(listing, part), (part, listing)


def test_python_still_runs_in_the_box(probe):
    """The system python3; with "venv" the venv's own interpreter too, at its neutral path (its
    pyvenv.cfg's ``home`` is /usr/bin). The default box has no venv: its files name its host
    path (pyvenv.cfg, scripts, byte code)."""
    out, _, _ = probe
    assert out["venv"].split("====\n")[3].splitlines() == ["/usr", "/opt/venv"], out["venv"]
    default = out["default"].split("====\n")[3].splitlines()
    assert default[0] == "/usr" and default[1].endswith("not found"), out["default"]


HIDDEN = """
    import os, sys
    prefix, parent = sys.argv[1], os.path.dirname(sys.argv[1])
    print(sorted(os.listdir(prefix))[:1] != [])
    try:
        os.listdir(parent)
        print("listed", parent)
    except PermissionError:
        print("hidden")
    os.chdir(prefix)  # the walk down still works
    print(os.getcwd() == prefix)
    """


def test_a_clone_sees_its_prefix_at_the_host_path_and_nothing_above(no_leftovers):
    """``expose_python="host"`` (a @sandboxed test: a clone of pytest imports from where it
    did): the prefix is at its host path, and the directories made above it are mode 0111,
    so listing them (``ls /home``) shows no user name."""
    prefix = os.path.realpath(sys.prefix)
    if prefix == "/usr" or prefix.startswith("/usr/"):
        pytest.skip("the running Python has no prefix outside /usr")
    r = sandbox.run_sync(["python3", "-c", textwrap.dedent(HIDDEN), prefix],
                         SandboxConfig(expose_python="host"))
    assert r.status == "OK", r
    assert r.stdout.decode().split() == ["True", "hidden", "True"], r


def test_expose_python_is_checked():
    with pytest.raises(sandbox.ConfigError, match="expose_python 'neutral' is not valid"):
        SandboxConfig(expose_python="neutral").validate()  # type: ignore[arg-type]


SOLUTION = """
import os, sys

def seen():
    with open("/proc/self/mountinfo") as f:
        return {"path": list(sys.path), "mountinfo": f.read(), "root": sorted(os.listdir("/"))}
"""


def test_the_grading_worker_is_handed_no_host_path(box_tmp: Path, no_leftovers):
    """The grading worker is a fork of a factory started on the host with our package and the
    grader's site-packages on ``sys.path``; in the box it keeps only the entries the box has,
    as the box sees them, and the submission's overlay names no host directory."""
    from sandbox.grading.submission import Submission

    sub_dir = box_tmp / f"hostuser{secrets.token_hex(4)}"
    sub_dir.mkdir()
    (sub_dir / "solution.py").write_text(SOLUTION)
    os.chmod(sub_dir, 0o755)
    os.chmod(sub_dir / "solution.py", 0o644)
    sub = Submission(str(sub_dir), {"memory": "256M", "wall_time": "20s", "pids": "64"}, 20.0)
    try:
        got = sub.import_module("solution").seen()
    finally:
        sub.close()
    assert " /submission " in got["mountinfo"], got["mountinfo"]
    for bad in (str(box_tmp), sub_dir.name, CHECKOUT, os.path.realpath(sys.prefix)):
        assert bad not in got["mountinfo"], (bad, got["mountinfo"])
        assert not any(bad in p for p in got["path"]), (bad, got["path"])
    assert all(p.startswith(("/submission", "/usr/", "/opt/")) for p in got["path"]), got["path"]
    assert got["root"] == sorted(set(got["root"]) - {"home", "work"}), got["root"]
