"""--mmio against real guests: their MMIO counted exactly per (direction, gpa)
beside their port I/O, in every mode, and a full MMIO map counted as dropped."""

import json
import re
import time

import pytest

from helpers import (HeldGuest, PerfRecord, Traced, around, assert_one_line, needs_tracing,
                     run_piobpf)
from qemuvm import MmioOp, MultibootVM
from test_by_vm import run_two_guests
from test_live import needs_tmux, term  # noqa: F401 -- the fixture
from test_prometheus import Exporter, device, prometheus, running, scraped_after  # noqa: F401
from tools import guest

pytestmark = needs_tracing

# Reads and writes of sizes 1, 2 and 4 outside the guest's RAM, where no
# device is: each exits to the guest's process, one kvm_mmio READ or WRITE.
OPS = ["mr:0xfebc0000:4:300", "mw:0xfebc0000:4:200", "mr:0xfebc0010:2:7", "mw:0xfed00002:2:5",
       "mr:0x10001:1:3", "mw:0xc0000000:1:11", "r:0x3fd:1:50", "w:0x80:2:9"]
EXPECTED = {("mmio", "read", 0xfebc0000): (300, 1200), ("mmio", "write", 0xfebc0000): (200, 800),
            ("mmio", "read", 0xfebc0010): (7, 14), ("mmio", "write", 0xfed00002): (5, 10),
            ("mmio", "read", 0x10001): (3, 3), ("mmio", "write", 0xc0000000): (11, 11),
            ("io", "read", 0x3fd): (50, 50), ("io", "write", 0x80): (9, 18),
            ("mmio", "write", guest.DONE_GPA): (1, 1)}     # the guest's done marker


def rows_of(result, *fields):
    """{(fields..., space, direction, address): (events, bytes)} of JSON rows."""
    return {tuple(r[f] for f in fields) + (r["space"], r["direction"], r.get("gpa", r.get("port"))):
            (r["events"], r["bytes"]) for r in result["rows"]}


def traced(*args, ops=OPS, guest_args=()):
    """piobpf --mmio --format json ARGS -p GUEST around a guest's run: its result."""
    g = HeldGuest(*ops, name="mmio-guest", thread_name="CPU {i}/KVM", args=guest_args)
    rc, out, err = around(g, "--mmio", "--format", "json", *args)
    assert rc == 0, err
    return g, json.loads(out)


@pytest.mark.parametrize("by", ["port", "vm", "vcpu"])
def test_mmio_and_ports_exact_per_direction_and_address(by):
    g, result = traced("--by", by)
    fields = {"port": (), "vm": ("pid", "vm"), "vcpu": ("pid", "vm", "vcpu", "thread")}[by]
    prefix = {"port": (), "vm": (g.pid, "mmio-guest"),
              "vcpu": (g.pid, "mmio-guest", 0, "CPU 0/KVM")}[by]
    assert rows_of(result, *fields) == {prefix + k: v for k, v in EXPECTED.items()}
    assert result["dropped_events"] == 0
    assert result["dropped"] == {"map_full": 0, "mmio_map_full": 0}
    assert result["total_events"] == sum(e for e, _ in EXPECTED.values())
    # Port rows keep "port", MMIO rows carry "gpa" instead.
    assert all(("gpa" in r) == (r["space"] == "mmio") != ("port" in r) for r in result["rows"])


def test_in_kernel_lapic_counts_once_a_read():
    # The in-kernel LAPIC answers in the kernel: one kvm_mmio READ, no
    # unsatisfied-read, counted once like a read completed by user space.
    _, result = traced(ops=["mr:0xfee00030:4:6", "mw:0xfee00080:4:2", "mr:0x20004:4:3"],
                       guest_args=("--irqchip",))
    assert rows_of(result) == {("mmio", "read", 0xfee00030): (6, 24),
                               ("mmio", "write", 0xfee00080): (2, 8),
                               ("mmio", "read", 0x20004): (3, 12),
                               ("mmio", "write", guest.DONE_GPA): (1, 1)}
    devices = {r["gpa"]: (r["device"], r["device_source"]) for r in result["rows"]}
    assert devices[0xfee00030] == ("lapic", "pc-fixed")
    assert devices[0x20004] == ("unassigned", "pc-fixed")


