"""Cumulative counts and the deltas between two reads (pure arithmetic).

The kernel map only ever grows, so an interval's counts are the difference
of two snapshots: whatever arrives while one read is under way shows up in
this interval or the next, and the intervals add up to the whole run.
"""

from dataclasses import dataclass, field
from typing import NamedTuple

READ, WRITE = "read", "write"


class Counts(NamedTuple):
    """A tuple, so that building one per map entry is cheap (131072 a read)."""
    events: int = 0
    bytes: int = 0

    def __add__(self, other):
        return Counts(self.events + other.events, self.bytes + other.bytes)

    def __sub__(self, other):
        return Counts(self.events - other.events, self.bytes - other.bytes)


@dataclass(frozen=True)
class Snapshot:
    """Counts per key (a (direction, port) tuple), plus dropped events."""
    counts: dict = field(default_factory=dict)
    dropped: int = 0

    @property
    def total_events(self):
        return sum(c.events for c in self.counts.values())

    def __sub__(self, earlier):
        """The interval from `earlier` to this snapshot; keys with no events drop out."""
        diff = {}
        for key, now in self.counts.items():
            d = now - earlier.counts.get(key, Counts())
            if d.events or d.bytes:
                diff[key] = d
        return Snapshot(diff, self.dropped - earlier.dropped)

    def __add__(self, later):
        """This snapshot plus the interval after it: the snapshot at its end."""
        counts = dict(self.counts)
        for key, c in later.counts.items():
            counts[key] = counts.get(key, Counts()) + c
        return Snapshot(counts, self.dropped + later.dropped)
