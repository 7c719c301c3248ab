"""Every writable place a box has sits on capped memory, never on the host's disk (issue 13,
escape 3).

A submission wrote 600 MiB (58 502 files) into /submission: the grader's overlay upper was a
host directory, so ``--tmpfs-size`` did not apply and only the host's disk stopped it. The
``sandbox`` fixture's /work was a host directory too. Now the upper is in the box's own tmpfs
(its init hands the grader an fd of it, read through ``sandbox._safefs``) and /work is a tmpfs
of its own that the host holds by fd only (``sandbox._memdir``): a box that writes past the
cap gets ENOSPC, in bytes and in files, and no host directory ever holds what it wrote.
"""

from __future__ import annotations

import linecache
import os
import tempfile
import textwrap

import pytest

from pytest_plugin.fixture import SandboxFixture
from sandbox.grading.submission import Submission, SubmissionError
from tests.conftest import ROOT_MODE

pytest_plugins = ["pytester", "tests.test_plugin_support"]
MiB = 1 << 20

FILL = """
import errno, os

def fill(path, mib):
    try:
        with open(path, "wb") as f:
            for _ in range(mib):
                f.write(b"x" * (1 << 20))
                f.flush()
    except OSError as e:
        return errno.errorcode[e.errno]
    return "ok"

def files(n):
    os.mkdir("many")
    for i in range(n):
        try:
            open(f"many/{i}", "w").close()
        except OSError as e:
            return [errno.errorcode[e.errno], i]
    return ["ok", n]
"""

CHANGES = """
import os

def change(host_dir, root_mode):
    open("new.txt", "w").write("new")
    if not root_mode:  # as root the lower files belong to host root: no copy-up for the box
        open("old.txt", "a").write("more")
    os.remove("gone.txt")
    os.symlink(host_dir, "planted")          # to a host directory holding a file
    os.symlink("/etc/passwd", "planted_file")
    os.remove("lowlink")                     # the lower's link to the host dir, replaced by a
    os.mkdir("lowlink")                      # directory of the box's own with the same name
    open("lowlink/x", "w").write("mine")
    return sorted(os.listdir("."))

def die():
    os._exit(0)
"""


def _host_bytes(top: str) -> list[tuple[str, int]]:
    """Every file under ``top`` with its size (the test's own temp dir: nothing else writes it)."""
    return [(os.path.join(d, f), os.lstat(os.path.join(d, f)).st_size)
            for d, _, fs in os.walk(top) for f in fs]


def _submission(box_tmp, name: str, files: dict[str, str]) -> str:
    sub = box_tmp / name
    sub.mkdir()
    for fn, text in files.items():
        (sub / fn).write_text(text)
        os.chmod(sub / fn, 0o666)
    os.chmod(sub, 0o777 if ROOT_MODE else 0o755)
    return str(sub)


def test_submission_fill_stops_at_tmpfs_size_not_the_host_disk(box_tmp, no_leftovers):
    """16 MiB into /submission with --tmpfs-size 4M: ENOSPC inside, and while the box still
    runs no host directory (no grade-* temp dir) holds a byte of it. (Its file count is the box
    tmpfs's nr_inodes, which the init-hardening change adds: not asserted here.)"""
    sub = Submission(_submission(box_tmp, "fill", {"solution.py": FILL}), {"tmpfs_size": "4M"}, 60)
    try:
        sol = sub.import_module("solution")
        assert sol.fill("big.bin", 16) == "ENOSPC"
        assert sol.files(200) == ["ok", 200]
        assert os.listdir(tempfile.gettempdir()) == [], "the grader made a host directory"
        assert _host_bytes(str(box_tmp)) == [(str(box_tmp / "fill" / "solution.py"), len(FILL))]
        ch = sub.changes()  # still listed, from the box's tmpfs
        assert "big.bin" in ch.created and "many/199" in ch.created
    finally:
        sub.close()


