"""Output byte for byte: every format of every mode, and the Prometheus text,
against files in tests/golden/ made before the code was restructured.

A restructuring must not change a byte of what users parse. To accept an
intended change of output, rewrite the files (PIOBPF_GOLDEN=write) and
review the diff."""

import os

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from helpers import REPO, fixed_naming, run_piobpf
from piobpf.core.keys import Gpa, Key, Proc
from piobpf.core.snapshot import Counts, Snapshot, Times
from piobpf.naming import vms
from piobpf.rows.report import make_report
from piobpf.sinks import exporter, formats

GOLDEN = REPO / "tests" / "golden"
PERF = str(REPO / "tests" / "fixtures" / "perf-default.txt")
MMIO_PERF = str(REPO / "tests" / "fixtures" / "mmio-perf-F-trace.txt")    # --mmio's from here
P1, P2 = Proc(101, 7), Proc(202, 9)
HIST = tuple([0] * 12 + [3, 5, 0, 1] + [0] * 19)


def check(name, text):
    path = GOLDEN / name
    if os.environ.get("PIOBPF_GOLDEN") == "write":
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
    assert text == path.read_text(), name


@pytest.mark.parametrize("fmt", formats.FORMATS)
@pytest.mark.parametrize("perf,name", [(PERF, "from-perf"), (MMIO_PERF, "from-perf-mmio")])
def test_from_perf_cli(fmt, perf, name, tmp_path):
    ioports = tmp_path / "ioports"
    ioports.write_text("0020-0021 : pic1\n0060-0060 : keyboard\n0070-0071 : rtc0\n"
                       "03f8-03ff : serial\n")
    out = run_piobpf("--from-perf", perf, "--format", fmt, "--ioports", str(ioports))
    assert out.returncode == 0, out.stderr
    check(f"{name}.{fmt}", out.stdout)


def naming_of(by, tmp_path):
    """Naming with VMs `one` and `two` in a fake /proc, vCPU threads named as QEMU's."""
    for p, name in ((P1, "one"), (P2, "two")):
        d = tmp_path / str(p.pid)
        d.mkdir()
        (d / "comm").write_text("qemu\n")
        (d / "cmdline").write_bytes(b"qemu\0-name\0" + name.encode() + b"\0")
        (d / "stat").write_text(f"{p.pid} (qemu) S" + " 0" * 18 + f" {p.start}\n")
    comms = {(P1, 11): "CPU 0/KVM", (P1, 12): "CPU 1/KVM", (P2, 21): "worker"}
    labeler = vms.Labeler(by, comms, proc=str(tmp_path)) if by != "port" else None
    return fixed_naming({0x3fd: "serial", 0x70: "rtc0", 0x71: "rtc0"}, by, labeler)


def snapshot(by, latency, mmio=False):
    base = [("read", 0x3fd, 900, 900, P1, 11), ("write", 0x70, 40, 40, P1, 12),
            ("read", 0x71, 40, 40, P2, 21), ("write", 0xcfc, 7, 28, P2, 21)]
    width = {"port": 2, "vm": 3, "vcpu": 4}[by]
    counts, times = {}, {}
    for d, port, events, nbytes, proc, tid in base:
        key = Key(*(d, port, proc, tid)[:width])
        counts[key] = counts.get(key, Counts()) + Counts(events, nbytes)
        if latency and port != 0xcfc:
            times[key] = Times(9, 9 * 4500 + port, 9000 + port, HIST)
    if mmio:
        for d, gpa, events, nbytes, proc, tid in (
                ("read", 0xfed000f0, 500, 2000, P1, 11), ("write", 0xfebd00d8, 20, 80, P2, 21),
                ("write", 0x3fd, 6, 6, P1, 12)):   # a gpa of a port's number: its own row
            key = Key(*(d, Gpa(gpa), proc, tid)[:width])
            counts[key] = Counts(events, nbytes)
            if latency:
                times[key] = Times(4, 4 * 9000 + gpa % 100, 12000, HIST)
    untimed = {"too_long": 1, "no_room": 0, "open_at_start": 2, "open_at_end": 0}
    drops = {"map_full": 1, "mmio_map_full": 2} if mmio else {}
    return Snapshot(counts, 3, times, untimed if latency else {}, drops)


MODES = [(by, latency) for by in ("port", "vm", "vcpu") for latency in (False, True)]


@pytest.mark.parametrize("mmio", [False, True])
@pytest.mark.parametrize("by,latency", MODES)
def test_formats(by, latency, mmio, tmp_path):
    naming = naming_of(by, tmp_path)
    sort = "time" if latency else "events"
    report = make_report(snapshot(by, latency, mmio), 2.5, naming, None, by, sort, latency,
                         mmio)
    tag = f"{by}{'-latency' if latency else ''}{'-mmio' if mmio else ''}"
    check(f"{tag}.table", formats.table(report))
    check(f"{tag}.json", formats.json_line(report))
    check(f"{tag}.csv", formats.csv_text(report) + formats.csv_text(report, False, 1.25))
    check(f"{tag}.seed", formats.seed(report))


class Fixed:
    def __init__(self, fams):
        self.fams = fams

    def collect(self):
        return self.fams


@pytest.mark.parametrize("mmio", [False, True])
@pytest.mark.parametrize("by,latency", MODES)
def test_prometheus_text(by, latency, mmio, tmp_path):
    naming = naming_of(by, tmp_path)
    registry = CollectorRegistry()
    registry.register(Fixed(exporter.families(snapshot(by, latency, mmio), naming, 4096, by, 3,
                                              latency, (2, 16384) if mmio else None)))
    check(f"{by}{'-latency' if latency else ''}{'-mmio' if mmio else ''}.prom",
          generate_latest(registry).decode())
