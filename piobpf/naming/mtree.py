"""A VM's own port map from QEMU's `info mtree -f -o` (pure: text in, names out).

The flat view (-f) is QEMU's resolved map: overlapping and nested regions are
already cut down to what the guest reaches, highest priority first, so every
port is in at most one line. The "I/O" address space looks like

    FlatView #2
     AS "I/O", root: io
     Root memory region: io
      0000000000000092-0000000000000092 (prio 0, i/o): port92 owner:{dev path=/machine/...}
      000000000000c000-000000000000c07f (prio 1, i/o): virtio-pci owner:{dev id=disk0}
      000000000000c0f0-000000000000ffff (prio 0, i/o): io @000000000000c0f0 parent:{obj ...}

A device is named by its region and, where the user gave the device an id,
that id: `virtio-pci disk0`, `e1000-io nic1`, `port92`. Pieces of the root
region (`io @...`) are ports no device claims: QEMU's "unassigned" I/O.
"""

import bisect
import heapq
import re

UNASSIGNED = "unassigned"
# A real I/O map has tens of ranges; a monitor answering more is not a VM's
# device model worth the CPU (the 64 KiB port space, one port per range).
MAX_RANGES = 65536

# QEMU's mtree_print_flatview: range, priority and type, the region's name,
# " @offset" into the region, then (with -o) " owner:{...}" and/or
# " parent:{...}", or " orphan". The tail is matched on the reversed text: a
# lazy name before a repeated group backtracks quadratically on a hostile
# line (4 s for 72 KB); anchored and reversed, each character is looked at
# a bounded number of times.
_HEAD = re.compile(r"\s*(?P<start>[0-9a-fA-F]+)-(?P<end>[0-9a-fA-F]+) \(prio (?P<prio>-?\d+), [^)]*\): ")
_TAIL_REVERSED = re.compile(r"\s*(?:nahpro )?(?P<owner>(?:\}[^}]*\{:(?:renwo|tnerap) )*)(?:[0-9a-fA-F]+@ )?")
_ID = re.compile(r"owner:\{\s*(?:dev\s+)?id=(?P<id>[^}\s]+)\}")   # older QEMU: "{ id=X}"


class IoMap:
    """Port -> device name of one VM; UNASSIGNED where no device claims it."""

    def __init__(self, ranges):
        self._ranges = ranges               # (start, end, name), disjoint, sorted
        self._starts = [r[0] for r in ranges]

    def __len__(self):
        return len(self._ranges)

    def lookup(self, port):
        i = bisect.bisect_right(self._starts, port) - 1
        if i >= 0 and port <= self._ranges[i][1]:
            return self._ranges[i][2]
        return UNASSIGNED


def device_name(region, owner):
    """`region id` when the owner is a device with an id, else the region's name."""
    if region == "io":      # the root region itself: nothing there
        return UNASSIGNED
    m = _ID.search(owner or "")
    return f"{region} {m['id']}" if m and m["id"] != region else region


def io_lines(text):
    """The range lines of the flat view whose address spaces include "I/O"."""
    view, in_io = [], False
    for line in text.splitlines():
        if line.startswith("FlatView"):
            if in_io:
                break
            view = []
        elif line.strip() == 'AS "I/O", root: io':
            in_io = True
        view.append(line)
    return view if in_io else []


def resolve(ranges):
    """Disjoint (start, end, name) from (start, end, prio, name) that may overlap:
    on each port the highest priority wins, then the smallest range, as in
    QEMU's own flat view (which is already disjoint: then this changes nothing).

    A sweep over the cuts, in n log n: the ranges covering the current piece
    sit in a heap, best first; one that has ended is dropped when it surfaces."""
    by_start = sorted(enumerate(ranges), key=lambda e: e[1][0])
    cuts = sorted({r[0] for r in ranges} | {r[1] + 1 for r in ranges})
    out, live, i = [], [], 0
    for start, nxt in zip(cuts, cuts[1:]):
        while i < len(by_start) and by_start[i][1][0] <= start:
            n, r = by_start[i]
            # Best: highest prio, then smallest, then first in the answer.
            heapq.heappush(live, (-r[2], r[1] - r[0], n, r[1], r[3]))
            i += 1
        while live and live[0][3] < start:
            heapq.heappop(live)
        if not live:
            continue
        name = live[0][4]
        if out and out[-1][1] == start - 1 and out[-1][2] == name:
            out[-1] = (out[-1][0], nxt - 1, name)
        else:
            out.append((start, nxt - 1, name))
    return out


def parse(text):
    """The I/O map in `info mtree -f [-o]` text; ValueError when there is none."""
    ranges = []
    for line in io_lines(text):
        m = _HEAD.match(line)
        if m:
            if len(ranges) == MAX_RANGES:
                raise ValueError(f"more than {MAX_RANGES} ranges in the I/O map")
            rest = line[m.end():]
            tail = _TAIL_REVERSED.match(rest[::-1])
            name, owner = rest[:len(rest) - tail.end()], tail["owner"][::-1]
            ranges.append((int(m["start"], 16), int(m["end"], 16), int(m["prio"]),
                           device_name(name, owner)))
    if not ranges:
        raise ValueError("no I/O address space in the monitor's answer")
    return IoMap(resolve(ranges))
