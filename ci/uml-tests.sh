#!/usr/bin/env bash
# Run the cgroup v2 test module inside one User-Mode Linux guest (pure v2, delegated subtree)
# as an unprivileged uid. One guest for the whole module: forks are slow under UML.
#   bash ci/uml-tests.sh [pytest args]
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
uid=$(id -u sbxtest 2>/dev/null || echo 1001)
cow=()
case "$REPO/" in /tmp/*|/run/*|/var/tmp/*) cow=(--cow "$REPO");; esac
exec bash ci/uml-run.sh --user "$uid" --mem 1536M "${cow[@]}" --cwd "$REPO" -- \
  "$REPO/.venv/bin/python" -m pytest -q --color=no -p no:cacheprovider -p no:pytest_isolate \
  tests/test_cgroups.py "$@"
