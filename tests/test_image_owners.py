"""What an image's layers keep that the store's trees cannot: owners other than 0:0 (an
unprivileged unpacker owns every file it makes, so they are recorded beside the tree at import)
and hard links. ``sandbox image export`` and ``Box.commit`` write them back: the archive's
owners, a copied-up file its layer's owner, a file the box made the box user's, and a file's
further names as tar hard links (not copies)."""

from __future__ import annotations

import io
import json
import os
import tarfile

import pytest

import sandbox
from sandbox._config import DEFAULT_GID, DEFAULT_UID
from tests.conftest import ROOT_MODE
from tests.image_build import base_layer, entry, layer, oci_layout


def _owned(name: str, kind: str, uid: int, data: bytes = b"", link: str = "") -> tuple[tarfile.TarInfo, bytes]:
    ti, d = entry(name, kind, data, link=link)
    ti.uid = ti.gid = uid
    return ti, d


@pytest.fixture
def store(tmp_path, monkeypatch):
    os.chmod(tmp_path, 0o711)  # root mode: init is another uid and must walk to the store
    monkeypatch.setenv("SANDBOX_IMAGE_STORE", str(tmp_path / "store"))
    top = layer([entry("home", "dir"), _owned("home/app", "dir", 1234), _owned("home/app/data", "file", 1234, b"d\n"),
                 entry("tool", "file", b"#!\n"), entry("tool2", "hardlink", link="tool")])
    st = sandbox.ImageStore()
    st.import_archive(oci_layout(str(tmp_path / "oci"), [base_layer(), top], Env=["PATH=/bin"]))
    return st


def _layers_of(archive: str) -> list[dict[str, tarfile.TarInfo]]:
    """The exported archive's layers, each as name → member (parsed only, nothing unpacked)."""
    with tarfile.open(archive) as t:
        blob = lambda digest: t.extractfile(f"blobs/sha256/{digest[7:]}").read()  # noqa: E731
        index = json.loads(t.extractfile("index.json").read())
        manifest = json.loads(blob(index["manifests"][0]["digest"]))
        out = []
        for desc in manifest["layers"]:
            with tarfile.open(fileobj=io.BytesIO(blob(desc["digest"]))) as lt:
                out.append({m.name: m for m in lt})
        return out


def test_export_keeps_the_archives_owners_and_hard_links(store, tmp_path):
    store.export("test/busybox:1", str(tmp_path / "out.tar"))
    top = _layers_of(str(tmp_path / "out.tar"))[1]
    assert (top["home/app"].uid, top["home/app"].gid) == (1234, 1234)
    assert (top["home/app/data"].uid, top["home/app/data"].gid) == (1234, 1234)
    assert top["home"].uid == top["tool"].uid == 0
    assert top["tool2"].islnk() and top["tool2"].linkname == "tool", top["tool2"].type
    assert store.import_archive(str(tmp_path / "out.tar"), "test/again:1") == ["test/again:1"]
    store.export("test/again:1", str(tmp_path / "again.tar"))
    again = _layers_of(str(tmp_path / "again.tar"))[1]
    assert again["home/app/data"].uid == 1234 and again["tool2"].islnk()


def _commit_and_export(store: sandbox.ImageStore, out: str, script: str) -> dict[str, tarfile.TarInfo]:
    """Run ``script`` in a box on test/busybox:1, commit it as test/made:1 and export that to
    ``out``: the members of its top layer (the committed one)."""
    with sandbox.Box(sandbox.SandboxConfig(image="test/busybox:1")) as box:
        r = box.exec(["sh", "-c", script])
        assert r.status == "OK", r.stderr
        box.commit("test/made:1")
    store.export("test/made:1", out)
    return _layers_of(out)[-1]


def test_commit_gives_made_files_the_box_user_and_keeps_a_copied_up_files_owner(store, tmp_path):
    if ROOT_MODE:
        pytest.skip("as root the image's files are host root's: the box user cannot write /home/app/data")
    top = _commit_and_export(store, str(tmp_path / "made.tar"),
                             "echo more >> /home/app/data; echo m > /mine; ln /mine /mine2")
    assert (top["home/app/data"].uid, top["home/app/data"].gid) == (1234, 1234)
    assert (top["mine"].uid, top["mine"].gid) == (DEFAULT_UID, DEFAULT_GID)
    assert top["mine2"].islnk() and top["mine2"].linkname == "mine"