def test_a_flood_of_addresses_past_the_map_size_is_dropped_and_said():
    # 100 distinct addresses read twice each on one vCPU, in order, into a
    # map of 64 keys: the first 64 are counted exactly, every event of the
    # other 36 and of the done marker is dropped (reason mmio_map_full), and
    # the port I/O, in its own map, loses nothing.
    gpas = [0x100000 + 4 * i for i in range(100)]
    ops = [f"mr:{gpa:#x}:4:2" for gpa in gpas] + ["r:0x3fd:1:40", "w:0x80:4:3"]
    _, result = traced("--mmio-map-size", "64", ops=ops)
    rows = rows_of(result)
    assert rows == {**{("mmio", "read", gpa): (2, 8) for gpa in gpas[:64]},
                    ("io", "read", 0x3fd): (40, 40), ("io", "write", 0x80): (3, 12)}
    assert result["dropped"] == {"map_full": 0, "mmio_map_full": 36 * 2 + 1}
    assert result["dropped_events"] == 73


@pytest.mark.parametrize("by", ["port", "vcpu"])
def test_addresses_taking_turns_past_a_cpus_recent_keys_are_exact(by):
    # Addresses 256 bytes apart, read and written in turn, three times over:
    # all of them fall in the same one of a CPU's recent slots (the way is
    # the gpa / 4, mixed with the thread, modulo program.RECENT, 64), so they
    # push each other out of it at every access; every count is still exact.
    gpas = [0x200000 + 0x100 * i for i in range(8)]
    ops = [f"m{rw}:{gpa:#x}:4:1" for _ in range(3) for gpa in gpas for rw in "rw"]
    _, result = traced("--by", by, ops=ops)
    fields = ("thread",) if by == "vcpu" else ()
    prefix = ("CPU 0/KVM",) if by == "vcpu" else ()
    assert rows_of(result, *fields) == {
        **{prefix + ("mmio", d, gpa): (3, 12) for gpa in gpas for d in ("read", "write")},
        prefix + ("mmio", "write", guest.DONE_GPA): (1, 1)}
    assert result["dropped_events"] == 0


def test_p_counts_its_process_only_at_an_address_another_shares():
    # By address every thread shares a key: with -p, a CPU's recent slot of
    # the traced guest's address must not count the other guest's accesses.
    a, b, result = run_two_guests("--mmio", "-p", "{a}", one_cpu=True, ops=(
        ["mr:0xfebc0000:4:5000", "r:0x3fd:1:5"], ["mr:0xfebc0000:4:5000", "r:0x3fd:1:7"]))
    assert rows_of(result) == {("mmio", "read", 0xfebc0000): (5000, 20000),
                               ("io", "read", 0x3fd): (5, 5),
                               ("mmio", "write", guest.DONE_GPA): (1, 1)}


@pytest.mark.parametrize("latency", [[], ["--latency"]])
def test_an_exit_with_no_room_is_dropped_once_also_when_timed(latency):
    # A VM table of one (--map-size 1), held by A: every event of B is dropped,
    # each once, though --latency closes a window for each of its exits too.
    a = HeldGuest("r:0x3fd:1:5", name="A")
    b = HeldGuest("r:0x3fd:1:40", "mr:0x3500000:4:30", name="B")
    t = Traced("--mmio", "--format", "json", "--by", "vm", "--map-size", "1", *latency,
               "-p", f"{a.pid},{b.pid}")
    for g in (a, b):    # A first: it takes the table's one VM
        g.start()
        g.wait_done()
    rc, out, err = t.stop()
    for g in (a, b):
        g.end()
    assert rc == 0, err
    result = json.loads(out)
    assert result["dropped"] == {"map_full": 40, "mmio_map_full": 31}   # B's done marker too
    assert {r["pid"] for r in result["rows"]} == {a.pid}