def test_changes_after_the_box_died_follow_no_planted_link(box_tmp, no_leftovers):
    """changes() reads the upper through the fd init sent, after the box is gone: created,
    modified and deleted are right; a planted link is listed, never entered; a name that is a
    link to a host directory in the *lower* is not looked up through that link."""
    host_dir = box_tmp / "hostdir"
    host_dir.mkdir()
    (host_dir / "x").write_text("host")
    os.chmod(host_dir, 0o755)
    path = _submission(box_tmp, "changer", {"solution.py": CHANGES, "old.txt": "old",
                                            "gone.txt": "gone"})
    os.symlink(str(host_dir), os.path.join(path, "lowlink"))
    sub = Submission(path, {}, 60)
    try:
        sol = sub.import_module("solution")
        assert "planted" in sol.change(str(host_dir), ROOT_MODE)
        with pytest.raises(SubmissionError, match="died"):
            sol.die()
        assert not sub._held.worker.alive or sub._held.worker.fork_result is not None
        ch = sub.changes()
        assert sorted(ch.created) == ["lowlink/x", "new.txt", "planted", "planted_file"]
        assert ch.modified == ([] if ROOT_MODE else ["old.txt"])
        assert ch.deleted == ["gone.txt"]
        assert (host_dir / "x").read_text() == "host"
    finally:
        sub.close()
    assert sub.changes().created == []  # closed: the box's tmpfs is released


class _PytestConfig:
    """The two things SandboxFixture asks of pytest's config: options and the project root
    (here "/", so the box gets no project overlay and the test runs the same in both modes)."""

    rootpath = "/"

    def __init__(self, tmpfs_size: str) -> None:
        self.tmpfs_size = tmpfs_size

    def getoption(self, name: str) -> str | None:
        return self.tmpfs_size if name == "sandbox_tmpfs_size" else None

    def getini(self, name: str) -> str | None:
        return None


def test_fixture_work_is_capped_memory_shared_by_the_tests_boxes(no_leftovers):
    """/work: what the test puts there and what one box writes, the next box and the test
    read; past its cap (4M here) a box gets ENOSPC, in bytes and in files; no host directory
    holds any of it."""
    fx = SandboxFixture(_PytestConfig("4M"))
    try:
        r = fx.run(["sh", "-c", "tr a-z A-Z < in.txt > out.txt"], files={"in.txt": b"abc"})
        assert r.ok and fx.read("out.txt") == b"ABC"
        r = fx.run(["sh", "-c", "cat out.txt out.txt > twice.txt"])
        assert r.ok and fx.read("twice.txt") == b"ABCABC"
        assert fx.call(linecache.getlines, "/work/twice.txt") == ["ABCABC\n"]  # (stdlib: no project here)
        code = FILL + ("\nimport shutil\nprint(fill('/work/big.bin', 16), *files(5000))\n"
                       "shutil.rmtree('/work/many')\nos.remove('/work/big.bin')\n")
        r = fx.run(["python3", "-c", code])
        err, _, rest = r.stdout.decode().partition(" ")
        assert r.ok and err == "ENOSPC" and rest.split()[0] == "ENOSPC", (r.stdout, r.stderr)
        assert int(rest.split()[1]) < 5000
        assert not [n for n in os.listdir(tempfile.gettempdir()) if n.startswith("sandbox-fixture-")]
        r = fx.run(["sh", "-c", "ln -s /etc/passwd link; echo ok > after"])
        assert r.ok and fx.read("after") == b"ok\n"  # freed space is usable again
        with pytest.raises(OSError):
            fx.read("link")  # planted by the box: not followed
    finally:
        fx.close()


@pytest.mark.skipif(ROOT_MODE, reason="pytester's temp dirs are private to root; see test above")
def test_fixture_work_cap_through_the_plugin(run):
    """The same through the real plugin: ``--sandbox-tmpfs-size`` caps /work."""
    r = run(textwrap.dedent('''
        import os, tempfile

        def test_fill(sandbox):
            r = sandbox.run(["sh", "-c", "head -c 8388608 /dev/zero > big || echo refused"])
            assert b"No space left on device" in r.stderr and r.stdout == b"refused\\n"
            assert len(sandbox.read("big")) <= 2 << 20
            assert not [n for n in os.listdir(tempfile.gettempdir()) if n.startswith("sandbox-fixture-")]
        '''), "--sandbox-tmpfs-size=2M")
    r.assert_outcomes(passed=1)


