#!/usr/bin/env bash
# Install everything the project needs on Debian/Ubuntu (run as root, or with sudo):
#   system packages (python-prctl builds from source: libcap-dev + Python headers; libseccomp2
#   for pyseccomp; bubblewrap for the benchmark; user-mode-linux + busybox-static for the
#   cgroup v2 tests), then a virtualenv in .venv with the project installed editable.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    python3 python3-venv python3-dev gcc libcap-dev libseccomp2 \
    bubblewrap uidmap iproute2 user-mode-linux busybox-static util-linux >/dev/null
else
  echo "ci/setup.sh: not root, skipping apt packages (need: python3-venv python3-dev gcc libcap-dev libseccomp2)" >&2
fi
PY=${PYTHON:-/usr/bin/python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e '.[dev]'
# setuptools is only a build dependency (pip builds in an isolated environment); left in the
# venv, its distutils-precedence.pth runs on every Python start (~0.7 ms of the CLI's).
.venv/bin/pip uninstall -q -y setuptools >/dev/null 2>&1 || true
# Byte-compile now (as the installing user): an unprivileged user running from a root-owned
# checkout cannot write __pycache__, and compiling on every start triples the CLI's cold start.
# The venv too: pip's legacy install of python-prctl skips prctl.py when PYTHONDONTWRITEBYTECODE
# is set.
.venv/bin/python -m compileall -q sandbox pytest_plugin .venv/lib >/dev/null
# ...and, beside the byte code, the default seccomp policy compiled by libseccomp (see
# sandbox/seccomp.py: the CLI then needs neither pyseccomp nor libseccomp to start a box).
.venv/bin/python -m sandbox.seccomp
echo "ci/setup.sh: ready (.venv)"
