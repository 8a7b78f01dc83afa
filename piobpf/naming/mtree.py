"""A VM's own port and MMIO maps from QEMU's `info mtree -f -o` (pure: text in, names out).

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

The "memory" address space (guest-physical addresses, 64-bit) is read the
same way, into a map of its own:

    FlatView #0
     AS "memory", root: system
     AS "cpu-memory-0", root: system
     Root memory region: system
      0000000000100000-0000000003ffffff (prio 0, ram): pc.ram @0000000000100000 owner:{obj path=/objects/pc.ram} KVM
      00000000febc0000-00000000febdffff (prio 1, i/o): e1000-mmio owner:{dev id=nic1}
      00000000febff000-00000000febfffff (prio 0, i/o): virtio-pci-notify-virtio-net owner:{dev id=net0}
      00000000fee00000-00000000feefffff (prio 4096, i/o): kvm-apic-msi owner:{dev path=/machine/...}

" KVM" ends the lines KVM maps as memory slots (RAM, ROM): named by their
region (`pc.ram`, `pc.bios`). Their accesses exit only as writes to ROM.
Addresses in no line are unassigned: the root region ("system") is a
container that QEMU does not render, so a gap is simply absent. PCI BARs
appear only once the guest's firmware has placed them.
"""

import bisect
import heapq
import re

UNASSIGNED = "unassigned"
IO, MEMORY = "I/O", "memory"    # the address spaces, as `AS "..."` names them
# A real map has tens of ranges; a monitor answering more is not a VM's
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
_AS = re.compile(r'\s*AS "(?P<name>[^"]*)", root: (?P<root>.*?)\s*$')
_SLOT = " KVM"          # a memory slot (RAM, ROM): after the owner groups


class IoMap:
    """Port (or guest-physical address) -> device name of one VM; UNASSIGNED
    where no device claims it."""

    def __init__(self, ranges):
        self._ranges = ranges               # (start, end, name), disjoint, sorted
        self._starts = [r[0] for r in ranges]

    def __len__(self):
        return len(self._ranges)

    def lookup(self, address):
        i = bisect.bisect_right(self._starts, address) - 1
        if i >= 0 and address <= self._ranges[i][1]:
            return self._ranges[i][2]
        return UNASSIGNED


def device_name(region, owner, root="io"):
    """`region id` when the owner is a device with an id, else the region's name."""
    if region == root:      # the root region itself: nothing there
        return UNASSIGNED
    m = _ID.search(owner or "")
    return f"{region} {m['id']}" if m and m["id"] != region else region


def space_lines(text, space=IO):
    """The lines of the flat view whose address spaces include `space`, and
    the name of its root region ("io", "system"); ([], None) without one."""
    view, root = [], None
    for line in text.splitlines():
        if line.startswith("FlatView"):
            if root is not None:
                break
            view = []
        else:
            m = _AS.fullmatch(line)
            if m and m["name"] == space:
                root = m["root"]
        view.append(line)
    return (view, root) if root is not None else ([], None)


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


def parse(text, space=IO):
    """The map of address space `space` (IO: ports, MEMORY: guest-physical
    addresses) in `info mtree -f [-o]` text; ValueError when there is none."""
    lines, root = space_lines(text, space)
    ranges = []
    for line in lines:
        m = _HEAD.match(line)
        if m:
            if len(ranges) == MAX_RANGES:
                raise ValueError(f"more than {MAX_RANGES} ranges in the {space} map")
            rest = line.rstrip()[m.end():]
            if rest.endswith(_SLOT):
                rest = rest[:-len(_SLOT)]
            tail = _TAIL_REVERSED.match(rest[::-1])
            name, owner = rest[:len(rest) - tail.end()], tail["owner"][::-1]
            ranges.append((int(m["start"], 16), int(m["end"], 16), int(m["prio"]),
                           device_name(name, owner, root)))
    if not ranges:
        raise ValueError(f"no {space} address space in the monitor's answer")
    return IoMap(resolve(ranges))
