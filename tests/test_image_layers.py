"""Images of many layers: mount(2)'s option string is one page (~160 layers named
``/oldroot/proc/self/fd/N``), so a box's root of more layers is built with one overlayfs
``lowerdir+`` per layer (Linux >= 6.8); past overlayfs's own stack limit (500) the box does not
start, with a line that says so."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

import sandbox
from tests.image_build import base_layer, entry, layer, oci_layout


def _many(n: int) -> list[bytes]:
    """busybox, then ``n - 1`` layers each adding /stack/iNNN; the top one also replaces
    /stack/i001 (a file of a layer far below) and whites out /stack/i002."""
    layers = [base_layer()]
    for i in range(1, n):
        es = [entry("stack", "dir"), entry(f"stack/i{i:03}", "file", f"{i}\n".encode())]
        if i == n - 1:
            es += [entry("stack/i001", "file", b"top\n"), entry("stack/.wh.i002")]
        layers.append(layer(es))
    return layers


@pytest.fixture
def store_dir(monkeypatch):
    top = tempfile.mkdtemp(prefix="sbx-layers-")
    os.chmod(top, 0o711)  # root mode: init is another uid and must walk to the store
    monkeypatch.setenv("SANDBOX_IMAGE_STORE", os.path.join(top, "store"))
    yield top
    subprocess.run(["chmod", "-R", "u+rwx", top], check=False)
    shutil.rmtree(top, ignore_errors=True)


def _import(top: str, n: int, ref: str) -> None:
    sandbox.ImageStore().import_archive(oci_layout(os.path.join(top, f"oci{n}"), _many(n), ref=ref,
                                                   gz=False, Env=["PATH=/bin"]))


def test_a_box_on_an_image_of_300_layers_sees_every_layer_in_order(store_dir):
    _import(store_dir, 300, "test/many:300")
    r = sandbox.run_sync(["sh", "-c", "ls /stack | wc -l; cat /stack/i001 /stack/i299; ls /stack/i002"],
                         sandbox.SandboxConfig(image="test/many:300"))
    assert r.stdout.decode().split() == ["298", "top", "299"], (r.status, r.stdout, r.stderr)
    assert r.status == "RE"  # ls of the whited-out /stack/i002: gone


def test_more_layers_than_overlayfs_stacks_is_a_clear_error(store_dir):
    _import(store_dir, 501, "test/many:501")
    r = sandbox.run_sync(["true"], sandbox.SandboxConfig(image="test/many:501"))
    assert r.status == "XX" and "501 layers" in str(r.error) and "at most 500" in str(r.error), r.error
