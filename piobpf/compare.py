"""Compare two results (A and B) per (direction, port) (pure)."""

import csv
import io
import json
from dataclasses import dataclass

from tabulate import tabulate

from .snapshot import READ, Counts


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


def compare(a, b, name_of=lambda port: None):
    """Rows for every key in A or B: differing rows first (largest first), then by events."""
    rows = []
    for key in set(a.counts) | set(b.counts):
        ea = a.counts.get(key, Counts()).events
        eb = b.counts.get(key, Counts()).events
        rows.append(Diff(key[0], key[1], name_of(key[1]), ea, eb))
    rows.sort(key=lambda r: (r.diff == 0, -abs(r.diff), -max(r.events_a, r.events_b),
                             r.direction != READ, r.port))
    return rows


def _pct(row):
    if row.diff_pct is None:
        return "-"
    return f"{row.diff_pct:+.2f}" if row.diff else "0"


def table(rows, name_a, name_b, top=None):
    """The rows (the first `top` of them), then a verdict over all of them."""
    if not rows:
        return "no kvm_pio events in either result\n"
    body = [[r.direction, f"{r.port:#06x}", r.device or "-", r.events_a, r.events_b,
             f"{r.diff:+d}" if r.diff else "0", _pct(r)] for r in rows[:top]]
    differ = sum(1 for r in rows if r.diff)
    out = tabulate(body, ["DIR", "PORT", "DEVICE", "A", "B", "B-A", "%"], tablefmt="simple",
                   disable_numparse=True,
                   colalign=("left", "left", "left", "right", "right", "right", "right"))
    verdict = (f"{differ} of {len(rows)} (direction, port) counts differ" if differ
               else f"all {len(rows)} (direction, port) counts are equal")
    return f"{out}\n\nA: {name_a}\nB: {name_b}\n{verdict}\n"


def to_json(rows, name_a, name_b, top=None):
    return json.dumps({
        "a": name_a, "b": name_b, "equal": not any(r.diff for r in rows),
        "rows": [{"direction": r.direction, "port": r.port, "device": r.device,
                  "events_a": r.events_a, "events_b": r.events_b, "diff": r.diff,
                  "diff_pct": r.diff_pct} for r in rows[:top]],
    }, separators=(",", ":")) + "\n"


def csv_text(rows, name_a, name_b, top=None):
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["direction", "port", "device", "events_a", "events_b", "diff"])
    for r in rows[:top]:
        w.writerow([r.direction, f"{r.port:#x}", r.device or "", r.events_a, r.events_b, r.diff])
    return buf.getvalue()


RENDER = {"table": table, "json": to_json, "csv": csv_text}
