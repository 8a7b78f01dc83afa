"""Output formats for a Report: table, json, csv, seed (pure)."""

import csv
import io
import json

from tabulate import tabulate

from .snapshot import READ

FORMATS = ("table", "json", "csv", "seed")
CSV_FIELDS = ["direction", "port", "device", "events", "bytes"]


def table(report):
    headers = ["DIR", "PORT", "DEVICE", "EVENTS", "%", "EVENTS/s", "BYTES"]
    total, dur = report.total_events, report.duration_s
    body = [[r.direction, f"{r.port:#06x}", r.device or "-", r.events,
             f"{100.0 * r.events / total:.1f}" if total else "0.0",
             f"{r.events / dur:.1f}" if dur > 0 else "-", r.bytes]
            for r in report.rows]
    summary = f"{total} events in {dur:.2f} s ({report.rate:.1f}/s)"
    if report.dropped_events:
        summary += f", {report.dropped_events} dropped (map full)"
    if not body:
        return summary + "\n"
    return tabulate(body, headers, tablefmt="simple", disable_numparse=True,
                    colalign=("left", "left", "left", "right", "right", "right", "right")
                    ) + "\n\n" + summary + "\n"


def to_dict(report):
    return {
        "duration_s": round(report.duration_s, 6),
        "total_events": report.total_events,
        "dropped_events": report.dropped_events,
        "rows": [{"direction": r.direction, "port": r.port, "device": r.device,
                  "events": r.events, "bytes": r.bytes} for r in report.rows],
    }


def json_line(report):
    """One JSON object on one line (JSON Lines when printed per interval)."""
    return json.dumps(to_dict(report), separators=(",", ":")) + "\n"


def csv_text(report, header=True, elapsed=None):
    """CSV rows; with `elapsed` (interval mode) a leading elapsed_s column."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    lead = [] if elapsed is None else ["elapsed_s"]
    if header:
        w.writerow(lead + CSV_FIELDS)
    for r in report.rows:
        at = [] if elapsed is None else [f"{elapsed:.3f}"]
        w.writerow(at + [r.direction, f"{r.port:#x}", r.device or "", r.events, r.bytes])
    return buf.getvalue()


def seed_label(direction, port):
    """The seed awk's key: R:/W: and the port as the tracepoint prints it (0x%x)."""
    return f"{'R' if direction == READ else 'W'}:{port:#x}"


def seed(report):
    """The seed's `awk -f pio_calculate.awk | sort -nk 2 -r`, byte for byte.

    sort -r breaks ties on the whole line, reversed (LC_ALL=C order)."""
    lines = ["%-16.16s %d\n" % (seed_label(r.direction, r.port), r.events)
             for r in report.rows]
    return "".join(sorted(lines, key=lambda l: (int(l.rsplit(" ", 1)[1]), l.encode()),
                          reverse=True))
