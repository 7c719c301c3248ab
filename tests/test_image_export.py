"""``sandbox image export``: an OCI image-layout tar whose digests are right (read back by our
import and checked here blob by blob), and the podman round trip of issue 16: an image podman
built (a ``RUN rm`` whiteout layer), saved both ways, imported, run, committed, exported, then
``podman load`` + ``podman run`` of the export showing the commit."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile

import pytest

import sandbox
from tests.image_build import base_layer, oci_layout, top_layer
from tests.test_images import cli


@pytest.fixture
def store(monkeypatch):
    top = tempfile.mkdtemp(prefix="sbx-export-")
    os.chmod(top, 0o711)  # a root-mode box's init walks to the layers (ImageStore._dir)
    monkeypatch.setenv("SANDBOX_IMAGE_STORE", os.path.join(top, "store"))
    yield top
    subprocess.run(["chmod", "-R", "u+rwx", top], check=False)
    shutil.rmtree(top, ignore_errors=True)


def _members(path: str) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]


def test_export_writes_a_layout_with_right_digests_and_reimports(store):
    src = oci_layout(os.path.join(store, "oci"), [base_layer(), top_layer()], Env=["PATH=/bin"],
                     Cmd=["sh", "-c", "echo cmd"])
    st = sandbox.ImageStore()
    st.import_archive(src)
    out = os.path.join(store, "out.tar")
    assert st.export("test/busybox:1", out) == "test/busybox:1"
    files = _members(out)
    assert json.loads(files["oci-layout"]) == {"imageLayoutVersion": "1.0.0"}
    for name, data in files.items():
        if name.startswith("blobs/sha256/"):
            assert hashlib.sha256(data).hexdigest() == name[13:], name
    (desc,) = json.loads(files["index.json"])["manifests"]
    assert desc["annotations"]["org.opencontainers.image.ref.name"] == "test/busybox:1"
    manifest = json.loads(files[f"blobs/sha256/{desc['digest'][7:]}"])
    config = json.loads(files[f"blobs/sha256/{manifest['config']['digest'][7:]}"])
    assert config["rootfs"]["diff_ids"] == [ly["digest"] for ly in manifest["layers"]]
    assert config["config"]["Cmd"] == ["sh", "-c", "echo cmd"]
    top = tarfile.open(fileobj=io.BytesIO(files[f"blobs/sha256/{manifest['layers'][1]['digest'][7:]}"]))
    assert ".wh.gone" in top.getnames() and "opaque/.wh..wh..opq" in top.getnames()
    assert not [f for f in os.listdir(store) if f.startswith(".sandbox-export-")]  # no temp left
    st.import_archive(out, "test/again:1")
    r = sandbox.run_sync(["sh", "-c", "ls / /opaque; cat /gone"], sandbox.SandboxConfig(image="test/again:1"))
    names = r.stdout.decode().split()
    assert "gone" not in names and "new" in names and "old" not in names, r
    assert "can't open '/gone'" in r.stderr.decode()


def test_export_of_an_unknown_image_is_one_line_exit_1(store):
    p = cli("image", "export", "nope:1", f"{store}/x.tar", env_store=f"{store}/store")
    assert p.returncode == 1 and p.stderr.count("\n") == 1 and "no image 'nope:1'" in p.stderr, p.stderr
    p = cli("image", "export", "nope:1", env_store=f"{store}/store")
    assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert not os.path.exists(f"{store}/x.tar")


PODMAN = shutil.which("podman")
CONTAINERFILE = """FROM localhost/sbxtest-base:1
RUN rm /etc/gone
RUN echo added > /etc/added
ENV GREETING=hello
WORKDIR /etc
CMD ["sh", "-c", "echo $GREETING in $(pwd); cat keep added"]
"""


def _podman(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PODMAN, *args], capture_output=True, text=True, timeout=300, check=check)


@pytest.mark.skipif(os.geteuid() != 0 or not PODMAN or not os.path.exists("/bin/busybox"),
                    reason="the podman round trip needs root (rootful podman: no subuid map for sbxtest), "
                           "podman (apt-get install podman runc) and busybox-static")
def test_podman_built_image_round_trips_through_box_commit_and_export(store):
    work = os.path.join(store, "podman")
    os.makedirs(f"{work}/base/bin")
    os.makedirs(f"{work}/base/etc")
    shutil.copy("/bin/busybox", f"{work}/base/bin/busybox")
    for cmd in ("sh", "ls", "cat", "echo", "rm", "pwd"):
        os.symlink("busybox", f"{work}/base/bin/{cmd}")
    for f in ("keep", "gone"):
        with open(f"{work}/base/etc/{f}", "w") as fh:
            fh.write(f + "\n")
    subprocess.run(["tar", "-C", f"{work}/base", "-cf", f"{work}/base.tar", "."], check=True)
    tags = ["localhost/sbxtest-base:1", "localhost/sbxtest-layered:1", "localhost/sbxtest-committed:1"]
    try:
        _podman("import", "--change", "ENV PATH=/bin", f"{work}/base.tar", tags[0])
        with open(f"{work}/Containerfile", "w") as fh:
            fh.write(CONTAINERFILE)
        _podman("build", "-q", "--network", "none", "-t", tags[1], work)
        st = sandbox.ImageStore()
        for fmt in ("docker-archive", "oci-archive"):
            _podman("save", "--format", fmt, "-o", f"{work}/{fmt}.tar", tags[1])
            st.import_archive(f"{work}/{fmt}.tar", f"built/{fmt}:1")
            cmd = st.command(f"built/{fmt}:1")
            cfg = sandbox.SandboxConfig(image=f"built/{fmt}:1")  # its Env and WorkingDir
            r = sandbox.run_sync(cmd, cfg)
            assert r.stdout.decode().splitlines() == ["hello in /etc", "keep", "added"], (fmt, r)
            r = sandbox.run_sync(["ls", "/etc"], cfg)
            assert "gone" not in r.stdout.decode().split() and "keep" in r.stdout.decode().split(), r
        with sandbox.Box(sandbox.SandboxConfig(image="built/oci-archive:1")) as box:
            # (as root the box user is a high uid: the image's root-owned /etc is read-only to it)
            assert box.exec(["sh", "-c", "echo committed > /committed"]).status == "OK"
            box.commit("built/committed:1")
        st.export("built/committed:1", f"{work}/export.tar")
        loaded = _podman("load", "-i", f"{work}/export.tar").stdout
        assert "built/committed:1" in loaded, loaded
        _podman("tag", "built/committed:1", tags[2])
        # (podman's rootful default rlimits are above this machine's hard limits: runc's raise is EPERM)
        r = _podman("run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit",
                    "nproc=1024:1024", tags[2], "sh", "-c", "cat /committed; ls /etc",
                    check=False)
        out = r.stdout.split()  # (podman adds its /etc/hosts, passwd, ...)
        assert out[0] == "committed" and {"added", "keep"} <= set(out) and "gone" not in out, (r.stdout, r.stderr)
    finally:
        subprocess.run([PODMAN, "rmi", "-f", *tags, "built/committed:1"], capture_output=True, timeout=120)
