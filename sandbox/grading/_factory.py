"""What the grading factory runs: a ``-c`` program with no path in it, and our code as code
objects that name no host file.

The factory (``sandbox.grading.zygote``) is the image every grading worker is a fork of, and
a worker shares its process with a submission's code, which reads all of it. Importing our
package and python-prctl from their files put the checkout's and the venv's paths (the
user's home, the machine's layout) into its modules (``__file__``, ``__spec__``), its code
objects (``co_filename``), ``sys.path`` and its importer caches, the -c program in its argv,
and ``/proc/self/maps`` (the ``_prctl*.so`` mapped from the venv). Instead the grader sends
the code: every module of our package and ``BUNDLED`` as code objects named
``<sandbox>/NAME.py`` (marshal: the factory runs this same interpreter binary), in a memfd,
served by a finder ahead of the stdlib's; ``EXTENSIONS`` as memfds that the factory dlopens
through ``/proc/self/fd/N`` (mapped as ``/memfd:NAME``). ``sys.path`` is then the stdlib's
alone, at the paths every box shows.
"""

from __future__ import annotations

import os
from types import CodeType

ENTRY = """\
import sys
def boot(code_fd, extensions):
    import marshal, os
    import _frozen_importlib as bs, _frozen_importlib_external as bx
    with open(code_fd, "rb") as f:
        mods = marshal.loads(f.read())
    class Bundle:
        @staticmethod
        def find_spec(name, path=None, target=None):
            if name in mods:
                return bs.ModuleSpec(name, Bundle, origin=mods[name][0], is_package=mods[name][1])
        @staticmethod
        def create_module(spec):
            return None
        @staticmethod
        def exec_module(module):
            exec(mods.pop(module.__name__)[2], module.__dict__)
    sys.meta_path.insert(0, Bundle)
    for name, fd in extensions.items():
        path = f"/proc/self/fd/{{fd}}"  # dlopen'd there, mapped as /memfd:NAME
        spec = bs.ModuleSpec(name, bx.ExtensionFileLoader(name, path), origin=path)
        module = sys.modules[name] = bs.module_from_spec(spec)
        spec.loader.exec_module(module)
        os.close(fd)
boot({code}, {extensions!r})
del boot
from sandbox.grading import zygote
zygote.factory_main({fd}, {parent})
"""
# What the factory imports from outside the stdlib besides our package (python-prctl, and
# pyseccomp to compile the filter), bundled by name; extension modules go in as memfds.
BUNDLED = ("prctl", "pyseccomp")
EXTENSIONS = ("_prctl",)

_bundled: list[tuple[bytes, dict[str, bytes]]] = []  # (marshalled code, {extension: its file})


def _renamed(code: CodeType, filename: str) -> CodeType:
    consts = tuple(_renamed(c, filename) if isinstance(c, CodeType) else c for c in code.co_consts)
    return code.replace(co_filename=filename, co_consts=consts)


def bundle() -> tuple[bytes, dict[str, bytes]]:
    """(marshalled {name: (origin, is package, code)}, {extension: its file's bytes}), built
    once per process from the byte code the import system has cached (~50 modules)."""
    if not _bundled:
        import importlib.machinery
        import importlib.util
        import marshal

        import sandbox

        root = os.path.dirname(os.path.abspath(sandbox.__file__))
        names = []
        for pkg, where in (("sandbox", root), ("sandbox.grading", os.path.join(root, "grading"))):
            names += [pkg, *(f"{pkg}.{f[:-3]}" for f in sorted(os.listdir(where))
                             if f.endswith(".py") and f != "__init__.py")]
        mods = {}
        for name in [*names, *BUNDLED]:
            spec = importlib.util.find_spec(name)
            if spec is None or not (spec.origin or "").endswith(".py"):
                continue
            # (not spec.loader: under pytest, our plugin's is pytest's assertion rewriter)
            code = importlib.machinery.SourceFileLoader(name, str(spec.origin)).get_code(name)
            if isinstance(code, CodeType):
                pkg = spec.submodule_search_locations is not None
                origin = f"<sandbox>/{name.replace('.', '/')}{'/__init__' if pkg else ''}.py"
                mods[name] = (origin, pkg, _renamed(code, origin))
        exts = {}
        for name in EXTENSIONS:
            spec = importlib.util.find_spec(name)
            if spec is not None and spec.origin:
                with open(spec.origin, "rb") as f:
                    exts[name] = f.read()
        _bundled.append((marshal.dumps(mods), exts))
    return _bundled[0]


def memfd(name: str, data: bytes) -> int:
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
