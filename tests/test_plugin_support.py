"""Shared fixture for the plugin's tests (loaded with ``pytest_plugins``; holds no tests)."""

from __future__ import annotations

import textwrap

import pytest


@pytest.fixture
def run(pytester: pytest.Pytester):
    """Write ``test_it.py`` (and ``helpers`` as ``calls.py``: functions for ``sandbox.call``, which
    imports them by name in a fresh interpreter) and run pytest on it in-process (real boxes,
    this user)."""
    def go(src: str, *args: str, helpers: str | None = None) -> pytest.RunResult:
        if helpers is not None:
            pytester.makepyfile(calls=helpers)
        pytester.makepyfile(test_it=textwrap.dedent(src))
        return pytester.runpytest("-p", "no:cacheprovider", "-p", "no:pytest_isolate", *args)
    return go


def host_pauses_after(pytester: pytest.Pytester, name: str) -> None:
    """A conftest under which the host waits a second after the teardown report of the test
    whose id contains ``name``: the box has ended by the time the host sends it more."""
    pytester.makeconftest(f"""
        import time

        def pytest_runtest_logreport(report):
            if report.when == "teardown" and {name!r} in report.nodeid:
                time.sleep(1)
        """)
