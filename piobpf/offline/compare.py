"""Compare two results (A and B) per (direction, port) (pure)."""

import csv
import io
import json
from dataclasses import dataclass

from tabulate import tabulate

from ..core.keys import READ
from ..core.snapshot import Counts


@dataclass(frozen=True)
class Diff:
    direction: str
    port: int
    device: object
    events_a: int
    events_b: int

    @property
    def diff(self):
        return self.events_b - self.events_a

    @property
    def diff_pct(self):
        """B against A in per cent; None where A has none."""
        return 100.0 * self.diff / self.events_a if self.events_a else None


@dataclass(frozen=True)
class Comparison:
    rows: list
    dropped_a: int = 0      # events a side's kernel map had no room for
    dropped_b: int = 0

    @property
    def equal(self):
        """Every count equal, and none short: events dropped on either side are in
        no row, so what was counted differs whatever the rows say."""
        return not (self.dropped_a or self.dropped_b or any(r.diff for r in self.rows))


def compare(a, b, name_of=lambda port: None):
    """Rows for every key in A or B: differing rows first (largest first), then by events."""
    rows = []
    for key in set(a.counts) | set(b.counts):
        ea = a.counts.get(key, Counts()).events
        eb = b.counts.get(key, Counts()).events
        rows.append(Diff(key.direction, key.port, name_of(key.port), ea, eb))
    rows.sort(key=lambda r: (r.diff == 0, -abs(r.diff), -max(r.events_a, r.events_b),
                             r.direction != READ, r.port))
    return Comparison(rows, a.dropped, b.dropped)


def _pct(row):
    if row.diff_pct is None:
        return "-"
    return f"{row.diff_pct:+.2f}" if row.diff else "0"


def _side(name, dropped):
    return f"{name} ({dropped} events dropped: the kernel map was full)" if dropped else name


def table(c, name_a, name_b, top=None):
    """The rows (the first `top` of them), then a verdict over all of them."""
    differ = sum(1 for r in c.rows if r.diff)
    if not c.rows:
        verdict = "no kvm_pio events in either result"
    elif differ:
        verdict = f"{differ} of {len(c.rows)} (direction, port) counts differ"
    else:
        verdict = f"all {len(c.rows)} (direction, port) counts are equal"
    short = " and ".join(side for side, n in (("A", c.dropped_a), ("B", c.dropped_b)) if n)
    if short:
        verdict += f", but {short} dropped events: not equal"
    out = ""
    if c.rows:
        body = [[r.direction, f"{r.port:#06x}", r.device or "-", r.events_a, r.events_b,
                 f"{r.diff:+d}" if r.diff else "0", _pct(r)] for r in c.rows[:top]]
        out = tabulate(body, ["DIR", "PORT", "DEVICE", "A", "B", "B-A", "%"],
                       tablefmt="simple", disable_numparse=True,
                       colalign=("left", "left", "left", "right", "right", "right", "right")
                       ) + "\n\n"
    return (f"{out}A: {_side(name_a, c.dropped_a)}\nB: {_side(name_b, c.dropped_b)}\n"
            f"{verdict}\n")


def to_json(c, name_a, name_b, top=None):
    return json.dumps({
        "a": name_a, "b": name_b, "dropped_a": c.dropped_a, "dropped_b": c.dropped_b,
        "equal": c.equal,
        "rows": [{"direction": r.direction, "port": r.port, "device": r.device,
                  "events_a": r.events_a, "events_b": r.events_b, "diff": r.diff,
                  "diff_pct": r.diff_pct} for r in c.rows[:top]],
    }, separators=(",", ":")) + "\n"


def csv_text(c, name_a, name_b, top=None):
    """Rows only: dropped events are on stderr (as when tracing)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["direction", "port", "device", "events_a", "events_b", "diff"])
    for r in c.rows[:top]:
        w.writerow([r.direction, f"{r.port:#x}", r.device or "", r.events_a, r.events_b, r.diff])
    return buf.getvalue()


RENDER = {"table": table, "json": to_json, "csv": csv_text}
