"""``sandbox image export NAME OUT.tar``: a stored image as an OCI image-layout tar
(image-spec ``image-layout.md``: ``oci-layout``, ``index.json``, ``blobs/sha256/<hex>``), which
``podman load`` reads as an oci-archive and ``sandbox image import`` reads back.

The store keeps unpacked trees, not the archives they came from, so each layer is tarred
again from its tree (``_commit._tar_upper``: no link of the tree followed, xattr whiteouts and
opaque markers back to ``.wh.`` entries). The new tar is a different byte stream than the
imported one, so its diff_id is computed here and the config's ``rootfs.diff_ids`` rewritten:
the spec requires each to be the sha256 of that layer's uncompressed tar, and an importer
(ours, podman's) checks it. Layers are written uncompressed (``layer.v1.tar``: blob digest =
diff_id). The archive is written next to OUT and renamed onto it only when complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import tempfile

from sandbox import _commit, _images

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, BinaryIO

MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
REF_NAME = "org.opencontainers.image.ref.name"


def _digest_of(f: BinaryIO) -> tuple[str, int]:
    f.seek(0)
    h, n = hashlib.sha256(), 0
    while chunk := f.read(1 << 20):
        h.update(chunk)
        n += len(chunk)
    f.seek(0)
    return "sha256:" + h.hexdigest(), n


def _add_blob(tar: tarfile.TarFile, digest: str, size: int, f: Any) -> None:
    ti = tarfile.TarInfo(f"blobs/sha256/{digest[7:]}")
    ti.size, ti.mode = size, 0o644
    tar.addfile(ti, f)


def _add_json(tar: tarfile.TarFile, doc: Any, path: str | None = None) -> dict[str, Any]:
    """Add ``doc`` (as a blob, or at ``path``); returns its descriptor's digest and size."""
    data = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    ti = tarfile.TarInfo(path or f"blobs/sha256/{digest[7:]}")
    ti.size, ti.mode = len(data), 0o644
    tar.addfile(ti, io.BytesIO(data))
    return {"digest": digest, "size": len(data)}


def export(store: _images.ImageStore, name: str, out: str) -> str:
    """Write image ``name`` of ``store`` to ``out`` as an OCI image-layout tar; returns the
    normalized name (the index's ``org.opencontainers.image.ref.name``)."""
    rec = store.get(name)
    outdir = os.path.dirname(os.path.abspath(out))
    tmp = tempfile.NamedTemporaryFile(dir=outdir, prefix=".sandbox-export-", suffix=".tmp", delete=False)
    try:
        with tmp, tarfile.open(fileobj=tmp, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            layers, diff_ids = [], []
            for diff_id in rec["layers"]:
                root = os.open(os.path.dirname(store.layer_dir(diff_id)),
                               os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    with tempfile.TemporaryFile(dir=outdir) as spool:
                        owners = _commit.layer_owners(store, diff_id)
                        _commit._tar_upper(root, spool, store.limits["max_entries"], top="fs",
                                           owner_of=lambda p, _opaque, o=owners: o.get(p, (0, 0)))
                        digest, size = _digest_of(spool)
                        _add_blob(tar, digest, size, spool)
                finally:
                    os.close(root)
                layers.append({"mediaType": MT_LAYER, "digest": digest, "size": size})
                diff_ids.append(digest)
            config = dict(rec["config"])
            config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
            cdesc = {"mediaType": MT_CONFIG, **_add_json(tar, config)}
            manifest = {"schemaVersion": 2, "mediaType": MT_MANIFEST, "config": cdesc, "layers": layers}
            mdesc = {"mediaType": MT_MANIFEST, **_add_json(tar, manifest),
                     "annotations": {REF_NAME: rec["name"]}}
            _add_json(tar, {"schemaVersion": 2, "mediaType": MT_INDEX, "manifests": [mdesc]}, "index.json")
            _add_json(tar, {"imageLayoutVersion": "1.0.0"}, "oci-layout")
        os.rename(tmp.name, out)
    except BaseException:
        os.unlink(tmp.name)
        raise
    return rec["name"]
