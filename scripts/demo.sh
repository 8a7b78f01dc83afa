#!/usr/bin/env bash
# Set up, start two built-in guests, trace them with piobpf for a few seconds.
# One guest busy-polls the serial line status register 0x3fd, like the seed's
# culprit; the other makes background traffic (RTC, PIC, keyboard), paced by a
# VMM that takes 200 us per keyboard read, so the serial poll stays on top
# however the two share a busy host's CPUs.
# It needs only what setup.sh installs, and /dev/kvm: the guests are piobpf's
# own test guest, in pure Python.
# Usage: sudo scripts/demo.sh [SECONDS]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
seconds=${1:-5}
"$repo/scripts/setup.sh"
[ -w /dev/kvm ] || { echo "demo: needs /dev/kvm (a KVM host, as root)" >&2; exit 1; }

guest() { /usr/bin/python3 "$repo/tests/tools/guest.py" --forever "$@" >/dev/null & }
out=$(mktemp)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true; rm -f "$out"' EXIT
guest --thread-name "CPU 0/KVM" r:0x3fd:1:2000 w:0x3f8:1:1 r:0x3fb:1:1; pids+=($!)
guest --thread-name "CPU 0/KVM" --irqchip --delay 0x60:200 r:0x71:1:1 w:0x70:1:1 w:0x20:1:1 \
    r:0x60:1:1; pids+=($!)

# -p: only these guests, whatever other VMs on the host do.
piobpf -d "$seconds" -o "$out" -p "$(IFS=,; echo "${pids[*]}")"
cat "$out"
# The busiest row (the third line, under the header) must be the serial port.
if sed -n 3p "$out" | grep -Eq '^read +0x03fd +serial '; then
    echo "demo: OK: the guests hammer 0x3fd, the serial port's line status register" >&2
else
    echo "demo: FAILED: 0x3fd serial is not the top row" >&2
    exit 1
fi
