"""Hostile image layers (sandbox/_layers.py): each is refused with one line naming the entry,
and nothing is written outside the store — the store's parent directory is compared before and
after, and so is a decoy directory the archive aims at."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from sandbox import _layers
from sandbox._images import ImageError, ImageStore
from tests.image_build import entry, layer, oci_layout, raw_tar


def _snapshot(top: str) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for n in dirnames + filenames:
            p = os.path.join(dirpath, n)
            st = os.lstat(p)
            out[os.path.relpath(p, top)] = (st.st_mode, st.st_size)
    return out


@pytest.fixture
def place(tmp_path):
    """(store dir, decoy dir beside it): the archive aims at the decoy."""
    (tmp_path / "decoy").mkdir()
    (tmp_path / "decoy" / "keep").write_text("x")
    (tmp_path / "store").mkdir()
    return tmp_path


def _import(place, data: bytes) -> str:
    """Import a one-layer OCI image made of ``data``: the refusal's message, or ''."""
    before = _snapshot(str(place))
    arch = oci_layout(str(place / "store" / "in"), [data], gz=False)  # inside the store: compared below
    before = _snapshot(str(place))
    store = ImageStore(str(place / "store" / "s"), max_layer_bytes=1 << 20, max_layer_entries=50)
    try:
        store.import_archive(arch)
    except (ImageError, _layers.LayerError) as e:
        msg = str(e)
    else:
        msg = ""
    after = _snapshot(str(place))
    outside = {k: v for k, v in after.items() if not k.startswith("store/s")}
    assert outside == {k: v for k, v in before.items() if not k.startswith("store/s")}
    assert os.listdir(place / "store" / "s" / "tmp") == []  # the failed extraction is gone
    assert not os.path.exists(place / "store" / "s" / "layers") or os.listdir(place / "store" / "s" / "layers") == []
    return msg


DECOY = "../../../decoy/"


@pytest.mark.parametrize(("entries", "named", "why"), [
    ([entry("../../../decoy/evil", data=b"x")], DECOY + "evil", "'..'"),
    ([entry("/tmp/evil", data=b"x")], "/tmp/evil", "absolute"),
    ([entry("a/../../decoy/evil", data=b"x")], "a/../../decoy/evil", "'..'"),
    ([entry("ln", "symlink", link=DECOY), entry("ln/evil", data=b"x")], "ln/evil", "symlink"),
    ([entry("d", "dir"), entry("d/ln", "symlink", link="/"), entry("d/ln/etc/evil", data=b"x")],
     "d/ln/etc/evil", "symlink"),
    ([entry("hl", "hardlink", link="/etc/passwd")], "hl", "hard link"),
    ([entry("hl", "hardlink", link="later"), entry("later", data=b"x")], "hl", "hard link"),
    ([entry("s", "symlink", link="/etc/passwd"), entry("hl", "hardlink", link="s")], "hl", "hard link"),
    ([entry("null", "chr", devmajor=1)], "null", "device"),
    ([entry("sda", "blk", devmajor=8)], "sda", "device"),
    ([entry("fifo", "fifo")], "fifo", "FIFO"),
    ([entry("bad\nname", data=b"x")], "bad\nname", "control character"),
    ([entry("big", data=b"x" * 100, size=2 << 20)], "big", "more than"),
    ([entry(f"f{i}") for i in range(60)], "f50", "entries"),
])
def test_hostile_entry_is_refused_naming_it(place, entries, named, why):
    data = layer(entries) if named != "big" else _truncated_big()
    msg = _import(place, data)
    assert why in msg and repr(named) in msg, msg
    assert "\n" not in msg


def _truncated_big() -> bytes:
    """A header claiming 2 MiB (over the 1 MiB cap) followed by almost nothing."""
    ti, _ = entry("big", size=2 << 20)
    return ti.tobuf(tarfile.PAX_FORMAT) + b"x" * 512 + b"\0" * 1024


def test_huge_sparse_file_is_refused(place):
    msg = _import(place, raw_tar([("hole", tarfile.GNUTYPE_SPARSE, b"x" * 512)]))
    assert "sparse file" in msg and "'hole'" in msg, msg


