"""Compare two results (A and B) per (space, direction, address) (pure).

Port I/O only, the output is as it always was. With MMIO in either result,
the table and CSV gain a SPACE column (io or mmio) and name the address
column ADDRESS; JSON rows always carry "space", and "port" or "gpa"."""

import csv
import io
import json
from dataclasses import dataclass

from tabulate import tabulate

from ..core.keys import IO, MMIO, READ, space
from ..core.snapshot import Counts


@dataclass(frozen=True)
class Diff:
    direction: str
    port: int               # the address: a port, or a Gpa
    device: object
    events_a: int
    events_b: int

    @property
    def space(self):
        return space(self.port)

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
                             r.space != IO, r.direction != READ, r.port))
    return Comparison(rows, a.dropped, b.dropped)


def _pct(row):
    if row.diff_pct is None:
        return "-"
    return f"{row.diff_pct:+.2f}" if row.diff else "0"


def _side(name, dropped):
    return f"{name} ({dropped} events dropped: the kernel map was full)" if dropped else name


def _has_mmio(c):
    return any(r.space == MMIO for r in c.rows)


def _address(r):
    return f"{r.port:#06x}" if r.space == IO else f"{r.port:#010x}"


def table(c, name_a, name_b, top=None):
    """The rows (the first `top` of them), then a verdict over all of them."""
    differ = sum(1 for r in c.rows if r.diff)
    mmio = _has_mmio(c)
    keys = "(space, direction, address)" if mmio else "(direction, port)"
    if not c.rows:
        verdict = "no kvm_pio or kvm_mmio events in either result"
    elif differ:
        verdict = f"{differ} of {len(c.rows)} {keys} counts differ"
    else:
        verdict = f"all {len(c.rows)} {keys} counts are equal"
    short = " and ".join(side for side, n in (("A", c.dropped_a), ("B", c.dropped_b)) if n)
    if short:
        verdict += f", but {short} dropped events: not equal"
    out = ""
    if c.rows:
        body = [([r.space] if mmio else []) + [
                    r.direction, _address(r), r.device or "-", r.events_a, r.events_b,
                    f"{r.diff:+d}" if r.diff else "0", _pct(r)] for r in c.rows[:top]]
        head = ["SPACE", "DIR", "ADDRESS"] if mmio else ["DIR", "PORT"]
        out = tabulate(body, head + ["DEVICE", "A", "B", "B-A", "%"],
                       tablefmt="simple", disable_numparse=True,
                       colalign=("left",) * (len(head) + 1) + ("right",) * 4) + "\n\n"
    return (f"{out}A: {_side(name_a, c.dropped_a)}\nB: {_side(name_b, c.dropped_b)}\n"
            f"{verdict}\n")


def to_json(c, name_a, name_b, top=None):
    return json.dumps({
        "a": name_a, "b": name_b, "dropped_a": c.dropped_a, "dropped_b": c.dropped_b,
        "equal": c.equal,
        "rows": [{"space": r.space, "direction": r.direction,
                  ("port" if r.space == IO else "gpa"): int(r.port), "device": r.device,
                  "events_a": r.events_a, "events_b": r.events_b, "diff": r.diff,
                  "diff_pct": r.diff_pct} for r in c.rows[:top]],
    }, separators=(",", ":")) + "\n"


def csv_text(c, name_a, name_b, top=None):
    """Rows only: dropped events are on stderr (as when tracing)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    mmio = _has_mmio(c)
    head = ["space", "direction", "address"] if mmio else ["direction", "port"]
    w.writerow(head + ["device", "events_a", "events_b", "diff"])
    for r in c.rows[:top]:
        w.writerow(([r.space] if mmio else []) + [r.direction, f"{r.port:#x}", r.device or "",
                                                  r.events_a, r.events_b, r.diff])
    return buf.getvalue()


RENDER = {"table": table, "json": to_json, "csv": csv_text}
