"""The pytest plugin's ``sandbox`` fixture on an image (``sandbox.run(..., image=NAME)``,
``sandbox.box(image=NAME)``): the box's root is the image, with the test's /work."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

import sandbox
from tests.conftest import ROOT_MODE
from tests.image_build import base_layer, oci_layout, top_layer


@pytest.fixture
def image(monkeypatch):
    top = tempfile.mkdtemp(prefix="sbx-imgfix-")
    os.chmod(top, 0o711)
    monkeypatch.setenv("SANDBOX_IMAGE_STORE", os.path.join(top, "store"))
    sandbox.ImageStore().import_archive(oci_layout(os.path.join(top, "oci"), [base_layer(), top_layer()],
                                                   Env=["PATH=/bin"]))
    yield "test/busybox:1"
    subprocess.run(["chmod", "-R", "u+rwx", top], check=False)
    shutil.rmtree(top, ignore_errors=True)


def test_the_fixture_runs_on_an_image_with_its_work_dir(request, image):
    fx = request.getfixturevalue("sandbox")  # (the name `sandbox` is the module here)
    r = fx.run(["sh", "-c", "cat /new /work/in.txt; ls /; echo out > /work/out.txt"], image=image,
               files={"in.txt": b"from the test\n"})
    assert r.status == "OK", (r.error, r.stderr)
    lines = r.stdout.decode().split()
    assert lines[:4] == ["layer", "2", "from", "the"] and "gone" not in lines and "usr" not in lines, lines
    assert fx.read("out.txt") == b"out\n"
    with fx.box(image=image) as box:
        assert box.exec(["cat", "/new"]).stdout == b"layer 2\n"


def test_box_changes_sees_writes_to_an_image_root(image):
    """``Box.changes()`` lists the image root's upper: a new file created, a file of a layer
    modified, a file of a layer deleted (overlayfs's whiteout), /tmp as before."""
    with sandbox.Box(sandbox.SandboxConfig(image=image)) as box:
        r = box.exec(["sh", "-c", "echo mine > /mine; echo again > /new; rm /opaque/new; echo t > /tmp/t"])
        assert r.status == "OK", r.stderr
        ch = box.changes()
    assert ch.created == ["/mine", "/tmp/t"], ch
    if not ROOT_MODE:  # (as root the image's files are host root's: read-only to the box user)
        assert ch.modified == ["/new"] and ch.deleted == ["/opaque/new"], ch


def test_box_changes_calls_a_path_a_layer_hid_and_the_box_made_again_created(image):
    """The top layer whites out /gone and makes /opaque opaque over the base's /opaque/old: the
    box sees neither, so writing them makes them (created), it does not change a layer's file.
    Deleting /opaque/new (the top layer's) is a deletion; the hidden /opaque/old never was."""
    if ROOT_MODE:
        pytest.skip("as root the image's files are host root's: the box user cannot remove /opaque/new")
    with sandbox.Box(sandbox.SandboxConfig(image=image)) as box:
        r = box.exec(["sh", "-c", "rm -r /opaque; mkdir /opaque"])
        assert r.status == "OK", r.stderr
        assert box.changes() == sandbox.Changes(deleted=["/opaque/new"])
        r = box.exec(["sh", "-c", "echo back > /gone; echo o > /opaque/old"])
        assert r.status == "OK", r.stderr
        ch = box.changes()
    assert ch.created == ["/gone", "/opaque/old"], ch
    assert ch.modified == [] and ch.deleted == ["/opaque/new"], ch
