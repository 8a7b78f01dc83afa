#!/usr/bin/env bash
# The overhead benchmark: piobpf against the floor (an empty BPF program) in
# paired runs, to an interval: by port on in-kernel exits, --latency on those
# and on user-space exits, --mmio on in-kernel MMIO; bpftrace and perf record
# against adjacent untraced runs; ns/event, start-up and memory.
# Usage: sudo scripts/bench.sh [-o FILE] [--budget B] [--min-s S] [--max-s S]
#        [--run-s S] [--rounds N] [--ops N] [--syscalls N] [--before REV]
#        [--sweep S,S,...] [--smoke]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$repo/scripts/setup.sh"
# perf record is always among the tracers compared; bpftrace when installed.
. "$repo/scripts/lib.sh"
need_root_and_apt
install_packages linux-perf bpftrace
exec /usr/bin/python3 "$repo/scripts/bench.py" "$@"
