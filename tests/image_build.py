"""Building image layers and archives in tests, with nothing but ``tarfile``: layers from entry
specs, an OCI image layout (directory or tar) and a ``docker save`` archive around them."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from typing import Any

BUSYBOX = "/usr/bin/busybox"


def entry(name: str, kind: str = "file", data: bytes = b"", *, mode: int | None = None,
          link: str = "", size: int | None = None, pax: dict[str, str] | None = None,
          devmajor: int = 0) -> tuple[tarfile.TarInfo, bytes]:
    ti = tarfile.TarInfo(name)
    ti.type = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
               "hardlink": tarfile.LNKTYPE, "chr": tarfile.CHRTYPE, "blk": tarfile.BLKTYPE,
               "fifo": tarfile.FIFOTYPE, "sparse": tarfile.GNUTYPE_SPARSE}[kind]
    ti.mode = mode if mode is not None else (0o755 if kind == "dir" else 0o644)
    ti.linkname = link
    ti.size = len(data) if size is None else size
    ti.devmajor = devmajor
    ti.mtime = 1_700_000_000
    if pax:
        ti.pax_headers = dict(pax)
    return ti, data


def layer(entries: list[tuple[tarfile.TarInfo, bytes]], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for ti, data in entries:
            tar.addfile(ti, io.BytesIO(data) if ti.isreg() else None)
    return buf.getvalue()


def raw_tar(blocks: list[tuple[str, bytes, bytes]]) -> bytes:
    """A ustar stream written by hand (name, type flag, data), for what tarfile will not write
    (e.g. a GNU sparse header claiming a huge real size)."""
    out = b""
    for name, typeflag, data in blocks:
        ti = tarfile.TarInfo(name)
        ti.size = len(data)
        hdr = bytearray(ti.tobuf(tarfile.GNU_FORMAT))
        hdr[156:157] = typeflag
        if typeflag == tarfile.GNUTYPE_SPARSE:
            hdr[386:386 + 12] = b"%011o\0" % 0 + b"\0" * 0  # offset 0
            hdr[398:398 + 12] = b"%011o\0" % len(data)
            hdr[483:483 + 12] = b"%011o\0" % (1 << 40)  # realsize: 1 TiB
        hdr[148:156] = b"        "
        hdr[148:155] = b"%06o\0" % sum(hdr[:512])
        out += bytes(hdr[:512]) + data + b"\0" * (-len(data) % 512)
    return out + b"\0" * 1024


def base_layer() -> bytes:
    """/bin/busybox (the host's static one) with sh, ls, cat, echo links; /etc/os-release, a
    /data dir with two files; /gone and /opaque/old for the second layer to hide."""
    with open(BUSYBOX, "rb") as f:
        bb = f.read()
    es = [entry("bin", "dir"), entry("bin/busybox", "file", bb, mode=0o755)]
    es += [entry(f"bin/{n}", "symlink", link="busybox") for n in ("sh", "ls", "cat", "echo", "mkdir", "rm", "touch")]
    es += [entry("etc", "dir"), entry("etc/os-release", "file", b"NAME=testimage\n"),
           entry("gone", "file", b"layer 1\n"), entry("opaque", "dir"),
           entry("opaque/old", "file", b"old\n"), entry("tmp", "dir", mode=0o1777),
           entry("root", "dir", mode=0o700), entry("dev", "dir"), entry("dev/planted", data=b"x")]
    return layer(es)


def top_layer() -> bytes:
    """A whiteout of /gone, /opaque made opaque with a new file, and /new."""
    return layer([entry(".wh.gone"), entry("opaque", "dir"), entry("opaque/.wh..wh..opq"),
                  entry("opaque/new", "file", b"new\n"), entry("new", "file", b"layer 2\n")])


def _sha(b: bytes) -> str:
    return "sha256:" + hashlib.sha256(b).hexdigest()


def config_for(layers: list[bytes], **cfg: Any) -> bytes:
    return json.dumps({"architecture": "amd64", "os": "linux", "config": cfg,
                       "rootfs": {"type": "layers", "diff_ids": [_sha(ly) for ly in layers]}}).encode()


def oci_layout(path: str, layers: list[bytes], *, ref: str = "test/busybox:1", gz: bool | str = True,
               as_tar: bool = False, **cfg: Any) -> str:
    """Write an OCI image layout at ``path`` (a directory, or a tar file with ``as_tar``)."""
    files: dict[str, bytes] = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}'}
    descs = []
    for ly in layers:
        if gz == "zstd":  # (gz="zstd": tar+zstd layers)
            import zstandard

            blob = zstandard.ZstdCompressor().compress(ly)
        else:
            blob = gzip.compress(ly, mtime=0) if gz else ly
        files["blobs/sha256/" + _sha(blob)[7:]] = blob
        descs.append({"mediaType": "application/vnd.oci.image.layer.v1.tar" + (f"+{gz}" if gz == "zstd" else "+gzip" if gz else ""),
                      "digest": _sha(blob), "size": len(blob)})
    config = config_for(layers, **cfg)
    files["blobs/sha256/" + _sha(config)[7:]] = config
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": _sha(config), "size": len(config)},
                           "layers": descs}).encode()
    files["blobs/sha256/" + _sha(manifest)[7:]] = manifest
    files["index.json"] = json.dumps({"schemaVersion": 2, "manifests": [
        {"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": _sha(manifest),
         "size": len(manifest), "annotations": {"org.opencontainers.image.ref.name": ref}}]}).encode()
    _write(path, files, as_tar)
    return path


def docker_archive(path: str, layers: list[bytes], *, tag: str = "test/busybox:docker", **cfg: Any) -> str:
    """Write a ``docker save`` archive (the classic layout: <id>/layer.tar, <config hex>.json)."""
    files: dict[str, bytes] = {}
    names = []
    for i, ly in enumerate(layers):
        files[f"{i:064x}/layer.tar"] = ly
        names.append(f"{i:064x}/layer.tar")
    config = config_for(layers, **cfg)
    files[_sha(config)[7:] + ".json"] = config
    files["manifest.json"] = json.dumps([{"Config": _sha(config)[7:] + ".json", "RepoTags": [tag],
                                          "Layers": names}]).encode()
    _write(path, files, True)
    return path


def _write(path: str, files: dict[str, bytes], as_tar: bool) -> None:
    if as_tar:
        with tarfile.open(path, "w") as tar:
            for name, data in files.items():
                ti = tarfile.TarInfo(name)
                ti.size = len(data)
                tar.addfile(ti, io.BytesIO(data))
        return
    for name, data in files.items():
        os.makedirs(os.path.dirname(os.path.join(path, name)) or path, exist_ok=True)
        with open(os.path.join(path, name), "wb") as f:
            f.write(data)


def python_layer(python: str = "/usr/bin/python3") -> bytes:
    """The host's CPython as an image layer: its binary, the shared libraries it links
    (``ldd``), and the standard-library files an isolated ``python3 -I -S -c 'import json'``
    loads (plus ``os.py``, the landmark its prefix search looks for), at their host paths."""
    import subprocess

    real = os.path.realpath(python)
    mods = json.loads(subprocess.run(
        [real, "-I", "-S", "-c", "import json, os, sys; print(json.dumps(sorted({m.__file__ for m in "
         "list(sys.modules.values()) if getattr(m, '__file__', None)} | {os.__file__})))"],
        capture_output=True, check=True, text=True).stdout)
    libs = [w for line in subprocess.run(["ldd", real], capture_output=True, check=True, text=True).stdout.splitlines()
            for w in line.split() if w.startswith("/")]
    files = {real: real, **{p: os.path.realpath(p) for p in libs}, **{m: m for m in mods}}
    es, dirs = [], set()
    for path in sorted(files):
        parts = path.strip("/").split("/")
        for i in range(1, len(parts)):
            d = "/".join(parts[:i])
            if d not in dirs:
                dirs.add(d)
                es.append(entry(d, "dir"))
        with open(files[path], "rb") as f:
            es.append(entry("/".join(parts), "file", f.read(), mode=0o755))
    es.append(entry("usr/bin/python3", "symlink", link=os.path.basename(real)))
    return layer(es)
