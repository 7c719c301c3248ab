"""Python in a box on an image (issue 16: "run busybox and Python in them"): an image of
busybox plus the host's CPython as a second layer (``tests/image_build.python_layer``: the
binary, its libraries, the standard-library files it loads), built with tarfile alone."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

import pytest

import sandbox
from tests.image_build import base_layer, oci_layout, python_layer


@pytest.fixture(scope="module")
def image():
    top = tempfile.mkdtemp(prefix="sbx-imgpy-")
    os.chmod(top, 0o711)  # root mode: init is another uid and must walk to the store
    store = os.path.join(top, "store")
    sandbox.ImageStore(store).import_archive(oci_layout(os.path.join(top, "oci"), [base_layer(), python_layer()],
                                                        ref="test/python:1", Env=["PATH=/usr/bin:/bin"]))
    yield store
    subprocess.run(["chmod", "-R", "u+rwx", top], check=False)
    shutil.rmtree(top, ignore_errors=True)


def test_python_runs_in_a_box_on_the_image_and_sees_only_the_image(image, monkeypatch):
    monkeypatch.setenv("SANDBOX_IMAGE_STORE", image)
    code = ("import json, os, sys; print(json.dumps({'v': list(sys.version_info[:2]), 'prefix': sys.prefix, "
            "'lib': len(os.listdir(os.path.dirname(os.__file__))), 'sh': os.path.exists('/bin/sh')}))")
    r = sandbox.run_sync(["python3", "-I", "-S", "-c", code], sandbox.SandboxConfig(image="test/python:1"))
    assert r.status == "OK", (r.status, r.stderr)
    out = json.loads(r.stdout)
    assert out["v"] == list(__import__("sys").version_info[:2]) and out["prefix"] == "/usr" and out["sh"], out
    assert out["lib"] < 40, out  # the image's few stdlib files, not the host's hundreds
    r = sandbox.run_sync(["sh", "-c", "python3 -I -S -c 'print(6 * 7)' | cat"], sandbox.SandboxConfig(image="test/python:1"))
    assert (r.status, r.stdout) == ("OK", b"42\n"), r.stderr
