"""What a box's mounts still told it of the host (issue 13, weak layer "host paths").

* A mount at its host path (``--bind /home/u/data`` without ``:DEST``, a pytest box's project)
  makes the directories above it in the box, mode 0111 so ``ls /home`` shows no user name.
  Under the single-id map the box user owns them (it owns its whole tmpfs), so where they sat
  on a writable mount (a held ``Box``'s /, the box's /tmp) ``chmod 755`` and a listing showed
  the names again. They are now a read-only mount of their own: chmod is EROFS.
* A read-only bind of a directory showed its host path in /proc/self/mountinfo (field 4, the
  mount's root within its filesystem). A read-only directory is now an overlay whose lower
  layer is given by fd, which no mount table names.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

import sandbox
from sandbox import MountSpec, SandboxConfig
from tests.conftest import ROOT_MODE
from tests.escape._watch import watch

# argv: the mount's target, then the host directories above it that the box made (0111)
CHMOD_AND_LIST = """
    import errno, os, sys
    target, above = sys.argv[1], sys.argv[2:]
    for d in above:
        try:
            os.chmod(d, 0o755)
            chmod = "chmod-ok"
        except OSError as e:
            chmod = errno.errorcode[e.errno]
        try:
            listed = ",".join(os.listdir(d))
        except OSError as e:
            listed = errno.errorcode[e.errno]
        print(d, chmod, listed)
    print("target", sorted(os.listdir(target)))
    """


@pytest.fixture(params=["tmp", "var-tmp"])
def nested(request) -> Iterator[tuple[Path, list[str]]]:
    """A host directory ``.../hostuser<random>/data`` with a file in it, under /tmp (the box's
    own /tmp is writable) or /var/tmp (no /var in the box: made under its /), and the
    directories above ``data`` that the box must make to mount it at its host path."""
    base = "/tmp" if request.param == "tmp" else "/var/tmp"
    if not os.access(base, os.W_OK | os.X_OK):
        pytest.skip(f"{base} is not writable here")
    top = Path(tempfile.mkdtemp(prefix="sbx-test-", dir=base))
    try:
        data = top / f"hostuser{secrets.token_hex(4)}" / "data"
        data.mkdir(parents=True)
        (data / "f").write_text("x")
        for p in (top, data.parent, data):
            os.chmod(p, 0o755)
        os.chmod(data / "f", 0o644)
        above = [str(p) for p in (top, data.parent)]
        if base == "/var/tmp":
            above[:0] = ["/var", "/var/tmp"]
        yield data, above
    finally:
        shutil.rmtree(top, ignore_errors=True)


def _check(out: str, above: list[str]) -> None:
    lines = out.splitlines()
    assert lines[-1] == "target ['f']", out  # the mount itself is still there and readable
    for d, line in zip(above, lines, strict=False):
        path, chmod, listed = line.split(" ")
        assert path == d and chmod == "EROFS" and listed == "EACCES", out


@pytest.mark.parametrize("kind", ["ro-bind", "bind"])
def test_a_one_shot_box_cannot_chmod_the_hidden_parents(nested, kind, no_leftovers):
    data, above = nested
    r = sandbox.run_sync(["python3", "-c", textwrap.dedent(CHMOD_AND_LIST), str(data), *above],
                         SandboxConfig(mounts=[MountSpec(kind, str(data), source=str(data))]))
    assert r.status == "OK", r
    _check(r.stdout.decode(), above)


def test_a_held_box_cannot_chmod_the_hidden_parents_and_put_still_works(nested, no_leftovers):
    """A held box's / is writable: the 0111 directories made under it were the box user's to
    chmod. ``put`` still writes into the writable bind and /tmp; into a hidden directory it
    cannot (the box's own view of it is read-only too)."""
    data, above = nested
    if ROOT_MODE:  # the box user is a uid of its own there: let it write into the bind
        os.chmod(data, 0o777)
    with sandbox.Box(SandboxConfig(mounts=[MountSpec("bind", str(data), source=str(data))])) as box:
        r = box.exec(["python3", "-c", textwrap.dedent(CHMOD_AND_LIST), str(data), *above])
        assert r.status == "OK", r
        _check(r.stdout.decode(), above)
        box.put(str(data / "put"), b"in the bind")
        box.put("/tmp/put", b"in /tmp")
        assert box.get("/tmp/put") == b"in /tmp"
        with pytest.raises(OSError) as e:
            box.put(above[-1] + "/planted", b"x")
        assert e.value.errno == errno.EROFS
    assert (data / "put").read_bytes() == b"in the bind"
    os.unlink(data / "put")


RO_PROBE = """
    import errno, os
    print(open("/data/f").read(), sorted(os.listdir("/data")))
    try:
        open("/data/new", "w")
        print("written")
    except OSError as e:
        print(errno.errorcode[e.errno])
    print("====")
    print(open("/proc/self/mountinfo").read())
    print(open("/proc/mounts").read())
    """


def test_a_read_only_bind_names_no_host_path(box_tmp, no_leftovers):
    """``--ro-bind HOST:/data`` of a directory: the same files, read-only, and neither
    mountinfo (whose 4th field was the source's path in its filesystem) nor /proc/mounts
    holds the host path's unique part."""
    marker = f"hostmarker{secrets.token_hex(6)}"
    src = box_tmp / marker / "data"
    src.mkdir(parents=True)
    (src / "f").write_text("contents")
    for p in (box_tmp / marker, src):
        os.chmod(p, 0o755)
    os.chmod(src / "f", 0o644)
    r = sandbox.run_sync(["python3", "-c", textwrap.dedent(RO_PROBE)],
                         SandboxConfig(mounts=[MountSpec("ro-bind", "/data", source=str(src))]))
    assert r.status == "OK", r
    files, tables = r.stdout.decode().split("====\n")
    assert files.split("\n")[:2] == ["contents ['f']", "EROFS"], files
    assert " /data " in tables, tables
    assert marker not in tables and str(box_tmp) not in tables, tables


def test_a_read_only_bind_shares_no_host_inode(box_tmp, no_leftovers):
    """A bind shared the host's inodes: with inotify given back to the box, a watch on it saw
    every host read there. The overlay's inodes are its own."""
    src = box_tmp / "data"
    src.mkdir()
    (src / "f").write_text("contents")
    os.chmod(src, 0o755)
    os.chmod(src / "f", 0o644)

    def touch() -> None:
        for _ in range(3):
            os.listdir(src)
            (src / "f").read_bytes()

    last = watch(["/data", "/data/f"], touch, SandboxConfig(
        seccomp_allow=("inotify",), mounts=[MountSpec("ro-bind", "/data", source=str(src))]))
    host_events, own_events = map(int, last.split())
    assert own_events > 0 and host_events == 0, last