def test_table_shows_the_space_and_the_drops():
    g = HeldGuest("mr:0xfebc0000:4:3", "mr:0xfebc0004:4:2", "r:0x3fd:1:4")
    rc, out, err = around(g, "--mmio", "--mmio-map-size", "2")
    assert rc == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["SPACE", "DIR", "ADDRESS", "DEVICE", "EVENTS", "%", "EVENTS/s",
                                "BYTES"]
    assert lines[2].split()[:3] == ["io", "read", "0x03fd"] and lines[2].split()[-4] == "4"
    # Marked: the port is named from /proc/ioports, the addresses from the PC's fixed table.
    assert lines[3].split()[:5] == ["mmio", "read", "0xfebc0000", "unassigned#", "3"]
    assert lines[4].split()[:5] == ["mmio", "read", "0xfebc0004", "unassigned#", "2"]
    assert lines[-1] == "DEVICE from * the host's /proc/ioports; # the PC's fixed MMIO addresses"
    assert "9 events in" in out and "1 dropped (map full: 0 port I/O, 1 MMIO)" in out
    assert "1 dropped (map full: 0 port I/O, 1 MMIO): see --map-size and --mmio-map-size" in err


def test_without_mmio_nothing_of_it_shows():
    g = HeldGuest("mr:0xfebc0000:4:3", "r:0x3fd:1:4")
    rc, out, err = around(g, "--format", "json")
    assert rc == 0, err
    result = json.loads(out)
    assert [(r["direction"], r["port"], r["events"]) for r in result["rows"]] == \
        [("read", 0x3fd, 4)]
    assert "dropped" not in result and "space" not in result["rows"][0]


# A real QEMU guest's MMIO to devices QEMU emulates in user space: its e1000's
# registers (BAR 0, placed by SeaBIOS) and the HPET.
QEMU_OPS = (MmioOp("read", 0x8, 4, 500, bar=4), MmioOp("write", 0xd8, 4, 30, bar=4),
            MmioOp("read", 0xfed00000, 4, 200), MmioOp("write", 0xfed00010, 4, 7),
            MmioOp("read", 0xfed000f0, 4, 9))
SETTLE = 3.0    # the firmware's BAR moves seen, the VM's map read again


def test_a_qemu_guest_equals_perf_and_is_named_from_qemu_map(tmp_path):
    with MultibootVM("mmio-vm", QEMU_OPS) as vm:
        t = Traced("--mmio", "--format", "json", "-p", str(vm.pid))
        perf = PerfRecord(("kvm:kvm_mmio", "kvm:kvm_fast_mmio", "kvm:kvm_pio"))
        try:
            vm.start()
            vm.wait_done()
            time.sleep(SETTLE)
        finally:
            text = perf.script(vm.pid)
            rc, out, err = t.stop()
        bar = int(re.search(r"([0-9a-f]+)-[0-9a-f]+ \(prio \d+, i/o\): e1000-mmio ",
                            vm.human("info mtree -f -o"))[1], 16)
    assert rc == 0, err
    perf_file, json_file = tmp_path / "perf.txt", tmp_path / "piobpf.json"
    perf_file.write_text(text)
    json_file.write_text(out)
    # Every (space, direction, address) of the whole run, SeaBIOS's too, as
    # perf saw it less its unsatisfied-reads.
    cmp = run_piobpf("--compare", str(perf_file), str(json_file), "--format", "json")
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    assert "kvm_mmio: mmio unsatisfied-read" in text
    rows = {(r["direction"], r["gpa"]): (r["events"], r["bytes"], r["device"], r["device_source"])
            for r in json.loads(out)["rows"] if r["space"] == "mmio"}
    assert {k: v for k, v in rows.items() if v[2] in ("e1000-mmio nic1", "hpet")} == {
        ("read", bar + 0x8): (500, 2000, "e1000-mmio nic1", "vmm"),
        ("write", bar + 0xd8): (30, 120, "e1000-mmio nic1", "vmm"),
        ("read", 0xfed00000): (200, 800, "hpet", "vmm"),
        ("write", 0xfed00010): (7, 28, "hpet", "vmm"),
        ("read", 0xfed000f0): (9, 36, "hpet", "vmm")}
    assert {v[3] for v in rows.values()} == {"vmm"}


