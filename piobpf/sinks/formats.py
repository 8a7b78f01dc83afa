"""Output formats for a Report: table, json, csv, seed (pure)."""

import csv
import io
import json
from collections import Counter

from tabulate import tabulate

from ..core.keys import IO, MMIO, MODES, READ
from ..naming.devices import HOST_IOPORTS, IOPORTS_FILE, VMM
from ..naming.mmiomap import PC_FIXED

FORMATS = ("table", "json", "csv", "seed")
CSV_FIELDS = ["direction", "port", "device", "device_source", "events", "bytes"]
# With --mmio (or MMIO rows): the space first, and a port's or a gpa's cell.
CSV_MMIO_FIELDS = ["space", "direction", "port", "gpa"] + CSV_FIELDS[2:]
# With --latency; hist_ns is "LOW:COUNT ..." for each filled log2 bucket.
CSV_TIME_FIELDS = ["time_ns", "windows", "avg_ns", "max_ns", "hist_ns"]


# Where DEVICE came from, for the table's footnote; marks for rows not named
# by their VM's own map, when a table mixes sources.
SOURCES = {VMM: ("", "the VM's own device model (QEMU monitor)"),
           IOPORTS_FILE: ("+", "the --ioports file"),
           HOST_IOPORTS: ("*", "the host's /proc/ioports"),
           PC_FIXED: ("#", "the PC's fixed MMIO addresses")}
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


def address(row):
    """A row's port (0x03fd) or guest-physical address (0xfebc0000), in hex."""
    return f"{row.port:#010x}" if row.space == MMIO else f"{row.port:#06x}"


def dropped_text(report):
    """How many events were dropped, and (with --mmio) from which map."""
    drops = report.drops or {}
    if not drops:
        return f"{report.dropped_events} dropped (map full)"
    return (f"{report.dropped_events} dropped (map full: {drops.get('map_full', 0)} port I/O, "
            f"{drops.get('mmio_map_full', 0)} MMIO)")


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
    headers = list(MODES[report.by].columns)
    cells, last = [], []
    for r in report.rows:
        group = [label(r) for label in (vm_label, vcpu_label)[:len(headers)]]
        cells.append([c if group[:j + 1] != last[:j + 1] else ""
                      for j, c in enumerate(group)])
        last = group
    return headers, cells


def duration(ns):
    """A time for the eye: 850ns, 12.3us, 4.56ms, 1.23s."""
    for unit, scale in (("s", 10**9), ("ms", 10**6), ("us", 10**3)):
        if ns >= scale:
            value = ns / scale
            return f"{value:.3g}{unit}" if value < 100 else f"{value:.0f}{unit}"
    return f"{ns}ns"


def avg_ns(times):
    return times.time_ns // times.windows if times.windows else None


def hist_buckets(hist):
    """(low_ns, high_ns, count) of each filled log2 slot, as BCC's print_log2_hist."""
    return [((1 << i) >> 1, (1 << i) - 1, n) for i, n in enumerate(hist) if n]


def _time_cells(r, total_ns):
    t = r.times
    if not t.windows:
        return ["-", "-", "-", "-"]
    return [duration(t.time_ns), f"{100.0 * t.time_ns / total_ns:.1f}" if total_ns else "0.0",
            duration(avg_ns(t)), duration(t.max_ns)]


def _untimed_line(report):
    untimed = {k: n for k, n in (report.untimed or {}).items() if n}
    return ("exits not timed: " + ", ".join(f"{n} {k.replace('_', ' ')}"
                                             for k, n in untimed.items()) + "\n") if untimed else ""


def table(report):
    lead, lead_cells = _group_columns(report)
    if report.mmio:
        lead, lead_cells = lead + ["SPACE"], [c + [r.space] for c, r in zip(lead_cells,
                                                                             report.rows)]
    headers = lead + ["DIR", "ADDRESS" if report.mmio else "PORT", "DEVICE", "EVENTS", "%",
                      "EVENTS/s", "BYTES"]
    if report.latency:
        headers += ["TIME", "TIME%", "AVG", "MAX"]
    total, dur = report.total_events, report.duration_s
    devices, footnote = device_column(report)
    body = [cells + [r.direction, address(r), device, r.events,
                     f"{100.0 * r.events / total:.1f}" if total else "0.0",
                     f"{r.events / dur:.1f}" if dur > 0 else "-", r.bytes]
            + (_time_cells(r, report.total_time_ns) if report.latency else [])
            for cells, device, r in zip(lead_cells, devices, report.rows)]
    summary = f"{total} events in {dur:.2f} s ({report.rate:.1f}/s)"
    if report.latency:
        summary += f", {duration(report.total_time_ns)} out of the guests"
    if report.dropped_events:
        summary += f", {dropped_text(report)}"
    if not body:
        return summary + "\n" + _untimed_line(report)
    left = len(lead) + 3
    return tabulate(body, headers, tablefmt="simple", disable_numparse=True,
                    colalign=("left",) * left + ("right",) * (len(headers) - left)
                    ) + f"\n\n{summary}\n{_untimed_line(report)}{footnote}\n"


