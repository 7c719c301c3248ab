"""The public API is ``sandbox.__all__``: every name there resolves, is documented, and comes from
the project; nothing else is needed to use a box (the way trio tests its exports)."""

from __future__ import annotations

import inspect
import subprocess
import sys

import sandbox


def test_every_exported_name_resolves_is_documented_and_ours():
    for name in sandbox.__all__:
        obj = getattr(sandbox, name)
        assert name in dir(sandbox)
        assert inspect.getdoc(obj), f"sandbox.{name} has no docstring"
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__.startswith("sandbox"), (name, obj.__module__)


def test_unknown_names_fail_like_a_module_attribute():
    import pytest

    with pytest.raises(AttributeError, match="no attribute 'Boxx'"):
        sandbox.Boxx  # noqa: B018


def test_the_held_box_api_is_exported_with_its_types():
    for name in ("Box", "BoxError", "Changes", "Usage", "Process", "Supervisor"):
        assert name in sandbox.__all__
    sig = inspect.signature(sandbox.Box.exec)
    assert {"stdin", "cwd", "env", "wall_time", "cpu_time", "output_limit", "on_output"} <= set(sig.parameters)
    assert issubclass(sandbox.BoxError, Exception)


def test_importing_sandbox_stays_light():
    """``import sandbox`` loads no runner: trio, the box code and the supervisor come on first use."""
    code = ("import sys, sandbox; bad = [m for m in ('trio', 'sandbox._box', 'sandbox._supervisor',"
            " 'sandbox._direct') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
