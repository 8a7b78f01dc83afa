#!/usr/bin/env bash
# Set up what is missing, then run every test. Usage: sudo scripts/test.sh [pytest args]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$repo/scripts/setup.sh"
cd "$repo"
# Debian's python3: the one python3-bpfcc is built for.
exec env LC_ALL=C /usr/bin/python3 -m pytest -ra "$@" tests
