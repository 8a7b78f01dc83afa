"""Parse `perf script` text of kvm:kvm_pio, kvm:kvm_mmio and kvm:kvm_fast_mmio
into a Snapshot (pure).

The kernel prints each event as
    pio_read at 0x3fd size 1 count 1 val 0x60
    pio_read at 0x60 size 1 count 16 val 0x60 (...)
    mmio unsatisfied-read len 4 gpa 0xfebc0000 val 0x0
    mmio read len 4 gpa 0xfebc0000 val 0x60606060
    mmio write len 2 gpa 0xfebc0004 val 0x6060
    fast mmio at gpa 0xfebff000
after whatever leading fields perf was asked for (-F): a thread name with
spaces (`CPU 0/KVM`), pid or pid/tid, [cpu], time, event name, or none of
them. So the payload is matched by its own shape, never by field position
(the seed's awk takes field 8 and miscounts `CPU 0/KVM` threads).

Values the kernel cannot print make a line malformed: size is 1, 2 or 4 (the
in/out operand sizes), and size x count at most 4096, the page KVM passes
port I/O data through (SEV-ES string I/O is split into PAGE_SIZE / size
elements an event; the emulator's `rep ins` read-ahead holds 1024 bytes).

MMIO is keyed Key(direction, Gpa(gpa)). A read that leaves for user space
fires kvm_mmio twice: `unsatisfied-read` on the way out and `read` when the
next KVM_RUN completes it; a read KVM answers itself (LAPIC, IOAPIC) fires
`read` once, a write `write` once. So `read` and `write` are counted,
`unsatisfied-read` only checked. kvm_fast_mmio (a write to a zero-length
ioeventfd taken on VMX's EPT-misconfig fast path, with no kvm_mmio) is a
write of unknown size: an event of 0 bytes. A len is 1 to 4096: KVM traces
one access, split at most at a page boundary.

Text with no kvm_pio event is perf script output only when something shows
it is: the `# ========` line that opens and closes the header of
`perf script --header` (any `#` line is too weak: shell scripts and random
bytes have them), or a line of another event, with its time or its
`subsystem:event:` name. An empty file, binary data or other text is a
failed capture or the wrong file, not zero events.
"""

import re
from collections import defaultdict
from dataclasses import dataclass

from ..core.keys import Gpa, Key, READ, WRITE
from ..core.snapshot import Counts, Snapshot

# size and count are %d of 32-bit fields: at most 10 digits.
_PAYLOAD = re.compile(
    r"(?:^|\s)pio_(?P<dir>read|write) at 0x(?P<port>[0-9a-fA-F]{1,4}) "
    r"size (?P<size>\d{1,10}) count (?P<count>\d{1,10})"
    r"(?: val 0x[0-9a-fA-F]+(?: \(\.\.\.\))?)?\s*$")
# Seconds of a u64 nanosecond clock: at most 11 digits before the point.
_TIME = re.compile(r"(?:^|\s)(\d{1,11}\.\d+):(?:\s|$)")
# gpa is %llx of a u64: at most 16 digits; len a %u.
_MMIO = re.compile(
    r"(?:^|\s)mmio (?P<type>unsatisfied-read|read|write) len (?P<len>\d{1,10}) "
    r"gpa 0x(?P<gpa>[0-9a-fA-F]{1,16}) val 0x[0-9a-fA-F]{1,16}\s*$")
_FAST_MMIO = re.compile(r"(?:^|\s)fast mmio at gpa 0x(?P<gpa>[0-9a-fA-F]{1,16})\s*$")
# A line of ours, by event name or by payload (-F trace prints no name).
_OURS = re.compile(r"kvm_pio|pio_(?:read|write)|kvm_(?:fast_)?mmio|mmio (?:unsatisfied-read|read|write) "
                   r"|fast mmio at")
_HEADER = "# ========"
# Another event's line: its time, or its subsystem:event: name.
_EVENT = re.compile(r"(?:^|\s)(?:\d{1,11}\.\d+|[\w-]+:[\w-]+):(?:\s|$)")
SIZES = (1, 2, 4)
MAX_BYTES = 4096        # x86 PAGE_SIZE: size x count of one event


@dataclass
class PerfParse:
    snapshot: Snapshot
    duration_s: float      # earliest to latest timestamp; 0 without times
    malformed: int         # kvm_pio lines that do not parse
    first_malformed: str   # "LINE_NO: text" of the first, or ""


def _event(line):
    """(key, Counts, match) of one of our lines, (None, None, match) for an
    unsatisfied-read, or None when the line is malformed."""
    m = _PAYLOAD.search(line)
    if m:
        size, count = int(m["size"]), int(m["count"])
        if size not in SIZES or size * count > MAX_BYTES:
            return None
        return Key(WRITE if m["dir"] == "write" else READ, int(m["port"], 16)), \
            Counts(1, size * count), m
    m = _MMIO.search(line)
    if m:
        length = int(m["len"])
        if not 1 <= length <= MAX_BYTES:
            return None
        if m["type"] == "unsatisfied-read":
            return None, None, m
        return Key(WRITE if m["type"] == "write" else READ, Gpa(int(m["gpa"], 16))), \
            Counts(1, length), m
    m = _FAST_MMIO.search(line)
    if m:
        return Key(WRITE, Gpa(int(m["gpa"], 16))), Counts(1, 0), m
    return None


def parse(lines):
    """Count kvm_pio and kvm_mmio events from `perf script` lines (an iterable
    of str); ValueError if they are not perf script output."""
    counts = defaultdict(Counts)
    malformed, first_bad = 0, ""
    span = None
    perf = False            # seen perf's header, an event, or another event's time or name
    for no, line in enumerate(lines, 1):
        if "\0" in line:
            raise ValueError(f"binary data (a NUL byte on line {no}), not perf script text")
        stripped = line.strip()
        perf = perf or stripped == _HEADER or bool(_EVENT.search(line))
        if not stripped or stripped.startswith("#") or not _OURS.search(line):
            continue        # blank, header, comment or another event
        event = _event(line)
        if event is None:
            malformed += 1
            first_bad = first_bad or f"{no}: {stripped[:200]}"
            continue
        perf = True
        key, c, m = event
        if key is not None:
            counts[key] += c
        t = _TIME.search(line[:m.start()])
        if t:
            # Not first to last: perf prints events out of order at times
            # ("N out of order events recorded"), and a duration is never negative.
            ts = float(t.group(1))
            span = (ts, ts) if span is None else (min(span[0], ts), max(span[1], ts))
    if not perf:
        raise ValueError("not perf script output: no kvm_pio or kvm_mmio event, other event or "
                         "perf header (perf script --header marks a capture without events)")
    duration = span[1] - span[0] if span else 0.0
    return PerfParse(Snapshot(dict(counts)), duration, malformed, first_bad)
