"""Images without a daemon: import (OCI layout as a directory and as a tar, gzip layers, and a
``docker save`` archive), the content-addressed store, ``sandbox image ls/inspect/rm``; the
images are built here with tarfile (tests/image_build.py: busybox from the host, a second layer
with a whiteout and an opaque directory)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

import sandbox
from tests.conftest import ROOT_MODE
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


# ---------------------------------------------------------------- boxes on an image --

SCRIPT = ("ls /; echo ---; ls /opaque; echo ---; cat /gone 2>&1; cat /new; echo $GREETING; pwd; "
          "echo w > /written; cat /written; ls /dev")


@pytest.fixture
def image(tmp_path_factory, monkeypatch, layers):
    """The two-layer busybox image in a store a root-mode init can walk to (0711 parents)."""
    import tempfile

    top = tempfile.mkdtemp(prefix="sbx-images-")
    os.chmod(top, 0o711)
    monkeypatch.setenv("SANDBOX_IMAGE_STORE", os.path.join(top, "store"))
    src = oci_layout(os.path.join(top, "oci"), layers, Env=["PATH=/bin", "GREETING=hi from env"],
                     WorkingDir="/opaque", Cmd=["sh", "-c", "echo cmd ran in $(pwd)"])
    sandbox.ImageStore().import_archive(src)
    yield top
    import shutil

    subprocess.run(["chmod", "-R", "u+rwx", top], check=False)
    shutil.rmtree(top, ignore_errors=True)


def test_a_box_on_an_image_sees_its_layers_whiteouts_and_config(image):
    r = sandbox.run_sync(["sh", "-c", SCRIPT], sandbox.SandboxConfig(image="test/busybox:1"))
    assert r.status == "OK", (r.error, r.stderr)
    root, opaque, rest = r.stdout.decode().split("---\n")
    assert set(root.split()) >= {"bin", "etc", "new", "opaque", "proc", "dev", "tmp"}
    assert "gone" not in root.split() and "usr" not in root.split()  # whited out; no host /usr
    assert opaque.split() == ["new"]                   # layer 1's /opaque/old is hidden
    assert rest.splitlines()[:5] == ["cat: can't open '/gone': No such file or directory",
                                     "layer 2", "hi from env", "/opaque", "w"]
    assert "null" in rest.split() and "planted" not in rest.split()  # the box's /dev, not the image's


def test_writes_go_to_the_capped_upper_and_vanish(image):
    cfg = sandbox.SandboxConfig(image="test/busybox:1", limits=sandbox.Limits.parse(tmpfs_size="8M"))
    r = sandbox.run_sync(["sh", "-c", "cat /bin/busybox /bin/busybox /bin/busybox /bin/busybox "
                          "/bin/busybox > /big; echo rc=$?; rm -f /bin/busybox"], cfg)
    assert "No space left on device" in r.stderr.decode() and "rc=1" in r.stdout.decode(), r
    r = sandbox.run_sync(["sh", "-c", "ls /big /written 2>&1; ls -l /bin/busybox >/dev/null && echo kept"], cfg)
    assert r.stdout.decode().splitlines() == ["ls: /big: No such file or directory",
                                              "ls: /written: No such file or directory", "kept"]
    store = sandbox.ImageStore()
    bottom = store.layer_dir(store.get("test/busybox:1")["layers"][0])
    assert os.path.getsize(f"{bottom}/bin/busybox") == os.path.getsize("/usr/bin/busybox")
    assert not os.path.exists(f"{bottom}/big")


def test_no_host_path_of_the_store_is_in_the_box(image):
    r = sandbox.run_sync(["cat", "/proc/self/mountinfo", "/proc/mounts"], sandbox.SandboxConfig(image="test/busybox:1"))
    text = r.stdout.decode()
    assert r.status == "OK" and re.search(r"lowerdir\+?=/oldroot/proc/self/fd/", text)
    assert image not in text and "sbx-images" not in text and "/store" not in text


def test_a_held_box_keeps_its_writes_until_it_closes(image):
    cfg = sandbox.SandboxConfig(image="test/busybox:1")
    with sandbox.Box(cfg) as box:
        assert box.exec(["sh", "-c", "echo kept > /mine"]).status == "OK"
        assert box.exec(["cat", "/mine"]).stdout == b"kept\n"
    with sandbox.Box(cfg) as box:
        assert box.exec(["ls", "/mine"]).status == "RE"


def test_an_image_whose_etc_is_a_symlink_out_is_not_followed(tmp_path, image):
    """init writes the box's /etc files under /newroot/etc: through an image's symlink
    ``etc -> ../../oldroot/<host dir>`` that was the host's directory."""
    from tests.image_build import entry, layer

    decoy = tmp_path / "decoy"
    decoy.mkdir()
    os.chmod(tmp_path, 0o755)
    os.chmod(decoy, 0o777)
    evil = layer([entry("bin", "dir"), entry("bin/busybox", data=open("/usr/bin/busybox", "rb").read(), mode=0o755),
                  entry("bin/sh", "symlink", link="busybox"), entry("etc", "symlink", link=f"../../oldroot{decoy}")])
    sandbox.ImageStore().import_archive(oci_layout(str(tmp_path / "evil"), [evil], ref="test/evil:1"))
    r = sandbox.run_sync(["sh", "-c", "cat /etc/passwd"], sandbox.SandboxConfig(image="test/evil:1"))
    assert r.status == "OK" and b"sandbox:x:" in r.stdout, (r.status, r.error)  # our /etc
    assert os.listdir(decoy) == []