@pytest.mark.parametrize("hide", ["whiteout", "opaque"])
def test_commit_a_file_made_again_over_a_deleted_one_is_the_box_users(tmp_path, monkeypatch, hide):
    """overlayfs's rule: a higher layer's whiteout of a path, or an opaque parent, hides the
    lower layers' entry; the box making that path again makes a new file (the box user's), not
    a copy-up of the hidden one (whose owner was 1234)."""
    if ROOT_MODE:
        pytest.skip("as root the image's directories are host root's: the box user cannot write /home/app")
    os.chmod(tmp_path, 0o711)
    monkeypatch.setenv("SANDBOX_IMAGE_STORE", str(tmp_path / "store"))
    owned = layer([entry("home", "dir"), entry("home/app", "dir", mode=0o777),
                   _owned("home/app/data", "file", 1234, b"d\n")])
    deleting = layer([entry("home", "dir"), entry("home/app", "dir", mode=0o777),
                      *([entry("home/app/.wh.data", "file")] if hide == "whiteout" else
                        [entry("home/app/.wh..wh..opq", "file"), entry("home/app/other", "file")])])
    st = sandbox.ImageStore()
    st.import_archive(oci_layout(str(tmp_path / "oci"), [base_layer(), owned, deleting], Env=["PATH=/bin"]))
    top = _commit_and_export(st, str(tmp_path / "again.tar"),
                             "test ! -e /home/app/data && echo new > /home/app/data")
    assert (top["home/app/data"].uid, top["home/app/data"].gid) == (DEFAULT_UID, DEFAULT_GID)


def test_export_of_a_layer_with_more_owners_than_64_mib_of_json(tmp_path, monkeypatch):
    """A layer of many files owned by a user (an application tree COPY --chown'ed) has an
    owners.json of tens of MiB: export reads it whole, not cut at a fixed size (a truncated
    JSON was a JSONDecodeError traceback)."""
    os.chmod(tmp_path, 0o711)
    monkeypatch.setenv("SANDBOX_IMAGE_STORE", str(tmp_path / "store"))
    deep = "/".join(["d" * 240] * 16)  # 3.9 KB of directories, below PATH_MAX
    count = 18_000  # 18 000 names of ~3.9 KB: ~70 MiB of owners
    ents = [_owned("/".join(deep.split("/")[:i + 1]), "dir", 1000) for i in range(16)]
    ents += [_owned(f"{deep}/f{i:05}", "file", 1000) for i in range(count)]
    st = sandbox.ImageStore()
    st.import_archive(oci_layout(str(tmp_path / "oci"), [base_layer(), layer(ents)], gz=False))
    st.export("test/busybox:1", str(tmp_path / "out.tar"))
    with tarfile.open(tmp_path / "out.tar") as t:
        index = json.loads(t.extractfile("index.json").read())
    assert index["manifests"]
    top = _layers_of(str(tmp_path / "out.tar"))[1]
    assert len(top) == 16 + count and top[f"{deep}/f{count - 1:05}"].uid == 1000


def test_commit_a_directory_removed_and_made_again_is_the_box_users(store, tmp_path):
    """``rm -r`` of an image's directory and ``mkdir`` again: the upper's directory is opaque
    (overlayfs's mark of one made anew), the box user's, not a copy-up of the 1234 one."""
    if ROOT_MODE:
        pytest.skip("as root the image's files are host root's: the box user cannot remove /home/app")
    top = _commit_and_export(store, str(tmp_path / "made.tar"),
                             "rm -r /home/app && mkdir /home/app && echo n > /home/app/new")
    assert "home/app/.wh..wh..opq" in top, sorted(top)
    assert (top["home/app"].uid, top["home/app"].gid) == (DEFAULT_UID, DEFAULT_GID)
    assert top["home/app/new"].uid == DEFAULT_UID
    assert store.import_archive(str(tmp_path / "made.tar"), "test/back:1")  # (the export's own owners)
    store.export("test/back:1", str(tmp_path / "back.tar"))
    assert _layers_of(str(tmp_path / "back.tar"))[2]["home/app"].uid == DEFAULT_UID
