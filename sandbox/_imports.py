"""Import-time savings for the CLI's cold start (measured: ``python -X importtime``).

``dataclasses`` imports ``inspect`` (and with it ast, dis, tokenize, ...: ~5 ms here) but only
uses it to write a docstring for a dataclass that has none. Every dataclass of ours has one,
so while ``dataclasses`` is first imported, ``inspect`` is a stand-in that loads the real
module on first use: any attribute read delegates to the real ``inspect``, so behaviour is
unchanged whatever the Python version uses it for. Nothing happens when either module is
already loaded (e.g. by pytest).
"""

from __future__ import annotations

import sys
import types


class _DeferredInspect(types.ModuleType):
    def __getattr__(self, name: str) -> object:
        import importlib

        return getattr(importlib.import_module("inspect"), name)


def dataclasses_without_eager_inspect() -> None:
    if "dataclasses" in sys.modules or "inspect" in sys.modules:
        return
    stand_in = _DeferredInspect("inspect")
    sys.modules["inspect"] = stand_in
    try:
        import dataclasses  # noqa: F401 - binds its global ``inspect`` to the stand-in
    finally:
        if sys.modules.get("inspect") is stand_in:
            del sys.modules["inspect"]
