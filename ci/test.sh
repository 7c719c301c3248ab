#!/usr/bin/env bash
# Run the test suite the way users run the product: as an UNPRIVILEGED user.
#   ci/test.sh [pytest args...]
# As root it (1) creates the user 'sbxtest' if needed, (2) runs the suite as that user,
# (3) runs the core tests again as root (root is a supported second mode), and (4) runs the
# cgroup v2 tests inside a User-Mode Linux guest (ci/uml-tests.sh). As a normal user it just
# runs the suite as you.
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
TEST_USER=${SANDBOX_TEST_USER:-sbxtest}
LOG=$(mktemp /tmp/sandbox-ci-log.XXXXXX); trap 'rm -f "$LOG"' EXIT
# Each run's output is kept in $LOG so the counts of pytest's summary lines can be added up.
run_pytest() { "$@" 2>&1 | tee -a "$LOG"; rc=${PIPESTATUS[0]}; [ $rc = 5 ] && rc=0; return $rc; }  # 5 = none collected
count() { grep -a -E '^=* ?[0-9]+ [a-z]+(, [0-9]+ [a-z]+)* in [0-9.]+s' "$LOG" |
          grep -o -E "[0-9]+ $1" | awk '{n += $1} END {print n + 0}'; }

if [ "$(id -u)" != 0 ]; then
  exec .venv/bin/python -m pytest -q "$@"
fi

id "$TEST_USER" >/dev/null 2>&1 || useradd --create-home --shell /bin/bash "$TEST_USER"
# The unprivileged user must be able to read the checkout and the venv; when the clone lives
# somewhere private (e.g. under /root) work from a world-readable copy instead.
if ! runuser -u "$TEST_USER" -- test -r "$REPO/pyproject.toml" -a -x "$REPO/.venv/bin/python"; then
  COPY=/tmp/sandbox-ci-src
  rm -rf "$COPY"; mkdir -p "$COPY"
  tar -C "$REPO" --exclude=./.venv --exclude=./.git -cf - . | tar -C "$COPY" -xf -
  PYTHON=/usr/bin/python3 bash "$COPY/ci/install-venv.sh"
  chmod -R a+rX "$COPY"
  REPO=$COPY
fi
cd "$REPO"
status=0
echo "== tests as unprivileged user '$TEST_USER' =="
run_pytest runuser -u "$TEST_USER" -- env -u SANDBOX_ROOT_MODE HOME=/tmp .venv/bin/python -m pytest -q "$@" || status=1
echo "== core tests as root (second supported mode) =="
run_pytest env SANDBOX_ROOT_MODE=1 .venv/bin/python -m pytest -q tests/test_core.py tests/test_cli.py tests/test_shutdown.py tests/test_warm_pool.py tests/escape/test_host_fds.py tests/escape/test_init_signals.py tests/test_box.py tests/test_worker.py tests/test_cli_signals.py tests/test_cli_tty.py tests/test_cli_options.py tests/test_images.py tests/test_image_export.py tests/test_image_user.py tests/test_image_zstd.py tests/test_image_fixture.py tests/test_image_layers.py tests/test_image_owners.py tests/test_image_python.py tests/test_network.py tests/test_network_url.py tests/test_network_rate.py tests/test_grade_serve.py || status=1
if [ -f ci/uml-tests.sh ] && [ -z "${SANDBOX_SKIP_UML:-}" ]; then
  echo "== cgroup v2 tests inside a User-Mode Linux guest =="
  run_pytest bash ci/uml-tests.sh || status=1
else
  echo "cgroup v2 guest tests: SKIPPED (SANDBOX_SKIP_UML is set)"
fi
# One closing line for all runs (unprivileged, root, guest): what CI reads.
echo "all runs: $(count passed) passed, $(( $(count failed) + $(count error) )) failed, $(count skipped) skipped"
exit $status
