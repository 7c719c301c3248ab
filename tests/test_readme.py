"""The README's Python quick starts work as written (pasted into a fresh interpreter)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

README = Path(__file__).resolve().parent.parent / "README.md"


def python_quick_starts() -> list[str]:
    text = README.read_text()
    section = text[text.index("### Python"):text.index("### pytest")]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.mark.skipif(shutil.which("gcc") is None, reason="the example compiles C: gcc is not installed")
@pytest.mark.parametrize("n", range(4))
def test_the_python_quick_start_runs_as_written(n, tmp_path, no_leftovers):
    blocks = python_quick_starts()
    assert len(blocks) == 4
    out = subprocess.run([sys.executable, "-c", blocks[n]], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    if n == 0:
        assert out.stdout.startswith("RE 3 ") and "b'got hi\\n'" in out.stdout
    if n == 2:
        assert out.stdout == "b\"b'hello'\\n\"\n", out.stdout
    if n == 3:
        assert out.stdout.split("\n")[:4] == ["5", "OK", "AttributeError", "TO"], out.stdout


def test_the_pytest_quick_start_passes_as_written(pytester, no_leftovers):
    text = README.read_text()
    section = text[text.index("### pytest"):text.index("### Grading submissions")]
    (block,) = re.findall(r"```python\n(.*?)```", section, re.S)
    pytester.makepyfile(test_quick=block)
    r = pytester.runpytest_subprocess("-q", "-p", "no:cacheprovider")
    r.assert_outcomes(passed=2)
