"""--latency: how long each exit keeps its vCPU out of the guest. Real
guests with a VMM slow on purpose (the test guest's --delay), real QEMU, and
the in-kernel path run through the kernel's BPF_PROG_TEST_RUN."""

import ctypes
import json
import os
import subprocess
import time

import pytest

from helpers import HeldGuest, Traced, around, by_key, needs_tracing, run_guest
from piobpf.core.keys import Key
from piobpf.core.snapshot import Times
from piobpf.kernel.counter import CounterConfig, PioCounter
from piobpf.kernel.program import HIST_SLOTS, MAX_WINDOW_NS
from piobpf.sinks import exporter, formats

DELAY_US = 500


def traced(guest, *args):
    """piobpf --latency --format json -p around the guest's whole run."""
    rc, out, err = around(guest, "--latency", "--format", "json", *args)
    assert rc == 0, err
    return [json.loads(line) for line in out.splitlines()]


def rows_of(result):
    return {(r["direction"], r["port"]): r for r in result["rows"]}


# --- pure: histogram arithmetic and formatting ---

def test_hist_buckets_as_bccs_log2():
    assert formats.hist_buckets((1, 0, 2, 0, 5)) == [(0, 0, 1), (2, 3, 2), (8, 15, 5)]


@pytest.mark.parametrize("ns,text", [(850, "850ns"), (12_345, "12.3us"), (4_560_000, "4.56ms"),
                                     (250_000, "250us"), (1_230_000_000, "1.23s")])
def test_duration(ns, text):
    assert formats.duration(ns) == text


def test_times_add_and_subtract():
    a, b = Times(2, 300, 200, (0, 1, 1)), Times(5, 900, 400, (1, 2, 2))
    assert b - a == Times(3, 600, 400, (1, 1, 1))      # max stays the run's longest
    assert a + b == Times(7, 1200, 400, (1, 3, 3))
    assert b - Times() == b


def test_prometheus_histogram_buckets_are_cumulative_seconds():
    hist = [0] * HIST_SLOTS
    hist[3], hist[11], hist[18] = 2, 5, 1           # 4-7 ns, 1-2 us, 131-262 us
    family = exporter.exit_seconds({Key("read", "0x3fd", "serial"): Times(8, 200_000, 150_000,
                                                                      tuple(hist))}, "port")
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples[("piobpf_pio_exit_seconds_bucket", repr(1024 / 1e9))] == 2
    assert samples[("piobpf_pio_exit_seconds_bucket", repr(2048 / 1e9))] == 7
    assert samples[("piobpf_pio_exit_seconds_bucket", repr((1 << 18) / 1e9))] == 8
    assert samples[("piobpf_pio_exit_seconds_bucket", "+Inf")] == 8
    assert samples[("piobpf_pio_exit_seconds_count", None)] == 8
    assert samples[("piobpf_pio_exit_seconds_sum", None)] == 200_000 / 1e9


# --- real guests ---

@needs_tracing
def test_slow_port_ranks_first_by_time():
    guest = HeldGuest("r:0x3fd:1:1000", "r:0x3fb:1:50000", args=["--delay", f"0x3fd:{DELAY_US}"])
    result, = traced(guest)
    rows = rows_of(result)
    a, b = rows[("read", 0x3FD)], rows[("read", 0x3FB)]
    assert result["rows"][0]["port"] == 0x3FD        # first by TIME, not by events
    assert (a["events"], b["events"]) == (1000, 50000)
    assert a["windows"] == 1000 and b["windows"] == 50000   # every exit timed once
    assert a["avg_ns"] >= DELAY_US * 1000 and a["max_ns"] >= DELAY_US * 1000
    assert b["avg_ns"] < DELAY_US * 1000 / 4        # the other port's exits are not slowed
    assert all(bucket["low_ns"] >= (1 << 18) for bucket in a["hist_ns"])   # none below 262 us
    assert sum(bucket["count"] for bucket in a["hist_ns"]) == 1000
    assert a["time_ns"] > b["time_ns"]
    assert set(result["untimed_exits"].values()) == {0}


