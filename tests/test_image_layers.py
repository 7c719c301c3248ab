"""Images of many layers: mount(2)'s option string is one page (~160 layers named
``/oldroot/proc/self/fd/N``), so a box's root of more layers is built with one overlayfs
``lowerdir+`` per layer (Linux >= 6.8); past overlayfs's own stack limit (500) the box does not
start, with a line that says so. On a kernel without ``lowerdir+`` the bottom layers are merged
into one (``sandbox/_image_flatten.py``): tested here by taking this kernel for one without it,
so the merged layer is built, mounted and read by a real box."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

import sandbox
from tests.image_build import base_layer, entry, layer, oci_layout


def _many(n: int) -> list[bytes]:
    """busybox, then ``n - 1`` layers each adding /stack/iNNN; the 4th also whites out
    /stack/i003 and makes /opaque (the base's, with /opaque/old) opaque with /opaque/mid; the
    top one replaces /stack/i001 (a file of a layer far below) and whites out /stack/i002."""
    layers = [base_layer()]
    for i in range(1, n):
        es = [entry("stack", "dir"), entry(f"stack/i{i:03}", "file", f"{i}\n".encode())]
        if i == 4:  # (far down: in the merged part when the layers are merged)
            es += [entry("stack/.wh.i003"), entry("opaque", "dir"), entry("opaque/.wh..wh..opq"),
                   entry("opaque/mid", "file", b"mid\n")]
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
    r = sandbox.run_sync(["sh", "-c", "ls /stack | wc -l; cat /stack/i001 /stack/i299; ls /opaque; ls /stack/i002"],
                         sandbox.SandboxConfig(image="test/many:300"))
    assert r.stdout.decode().split() == ["297", "top", "299", "mid"], (r.status, r.stdout, r.stderr)
    assert r.status == "RE"  # ls of the whited-out /stack/i002: gone


def test_more_layers_than_overlayfs_stacks_is_a_clear_error(store_dir):
    _import(store_dir, 501, "test/many:501")
    r = sandbox.run_sync(["true"], sandbox.SandboxConfig(image="test/many:501"))
    assert r.status == "XX" and "501 layers" in str(r.error) and "at most 500" in str(r.error), r.error


def _run(argv: list[str], image: str) -> sandbox.Result:
    """In a held Box, which is planned in this process: ``run_sync`` under xdist's threads is
    planned by the supervisor's launcher, which a monkeypatch here does not reach."""
    with sandbox.Box(sandbox.SandboxConfig(image=image)) as box:
        return box.exec(argv)


def _lowers_in_box(image: str) -> int:
    r = _run(["cat", "/proc/self/mountinfo"], image)
    root = [ln for ln in r.stdout.decode().splitlines() if ln.split()[4] == "/"]
    assert r.status == "OK" and len(root) == 1, (r.status, r.stdout, r.stderr)
    opts = root[0].split(" - ", 1)[1].split()[2].split(",")
    return sum(o.startswith("lowerdir+=") for o in opts) or next(
        o.count(":") + 1 for o in opts if o.startswith("lowerdir="))


def test_without_lowerdir_plus_the_bottom_layers_are_merged_into_one(store_dir, monkeypatch):
    from sandbox import _image_flatten

    monkeypatch.setattr(_image_flatten, "lowerdir_plus", lambda: False)
    _import(store_dir, 300, "test/many:300")
    store = sandbox.ImageStore()
    flats = lambda: sorted(n for n in os.listdir(os.path.join(store.root, "layers")) if n.startswith("flat-"))  # noqa: E731
    for _ in range(2):  # the second box reuses the merged layer
        r = _run(["sh", "-c", "ls /stack | wc -l; cat /stack/i001 /stack/i005 /stack/i299; "
                  "ls /bin/busybox /etc/os-release /opaque; ls /stack/i003 || ls /stack/i002"], "test/many:300")
        assert r.stdout.decode().split() == ["297", "top", "5", "299", "/bin/busybox", "/etc/os-release",
                                             "/opaque:", "mid"], (r.status, r.stdout, r.stderr)
        assert r.status == "RE"  # the whiteouts of /stack/i003 (merged) and /stack/i002 (above)
        assert len(flats()) == 1
    assert _lowers_in_box("test/many:300") == _image_flatten.MAX_LOWERS
    assert store.remove("test/many:300") and flats() == []


def test_the_merged_layer_has_every_entry_of_a_layer_the_store_let_be_large(store_dir, monkeypatch):
    """A store made with a higher ``max_layer_entries`` holds layers past the default cap; the
    merge must take all of such a layer (it was bounded at its import), not stop at the default
    cap and give the box a tree with entries silently missing. (The default cap is lowered here
    to 50, for a layer of 200 entries, instead of building one of 500 000.)"""
    from sandbox import _image_flatten, _layers

    monkeypatch.setattr(_image_flatten, "lowerdir_plus", lambda: False)
    layers = _many(130)
    layers.insert(1, layer([entry("many", "dir"), *(entry(f"many/f{i:03}", "file") for i in range(200))]))
    sandbox.ImageStore(max_layer_entries=1000).import_archive(
        oci_layout(os.path.join(store_dir, "oci"), layers, ref="test/big:131", gz=False, Env=["PATH=/bin"]))
    monkeypatch.setattr(_layers, "MAX_ENTRIES", 50)
    r = _run(["sh", "-c", "ls /many | wc -l; ls /bin/busybox"], "test/big:131")
    assert r.stdout.decode().split() == ["200", "/bin/busybox"], (r.status, r.stdout, r.stderr)