def test_by_vm_across_two_vms():
    a, b, result = run_two_guests("--mmio", "--by", "vm", "-p", "{a},{b}", ops=(
        ["mr:0xfebc0000:4:40", "mw:0xfed00000:4:3", "r:0x3fd:1:5"],
        ["mr:0xfebc0000:4:25", "mw:0xc0000000:2:8"]))
    done = ("mmio", "write", guest.DONE_GPA)
    assert rows_of(result, "pid", "vm") == {
        (a.pid, "vm-a", "mmio", "read", 0xfebc0000): (40, 160),
        (a.pid, "vm-a", "mmio", "write", 0xfed00000): (3, 12),
        (a.pid, "vm-a", "io", "read", 0x3fd): (5, 5), (a.pid, "vm-a", *done): (1, 1),
        (b.pid, "vm-b", "mmio", "read", 0xfebc0000): (25, 100),
        (b.pid, "vm-b", "mmio", "write", 0xc0000000): (8, 16), (b.pid, "vm-b", *done): (1, 1)}


def test_prometheus_series_of_a_vm_that_exited(running, prometheus):
    # The VM exits before the scrape: its MMIO keys have left the kernel map
    # (piobpf_mmio_map_entries 0), its final counts are served.
    g = HeldGuest("mr:0xfebc0000:4:40", "mw:0xfed00000:2:3", "r:0x3fd:1:5", name="prom-mmio")
    running.append(g.proc)
    exporter = Exporter(running, "--mmio", "--by", "vm", "--mmio-map-size", "100",
                        "-p", str(g.pid))
    url = prometheus(exporter.target)
    g.start()
    g.wait_done()
    g.end()
    got = scraped_after(url, time.time())
    assert exporter.stop()[0] == 0
    series = {(m["__name__"],) + tuple(m.get(l) for l in ("direction", "gpa", "port", "device",
                                                          "vm", "reason")): v
              for m, v in got if m.get("pid", str(g.pid)) == str(g.pid)}
    vm = "prom-mmio"
    assert series == {
        ("piobpf_mmio_events_total", "read", "0xfebc0000", None, "unassigned", vm, None): 40,
        ("piobpf_mmio_bytes_total", "read", "0xfebc0000", None, "unassigned", vm, None): 160,
        ("piobpf_mmio_events_total", "write", "0xfed00000", None, "hpet", vm, None): 3,
        ("piobpf_mmio_bytes_total", "write", "0xfed00000", None, "hpet", vm, None): 6,
        ("piobpf_mmio_events_total", "write", hex(guest.DONE_GPA), None, "unassigned", vm,
         None): 1,
        ("piobpf_mmio_bytes_total", "write", hex(guest.DONE_GPA), None, "unassigned", vm,
         None): 1,
        ("piobpf_pio_events_total", "read", None, "0x3fd", device(0x3fd), vm, None): 5,
        ("piobpf_pio_bytes_total", "read", None, "0x3fd", device(0x3fd), vm, None): 5,
        ("piobpf_dropped_events_total", None, None, None, None, None, "map_full"): 0,
        ("piobpf_dropped_events_total", None, None, None, None, None, "mmio_map_full"): 0,
        ("piobpf_map_entries", None, None, None, None, None, None): 0,
        ("piobpf_map_max_entries", None, None, None, None, None, None): 131072,
        ("piobpf_mmio_map_entries", None, None, None, None, None, None): 0,
        ("piobpf_mmio_map_max_entries", None, None, None, None, None, None): 100,
    }


@pytest.mark.parametrize("by", ["port", "vcpu"])
def test_latency_ranks_the_slow_address_first(by):
    # The VMM answers one address 500 us late: its exits rank first by time,
    # each timed once, none faster than the delay; the others are not slowed.
    g = HeldGuest("mr:0xfebc0000:4:300", "mw:0xfebc0004:4:200", "mr:0xfebc0008:2:3000",
                  "r:0x3fd:1:1000", args=["--delay", "0xfebc0000:500"],
                  thread_name="CPU {i}/KVM")
    rc, out, err = around(g, "--mmio", "--latency", "--format", "json", "--by", by)
    assert rc == 0, err
    result = json.loads(out)
    rows = {(r["space"], r["direction"], r.get("gpa", r.get("port"))): r for r in result["rows"]}
    slow = rows[("mmio", "read", 0xfebc0000)]
    assert result["rows"][0].get("gpa") == 0xfebc0000    # first by TIME, not by events
    assert {k: (r["events"], r["windows"]) for k, r in rows.items()} == {
        ("mmio", "read", 0xfebc0000): (300, 300), ("mmio", "write", 0xfebc0004): (200, 200),
        ("mmio", "read", 0xfebc0008): (3000, 3000), ("io", "read", 0x3fd): (1000, 1000),
        ("mmio", "write", guest.DONE_GPA): (1, 0)}     # its exit ends the run: never answered
    assert slow["avg_ns"] >= 500_000 and slow["max_ns"] >= 500_000
    assert all(b["low_ns"] >= 1 << 18 for b in slow["hist_ns"])    # none below 262 us
    assert rows[("mmio", "read", 0xfebc0008)]["avg_ns"] < 500_000 / 4
    assert slow["time_ns"] > rows[("mmio", "read", 0xfebc0008)]["time_ns"]
    # The done marker's exit is open at the end if its thread has not quite
    # exited by then (the guest's join returns a moment before).
    assert result["untimed_exits"].pop("open_at_end") <= 1
    assert set(result["untimed_exits"].values()) == {0}