def test_unknown_image_is_a_config_error():
    with pytest.raises(sandbox.ConfigError, match="no image 'nope:latest'"):
        sandbox.SandboxConfig(image="nope").validate()


def test_cli_run_image_uses_cmd_and_entrypointless_argv(image):
    st = os.environ["SANDBOX_IMAGE_STORE"]
    r = cli("run", "--image", "test/busybox:1", env_store=st)
    assert (r.returncode, r.stdout) == (0, "cmd ran in /opaque\n"), r.stderr
    r = cli("run", "--image", "test/busybox:1", "--", "cat", "/new", env_store=st)
    assert (r.returncode, r.stdout) == (0, "layer 2\n"), r.stderr
    r = cli("run", "--image", "nope", env_store=st)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "no image 'nope:latest'" in r.stderr


def test_box_commit_stores_the_writable_layer_with_its_whiteouts(image):
    cfg = sandbox.SandboxConfig(image="test/busybox:1")
    with sandbox.Box(cfg) as box:
        r = box.exec(["sh", "-c", "echo mine > /mine; rm /new; mkdir -p /d/e; echo x > /d/e/f; "
                      "ln -s /etc/passwd /link; " + ("" if ROOT_MODE else  # (root mode: /opaque is host root's)
                      "rm -rf /opaque; mkdir /opaque; echo again > /opaque/again")])
        assert r.status == "OK", r.stderr
        assert box.commit("test/committed:2") == "test/committed:2"
    store = sandbox.ImageStore()
    rec = store.get("test/committed:2")
    assert rec["layers"][:2] == store.get("test/busybox:1")["layers"] and len(rec["layers"]) == 3
    top = store.layer_dir(rec["layers"][2])
    assert os.getxattr(f"{top}/new", "user.overlay.whiteout") == b"y"
    assert os.readlink(f"{top}/link") == "/etc/passwd"
    r = sandbox.run_sync(["sh", "-c", "cat /mine /d/e/f; ls /new 2>&1; ls /opaque; readlink /link"],
                         sandbox.SandboxConfig(image="test/committed:2"))
    assert r.stdout.decode().splitlines() == ["mine", "x", "ls: /new: No such file or directory",
                                              "new" if ROOT_MODE else "again", "/etc/passwd"], r.stderr


def test_a_planted_name_with_a_newline_is_refused_at_commit(image):
    with sandbox.Box(sandbox.SandboxConfig(image="test/busybox:1")) as box:
        assert box.exec(["sh", "-c", "touch '/bad\nname'"]).status == "OK"
        with pytest.raises(sandbox.LayerError, match="control character"):
            box.commit("test/bad:1")
    with pytest.raises(sandbox.ImageError, match="no image"):
        sandbox.ImageStore().get("test/bad:1")


def test_commit_needs_a_box_on_an_image():
    with sandbox.Box(sandbox.SandboxConfig()) as box, pytest.raises(sandbox.ImageError, match="not on an image"):
        box.commit("x:1")


def test_sandbox_shell_on_an_image_is_its_sh_at_a_terminal(image):
    """`sandbox shell IMAGE`: the image's own sh (busybox here, no host /usr), interactive,
    with a terminal of its own."""
    from test_cli_tty import Session

    s = Session("test/busybox:1", command="shell")
    s.expect(b"$ ")
    s.send(b"test -t 0 && cat /new && ls /usr/bin/python3 || echo no-host-usr\r")
    s.expect(b"layer 2")
    s.expect(b"no-host-usr")
    s.send(b"exit 5\r")
    assert s.finish() == 5
