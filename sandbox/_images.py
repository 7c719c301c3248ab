"""The image store: layers unpacked once by diff_id, images as small JSON records.

``$SANDBOX_IMAGE_STORE``, else ``$XDG_DATA_HOME/sandbox``, else ``~/.local/share/sandbox``:

    layers/<hex>/fs          the unpacked tree of the layer whose diff_id is sha256:<hex>
    layers/<hex>/layer.json  {"diff_id", "size", "entries"}
    layers/<hex>/owners.json {path: [uid, gid]} of entries not 0:0 in the archive
    images/<hex of name>.json {"name": "busybox:latest", "id": config digest, "config": {...},
                               "layers": [diff_id, ...] (bottom first)}
    tmp/                     extractions in progress (renamed into layers/ once verified)

A layer is content-addressed by what was *unpacked*: the sha256 of its uncompressed tar,
computed while ``_layers.extract`` reads it and compared with the config's ``rootfs.diff_ids``
(and, for an OCI blob, the compressed file with its digest) before the tree is renamed into
place. A layer that does not match is deleted, so a tree under ``layers/`` is always what its
name says, and the next image that shares it does not unpack it again.

Archives (``docker save``'s manifest.json, or an OCI image layout: index.json and
blobs/sha256/, as a directory or a tar) are read, never unpacked: an outer tar's members are
looked up by name in the archive (its symlinks resolved as names within it, never on disk), a
directory's files opened with ``openat2`` beneath it (``_safefs.open_beneath``: a planted
``blobs/sha256/x -> /etc/shadow`` is refused).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import secrets
import tarfile

from sandbox import _layers, _safefs

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, BinaryIO

STORE_ENV = "SANDBOX_IMAGE_STORE"
MAX_JSON = 4 << 20
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_NAME = re.compile(r"[a-z0-9][a-z0-9._/-]*(:[0-9]+/[a-z0-9][a-z0-9._/-]*)?(:[A-Za-z0-9_][A-Za-z0-9._-]{0,127})?")
_INDEX = ("application/vnd.oci.image.index.v1+json", "application/vnd.docker.distribution.manifest.list.v2+json")


class ImageError(ValueError):
    """An image operation refused: a bad archive, a name that is no image, a digest that does not
    match. The message is one line naming the value at fault."""


def store_root() -> str:
    if os.environ.get(STORE_ENV):
        return os.environ[STORE_ENV]
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return os.path.join(data, "sandbox")


def normalize(name: str) -> str:
    """``NAME[:TAG]`` with ``latest`` as the default tag (a ``host:port/`` prefix is no tag)."""
    if not _NAME.fullmatch(name) or ".." in name:
        raise ImageError(f"image name {name!r}: use NAME[:TAG] (lower case, digits, . _ - /)")
    return name if ":" in name.rsplit("/", 1)[-1] else name + ":latest"


class _Archive:
    """A docker-save or OCI archive: a tar file or a directory, read by relative name."""

    def __init__(self, path: str) -> None:
        self.path, self.tar, self.dir_fd = path, None, -1
        if os.path.isdir(path):
            self.dir_fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            return
        try:
            self.tar = tarfile.open(path, "r:*")  # noqa: SIM115 - closed in close()
        except OSError as e:
            raise ImageError(f"{path}: {e.strerror}") from None
        except tarfile.TarError:  # (its message lists every compression tried, one a line)
            raise ImageError(f"{path}: not an image archive (a tar file or an OCI layout directory)") from None
        self.members = {"/".join(_layers.check_name(m.name)): m for m in self.tar.getmembers()}

    def close(self) -> None:
        if self.tar is not None:
            self.tar.close()
        if self.dir_fd >= 0:
            os.close(self.dir_fd)

    def has(self, rel: str) -> bool:
        if self.tar is not None:
            return rel in self.members
        return _safefs.exists_beneath(self.dir_fd, rel)

    def open(self, rel: str) -> BinaryIO:
        parts = _layers.check_name(rel)
        if self.tar is None:
            try:
                return os.fdopen(_safefs.open_beneath(self.dir_fd, "/".join(parts)), "rb")
            except OSError as e:
                raise ImageError(f"{self.path}: {rel!r}: {e.strerror}") from None
        for _ in range(8):  # docker save links repeated layers: resolve within the archive
            m = self.members.get("/".join(parts))
            if m is None or not (m.isreg() or m.issym()):
                raise ImageError(f"{self.path}: no file {rel!r} in the archive")
            if m.isreg():
                f = self.tar.extractfile(m)
                assert f is not None
                return f  # type: ignore[return-value]
            parts = _layers.check_name("/".join(parts[:-1] + [m.linkname]) if not m.linkname.startswith("/") else "/")
            parts = _resolve_dots(parts)
        raise ImageError(f"{self.path}: {rel!r}: too many links in the archive")

    def json(self, rel: str) -> tuple[Any, str]:
        """The parsed JSON file and its sha256 digest, bounded."""
        with self.open(rel) as f:
            data = f.read(MAX_JSON + 1)
        if len(data) > MAX_JSON:
            raise ImageError(f"{self.path}: {rel!r}: larger than {MAX_JSON} bytes")
        try:
            return json.loads(data), "sha256:" + hashlib.sha256(data).hexdigest()
        except ValueError as e:
            raise ImageError(f"{self.path}: {rel!r}: not JSON ({e})") from None


def _resolve_dots(parts: list[str]) -> list[str]:
    out: list[str] = []
    for p in parts:
        if p == "..":
            if not out:
                raise ImageError(f"archive link {'/'.join(parts)!r} leaves the archive")
            out.pop()
        else:
            out.append(p)
    return out


def _blob(digest: str) -> str:
    if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
        raise ImageError(f"digest {digest!r}: not sha256:<64 hex digits>")
    return "blobs/sha256/" + digest[7:]


class ImageStore:
    """The local image store (``sandbox image import/ls/inspect/rm``): images imported from
    ``docker save`` archives or OCI layouts, no daemon and no registry. ``root`` defaults to
    ``$SANDBOX_IMAGE_STORE``, ``$XDG_DATA_HOME/sandbox`` or ``~/.local/share/sandbox``."""

    def __init__(self, root: str | None = None, *, max_layer_bytes: int = _layers.MAX_BYTES,
                 max_layer_entries: int = _layers.MAX_ENTRIES) -> None:
        self.root = root or store_root()
        self.limits = {"max_bytes": max_layer_bytes, "max_entries": max_layer_entries}

    normalize = staticmethod(normalize)

    def _dir(self, *parts: str) -> str:
        """The store's directories are 0711 up to the layer trees (a root-mode box's init is an
        unprivileged high uid that walks to its layers but need not list them); the image
        records and tmp/ are 0700."""
        path = os.path.join(self.root, *parts)
        for i in range(len(parts) + 1):
            p = os.path.join(self.root, *parts[:i])
            if not os.path.isdir(p):
                os.makedirs(p, exist_ok=True)
                os.chmod(p, 0o711 if parts[:i] in ((), ("layers",)) else 0o700)
        return path

    def _record_path(self, name: str) -> str:
        return os.path.join(self.root, "images", hashlib.sha256(name.encode()).hexdigest() + ".json")

    # ------------------------------------------------------------------ import --

    def import_archive(self, path: str, name: str | None = None) -> list[str]:
        """Import every image of a ``docker save`` archive or an OCI layout (directory or tar);
        ``name`` (NAME[:TAG]) names the one image (required where the archive names none).
        Returns the names stored."""
        want = normalize(name) if name else None
        arch = _Archive(path)
        try:
            if arch.has("manifest.json"):
                found = self._docker(arch)
            elif arch.has("index.json"):
                found = self._oci(arch)
            else:
                raise ImageError(f"{path}: neither manifest.json (docker save) nor index.json (OCI layout)")
            if want is not None:
                if len(found) != 1:
                    raise ImageError(f"{path}: holds {len(found)} images; --name names one")
                found = [(want, *found[0][1:])]
            names = []
            for image_name, config, config_digest, layers in found:
                if image_name is None:
                    raise ImageError(f"{path}: the image has no name in the archive; give --name NAME[:TAG]")
                diff_ids = self._diff_ids(config, path, len(layers))
                for (rel, blob_digest), diff_id in zip(layers, diff_ids, strict=True):
                    self._add_layer(rel, diff_id, blob_digest, arch)
                self._write_record(normalize(image_name), config, config_digest, diff_ids)
                names.append(normalize(image_name))
            return names
        finally:
            arch.close()

    def _diff_ids(self, config: Any, path: str, n: int) -> list[str]:
        ids = (config.get("rootfs") or {}).get("diff_ids") if isinstance(config, dict) else None
        if not isinstance(ids, list) or len(ids) != n:
            raise ImageError(f"{path}: config's rootfs.diff_ids does not list the {n} layers")
        for d in ids:
            _blob(d)
        return ids

    def _docker(self, arch: _Archive) -> list[tuple[str | None, Any, str, list[tuple[str, str | None]]]]:
        manifest, _ = arch.json("manifest.json")
        if not isinstance(manifest, list) or not manifest:
            raise ImageError(f"{arch.path}: manifest.json is not a list of images")
        out = []
        for entry in manifest:
            if not isinstance(entry, dict) or not isinstance(entry.get("Config"), str) or not isinstance(entry.get("Layers"), list):
                raise ImageError(f"{arch.path}: manifest.json entry without Config and Layers")
            config, digest = arch.json(entry["Config"])
            stem = entry["Config"].rsplit("/", 1)[-1].removesuffix(".json")
            if re.fullmatch(r"[0-9a-f]{64}", stem) and digest != "sha256:" + stem:
                raise ImageError(f"{arch.path}: config {entry['Config']!r} has digest {digest}")
            layers = [(rel, "sha256:" + rel[13:] if rel.startswith("blobs/sha256/") else None)
                      for rel in entry["Layers"] if isinstance(rel, str)]
            tags = entry.get("RepoTags") or [None]
            out += [(tag, config, digest, layers) for tag in tags]
        return out

    def _oci(self, arch: _Archive) -> list[tuple[str | None, Any, str, list[tuple[str, str | None]]]]:
        index, _ = arch.json("index.json")
        out = []
        todo = [(m, None) for m in (index.get("manifests") or [] if isinstance(index, dict) else [])]
        while todo:
            desc, ref = todo.pop(0)
            if not isinstance(desc, dict):
                raise ImageError(f"{arch.path}: index.json: a manifest descriptor is not an object")
            ref = (desc.get("annotations") or {}).get("org.opencontainers.image.ref.name") or ref
            doc, digest = arch.json(_blob(desc.get("digest", "")))
            if digest != desc["digest"]:
                raise ImageError(f"{arch.path}: blob {desc['digest']} has digest {digest}")
            if desc.get("mediaType") in _INDEX or "manifests" in doc:
                todo += [(m, ref) for m in doc.get("manifests") or [] if _this_platform(m)]
                continue
            config, cdigest = arch.json(_blob((doc.get("config") or {}).get("digest", "")))
            if cdigest != doc["config"]["digest"]:
                raise ImageError(f"{arch.path}: config blob {doc['config']['digest']} has digest {cdigest}")
            layers = [(_blob(ly.get("digest", "")), ly["digest"]) for ly in doc.get("layers") or []]
            name = ref if ref and (":" in ref or "/" in ref) and not ref.startswith("sha256") else None
            out.append((name, config, cdigest, layers))
        if not out:
            raise ImageError(f"{arch.path}: index.json lists no image for this platform")
        return out

    def _add_layer(self, rel: str, diff_id: str, blob_digest: str | None, arch: _Archive) -> None:
        """Unpack one layer unless the store has it: in tmp/, verified, then renamed into place."""
        hexd = diff_id[7:]
        final = os.path.join(self._dir("layers"), hexd)
        if os.path.isdir(final):
            return
        work = os.path.join(self._dir("tmp"), secrets.token_hex(8))
        os.mkdir(work, 0o711)  # (renamed into layers/: see _dir)
        os.mkdir(os.path.join(work, "fs"), 0o700)
        try:
            with arch.open(rel) as raw_file:
                raw = _layers.HashingReader(raw_file, 1 << 62, rel)
                head = raw.read(4)
                src: BinaryIO = _Prefixed(head, raw)  # type: ignore[assignment]
                if head[:4] == _layers.ZSTD_MAGIC:
                    src = _layers.ZstdReader(src, rel)  # type: ignore[assignment]
                if head[:2] == b"\x1f\x8b":
                    src = gzip.GzipFile(fileobj=src, mode="rb")  # type: ignore[assignment]
                cap = self.limits["max_bytes"] + 2048 * self.limits["max_entries"] + (16 << 20)
                plain = _layers.HashingReader(src, cap, rel)
                fd = os.open(os.path.join(work, "fs"), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    owners: dict[str, tuple[int, int]] = {}
                    size, entries = _layers.extract(plain, fd, **self.limits, owners=owners)
                finally:
                    os.close(fd)
                got = plain.finish()
                raw.finish()
            if got != diff_id:
                raise ImageError(f"{arch.path}: layer {rel!r} unpacks to {got}, the config says {diff_id}")
            if blob_digest is not None and "sha256:" + raw.hash.hexdigest() != blob_digest:
                raise ImageError(f"{arch.path}: layer blob {rel!r} has digest sha256:{raw.hash.hexdigest()}")
            with open(os.path.join(work, "layer.json"), "w") as f:
                json.dump({"diff_id": diff_id, "size": size, "entries": entries}, f)
            with open(os.path.join(work, "owners.json"), "w") as f:  # (_commit.layer_owners)
                json.dump(owners, f)
            try:
                os.rename(work, final)
                work = ""
            except OSError:  # another import got there first
                pass
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise ImageError(f"{arch.path}: layer {rel!r}: {e}") from None
        finally:
            if work:
                self._discard(work)

    def _discard(self, work: str) -> None:
        parent = os.open(os.path.dirname(work), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            _layers.remove_tree(parent, os.path.basename(work))
        finally:
            os.close(parent)

    def _write_record(self, name: str, config: Any, digest: str, diff_ids: list[str]) -> None:
        self._dir("images")
        path = self._record_path(name)
        tmp = f"{path}.{secrets.token_hex(4)}.tmp"
        with open(tmp, "w") as f:
            json.dump({"name": name, "id": digest, "config": config, "layers": diff_ids}, f)
        os.rename(tmp, path)

    # ------------------------------------------------------------------ query --

    def get(self, name: str) -> dict[str, Any]:
        """The image's record: name, id (its config's digest), config, layers (bottom first)."""
        norm = normalize(name)
        try:
            with open(self._record_path(norm), "rb") as f:
                return json.loads(f.read(MAX_JSON))
        except FileNotFoundError:
            raise ImageError(f"no image {norm!r} in {self.root} (sandbox image import FILE)") from None

    def command(self, name: str, argv: Sequence[str] = ()) -> list[str]:
        """What a box of the image runs: its Entrypoint, then ``argv`` or, when that is empty,
        its Cmd (docker's rule)."""
        cfg = self.get(name)["config"].get("config") or {}
        return [*(cfg.get("Entrypoint") or []), *(argv or cfg.get("Cmd") or [])]

    def images(self) -> list[dict[str, Any]]:
        """Every image's record, by name."""
        d = os.path.join(self.root, "images")
        out = []
        for entry in sorted(os.listdir(d)) if os.path.isdir(d) else ():
            if entry.endswith(".json"):
                with open(os.path.join(d, entry), "rb") as f:
                    out.append(json.loads(f.read(MAX_JSON)))
        return sorted(out, key=lambda r: r["name"])

    def layer(self, diff_id: str) -> dict[str, Any]:
        with open(os.path.join(self.root, "layers", _blob(diff_id)[13:], "layer.json"), "rb") as f:
            return json.loads(f.read(MAX_JSON))

    def layer_dir(self, diff_id: str) -> str:
        return os.path.join(self.root, "layers", _blob(diff_id)[13:], "fs")

    def inspect(self, name: str) -> dict[str, Any]:
        """The record with each layer's size and entry count, and the total size."""
        rec = self.get(name)
        layers = [self.layer(d) for d in rec["layers"]]
        return {**rec, "layers": layers, "size": sum(ly["size"] for ly in layers)}

    def export(self, name: str, out: str) -> str:
        """Write the image to ``out`` as an OCI image-layout tar (``podman load`` reads it)."""
        from sandbox import _export
        return _export.export(self, name, out)

    def remove(self, name: str) -> list[str]:
        """Remove the image's record, then every layer no other image uses; returns those."""
        rec = self.get(name)
        os.unlink(self._record_path(rec["name"]))
        used = {d for r in self.images() for d in r["layers"]}
        gone = []
        parent = os.open(os.path.join(self.root, "layers"), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for d in dict.fromkeys(rec["layers"]):
                if d not in used:
                    _layers.remove_tree(parent, d[7:])
                    gone.append(d)
        finally:
            os.close(parent)
        if gone:
            from sandbox._image_flatten import remove_unused
            remove_unused(self, gone)
        return gone


class _Prefixed:
    """``head`` (already read, to sniff the compression) then the rest of ``rest``."""

    def __init__(self, head: bytes, rest: Any) -> None:
        self.head, self.rest = head, rest

    def read(self, n: int = -1) -> bytes:
        if self.head:
            out, self.head = (self.head, b"") if n < 0 or n >= len(self.head) else (self.head[:n], self.head[n:])
            return out
        return self.rest.read(n)


def _this_platform(desc: Any) -> bool:
    p = desc.get("platform") if isinstance(desc, dict) else None
    if not isinstance(p, dict):
        return True
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    return p.get("os", "linux") == "linux" and p.get("architecture", arch) == arch
