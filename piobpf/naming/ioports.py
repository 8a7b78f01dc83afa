"""Name the owner of an I/O port from /proc/ioports (pure: no kernel access).

/proc/ioports nests ranges by indentation, two spaces a level:

    0000-0cf7 : PCI Bus 0000:00
      03f8-03ff : serial

The deepest range that holds a port names it: 0x3fd is `serial`, not the PCI
bus. Without CAP_SYS_ADMIN the kernel prints every range as 0000-0000, which
names nothing; `all_zero` tells the caller so it can say why.
"""

import re
from dataclasses import dataclass

PROC_IOPORTS = "/proc/ioports"
MAX_BYTES = 1 << 20     # /proc/ioports is a few KB; never read /dev/zero to the end

_LINE = re.compile(r"^(?P<indent> *)(?P<start>[0-9a-fA-F]+)-(?P<end>[0-9a-fA-F]+) : (?P<name>.*)$")


@dataclass(frozen=True)
class Range:
    start: int
    end: int
    name: str
    depth: int


class IoPorts:
    def __init__(self, ranges, malformed=0):
        self.ranges = list(ranges)
        self.malformed = malformed
        # Printed ranges may be all zeros (unprivileged reader): names nothing.
        self.all_zero = bool(self.ranges) and all(r.start == r.end == 0 for r in self.ranges)
        self._cache = {}

    def lookup(self, port):
        """The deepest range's name for `port`, or None."""
        if port not in self._cache:
            best = None
            if not self.all_zero:
                for r in self.ranges:
                    if r.start <= port <= r.end and (best is None or r.depth > best.depth):
                        best = r
            self._cache[port] = best.name if best else None
        return self._cache[port]


def parse(text):
    """Parse ioports text; lines that do not fit the format are counted."""
    ranges, malformed = [], 0
    for line in text.splitlines():
        if not line.strip():
            continue
        m = _LINE.match(line.rstrip())
        if not m:
            malformed += 1
            continue
        ranges.append(Range(int(m["start"], 16), int(m["end"], 16),
                            m["name"].strip(), len(m["indent"]) // 2))
    return IoPorts(ranges, malformed)


def load(path=PROC_IOPORTS):
    """Read and parse an ioports file; OSError propagates to the caller, and
    ValueError says when it is too large to be one."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read(MAX_BYTES + 1)
    if len(text) > MAX_BYTES:
        raise ValueError(f"larger than {MAX_BYTES >> 20} MiB: not an ioports file")
    return parse(text)