MMIO_LIVE_ROW = re.compile(r"^(io|mmio)\s+(read|write)\s+0x([0-9a-f]+)\s.*?\s\d+\.\d\s+(\d+)\s+\d+\.\d$")


@needs_tmux
def test_live_shows_the_space_and_filters_by_gpa(term):
    g = HeldGuest("mr:0xfebc0000:4:700", "mw:0xfed00000:4:30", "r:0x3fd:1:50")
    t = term("--mmio", "-p", str(g.pid), "-i", "0.5")
    g.start()
    g.wait_done()
    rows = lambda s: {(m[1], m[2], int(m[3], 16)): int(m[4]) for line in s.splitlines()
                      if (m := MMIO_LIVE_ROW.search(line))}
    t.until(lambda s: rows(s) == {("mmio", "read", 0xfebc0000): 700,
                                  ("mmio", "write", 0xfed00000): 30, ("io", "read", 0x3fd): 50,
                                  ("mmio", "write", guest.DONE_GPA): 1}, "every row counted")
    t.keys("g")
    t.type("fed00000")
    t.keys("Enter")
    t.until(lambda s: rows(s) == {("mmio", "write", 0xfed00000): 30}, "the filtered row")
    t.keys("q")
    rc, shown, err = t.end()
    g.end()
    assert rc == 0, err
    header = next(l for l in shown.splitlines() if l.startswith("SPACE"))
    assert header.split()[:3] == ["SPACE", "DIR", "ADDRESS"]
    assert "781 events in" in shown


@pytest.mark.parametrize("args,words", [
    (["--mmio-map-size", "64"], ["--mmio-map-size is for --mmio"]),
    (["--mmio", "--mmio-map-size", "0"], ["--mmio-map-size", "positive"]),
    (["--mmio", "--mmio-map-size", str((1 << 24) + 1)], ["--mmio-map-size: at most"]),
    (["--mmio", "--from-perf", "-"], ["--mmio", "--from-perf"]),
])
def test_bad_mmio_options_are_one_line(args, words):
    assert_one_line(run_piobpf(*args), 2, *words)


def test_classic_tracepoints_count_the_same():
    _, result = traced("--attach", "classic")
    assert rows_of(result) == EXPECTED and result["dropped_events"] == 0


@pytest.mark.parametrize("attach", ["raw", "classic"])
def test_perf_is_not_blinded(attach):
    # perf recording kvm:kvm_mmio beside piobpf --mmio sees every event.
    g = HeldGuest("mr:0xfebc0000:4:300", "mw:0xfed00000:4:40")
    t = Traced("--mmio", "--attach", attach, "--format", "json", "-p", str(g.pid))
    perf = PerfRecord(("kvm:kvm_mmio",))
    g.start()
    g.wait_done()
    text = perf.script(g.pid)
    rc, out, err = t.stop()
    g.end()
    assert rc == 0, err
    assert text.count("mmio unsatisfied-read len 4 gpa 0xfebc0000 ") == 300
    assert text.count("mmio read len 4 gpa 0xfebc0000 ") == 300
    assert text.count("mmio write len 4 gpa 0xfed00000 ") == 40
    assert rows_of(json.loads(out))[("mmio", "read", 0xfebc0000)] == (300, 1200)
