"""Output formats for a Report: table, json, csv, seed (pure)."""

import csv
import io
import json
from collections import Counter

from tabulate import tabulate

from .devices import HOST_IOPORTS, IOPORTS_FILE, VMM
from .snapshot import READ

FORMATS = ("table", "json", "csv", "seed")
CSV_FIELDS = ["direction", "port", "device", "device_source", "events", "bytes"]
# Fields that --by adds to JSON rows and CSV columns.
BY_FIELDS = {"port": [], "vm": ["pid", "vm"], "vcpu": ["pid", "vm", "tid", "thread", "vcpu"]}


# Where DEVICE came from, for the table's footnote; marks for rows not named
# by their VM's own map, when a table mixes sources.
SOURCES = {VMM: ("", "the VM's own device model (QEMU monitor)"),
           IOPORTS_FILE: ("+", "the --ioports file"),
           HOST_IOPORTS: ("*", "the host's /proc/ioports")}
_CONTROL = dict.fromkeys(list(range(32)) + [127])


def printable(text):
    """Control characters (a newline or an escape sequence in a VM's name)
    shown as escapes, so a name can neither break rows nor drive the terminal."""
    if not any(ord(ch) in _CONTROL for ch in text):
        return text
    return "".join(ch.encode("unicode_escape").decode() if ord(ch) in _CONTROL else ch
                   for ch in text)


def vm_label(row):
    return f"{printable(row.vm)} [{row.pid}]" if row.vm else f"[{row.pid}]"


def vcpu_label(row):
    return f"vCPU {row.vcpu}" if row.vcpu is not None else f"tid {row.tid}"


def device_column(report):
    """DEVICE cells and the footnote saying where the names came from."""
    used = [src for src in SOURCES if any(r.device_source == src for r in report.rows)]
    mixed = len(used) > 1
    cells = [printable(r.device or "-") + (SOURCES[r.device_source][0] if mixed else "")
             for r in report.rows]
    said = [(f"{SOURCES[src][0]} " if mixed and SOURCES[src][0] else "") + SOURCES[src][1]
            for src in used]
    return cells, ("DEVICE from " + "; ".join(said)) if said else ""


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
    devices, footnote = device_column(report)
    body = [cells + [r.direction, f"{r.port:#06x}", device, r.events,
                     f"{100.0 * r.events / total:.1f}" if total else "0.0",
                     f"{r.events / dur:.1f}" if dur > 0 else "-", r.bytes]
            for cells, device, r in zip(lead_cells, devices, report.rows)]
    summary = f"{total} events in {dur:.2f} s ({report.rate:.1f}/s)"
    if report.dropped_events:
        summary += f", {report.dropped_events} dropped (map full)"
    if not body:
        return summary + "\n"
    return tabulate(body, headers, tablefmt="simple", disable_numparse=True,
                    colalign=("left",) * (len(lead) + 3) + ("right",) * 4
                    ) + f"\n\n{summary}\n{footnote}\n"


def to_dict(report):
    return {
        "duration_s": round(report.duration_s, 6),
        "total_events": report.total_events,
        "dropped_events": report.dropped_events,
        "rows": [{"direction": r.direction, "port": r.port, "device": r.device,
                  "device_source": r.device_source, "events": r.events, "bytes": r.bytes,
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
        w.writerow(at + [r.direction, f"{r.port:#x}", r.device or "", r.device_source,
                         r.events, r.bytes]
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
