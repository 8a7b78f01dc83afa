"""Turn a snapshot into sorted rows with device names (pure)."""

from dataclasses import dataclass

from .snapshot import READ


@dataclass(frozen=True)
class Row:
    direction: str
    port: int
    device: object      # str, or None when no ioports range names the port
    events: int
    bytes: int


@dataclass(frozen=True)
class Report:
    duration_s: float
    total_events: int   # over all rows, also those cut by `top`
    dropped_events: int
    rows: tuple

    @property
    def rate(self):
        return self.total_events / self.duration_s if self.duration_s > 0 else 0.0


def make_report(snapshot, duration_s, name_of=lambda port: None, top=None):
    """Rows sorted by events, most first; ties by direction, then port."""
    rows = sorted((Row(d, p, name_of(p), c.events, c.bytes)
                   for (d, p), c in snapshot.counts.items()),
                  key=lambda r: (-r.events, r.direction != READ, r.port))
    return Report(duration_s, snapshot.total_events, snapshot.dropped,
                  tuple(rows[:top] if top else rows))
