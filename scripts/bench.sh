#!/usr/bin/env bash
# The overhead benchmark: guest throughput under piobpf, the floor (an empty
# BPF program), bpftrace and perf record, each against adjacent untraced runs.
# Usage: sudo scripts/bench.sh [-o FILE] [--rounds N] [--ops N] [--smoke]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$repo/scripts/setup.sh"
exec /usr/bin/python3 "$repo/scripts/bench.py" "$@"