def _time_fields(t):
    return {"time_ns": t.time_ns, "windows": t.windows, "avg_ns": avg_ns(t),
            "max_ns": t.max_ns if t.windows else None}


def _address_fields(report, r):
    """A row's direction and address; with --mmio (or MMIO rows) its space
    first, and an MMIO row's address as "gpa"."""
    if not report.mmio:
        return {"direction": r.direction, "port": r.port}
    return {"space": r.space, "direction": r.direction,
            ("gpa" if r.space == MMIO else "port"): int(r.port)}


def to_dict(report):
    out = {
        "duration_s": round(report.duration_s, 6),
        "total_events": report.total_events,
        "dropped_events": report.dropped_events,
        **({"dropped": report.drops} if report.drops else {}),
        "rows": [{**_address_fields(report, r), "device": r.device,
                  "device_source": r.device_source, "events": r.events, "bytes": r.bytes,
                  **({**_time_fields(r.times), "hist_ns": [
                      {"low_ns": lo, "high_ns": hi, "count": n}
                      for lo, hi, n in hist_buckets(r.times.hist)]} if report.latency else {}),
                  **{f: getattr(r, f) for f in MODES[report.by].fields}} for r in report.rows],
    }
    if report.latency:
        out["total_time_ns"] = report.total_time_ns
        out["untimed_exits"] = report.untimed
    return out


def json_line(report):
    """One JSON object on one line (JSON Lines when printed per interval)."""
    return json.dumps(to_dict(report), separators=(",", ":")) + "\n"


def csv_text(report, header=True, elapsed=None):
    """CSV rows; with `elapsed` (interval mode) a leading elapsed_s column."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    lead = [] if elapsed is None else ["elapsed_s"]
    extra = MODES[report.by].fields
    times = CSV_TIME_FIELDS if report.latency else []
    if header:
        w.writerow(lead + (CSV_MMIO_FIELDS if report.mmio else CSV_FIELDS) + times + list(extra))
    for r in report.rows:
        at = [] if elapsed is None else [f"{elapsed:.3f}"]
        timed = []
        if report.latency:
            timed = ["" if v is None else v for v in _time_fields(r.times).values()]
            timed.append(" ".join(f"{lo}:{n}" for lo, _, n in hist_buckets(r.times.hist)))
        where = [r.direction, f"{r.port:#x}"]
        if report.mmio:
            where = [r.space, r.direction] + (["", where[1]] if r.space == MMIO
                                               else [where[1], ""])
        w.writerow(at + where + [r.device or "", r.device_source,
                         r.events, r.bytes] + timed
                   + ["" if getattr(r, f) is None else getattr(r, f) for f in extra])
    return buf.getvalue()


def seed_label(direction, port):
    """The seed awk's key: R:/W: and the port as the tracepoint prints it (0x%x)."""
    return f"{'R' if direction == READ else 'W'}:{port:#x}"


def seed(report):
    """The seed's `awk -f pio_calculate.awk | sort -nk 2 -r`, byte for byte.

    sort -r breaks ties on the whole line, reversed (LC_ALL=C order). Rows of
    --by vm|vcpu are summed per port, as the awk has no notion of VMs; MMIO
    rows are left out, as the awk reads kvm_pio lines only."""
    events = Counter()
    for r in report.rows:
        if r.space == IO:
            events[seed_label(r.direction, r.port)] += r.events
    lines = ["%-16.16s %d\n" % item for item in events.items()]
    return "".join(sorted(lines, key=lambda l: (int(l.rsplit(" ", 1)[1]), l.encode()),
                          reverse=True))
