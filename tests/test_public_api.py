"""``sandbox/__init__.py`` is the whole public surface (issue 20), the way trio tests its exports:
every name in ``sandbox.__all__`` imports and is documented, every other module of the package is
private (``_``-prefixed), and the project's own clients — the grader (``sandbox/grading/``), the
CLI (``sandbox/_cli.py``, ``sandbox/_grade_cli.py``) and the pytest plugin — import nothing
private beyond today's ``KNOWN_INTERNAL``. That list can only shrink: a new private import fails,
and so does an entry nothing uses any more. Imports are read with ``ast``, not by importing the
modules, so a lazy import inside a function counts as much as one at the top."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import sandbox

ROOT = Path(__file__).resolve().parents[1]
# Public modules: the package itself and the grading package (the grader's pytest plugin is a
# module users name with -p). Everything else of sandbox/ is private, with or without a "_".
PUBLIC_PACKAGES = ("sandbox.grading",)

# "client file: private module it imports". Remove an entry when the client stops needing it.
KNOWN_INTERNAL: set[str] = set()  # empty: the CLI, the plugin and the grader use only `sandbox`
KEPT = {"__init__", "__main__", "grading"}  # the only names of sandbox/ without a "_"


def _clients() -> list[Path]:
    cli = [p for p in (ROOT / "sandbox").glob("_*.py")
           if re.fullmatch(r"_(\w+_)?cli(_\w+)?\.py", p.name)]
    return sorted([*(ROOT / "sandbox" / "grading").glob("*.py"), *cli,
                   *(ROOT / "pytest_plugin").glob("*.py")])


def _is_public(module: str) -> bool:
    parts = module.split(".")
    return (module == "sandbox" or module.startswith(tuple(p + "." for p in PUBLIC_PACKAGES))
            or module in PUBLIC_PACKAGES) and not any(p.startswith("_") for p in parts)


def _cli_modules() -> set[str]:
    """The CLI's own modules: one importing another is the CLI, not a use of the library."""
    return {f"sandbox.{p.stem}" for p in _clients() if p.parent.name == "sandbox"}


def private_imports(path: Path) -> set[str]:
    """``"file: module"`` for every private ``sandbox`` module (or non-exported name of
    ``sandbox``) the file imports, at any depth (function-level and TYPE_CHECKING ones too)."""
    own = _cli_modules()
    rel = path.relative_to(ROOT).as_posix()
    package = rel.rsplit("/", 1)[0].replace("/", ".")
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            pairs = [(a.name, None) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([module] if module else [])])
            pairs = [(module, a.name) for a in node.names]
        else:
            continue
        for module, name in pairs:
            if module.split(".")[0] != "sandbox":
                continue
            if module == "sandbox" and name is not None:
                if name in sandbox.__all__ or f"sandbox.{name}" in PUBLIC_PACKAGES:
                    continue
                module = f"sandbox.{name}"  # a submodule, or a name __all__ does not export
            if not _is_public(module) and module not in own:
                found.add(f"{rel}: {module}")
    return found


def test_every_exported_name_imports_and_is_documented():
    docs = "\n".join(p.read_text(encoding="utf-8")
                     for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    assert len(set(sandbox.__all__)) == len(sandbox.__all__)
    for name in sandbox.__all__:
        namespace: dict[str, object] = {}
        exec(f"from sandbox import {name}", namespace)  # noqa: S102 - the import statement itself
        obj = namespace[name]
        assert inspect.getdoc(obj), f"sandbox.{name} has no docstring"
        assert re.search(rf"\b{re.escape(name)}\b", docs), f"{name} is in no README/docs page"


def test_every_other_module_of_the_package_is_private():
    public = sorted(p.name for p in (ROOT / "sandbox").iterdir()
                    if (p.suffix == ".py" or p.is_dir() and (p / "__init__.py").exists())
                    and not p.name.startswith("_") and p.stem not in KEPT)
    assert public == [], f"name them _x.py: only sandbox/__init__.py is public ({public})"


def test_clients_import_nothing_private_beyond_the_known_list():
    found = set().union(*(private_imports(p) for p in _clients()))
    new = sorted(found - KNOWN_INTERNAL)
    assert not new, f"import these through `sandbox` (its __all__), or export them: {new}"
    stale = sorted(KNOWN_INTERNAL - found)
    assert not stale, f"no longer imported: remove from KNOWN_INTERNAL: {stale}"


def test_the_scan_sees_what_it_must():
    """The checker itself: a lazy private import is found, a public one is not."""
    assert any(p.name == "_cli.py" for p in _clients()) and len(_clients()) > 10
    assert not _is_public("sandbox._direct") and not _is_public("sandbox.anything")
    assert _is_public("sandbox") and _is_public("sandbox.grading.session")
    assert not _is_public("sandbox.grading._x")


if __name__ == "__main__":  # print today's list, to refresh KNOWN_INTERNAL after a merge
    for entry in sorted(set().union(*(private_imports(p) for p in _clients()))):
        print(f"    {entry!r},")