@needs_tracing
def test_outs_and_rep_strings_are_timed_per_round_trip():
    # An OUT's window is known at once; rep outsb makes one exit per byte.
    guest = HeldGuest("w:0x3f8:1:300", "w:0x70:1:2:8", "r:0x60:1:3:16",
                      args=["--delay", "0x3f8:50"])
    rows = rows_of(traced(guest)[0])
    assert {k: (r["events"], r["windows"]) for k, r in rows.items()} == {
        ("write", 0x3F8): (300, 300), ("write", 0x70): (16, 16), ("read", 0x60): (3, 3)}
    assert rows[("write", 0x3F8)]["avg_ns"] >= 50_000


@needs_tracing
def test_interval_times_add_up():
    guest = HeldGuest("r:0x3fd:1:2000", "w:0x3f8:1:2000", args=["--delay", "0x3fd:100"])
    lines = traced(guest, "-i", "0.1")
    assert len(lines) > 3
    windows, hist = {}, {}
    for line in lines:
        for r in line["rows"]:
            key = (r["direction"], r["port"])
            windows[key] = windows.get(key, 0) + r["windows"]
            hist[key] = hist.get(key, 0) + sum(b["count"] for b in r["hist_ns"])
    assert windows == hist == {("read", 0x3FD): 2000, ("write", 0x3F8): 2000}
    assert sum(line["total_time_ns"] for line in lines) >= 2000 * 100_000


@needs_tracing
@pytest.mark.parametrize("op", ["w:0x3f8", "r:0x3fd"])
def test_thread_killed_mid_exit_leaves_nothing(op):
    # The VMM sleeps 30 s in the exit; killed, its window must vanish: no
    # time made up, nothing left in the kernel's table of exits under way.
    guest = HeldGuest(op, args=["--delay", f"{op.split(':')[1]}:30000000"])
    t = Traced("--latency", "--format", "json", "-p", str(guest.pid))
    guest.start()
    time.sleep(1)
    guest.proc.kill()
    guest.proc.wait()
    rc, out, err = t.stop()
    assert rc == 0, err
    result = json.loads(out)
    assert result["untimed_exits"]["open_at_end"] == 0
    assert all(r["windows"] == 0 and r["time_ns"] == 0 for r in result["rows"])
    if op.startswith("w"):      # an OUT is counted when it exits; an IN when it completes
        assert by_key(result["rows"]) == {("write", 0x3F8): (1, 1)}


# --- the in-kernel path: kvm_exit -> kvm_pio -> kvm_entry ---

class ProgTestRunAttr(ctypes.Structure):
    """union bpf_attr for BPF_PROG_TEST_RUN (include/uapi/linux/bpf.h)."""
    _fields_ = [("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32),
                ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
                ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
                ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32),
                ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
                ("ctx_in", ctypes.c_uint64), ("ctx_out", ctypes.c_uint64),
                ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
                ("batch_size", ctypes.c_uint32)]


def run_raw_tracepoint(counter, name, *args):
    """Run a loaded raw-tracepoint program once, in this thread, with these arguments."""
    fd = counter.program_fds()[f"raw_tracepoint__{name}"]
    ctx = (ctypes.c_uint64 * max(len(args), 1))(*args)
    attr = ProgTestRunAttr(prog_fd=fd, ctx_in=ctypes.addressof(ctx), ctx_size_in=8 * len(args))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(321, 10, ctypes.byref(attr), ctypes.sizeof(attr)) != 0:   # bpf(TEST_RUN)
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


