#!/usr/bin/env bash
# Run the cgroup v2 tests inside one User-Mode Linux guest (pure v2, delegated subtree) as an
# unprivileged uid: tests/test_cgroups.py, and the escape test whose verdict depends on a
# memory cgroup (kernel buffers charged to it). One guest for all of them: forks are slow
# under UML.
#   bash ci/uml-tests.sh [pytest args]
# First a boot probe (/bin/true in a guest, ~3 s): a guest that cannot boot here (no UML
# package, no ptrace, a kernel panic) is reported as ONE line
#   cgroup v2 guest tests: SKIPPED (<why, from the console log>)
# and exits 0, so it never fails unrelated work and is never silent. A guest that boots and
# whose tests fail exits non-zero. SANDBOX_UML_MEM sets the guest's memory (default 1536M).
set -uo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
uid=$(id -u sbxtest 2>/dev/null || id -u)
mem=${SANDBOX_UML_MEM:-1536M}
cow=()
case "$REPO/" in /tmp/*|/run/*|/var/tmp/*) cow=(--cow "$REPO");; esac

probe=$(bash ci/uml-run.sh --user "$uid" --mem "$mem" -- /bin/true 2>&1)
rc=$?
if [ $rc != 0 ]; then
  reason=$(printf '%s\n' "$probe" | sed -n 's/^uml-run: guest failed: //p' | head -n 1)
  [ -n "$reason" ] || reason=$(printf '%s\n' "$probe" | grep -v '^[[:space:]]*$' | tail -n 1)
  echo "cgroup v2 guest tests: SKIPPED (${reason:-the boot probe exited $rc})"
  exit 0
fi
printf '%s\n' "$probe" | grep -v '^[[:space:]]*$' >&2   # e.g. the shim notice
exec bash ci/uml-run.sh --user "$uid" --mem "$mem" "${cow[@]}" --cwd "$REPO" -- \
  "$REPO/.venv/bin/python" -m pytest -q --color=no -p no:cacheprovider -p no:pytest_isolate \
  tests/test_cgroups.py tests/test_box_cgroup.py tests/escape/test_kernel_memory.py "$@"
