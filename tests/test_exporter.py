"""--prometheus, the pure part: metric families from fixed snapshots; options."""

import time

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from helpers import fixed_naming
from piobpf.cli.args import parse_args
from piobpf.core.errors import CliError
from piobpf.core.keys import Key, Proc
from piobpf.core.snapshot import Counts, Snapshot
from piobpf.naming import vms
from piobpf.sinks import exporter

NAMES = {0x3fd: "serial", 0x3f8: "serial"}


def samples(fams):
    """{(sample name, labels as sorted tuple): value}"""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in fams for s in f.samples}


def test_port_mode_families():
    snap = Snapshot({Key("read", 0x3fd): Counts(1234, 1234), Key("write", 0x3f8): Counts(56, 112),
                     Key("write", 0xd010): Counts(3, 12)}, dropped=7)
    fams = exporter.families(snap, fixed_naming(NAMES), 4096)
    assert [(f.name, f.type) for f in fams] == [
        ("piobpf_pio_events", "counter"), ("piobpf_pio_bytes", "counter"),
        ("piobpf_dropped_events", "counter"), ("piobpf_map_entries", "gauge"),
        ("piobpf_map_max_entries", "gauge")]

    def key(d, port, device):
        return (("device", device), ("direction", d), ("port", port))
    assert samples(fams) == {
        ("piobpf_pio_events_total", key("read", "0x3fd", "serial")): 1234,
        ("piobpf_pio_events_total", key("write", "0x3f8", "serial")): 56,
        ("piobpf_pio_events_total", key("write", "0xd010", "")): 3,
        ("piobpf_pio_bytes_total", key("read", "0x3fd", "serial")): 1234,
        ("piobpf_pio_bytes_total", key("write", "0x3f8", "serial")): 112,
        ("piobpf_pio_bytes_total", key("write", "0xd010", "")): 12,
        ("piobpf_dropped_events_total", ()): 7,
        ("piobpf_map_entries", ()): 3,
        ("piobpf_map_max_entries", ()): 4096,
    }


START = 4242        # every fake process's start time
P10, P20 = Proc(10, START), Proc(20, START)


def labeler(tmp_path, by, processes, comms=None):
    """vms.Labeler over a fake /proc holding `processes` {pid: name}."""
    for pid, name in processes.items():
        (tmp_path / str(pid)).mkdir()
        (tmp_path / str(pid) / "comm").write_text(name + "\n")
        (tmp_path / str(pid) / "stat").write_text(f"{pid} ({name}) S" + " 0" * 18
                                                  + f" {START}\n")
    return vms.Labeler(by, comms or {}, proc=str(tmp_path))


def test_vm_mode_labels_vm_and_pid(tmp_path):
    snap = Snapshot({Key("read", 0x3fd, P10): Counts(5, 5), Key("read", 0x3fd, P20): Counts(2, 2)})
    fams = exporter.families(
        snap, fixed_naming(NAMES, "vm", labeler(tmp_path, "vm", {10: "web1"})), 100, "vm")
    events = {dict(s.labels)["pid"]: (dict(s.labels), s.value) for s in fams[0].samples}
    assert events == {
        "10": ({"direction": "read", "port": "0x3fd", "device": "serial", "vm": "web1",
                "pid": "10"}, 5),
        # A process gone before it could be named: an empty vm, not a missing label.
        "20": ({"direction": "read", "port": "0x3fd", "device": "serial", "vm": "",
                "pid": "20"}, 2)}


def test_vcpu_mode_labels_and_threads_of_one_name_summed(tmp_path):
    snap = Snapshot({Key("read", 0x60, P10, 11): Counts(1, 2), Key("read", 0x60, P10, 12): Counts(3, 6),
                     Key("read", 0x60, P10, 13): Counts(4, 8), Key("read", 0x60, P10, 14): Counts(5, 10)})
    comms = {(P10, 11): "CPU 0/KVM", (P10, 12): "CPU 0/KVM", (P10, 13): "CPU 1/KVM",
             (P10, 14): "worker"}
    naming = fixed_naming(NAMES, "vcpu", labeler(tmp_path, "vcpu", {10: "db2"}, comms))
    fams = exporter.families(snap, naming, 100, "vcpu")
    got = {(dict(s.labels)["vcpu"], s.name): s.value for f in fams[:2] for s in f.samples}
    assert got == {("0", "piobpf_pio_events_total"): 4, ("0", "piobpf_pio_bytes_total"): 8,
                   ("1", "piobpf_pio_events_total"): 4, ("1", "piobpf_pio_bytes_total"): 8,
                   ("tid 14", "piobpf_pio_events_total"): 5,
                   ("tid 14", "piobpf_pio_bytes_total"): 10}
    assert set(fams[0].samples[0].labels) == {"direction", "port", "device", "vm", "pid", "vcpu"}
    assert fams[3].samples[0].value == 4    # map entries are keys, not series


