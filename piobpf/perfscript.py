"""Parse `perf script` text of kvm:kvm_pio into a Snapshot (pure).

The kernel prints each event as
    pio_read at 0x3fd size 1 count 1 val 0x60
    pio_read at 0x60 size 1 count 16 val 0x60 (...)
after whatever leading fields perf was asked for (-F): a thread name with
spaces (`CPU 0/KVM`), pid or pid/tid, [cpu], time, event name, or none of
them. So the payload is matched by its own shape, never by field position
(the seed's awk takes field 8 and miscounts `CPU 0/KVM` threads).
"""

import re
from collections import defaultdict
from dataclasses import dataclass

from .snapshot import READ, WRITE, Counts, Snapshot

_PAYLOAD = re.compile(
    r"(?:^|\s)pio_(?P<dir>read|write) at 0x(?P<port>[0-9a-fA-F]{1,4}) "
    r"size (?P<size>\d+) count (?P<count>\d+)(?: val 0x[0-9a-fA-F]+(?: \(\.\.\.\))?)?\s*$")
_TIME = re.compile(r"(?:^|\s)(\d+\.\d+):(?:\s|$)")
_KVM_PIO = re.compile(r"kvm_pio|pio_(?:read|write)")


@dataclass
class PerfParse:
    snapshot: Snapshot
    duration_s: float      # first to last timestamp; 0 without times
    malformed: int         # kvm_pio lines that do not parse
    first_malformed: str   # "LINE_NO: text" of the first, or ""


def parse(lines):
    """Count kvm_pio events from `perf script` lines (an iterable of str)."""
    counts = defaultdict(Counts)
    malformed, first_bad = 0, ""
    first_t = last_t = None
    for no, line in enumerate(lines, 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#") or not _KVM_PIO.search(line):
            continue        # blank, header, comment or another event
        m = _PAYLOAD.search(line)
        if not m:
            malformed += 1
            first_bad = first_bad or f"{no}: {stripped[:200]}"
            continue
        key = (WRITE if m["dir"] == "write" else READ, int(m["port"], 16))
        counts[key] += Counts(1, int(m["size"]) * int(m["count"]))
        t = _TIME.search(line[:m.start()])
        if t:
            ts = float(t.group(1))
            first_t = ts if first_t is None else first_t
            last_t = ts
    duration = last_t - first_t if first_t is not None else 0.0
    return PerfParse(Snapshot(dict(counts)), duration, malformed, first_bad)
