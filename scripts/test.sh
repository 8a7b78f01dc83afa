#!/usr/bin/env bash
# One command on a fresh machine: install what tracing needs (setup.sh) and
# the test rig (test-deps.sh), then run every test. Each step is quick when
# nothing is missing. Usage: sudo scripts/test.sh [pytest args]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$repo/scripts/setup.sh"
"$repo/scripts/test-deps.sh"
cd "$repo"
# Debian's python3: the one python3-bpfcc is built for.
exec env LC_ALL=C /usr/bin/python3 -m pytest -ra "$@" tests
