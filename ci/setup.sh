#!/usr/bin/env bash
# Install everything the project needs on Debian/Ubuntu (run as root, or with sudo):
#   system packages (python-prctl builds from source: libcap-dev + Python headers; libseccomp2
#   for pyseccomp; bubblewrap for the benchmark; user-mode-linux + busybox-static for the
#   cgroup v2 tests; podman + runc for the image round trip, tests/test_image_export.py),
#   then a virtualenv in .venv with the project installed editable.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    python3 python3-venv python3-dev gcc libcap-dev libseccomp2 \
    bubblewrap uidmap iproute2 user-mode-linux busybox-static util-linux podman runc >/dev/null
else
  echo "ci/setup.sh: not root, skipping apt packages (need: python3-venv python3-dev gcc libcap-dev libseccomp2)" >&2
fi
bash ci/install-venv.sh
echo "ci/setup.sh: ready (.venv)"
