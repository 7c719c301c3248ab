"""The pytest plugin's ``sandbox`` fixture on an image (``sandbox.run(..., image=NAME)``,
``sandbox.box(image=NAME)``): the box's root is the image, with the test's /work."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

import sandbox
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
