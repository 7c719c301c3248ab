"""Images without a daemon: import (OCI layout as a directory and as a tar, gzip layers, and a
``docker save`` archive), the content-addressed store, ``sandbox image ls/inspect/rm``; the
images are built here with tarfile (tests/image_build.py: busybox from the host, a second layer
with a whiteout and an opaque directory)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import sandbox
from tests.image_build import base_layer, docker_archive, oci_layout, top_layer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def layers():
    return [base_layer(), top_layer()]


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("SANDBOX_IMAGE_STORE", str(tmp_path / "store"))
    return sandbox.ImageStore()


def cli(*args: str, env_store: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SANDBOX_IMAGE_STORE": env_store, "PYTHONPATH": ROOT}
    return subprocess.run([sys.executable, "-m", "sandbox._cli", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=60)


def test_store_root_follows_the_env_then_xdg(monkeypatch, tmp_path):
    from sandbox._images import store_root

    monkeypatch.delenv("SANDBOX_IMAGE_STORE", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert store_root() == str(tmp_path / "xdg" / "sandbox")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert store_root() == str(tmp_path / "home" / ".local" / "share" / "sandbox")


@pytest.mark.parametrize("as_tar", [False, True])
def test_oci_layout_imports_with_gzip_layers(store, tmp_path, layers, as_tar):
    src = oci_layout(str(tmp_path / ("img.tar" if as_tar else "img")), layers, as_tar=as_tar,
                     Env=["PATH=/bin", "GREETING=hi"], Cmd=["sh", "-c", "echo $GREETING"])
    assert store.import_archive(src) == ["test/busybox:1"]
    rec = store.inspect("test/busybox:1")
    assert [ly["diff_id"] for ly in rec["layers"]] == rec["config"]["rootfs"]["diff_ids"]
    assert rec["config"]["config"]["Env"] == ["PATH=/bin", "GREETING=hi"]
    assert rec["size"] >= os.path.getsize("/usr/bin/busybox")
    bottom, top = (store.layer_dir(d) for d in store.get("test/busybox:1")["layers"])
    with open(f"{bottom}/bin/busybox", "rb") as a, open("/usr/bin/busybox", "rb") as b:
        assert a.read() == b.read()
    assert os.readlink(f"{bottom}/bin/sh") == "busybox"
    assert os.getxattr(f"{top}/gone", "user.overlay.whiteout") == b"y"
    assert os.getxattr(f"{top}/opaque", "user.overlay.opaque") == b"y"


def test_docker_save_archive_imports_and_shares_layers(store, tmp_path, layers, monkeypatch):
    from sandbox import _layers

    store.import_archive(oci_layout(str(tmp_path / "oci"), layers))
    before = sorted(os.listdir(os.path.join(store.root, "layers")))
    calls = []
    real = _layers.extract
    monkeypatch.setattr(_layers, "extract", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert store.import_archive(docker_archive(str(tmp_path / "d.tar"), layers)) == ["test/busybox:docker"]
    assert sorted(os.listdir(os.path.join(store.root, "layers"))) == before
    assert calls == []  # the layers were unpacked once, by the first import
    assert store.get("test/busybox:docker")["layers"] == store.get("test/busybox:1")["layers"]
    assert store.remove("test/busybox:1") == []      # the docker image still uses both
    assert len(store.remove("test/busybox:docker")) == 2
    assert os.listdir(os.path.join(store.root, "layers")) == []


def test_a_layer_that_does_not_match_its_diff_id_is_refused_and_removed(store, tmp_path, layers):
    src = docker_archive(str(tmp_path / "d.tar"), layers)
    # the manifest's second layer is the first one: it unpacks fine but hashes wrong
    import tarfile

    with tarfile.open(src) as t:
        files = {m.name: t.extractfile(m).read() for m in t.getmembers()}
    files[f"{1:064x}/layer.tar"] = layers[0]
    with tarfile.open(src, "w") as t:
        import io

        for n, d in files.items():
            ti = tarfile.TarInfo(n)
            ti.size = len(d)
            t.addfile(ti, io.BytesIO(d))
    with pytest.raises(sandbox.ImageError, match="the config says sha256:"):
        store.import_archive(src)
    assert len(os.listdir(os.path.join(store.root, "layers"))) == 1  # only the good one
    assert os.listdir(os.path.join(store.root, "tmp")) == []
    assert store.images() == []


def test_a_blob_whose_digest_is_wrong_is_refused(store, tmp_path, layers):
    src = oci_layout(str(tmp_path / "oci"), layers)
    blobs = tmp_path / "oci" / "blobs" / "sha256"
    for p in blobs.iterdir():
        data = p.read_bytes()
        if data[:2] == b"\x1f\x8b":  # a layer: recompress (same content, other bytes)
            import gzip

            p.write_bytes(gzip.compress(gzip.decompress(data), compresslevel=1, mtime=1))
            break
    with pytest.raises(sandbox.ImageError, match="has digest"):
        store.import_archive(src)


def test_a_layout_blob_that_is_a_symlink_is_refused(store, tmp_path, layers):
    src = oci_layout(str(tmp_path / "oci"), layers)
    idx = json.loads((tmp_path / "oci" / "index.json").read_text())
    man = tmp_path / "oci" / "blobs" / "sha256" / idx["manifests"][0]["digest"][7:]
    man.unlink()
    man.symlink_to("/etc/passwd")
    with pytest.raises(sandbox.ImageError, match="link"):
        store.import_archive(src)


def test_cli_import_ls_inspect_rm(tmp_path, layers):
    st = str(tmp_path / "store")
    src = oci_layout(str(tmp_path / "img"), layers, ref="latest")
    r = cli("image", "import", src, env_store=st)
    assert r.returncode == 1 and "give --name" in r.stderr and r.stderr.count("\n") == 1
    r = cli("image", "import", src, "--name", "bb", env_store=st)
    assert (r.returncode, r.stdout, r.stderr) == (0, "imported bb:latest\n", "")
    r = cli("image", "ls", env_store=st)
    assert r.returncode == 0 and r.stdout.splitlines()[1].split()[0] == "bb:latest"
    assert r.stdout.splitlines()[1].split()[2] == "2"
    r = cli("image", "inspect", "bb", env_store=st)
    info = json.loads(r.stdout)
    assert info["name"] == "bb:latest" and len(info["layers"]) == 2 and info["size"] > 0
    r = cli("image", "rm", "bb", env_store=st)
    assert (r.returncode, r.stdout) == (0, "removed bb:latest (2 layers freed)\n")
    r = cli("image", "inspect", "bb", env_store=st)
    assert r.returncode == 1 and r.stderr == f"sandbox: error: no image 'bb:latest' in {st} (sandbox image import FILE)\n"


@pytest.mark.parametrize("args", [[], ["nope"], ["import"], ["import", "a", "b"], ["rm"],
                                  ["inspect", "Bad Name"], ["import", "x", "--name", "UP"],
                                  ["ls", "extra"], ["import", "x", "--bogus"]])
def test_cli_usage_errors_exit_2_with_one_line(tmp_path, args):
    r = cli("image", *args, env_store=str(tmp_path / "s"))
    assert r.returncode == 2 and r.stderr.startswith("sandbox: error: ") and r.stderr.count("\n") == 1, r
    assert "Traceback" not in r.stderr


def test_cli_refused_archive_is_one_line_exit_1(tmp_path):
    (tmp_path / "junk").write_bytes(b"not a tar")
    r = cli("image", "import", str(tmp_path / "junk"), env_store=str(tmp_path / "s"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "not an image archive" in r.stderr
    r = cli("image", "import", str(tmp_path / "missing"), env_store=str(tmp_path / "s"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr


def test_a_manifest_whose_digest_is_wrong_is_refused(store, tmp_path, layers):
    src = oci_layout(str(tmp_path / "oci"), layers)
    idx = json.loads((tmp_path / "oci" / "index.json").read_text())
    man = tmp_path / "oci" / "blobs" / "sha256" / idx["manifests"][0]["digest"][7:]
    man.write_bytes(man.read_bytes() + b" ")
    with pytest.raises(sandbox.ImageError, match="has digest"):
        store.import_archive(src)
