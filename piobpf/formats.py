"""Output formats for a Report: table, json, csv, seed (pure)."""

import csv
import io
import json
from collections import Counter

from tabulate import tabulate

from .snapshot import READ

FORMATS = ("table", "json", "csv", "seed")
CSV_FIELDS = ["direction", "port", "device", "events", "bytes"]
# Fields that --by adds to JSON rows and CSV columns.
BY_FIELDS = {"port": [], "vm": ["pid", "vm"], "vcpu": ["pid", "vm", "tid", "thread", "vcpu"]}


def vm_label(row):
    return f"{row.vm} [{row.pid}]" if row.vm else f"[{row.pid}]"


def vcpu_label(row):
    return f"vCPU {row.vcpu}" if row.vcpu is not None else f"tid {row.tid}"


def _group_columns(report):
    """VM (and VCPU) columns; a cell is blank where it and those left of it
    repeat the row above, so each VM and each vCPU is named once."""
    if report.by == "port":
        return [], [[] for _ in report.rows]
    headers = ["VM"] + (["VCPU"] if report.by == "vcpu" else [])
    cells, last = [], []
    for r in report.rows:
        group = [vm_label(r)] + ([vcpu_label(r)] if report.by == "vcpu" else [])
        cells.append([c if group[:j + 1] != last[:j + 1] else ""
                      for j, c in enumerate(group)])
        last = group
    return headers, cells


def table(report):
    lead, lead_cells = _group_columns(report)
    headers = lead + ["DIR", "PORT", "DEVICE", "EVENTS", "%", "EVENTS/s", "BYTES"]
    total, dur = report.total_events, report.duration_s
    body = [cells + [r.direction, f"{r.port:#06x}", r.device or "-", r.events,
                     f"{100.0 * r.events / total:.1f}" if total else "0.0",
                     f"{r.events / dur:.1f}" if dur > 0 else "-", r.bytes]
            for cells, r in zip(lead_cells, report.rows)]
    summary = f"{total} events in {dur:.2f} s ({report.rate:.1f}/s)"
    if report.dropped_events:
        summary += f", {report.dropped_events} dropped (map full)"
    if not body:
        return summary + "\n"
    return tabulate(body, headers, tablefmt="simple", disable_numparse=True,
                    colalign=("left",) * (len(lead) + 3) + ("right",) * 4
                    ) + "\n\n" + summary + "\n"


def to_dict(report):
    return {
        "duration_s": round(report.duration_s, 6),
        "total_events": report.total_events,
        "dropped_events": report.dropped_events,
        "rows": [{"direction": r.direction, "port": r.port, "device": r.device,
                  "events": r.events, "bytes": r.bytes,
                  **{f: getattr(r, f) for f in BY_FIELDS[report.by]}} for r in report.rows],
    }


def json_line(report):
    """One JSON object on one line (JSON Lines when printed per interval)."""
    return json.dumps(to_dict(report), separators=(",", ":")) + "\n"


def csv_text(report, header=True, elapsed=None):
    """CSV rows; with `elapsed` (interval mode) a leading elapsed_s column."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    lead = [] if elapsed is None else ["elapsed_s"]
    extra = BY_FIELDS[report.by]
    if header:
        w.writerow(lead + CSV_FIELDS + extra)
    for r in report.rows:
        at = [] if elapsed is None else [f"{elapsed:.3f}"]
        w.writerow(at + [r.direction, f"{r.port:#x}", r.device or "", r.events, r.bytes]
                   + ["" if getattr(r, f) is None else getattr(r, f) for f in extra])
    return buf.getvalue()


def seed_label(direction, port):
    """The seed awk's key: R:/W: and the port as the tracepoint prints it (0x%x)."""
    return f"{'R' if direction == READ else 'W'}:{port:#x}"


def seed(report):
    """The seed's `awk -f pio_calculate.awk | sort -nk 2 -r`, byte for byte.

    sort -r breaks ties on the whole line, reversed (LC_ALL=C order). Rows of
    --by vm|vcpu are summed per port, as the awk has no notion of VMs."""
    events = Counter()
    for r in report.rows:
        events[seed_label(r.direction, r.port)] += r.events
    lines = ["%-16.16s %d\n" % item for item in events.items()]
    return "".join(sorted(lines, key=lambda l: (int(l.rsplit(" ", 1)[1]), l.encode()),
                          reverse=True))