def test_pax_sparse_file_is_refused(place):
    msg = _import(place, layer([entry("sp", data=b"x", pax={
        "GNU.sparse.major": "0", "GNU.sparse.minor": "1", "GNU.sparse.name": "sp",
        "GNU.sparse.realsize": str(1 << 40), "GNU.sparse.map": "0,1"})]))
    assert "sparse" in msg and "'sp'" in msg, msg


def test_malformed_pax_header_is_one_line(place):
    """tarfile raises ValueError (not TarError) for a sparse 1.0 pax header without its map."""
    msg = _import(place, layer([entry("sp", data=b"x", pax={"GNU.sparse.major": "1", "GNU.sparse.minor": "0",
                                                             "GNU.sparse.realsize": str(1 << 40)})]))
    assert "tar stream" in msg and "\n" not in msg, msg


def test_gzip_bomb_stops_at_the_cap(place):
    import gzip

    bomb = gzip.compress(b"\0" * (64 << 20))  # 64 MiB of zeros: ~64 KiB compressed
    arch = oci_layout(str(place / "bomb"), [b"\0" * 1024], gz=True)
    blob_dir = place / "bomb" / "blobs" / "sha256"
    # swap the real blob for the bomb (digests then mismatch too, but the cap must stop it first)
    for p in blob_dir.iterdir():
        if p.read_bytes()[:2] == b"\x1f\x8b":
            p.write_bytes(bomb)
    store = ImageStore(str(place / "store" / "s"), max_layer_bytes=1 << 20, max_layer_entries=50)
    with pytest.raises((ImageError, _layers.LayerError), match="more than"):
        store.import_archive(arch)


def _extract(entries, parent) -> str:
    import tempfile

    d = tempfile.mkdtemp(dir=parent)  # (in the test's tmp_path: pytest removes it)
    fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _layers.extract(io.BytesIO(layer(entries)), fd)
    finally:
        os.close(fd)
    return d


def test_setuid_bits_and_file_capabilities_are_dropped(tmp_path):
    d = _extract([entry("su", data=b"#!", mode=0o6755),
                  entry("cap", data=b"x", pax={"SCHILY.xattr.security.capability": "\x01\x00\x00\x02",
                                               "SCHILY.xattr.user.overlay.redirect": "/etc",
                                               "SCHILY.xattr.user.x": "y"}),
                  entry("sd", "dir", mode=0o2775)], tmp_path)
    assert os.stat(f"{d}/su").st_mode & 0o7777 == 0o755
    assert os.stat(f"{d}/sd").st_mode & 0o7777 == 0o775
    assert os.listxattr(f"{d}/cap") == []
    _layers.remove_tree(os.open(os.path.dirname(d), os.O_RDONLY), os.path.basename(d))


def test_whiteouts_become_overlay_xattrs_and_opaque_wins(tmp_path):
    d = _extract([entry("a", "dir"), entry("a/.wh.x"), entry("b", "dir"), entry("b/.wh.y"),
                  entry("b/.wh..wh..opq"), entry("b/mine", data=b"1"),
                  entry("c", "dir"), entry("c/.wh..wh..opq"), entry("c/.wh.z"), entry("ro", "dir", mode=0o555),
                  entry("ro/f", data=b"1")], tmp_path)
    assert os.getxattr(f"{d}/a/x", "user.overlay.whiteout") == b"y"
    assert os.stat(f"{d}/a/x").st_size == 0
    assert os.getxattr(f"{d}/a", "user.overlay.opaque") == b"x"
    assert os.getxattr(f"{d}/b", "user.overlay.opaque") == b"y"   # the opaque marker wins
    assert os.getxattr(f"{d}/c", "user.overlay.opaque") == b"y"   # in either order
    assert os.listdir(f"{d}/b") == ["mine"] or sorted(os.listdir(f"{d}/b")) == ["mine", "y"]
    assert os.stat(f"{d}/ro").st_mode & 0o777 == 0o555  # set after its entries were written
    _layers.remove_tree(os.open(os.path.dirname(d), os.O_RDONLY), os.path.basename(d))
    assert not os.path.exists(d)


def test_a_hard_link_to_an_earlier_file_of_the_layer_works(tmp_path):
    d = _extract([entry("f", data=b"hello"), entry("g", "hardlink", link="f")], tmp_path)
    assert os.stat(f"{d}/g").st_nlink == 2 and open(f"{d}/g", "rb").read() == b"hello"
