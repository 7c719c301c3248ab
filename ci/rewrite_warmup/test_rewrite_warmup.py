"""Imports every module of ``sandbox`` and ``pytest_plugin`` inside a pytest session, so that
pytest writes its assertion-rewritten bytecode for them (``__pycache__/*-pytest-*.pyc``).

Why: the plugin is a ``pytest11`` entry point, and pytest marks every top-level package of
that distribution for assertion rewriting. Each pytest start (a grading run, a pytester run)
then parses and recompiles all our modules, unless the rewritten code is cached next to them.
An unprivileged user running from a root-owned checkout cannot write that cache, so the
installer (ci/install-venv.sh) writes it, as ``compileall`` does for plain bytecode.
"""

import importlib
import pkgutil

import pytest_plugin
import sandbox


def test_import_every_module() -> None:
    for pkg in (sandbox, pytest_plugin):
        for mod in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + "."):
            importlib.import_module(mod.name)
