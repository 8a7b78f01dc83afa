import csv
import io
import json

from helpers import awk_pipeline, fixed_naming
from piobpf.core.keys import Key
from piobpf.core.snapshot import Counts, Snapshot
from piobpf.rows.report import make_report
from piobpf.sinks import formats

SNAP = Snapshot({Key("read", 0x3fd): Counts(9994, 9994), Key("read", 0x3fb): Counts(4, 4),
                 Key("write", 0x20): Counts(1, 1), Key("write", 0x21): Counts(1, 1),
                 Key("read", 0x60): Counts(4, 64)}, dropped=0)
NAMES = fixed_naming({0x3fd: "serial", 0x3fb: "serial", 0x20: "pic1", 0x21: "pic1"})


def report(top=None, duration=2.0):
    return make_report(SNAP, duration, NAMES, top)


def test_rows_sorted_by_events_then_direction_and_port():
    rows = report().rows
    assert [(r.direction, r.port) for r in rows] == [
        ("read", 0x3fd), ("read", 0x60), ("read", 0x3fb), ("write", 0x20), ("write", 0x21)]
    assert rows[1].device is None


def test_top_cuts_rows_not_totals():
    r = report(top=2)
    assert len(r.rows) == 2 and r.total_events == 10004


H = "host-ioports"


def test_json_object():
    obj = json.loads(formats.json_line(report()))
    assert obj == {"duration_s": 2.0, "total_events": 10004, "dropped_events": 0, "rows": [
        {"direction": "read", "port": 1021, "device": "serial", "device_source": H, "events": 9994, "bytes": 9994},
        {"direction": "read", "port": 96, "device": None, "device_source": H, "events": 4,
         "bytes": 64},
        {"direction": "read", "port": 1019, "device": "serial", "device_source": H, "events": 4,
         "bytes": 4},
        {"direction": "write", "port": 32, "device": "pic1", "device_source": H, "events": 1,
         "bytes": 1},
        {"direction": "write", "port": 33, "device": "pic1", "device_source": H, "events": 1,
         "bytes": 1}]}
    assert formats.json_line(report()).count("\n") == 1


def test_csv():
    rows = list(csv.reader(io.StringIO(formats.csv_text(report()))))
    assert rows[0] == formats.CSV_FIELDS
    assert rows[1] == ["read", "0x3fd", "serial", H, "9994", "9994"]
    assert rows[2] == ["read", "0x60", "", H, "4", "64"]
    assert len(rows) == 6
    tail = list(csv.reader(io.StringIO(formats.csv_text(report(), header=False, elapsed=1.5))))
    assert tail[0] == ["1.500", "read", "0x3fd", "serial", H, "9994", "9994"]


def test_table_columns_percent_and_rate():
    text = formats.table(report())
    lines = text.splitlines()
    assert lines[0].split() == ["DIR", "PORT", "DEVICE", "EVENTS", "%", "EVENTS/s", "BYTES"]
    assert lines[2].split() == ["read", "0x03fd", "serial", "9994", "99.9", "4997.0", "9994"]
    assert lines[3].split()[2] == "-"
    assert lines[-2] == "10004 events in 2.00 s (5002.0/s)"
    assert lines[-1] == "DEVICE from the host's /proc/ioports"


def test_table_of_nothing():
    empty = make_report(Snapshot(), 1.0, NAMES)
    assert formats.table(empty) == "0 events in 1.00 s (0.0/s)\n"




def perf_lines():
    """perf script text whose counts are SNAP's (thread names without spaces)."""
    out = []
    for (d, port, _, _), c in SNAP.counts.items():
        for i in range(c.events):
            out.append(f"qemu-system-x86 10042 [000] 313831.{i:06d}: kvm:kvm_pio: "
                       f"pio_{d} at {port:#x} size 1 count 1 val 0x60\n")
    return "".join(out)


def test_seed_is_byte_identical_to_the_awk_pipeline(tmp_path):
    assert formats.seed(report()) == awk_pipeline(perf_lines(), tmp_path)


def test_seed_label_is_cut_at_16_like_awk():
    long = make_report(Snapshot({Key("read", 0xffff): Counts(1, 1)}), 1, NAMES)
    assert formats.seed(long) == "R:0xffff         1\n"
