"""Cumulative counts and the deltas between two reads (pure arithmetic).

The kernel map only ever grows, so an interval's counts are the difference
of two snapshots: whatever arrives while one read is under way shows up in
this interval or the next, and the intervals add up to the whole run.
"""

from dataclasses import dataclass, field
from typing import NamedTuple


class Counts(NamedTuple):
    """A tuple, so that building one per map entry is cheap (131072 a read)."""
    events: int = 0
    bytes: int = 0

    def __add__(self, other):
        return Counts(self.events + other.events, self.bytes + other.bytes)

    def __sub__(self, other):
        return Counts(self.events - other.events, self.bytes - other.bytes)


class Times(NamedTuple):
    """With --latency: the exits of a key timed so far, their total and
    longest, and a log2 histogram (slot i: [2^(i-1), 2^i) ns, as BCC's)."""
    windows: int = 0
    time_ns: int = 0
    max_ns: int = 0
    hist: tuple = ()

    def __add__(self, other):
        hist = tuple(a + b for a, b in zip(self.hist, other.hist)) if self.hist else other.hist
        return Times(self.windows + other.windows, self.time_ns + other.time_ns,
                     max(self.max_ns, other.max_ns), hist)

    def __sub__(self, other):
        """The windows since `other`; max_ns stays the longest since the start
        (a maximum cannot be taken apart)."""
        hist = tuple(a - b for a, b in zip(self.hist, other.hist)) if other.hist else self.hist
        return Times(self.windows - other.windows, self.time_ns - other.time_ns,
                     self.max_ns, hist)


@dataclass(frozen=True)
class Snapshot:
    """Counts per key (a keys.Key), plus dropped events; with --latency,
    Times per key and what the kernel could not time (`untimed`: reason ->
    exits, as kernel.program.UNTIMED names them, and open_at_end); with
    --mmio the dropped events by reason (`drops`, as kernel.program.DROPPED
    names them)."""
    counts: dict = field(default_factory=dict)
    dropped: int = 0
    times: dict = field(default_factory=dict)
    untimed: dict = field(default_factory=dict)
    drops: dict = field(default_factory=dict)

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
        times = {}
        for key, now in self.times.items():
            d = now - earlier.times.get(key, Times())
            if d.windows:
                times[key] = d
        untimed = {k: n - earlier.untimed.get(k, 0) for k, n in self.untimed.items()}
        drops = {k: n - earlier.drops.get(k, 0) for k, n in self.drops.items()}
        return Snapshot(diff, self.dropped - earlier.dropped, times, untimed, drops)

    def __add__(self, later):
        """This snapshot plus the interval after it: the snapshot at its end."""
        counts, times = dict(self.counts), dict(self.times)
        for key, c in later.counts.items():
            counts[key] = counts.get(key, Counts()) + c
        for key, t in later.times.items():
            times[key] = times.get(key, Times()) + t
        # In the order the reasons came (dicts keep it; sets would not).
        untimed, drops = (
            {k: mine.get(k, 0) + theirs.get(k, 0) for k in {**mine, **theirs}}
            for mine, theirs in ((self.untimed, later.untimed), (self.drops, later.drops)))
        return Snapshot(counts, self.dropped + later.dropped, times, untimed, drops)