@needs_tracing
def test_in_kernel_exit_window_from_kvm_exit_to_kvm_entry():
    # kvm_exit and kvm_entry never fire on this nested host, so the kernel
    # runs the real programs with the tracepoints' arguments: a PIC read
    # (rw 0, port 0x21, size 1, count 1) handled between exit and entry.
    counter = PioCounter(CounterConfig(latency=True, pids=(os.getpid(),)))   # only what we run
    try:
        run_raw_tracepoint(counter, "kvm_exit", 0, 0, 0)
        run_raw_tracepoint(counter, "kvm_pio", 0, 0x21, 1, 1, 0)
        time.sleep(0.002)
        run_raw_tracepoint(counter, "kvm_entry", 0)
        # An exit with no port I/O between exit and entry is no port's time.
        run_raw_tracepoint(counter, "kvm_exit", 0, 0, 0)
        run_raw_tracepoint(counter, "kvm_entry", 0)
        snap = counter.read()
    finally:
        counter.close()
    assert snap.counts[Key("read", 0x21)].events == 1
    t = snap.times[Key("read", 0x21)]
    assert t.windows == 1 and 2_000_000 <= t.time_ns == t.max_ns < MAX_WINDOW_NS
    assert sum(t.hist) == 1


def in_kernel(rows):
    """The rows of ports a SeaBIOS VM's QEMU serves in the kernel, never
    leaving KVM_RUN: its in-kernel devices (kvm-pic, kvm-pit, kvm-elcr), the
    RTC index writes QEMU has KVM coalesce, and the virtio queue notify that
    an ioeventfd takes."""
    bar = min(r["port"] for r in rows if r["device"] == "virtio-pci disk0")
    notify = bar + 0x10     # VIRTIO_PCI_QUEUE_NOTIFY of the legacy layout
    return [r for r in rows if r["device"].startswith("kvm-")
            or (r["direction"], r["port"]) in (("write", 0x70), ("write", notify))]


@needs_tracing
def test_real_qemu_started_after_attach_is_timed_from_its_first_exit():
    # Not named with -p: QEMU starts after piobpf has attached, and its whole
    # SeaBIOS boot is timed, exit for exit, from the first.
    from qemuvm import SeabiosVM
    t = Traced("--latency", "--format", "json", "--by", "vm")
    with SeabiosVM("latency-late") as vm:
        vm.start()
        vm.wait_done()
        rc, out, err = t.stop()
    assert rc == 0, err
    rows = [r for r in json.loads(out)["rows"] if r["pid"] == vm.pid]
    assert {r["device_source"] for r in rows} == {"vmm"}
    kernel_rows = in_kernel(rows)
    user = [r for r in rows if r not in kernel_rows]
    assert all(r["windows"] == 0 for r in kernel_rows)
    # Every other exit goes to QEMU in user space, and each one is timed.
    assert len(user) > 30
    assert all(r["windows"] == r["events"] and r["time_ns"] > 0 for r in user), [
        (r["direction"], hex(r["port"]), r["events"], r["windows"]) for r in user
        if r["windows"] != r["events"]]
    served = {(r["direction"], r["port"]) for r in user}
    assert {("write", 0x3F8), ("write", 0xCF8), ("read", 0xCFC), ("write", 0x510),
            ("read", 0x511), ("read", 0x92)} <= served
    # Ranked by time the busiest port is not the one with most events: the
    # PCI configuration index (a latch) is cheap, configuration data and
    # fw_cfg DMA make QEMU work.
    most_events = max(rows, key=lambda r: r["events"])
    assert rows[0] is not most_events and rows[0]["time_ns"] > most_events["time_ns"]
    avg = {(r["direction"], r["port"]): r["avg_ns"] for r in user}
    assert avg[("write", 0x518)] > avg[("write", 0xCF8)]    # fwcfg.dma > pci-conf-idx
    assert avg[("write", 0x3F8)] > avg[("write", 0xCF8)]    # serial > pci-conf-idx