def test_memdir_is_private_capped_and_leaves_nothing(no_leftovers):
    """A memdir is in no mount table, owned by us (private unless root), capped in inodes too,
    and gone with its fd: the helper that made it is reaped."""
    from sandbox import _memdir
    from sandbox._safefs import walk_beneath

    with open("/proc/self/mountinfo") as f:
        before = f.read()
    fd = _memdir.create(1 * MiB)
    assert fd is not None
    try:
        with open("/proc/self/mountinfo") as f:
            assert f.read() == before
        st = os.fstat(fd)
        assert (st.st_uid, st.st_mode & 0o777) == ((0, 0o777) if ROOT_MODE else (os.getuid(), 0o700))
        made = 0
        with pytest.raises(OSError, match="No space left"):
            for made in range(5000):  # noqa: B007 - counted for the assertion below
                os.close(os.open(f"f{made}", os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o600, dir_fd=fd))
        assert made < _memdir.inodes_for(1 * MiB) + 1
        assert len(list(walk_beneath(fd))) == made
    finally:
        os.close(fd)


def test_fixture_falls_back_to_a_private_host_dir_where_the_kernel_refuses(no_leftovers, monkeypatch):
    """Kernels that cannot bind a clone of a detached tmpfs into a box (``_memdir.create`` →
    None) keep the fixture working on a private host directory, removed at the end."""
    from sandbox import _memdir

    monkeypatch.setattr(_memdir, "create", lambda size: None)
    fx = SandboxFixture(_PytestConfig("4M"))
    try:
        r = fx.run(["sh", "-c", "tr a-z A-Z < in.txt > out.txt"], files={"in.txt": b"abc"})
        assert r.ok and fx.read("out.txt") == b"ABC"
        ws = fx._ws
        assert ws is not None and ws.on_host_disk and ws._top and os.path.isdir(ws._top)
        top = ws._top
    finally:
        fx.close()
    assert not os.path.exists(top)  # removed with the fixture


def test_mounts_holding_fds_are_checked_and_stay_in_their_process(box_tmp):
    """A bind of an fd takes a directory fd and no source; upper_to a socket, on an overlay of
    a directory; neither can be shipped to the launcher (the fd numbers mean nothing there)."""
    import socket

    from sandbox import ConfigError, MountSpec, SandboxConfig

    d = os.open(str(box_tmp), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    f = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
    a, b = socket.socketpair()
    try:
        ok = SandboxConfig(mounts=[MountSpec("bind", "/w", fd=d),
                                   MountSpec("overlay", "/s", str(box_tmp), upper_to=a.fileno())]).validate()
        with pytest.raises(ConfigError, match="file descriptors"):
            ok.to_dict()
        for bad in (MountSpec("bind", "/w", fd=f), MountSpec("overlay", "/w", str(box_tmp), fd=d),
                    MountSpec("bind", "/w", str(box_tmp), fd=d), MountSpec("bind", "/w", fd=True),
                    MountSpec("overlay", "/w", str(box_tmp), upper_to=f),
                    MountSpec("bind", "/w", str(box_tmp), upper_to=a.fileno())):
            with pytest.raises(ConfigError):
                bad.validate()
    finally:
        os.close(d)
        os.close(f)
        a.close()
        b.close()


def test_a_call_whose_arguments_cannot_cross_makes_no_box(no_leftovers):
    """Arguments cross as tagged JSON only: an object that is not is refused in the caller,
    with its reason, before a box or /work is made for it."""
    fx = SandboxFixture(_PytestConfig("4M"))
    try:
        with pytest.raises(TypeError, match="getpid.*cannot cross into the box: object"):
            fx.call(os.getpid, object())
        assert fx.results == [] and fx._ws is None
    finally:
        fx.close()
