"""Shared fixture for the plugin's tests (loaded with ``pytest_plugins``; holds no tests)."""

from __future__ import annotations

import textwrap

import pytest


@pytest.fixture
def run(pytester: pytest.Pytester):
    """Write ``test_it.py`` and run pytest on it in-process (real boxes, this user)."""
    def go(src: str, *args: str) -> pytest.RunResult:
        pytester.makepyfile(test_it=textwrap.dedent(src))
        return pytester.runpytest("-p", "no:cacheprovider", "-p", "no:pytest_isolate", *args)
    return go