class FixedSession:
    """A session.Session's reading side over fixed snapshots (the exporter's
    unit test); `came` are the VMs each sync finds new, `expired` what the
    collector asked to forget: (before, together) of each expire."""

    def __init__(self, naming, *snapshots, came=()):
        self.naming, self.snapshots, self.capacity = naming, list(snapshots), 100
        self.came, self.expired, self.entries = list(came), [], 1

    def sync(self):
        return [self.came.pop(0)] if self.came else []

    def expire(self, before, together=None):
        self.expired.append((before, together))

    def read(self):
        snap = self.snapshots.pop(0)
        self.naming.learn(snap)
        return snap


def test_collector_reads_at_each_scrape_and_nothing_once_closed(tmp_path):
    naming = fixed_naming(NAMES, "vm", labeler(tmp_path, "vm", {10: "web1"}))
    collector = exporter.PioCollector(FixedSession(
        naming, Snapshot({Key("read", 0x3fd, P10): Counts(1, 1)}),
        Snapshot({Key("read", 0x3fd, P10): Counts(9, 9)})), retention=300)
    registry = CollectorRegistry()
    registry.register(collector)
    line = ('piobpf_pio_events_total{device="serial",direction="read",pid="10",port="0x3fd",'
            'vm="web1"} %s\n')
    assert line % "1.0" in generate_latest(registry).decode()
    (tmp_path / "10" / "comm").unlink()     # the VM exits: its series keeps its labels
    assert line % "9.0" in generate_latest(registry).decode()
    collector.close()
    assert generate_latest(registry) == b""


def test_collector_forgets_exited_vms_after_the_retention_but_not_apart_from_their_labels(
        tmp_path):
    naming = fixed_naming(NAMES, "vm", labeler(tmp_path, "vm", {10: "web1"}))
    session = FixedSession(naming, Snapshot(), came=[Proc(20, START + 1)])
    registry = CollectorRegistry()
    registry.register(exporter.PioCollector(session, retention=60))
    before = time.monotonic()
    text = generate_latest(registry).decode()
    (at, together), = session.expired
    assert before - 60 <= at <= time.monotonic() - 60
    # Kept together: VMs of one pid and name, whose series are one.
    assert together(P10) == (10, "web1")
    assert "piobpf_map_entries 1.0" in text     # the kernel map's keys, not the snapshot's


@pytest.mark.parametrize("text,address", [
    ("9435", ("127.0.0.1", 9435)), ("0.0.0.0:9435", ("0.0.0.0", 9435)),
    ("[::]:9435", ("::", 9435)), ("[::1]:1", ("::1", 1)), ("10.1.2.3:65535", ("10.1.2.3", 65535)),
])
def test_listen_address(text, address):
    assert parse_args(["--prometheus", text]).prometheus == address


def test_retention():
    assert parse_args(["--prometheus", "9435"]).retention == 300
    assert parse_args(["--prometheus", "9435", "--retention", "2.5"]).retention == 2.5


@pytest.mark.parametrize("args,words", [
    (["--prometheus", "0"], "not a port"), (["--prometheus", "65536"], "not a port"),
    (["--prometheus", "x:9435"], "not an IP address"),
    (["--prometheus", "localhost:9435"], "not an IP address"),
    (["--prometheus", ":9435"], "give the address too"),   # all interfaces only when named
    (["--prometheus", "::1:9435"], "brackets"),
    (["--prometheus", "[::1]"], "not a port"),
    (["--prometheus", "9435", "-d", "1"], "--prometheus serves"),
    (["--prometheus", "9435", "-i", "1"], "--prometheus serves"),
    (["--prometheus", "9435", "--format", "json"], "--prometheus serves"),
    (["--prometheus", "9435", "-o", "x"], "--prometheus serves"),
    (["--prometheus", "9435", "--compare", "a", "b"], "--prometheus serves"),
    (["--prometheus", "9435", "--from-perf", "-"], "--prometheus serves"),
    (["--retention", "60"], "--retention is for --prometheus"),
    (["--prometheus", "9435", "--retention", "0"], "positive number"),
])
def test_bad_prometheus_arguments(args, words):
    with pytest.raises(CliError) as e:
        parse_args(args)
    assert e.value.status == 2 and words in str(e.value)
    assert "\n" not in str(e.value)
