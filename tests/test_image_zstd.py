"""``tar+zstd`` layers (``_layers.ZstdReader``, the PyPI ``zstandard`` package): imported and
run like gzip ones; a bomb stops at the layer cap, and a frame that asks for a decoding
window above ``ZSTD_MAX_WINDOW`` is refused before the memory is allocated."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile

import pytest

import sandbox
from sandbox import _layers
from tests.image_build import base_layer, oci_layout, top_layer

zstandard = pytest.importorskip("zstandard", reason="zstd layers need the zstandard package (ci/install-venv.sh)")


@pytest.fixture
def place(monkeypatch):
    top = tempfile.mkdtemp(prefix="sbx-zstd-")
    os.chmod(top, 0o711)
    monkeypatch.setenv("SANDBOX_IMAGE_STORE", os.path.join(top, "store"))
    yield top
    subprocess.run(["chmod", "-R", "u+rwx", top], check=False)
    shutil.rmtree(top, ignore_errors=True)


def _swap_blob(layout: str, blob: bytes) -> None:
    """Put ``blob`` in place of the layout's zstd layer (its digest then mismatches too: what is
    tested must refuse it first)."""
    d = os.path.join(layout, "blobs", "sha256")
    for name in os.listdir(d):
        with open(os.path.join(d, name), "rb") as f:
            is_zstd = f.read(4) == _layers.ZSTD_MAGIC
        if is_zstd:
            with open(os.path.join(d, name), "wb") as f:
                f.write(blob)


def test_zstd_layers_import_and_run(place):
    src = oci_layout(os.path.join(place, "oci"), [base_layer(), top_layer()], gz="zstd", Env=["PATH=/bin"])
    with open(os.path.join(src, "index.json")) as f:
        assert "tar+zstd" not in f.read()  # (the media type is in the manifest blob)
    assert sandbox.ImageStore().import_archive(src) == ["test/busybox:1"]
    r = sandbox.run_sync(["sh", "-c", "cat /new; ls /"], sandbox.SandboxConfig(image="test/busybox:1"))
    assert r.status == "OK" and r.stdout.decode().startswith("layer 2\n"), r
    assert "gone" not in r.stdout.decode().split()


def test_zstd_bomb_stops_at_the_cap(place):
    bomb = zstandard.ZstdCompressor(level=3).compress(b"\0" * (64 << 20))  # 64 MiB of zeros
    assert len(bomb) < 64 << 10
    src = oci_layout(os.path.join(place, "oci"), [b"\0" * 1024], gz="zstd")
    _swap_blob(src, bomb)
    store = sandbox.ImageStore(max_layer_bytes=1 << 20, max_layer_entries=50)
    with pytest.raises((sandbox.ImageError, sandbox.LayerError), match="more than"):
        store.import_archive(src)
    assert not os.listdir(os.path.join(place, "store", "tmp"))  # the partial extraction is gone


def test_a_frame_asking_a_huge_window_is_refused(place):
    # magic, frame header (no content size, not single-segment), window descriptor 2**31,
    # then one last raw block of 512 zero bytes: decodable in 512 bytes, but the frame asks
    # the decoder to reserve 2 GiB first
    frame = _layers.ZSTD_MAGIC + bytes([0x00, (31 - 10) << 3]) + ((512 << 3) | 1).to_bytes(3, "little") + b"\0" * 512
    src = oci_layout(os.path.join(place, "oci"), [b"\0" * 1024], gz="zstd")
    _swap_blob(src, frame)
    with pytest.raises(sandbox.LayerError, match="zstd: .*(window|memory)") as e:
        sandbox.ImageStore().import_archive(src)
    assert "\n" not in str(e.value)
