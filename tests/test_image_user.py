"""The image config's ``User`` honoured (``sandbox/_image_user.py``): names resolved from the
image's own /etc/passwd and /etc/group as its overlay shows them (top layer first, whiteouts),
an /etc/passwd symlink refused rather than followed from the host, ids no box can have refused
with one line, and ``uid``/``gid`` given by the caller winning."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

import sandbox
from tests.conftest import ROOT_MODE
from tests.image_build import base_layer, entry, layer, oci_layout

PASSWD = b"root:x:0:0::/root:/bin/sh\napp:x:4242:4343::/home/app:/bin/sh\nlisted:x:77:88::/:/bin/sh\n"
GROUP = b"root:x:0:\nstaff:x:5151:app\n"


@pytest.fixture
def images(monkeypatch):
    top = tempfile.mkdtemp(prefix="sbx-imguser-")
    os.chmod(top, 0o711)
    monkeypatch.setenv("SANDBOX_IMAGE_STORE", os.path.join(top, "store"))
    store = sandbox.ImageStore()
    users = layer([entry("etc", "dir"), entry("etc/passwd", data=PASSWD), entry("etc/group", data=GROUP)])
    n = 0

    def make(user: str, *extra: bytes) -> str:
        nonlocal n
        n += 1
        name = f"test/user{n}:1"
        store.import_archive(oci_layout(os.path.join(top, f"oci{n}"), [base_layer(), users, *extra], ref=name,
                                        User=user, Env=["PATH=/bin"]))
        return name

    yield make
    subprocess.run(["chmod", "-R", "u+rwx", top], check=False)
    shutil.rmtree(top, ignore_errors=True)


def _ids(image: str, **kw: object) -> tuple[int, int]:
    cfg = sandbox.SandboxConfig(image=image, **kw).validate()  # type: ignore[arg-type]
    return cfg.uid, cfg.gid


@pytest.mark.parametrize(("user", "ids"), [("app", (4242, 4343)), ("app:staff", (4242, 5151)),
                                           ("app:99", (4242, 99)), ("listed", (77, 88)), ("77", (77, 88)),
                                           ("123", (123, 0)), ("123:456", (123, 456)), ("0", (0, 0))])
def test_user_is_resolved_from_the_images_passwd_and_group(images, user, ids):
    assert _ids(images(user)) == ids


def test_the_box_runs_as_the_images_user(images):
    r = sandbox.run_sync(["sh", "-c", "busybox id -u; busybox id -g; touch /mine && busybox stat -c %u /mine"],
                         sandbox.SandboxConfig(image=images("app:staff")))
    assert r.status == "OK", (r.error, r.stderr)
    assert r.stdout.decode().split() == ["4242", "5151", "4242"]


def test_the_callers_uid_and_gid_win(images):
    assert _ids(images("app"), uid=5, gid=6) == (5, 6)


def test_a_whited_out_passwd_has_no_users(images):
    gone = layer([entry("etc", "dir"), entry("etc/.wh.passwd")])
    with pytest.raises(sandbox.ConfigError, match=r"no user 'app' in the image's /etc/passwd"):
        _ids(images("app", gone))
    opaque = layer([entry("etc", "dir"), entry("etc/.wh..wh..opq"), entry("etc/passwd", data=b"app:x:9:9::/:/bin/sh\n")])
    assert _ids(images("app", opaque)) == (9, 9)  # the top layer's file wins
    hidden = layer([entry("etc", "dir"), entry("etc/.wh..wh..opq"), entry("etc/hostname", data=b"x\n")])
    with pytest.raises(sandbox.ConfigError, match="no user 'app'"):  # the lower /etc/passwd is hidden
        _ids(images("app", hidden))


def test_a_passwd_symlink_is_refused_not_followed_from_the_host(images):
    # followed from the host, this would read the host's /etc/passwd and find its root
    link = layer([entry("etc", "dir"), entry("etc/.wh.passwd"), entry("etc/passwd", "symlink", link="/etc/passwd")])
    with pytest.raises(sandbox.ConfigError, match=r"/etc/passwd is a symlink .*not followed from the host"):
        _ids(images("root", link))
    etc_link = layer([entry("etc", "symlink", link="/etc")])
    with pytest.raises(sandbox.ConfigError, match="symlink"):
        _ids(images("root", etc_link))


@pytest.mark.parametrize(("user", "message"), [
    ("nobody", "no user 'nobody'"), ("app:wheel", "no group 'wheel'"),
    ("70000", "id 70000 is not one a box can have"), ("1:70000", "id 70000")])
def test_what_a_box_cannot_be_is_one_line(images, user, message):
    with pytest.raises(sandbox.ConfigError, match=message) as e:
        _ids(images(user))
    assert "\n" not in str(e.value)


@pytest.mark.skipif(ROOT_MODE, reason="runs the CLI as the unprivileged user")
def test_cli_run_image_with_a_bad_user_is_one_line_exit_2(images):
    from tests.test_images import cli

    image = images("nobody")
    p = cli("run", "--image", image, "--", "true", env_store=os.environ["SANDBOX_IMAGE_STORE"])
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "no user 'nobody'" in p.stderr, p.stderr
