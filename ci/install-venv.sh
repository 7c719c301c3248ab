#!/usr/bin/env bash
# The project into .venv of the checkout this script sits in (ci/setup.sh runs it after the
# system packages; ci/test.sh runs it in its world-readable copy of the checkout).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-/usr/bin/python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[dev,cluster]'
# setuptools is only a build dependency (pip builds in an isolated environment); left in the
# venv, its distutils-precedence.pth runs on every Python start (~0.7 ms of the CLI's).
.venv/bin/pip uninstall -q -y setuptools >/dev/null 2>&1 || true
# Byte-compile now (as the installing user): an unprivileged user running from a root-owned
# checkout cannot write __pycache__, and compiling on every start triples the CLI's cold start.
# The venv too: pip's legacy install of python-prctl skips prctl.py when PYTHONDONTWRITEBYTECODE
# is set.
.venv/bin/python -m compileall -q sandbox pytest_plugin .venv/lib >/dev/null
# The same for pytest's assertion-rewritten bytecode of our modules and tests (why:
# ci/rewrite_warmup/), which pytest writes only where it may and only when bytecode is written.
env -u PYTHONDONTWRITEBYTECODE .venv/bin/python -m pytest -q -p no:cacheprovider ci/rewrite_warmup >/dev/null
env -u PYTHONDONTWRITEBYTECODE .venv/bin/python -m pytest -q -p no:cacheprovider --collect-only tests >/dev/null \
  || echo "install-venv: collecting tests/ failed (only its rewrite cache is missing)" >&2
# ...and the default seccomp policy compiled by libseccomp, into .venv/share/sandbox (read
# before the user's ~/.cache/sandbox; see sandbox/_seccomp_cache.py): the CLI then needs
# neither pyseccomp nor libseccomp to start a box. Earlier versions kept it in __pycache__.
rm -f sandbox/__pycache__/seccomp-*.bpf
.venv/bin/python -m sandbox._seccomp
