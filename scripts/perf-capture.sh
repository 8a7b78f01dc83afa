#!/usr/bin/env bash
# The seed's perf pipeline as one command, to run beside `piobpf -d` on the
# same workload and compare: piobpf --compare OUT piobpf.json
# Usage: sudo scripts/perf-capture.sh SECONDS OUT
set -euo pipefail
die() { echo "perf-capture: $*" >&2; exit 2; }

[ $# -eq 2 ] || die "usage: perf-capture.sh SECONDS OUT"
seconds=$1 out=$2
[[ $seconds =~ ^[0-9]+([.][0-9]+)?$ ]] && [[ ! $seconds =~ ^0*([.]0*)?$ ]] \
    || die "SECONDS must be a positive number, got '$seconds'"
command -v perf >/dev/null || die "perf not found: apt-get install linux-perf"
: > "$out" || die "cannot write $out"

data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT
perf record -q -e kvm:kvm_pio -a -o "$data/perf.data" -- sleep "$seconds"
perf script -i "$data/perf.data" > "$out"
echo "perf-capture: $(grep -c 'kvm_pio' "$out" || true) kvm_pio events in $out" >&2
