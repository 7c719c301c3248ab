"""``sandbox image import|ls|inspect|rm``: the local image store (``sandbox.ImageStore``) from
the command line. Usage errors exit 2, a refused archive or an unknown image 1, each with one
line on stderr (an archive is someone else's file: its names are printed quoted, never raw)."""

from __future__ import annotations

import json
import sys

import sandbox

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence

USAGE = ("usage: sandbox image import FILE [--name NAME[:TAG]] | sandbox image ls | "
         "sandbox image inspect NAME | sandbox image export NAME OUT.tar | sandbox image rm NAME")
HELP = f"""{USAGE}

Images without a daemon: `docker save` archives and OCI image layouts (a directory or a tar),
gzip layers included, unpacked once per layer into the store ($SANDBOX_IMAGE_STORE, else
$XDG_DATA_HOME/sandbox, else ~/.local/share/sandbox). Run one with `sandbox run --image NAME`.

commands:
  import FILE [--name NAME[:TAG]]   store the image(s) of FILE (--name: the one image's name)
  ls                                the stored images: name, id, layers, size
  inspect NAME                      one image as JSON: its config and each layer's size
  export NAME OUT.tar               write the image as an OCI image-layout tar (podman load reads it)
  rm NAME                           forget the image; remove the layers no other image uses
"""


class _Usage(Exception):
    pass


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _import(store: sandbox.ImageStore, args: list[str]) -> int:
    name, files = None, []
    it = iter(args)
    for arg in it:
        if arg == "--name" or arg.startswith("--name="):
            name = arg[7:] if arg.startswith("--name=") else next(it, None)
            if not name:
                raise _Usage("--name: needs NAME[:TAG]")
        elif arg.startswith("-"):
            raise _Usage(f"image import: unknown option {arg!r}")
        else:
            files.append(arg)
    if len(files) != 1:
        raise _Usage(f"image import: give one FILE ({USAGE})")
    if name is not None:
        _name(name)
    for stored in store.import_archive(files[0], name):
        print(f"imported {stored}")
    return 0


def _name(name: str) -> str:
    try:
        return sandbox.ImageStore.normalize(name)
    except sandbox.ImageError as e:
        raise _Usage(str(e)) from None


def main(argv: Sequence[str]) -> int:
    args = list(argv)
    try:
        if not args:
            raise _Usage(f"missing image command: {USAGE}")
        cmd, rest = args[0], args[1:]
        if cmd in ("-h", "--help") or "-h" in rest or "--help" in rest:
            sys.stdout.write(HELP)
            return 0
        store = sandbox.ImageStore()
        if cmd == "import":
            return _import(store, rest)
        if cmd in ("ls", "list"):
            if rest:
                raise _Usage(f"image ls: takes no arguments, got {rest[0]!r}")
            rows = [(r["name"], r["id"][7:19], str(len(r["layers"])),
                     _size(sum(store.layer(d)["size"] for d in r["layers"]))) for r in store.images()]
            width = max([len("NAME")] + [len(r[0]) for r in rows])
            print(f"{'NAME':<{width}}  {'ID':<12}  LAYERS  SIZE")
            for n, i, ly, sz in rows:
                print(f"{n:<{width}}  {i:<12}  {ly:>6}  {sz}")
            return 0
        if cmd == "export":
            if len(rest) != 2:
                raise _Usage(f"image export: give NAME[:TAG] and OUT.tar, got {len(rest)} arguments")
            _name(rest[0])
            print(f"exported {store.export(rest[0], rest[1])} to {rest[1]}")
            return 0
        if cmd in ("inspect", "rm"):
            if len(rest) != 1:
                raise _Usage(f"image {cmd}: give one NAME[:TAG]")
            _name(rest[0])
            if cmd == "inspect":
                print(json.dumps(store.inspect(rest[0]), indent=2))
                return 0
            gone = store.remove(rest[0])
            print(f"removed {sandbox.ImageStore.normalize(rest[0])} ({len(gone)} layers freed)")
            return 0
        raise _Usage(f"unknown image command {cmd!r}; {USAGE}")
    except _Usage as e:
        sys.stderr.write(f"sandbox: error: {e}\n")
        return 2
    except (sandbox.ImageError, sandbox.LayerError) as e:
        sys.stderr.write(f"sandbox: error: {e}\n")
        return 1
    except OSError as e:
        sys.stderr.write(f"sandbox: error: {e.filename or ''}{': ' if e.filename else ''}{e.strerror}\n")
        return 1