@needs_tracing
@pytest.mark.parametrize("by", ["vm", "vcpu"])
def test_vms_born_during_the_run_are_timed_from_their_first_exit(by):
    # Short-lived VMMs that start after piobpf has attached and are gone
    # before it ends: each one's every exit timed, under its own name.
    t = Traced("--latency", "--format", "json", "--by", by)
    names = [f"born{i}" for i in range(4)]
    for i, name in enumerate(names):
        run_guest("r:0x3fd:1:2000", f"w:0x3f8:1:{100 + i}", "-name", f"guest={name}",
                  "--delay", "0x3f8:50")
    rc, out, err = t.stop()
    assert rc == 0, err
    result = json.loads(out)
    rows = {(r["vm"], r["direction"], r["port"]): r for r in result["rows"] if r["vm"] in names}
    assert {k: (r["events"], r["windows"]) for k, r in rows.items()} == {
        k: v for i, name in enumerate(names)
        for k, v in (((name, "read", 0x3FD), (2000, 2000)), ((name, "write", 0x3F8),
                                                             (100 + i, 100 + i)))}
    assert all(rows[name, "write", 0x3F8]["avg_ns"] >= 50_000 for name in names)


@needs_tracing
def test_an_exit_under_way_at_attach_is_named_not_timed():
    # The VMM sleeps 2 s in its first exit; piobpf attaches meanwhile. That
    # exit began before tracing: counted as open_at_start, never given a
    # time it did not measure. The second exit is timed in full.
    guest = HeldGuest("w:0x3f8:1:2", args=["--delay", "0x3f8:2000000"])
    guest.start()
    time.sleep(0.5)
    t = Traced("--latency", "--format", "json", "-p", str(guest.pid))
    guest.wait_done()
    rc, out, err = t.stop()
    guest.end()
    assert rc == 0, err
    result = json.loads(out)
    assert result["untimed_exits"]["open_at_start"] == 1
    row, = result["rows"]
    assert (row["events"], row["windows"]) == (1, 1) and row["avg_ns"] >= 2_000_000_000


@needs_tracing
def test_no_syscall_tracepoint_is_attached():
    # A syscall tracepoint would send every system call of every process on
    # the host through the slow path: --latency uses KVM's own tracepoints.
    t = Traced("--latency")
    try:
        out = subprocess.run(["bpftool", "-j", "perf", "show"], capture_output=True,
                             text=True, timeout=60)
    finally:
        t.stop()
    assert out.returncode == 0, out.stderr
    ours = [a for a in json.loads(out.stdout) if a["pid"] == t.proc.pid]
    points = {a.get("tracepoint") for a in ours}
    assert {"kvm_pio", "kvm_fpu", "kvm_userspace_exit"} <= points
    assert all(a["fd_type"] == "raw_tracepoint" for a in ours), ours


@needs_tracing
@pytest.mark.parametrize("by", ["vm", "vcpu"])
def test_by_vm_times_survive_the_vm_leaving_the_map(by):
    # The guest exits before the run ends: its keys, and their times, move
    # out of the kernel map into piobpf; the final counts and times are whole.
    guest = HeldGuest("r:0x3fd:1:300", "w:0x3f8:1:200", name="slow", thread_name="CPU 0/KVM",
                      args=["--delay", "0x3fd:100"])
    t = Traced("--latency", "--format", "json", "--by", by, "-p", str(guest.pid))
    guest.start()
    guest.wait_done()
    guest.end()         # the process is gone: its VM leaves the kernel map
    time.sleep(1.5)
    rc, out, err = t.stop()
    assert rc == 0, err
    rows = {(r["vm"], r["direction"], r["port"]): r for r in json.loads(out)["rows"]}
    a, b = rows[("slow", "read", 0x3FD)], rows[("slow", "write", 0x3F8)]
    assert (a["events"], a["windows"], b["events"], b["windows"]) == (300, 300, 200, 200)
    assert a["avg_ns"] >= 100_000 and a["time_ns"] > b["time_ns"]
