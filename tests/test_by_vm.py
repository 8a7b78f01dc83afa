"""Which VM, which vCPU: real guest processes and threads, counted exactly."""

import json
import os
import subprocess
import threading

from helpers import ENV, GUEST, HeldGuest, Traced, around, needs_tracing, piobpf_cmd

pytestmark = needs_tracing

A_OPS = ["r:0x3fd:1:2000", "w:0x3f8:1:30", "r:0x60:1:2:16"]
A_EXPECTED = {("read", 0x3fd): (2000, 2000), ("write", 0x3f8): (30, 30),
              ("read", 0x60): (2, 32)}
B_OPS = ["r:0x3fd:1:700", "w:0x70:2:11", "r:0x71:4:3"]
B_EXPECTED = {("read", 0x3fd): (700, 700), ("write", 0x70): (11, 22),
              ("read", 0x71): (3, 12)}


def rows_by(result, *fields):
    """{(fields..., direction, port): (events, bytes)}"""
    return {tuple(r[f] for f in fields) + (r["direction"], r["port"]): (r["events"], r["bytes"])
            for r in result["rows"]}


def expect(prefix, expected):
    return {prefix + key: value for key, value in expected.items()}


def run_two_guests(*piobpf_args, ops=(A_OPS, B_OPS), one_cpu=False):
    """Guests vm-a and vm-b running `ops` at once (`one_cpu`: both on one
    CPU, which their vCPU threads inherit, so that they take turns there),
    traced by piobpf ARGS ({a} and {b} their pids): (a, b, the JSON result)."""
    a = HeldGuest(*ops[0], name="vm-a", thread_name="CPU 0/KVM")
    b = HeldGuest(*ops[1], name="vm-b", thread_name="CPU 0/KVM")
    if one_cpu:
        for g in (a, b):
            os.sched_setaffinity(g.pid, {min(os.sched_getaffinity(0))})
    t = Traced("--format", "json", *[str(x).format(a=a.pid, b=b.pid) for x in piobpf_args])
    for g in (a, b):          # both at the same time
        g.start()
    for g in (a, b):
        g.wait_done()
    rc, out, err = t.stop()
    for g in (a, b):
        g.end()
    assert rc == 0, err
    return a, b, json.loads(out)


def test_by_vm_attributes_each_count_to_its_process():
    # Host-wide: other VMs on the host have rows too; these two's are exact.
    a, b, result = run_two_guests("--by", "vm")
    got = rows_by(result, "pid", "vm")
    assert {k: v for k, v in got.items() if k[0] in (a.pid, b.pid)} == {
        **expect((a.pid, "vm-a"), A_EXPECTED), **expect((b.pid, "vm-b"), B_EXPECTED)}
    assert result["dropped_events"] == 0


def test_pid_filter_counts_only_that_process():
    a, b, result = run_two_guests("--by", "vm", "-p", "{b}")
    assert rows_by(result, "pid", "vm") == expect((b.pid, "vm-b"), B_EXPECTED)
    a, b, result = run_two_guests("-p", "{a}")
    assert rows_by(result) == A_EXPECTED


def test_by_vcpu_separates_threads():
    g = HeldGuest("r:0x3fd:1:500", "w:0x80:1:3", "+", "r:0x3fd:1:200", "+", "r:0x60:2:7",
                  name="smp", thread_name="CPU {i}/KVM")
    rc, out, err = around(g, "--format", "json", "--by", "vcpu")
    assert rc == 0, err
    rows = json.loads(out)["rows"]
    got = rows_by({"rows": rows}, "pid", "vm", "thread", "vcpu")
    assert got == {
        (g.pid, "smp", "CPU 0/KVM", 0, "read", 0x3fd): (500, 500),
        (g.pid, "smp", "CPU 0/KVM", 0, "write", 0x80): (3, 3),
        (g.pid, "smp", "CPU 1/KVM", 1, "read", 0x3fd): (200, 200),
        (g.pid, "smp", "CPU 2/KVM", 2, "read", 0x60): (7, 14)}
    tids = {r["vcpu"]: r["tid"] for r in rows}
    assert len(set(tids.values())) == 3 and g.pid not in tids.values()


def test_map_full_counts_drops_and_keeps_the_rest_right():
    ops = ["r:0x3fd:1:50", "r:0x3fb:1:40", "w:0x3f8:1:30", "r:0x60:1:20", "w:0x70:1:10",
           "r:0x71:1:5", "w:0x80:1:3", "r:0x61:1:1"]
    expected = {("read", 0x3fd): 50, ("read", 0x3fb): 40, ("write", 0x3f8): 30,
                ("read", 0x60): 20, ("write", 0x70): 10, ("read", 0x71): 5,
                ("write", 0x80): 3, ("read", 0x61): 1}
    rc, out, err = around(HeldGuest(*ops), "--format", "json", "--by", "vm", "--map-size", "3")
    assert rc == 0, err
    result = json.loads(out)
    kept = {(r["direction"], r["port"]): r["events"] for r in result["rows"]}
    assert len({r["pid"] for r in result["rows"]}) == 1
    assert 0 < len(kept) <= 3
    for key, events in kept.items():
        assert events == expected[key]
    assert result["dropped_events"] == sum(expected.values()) - sum(kept.values()) > 0
    assert f"{result['dropped_events']} events dropped" in err


def test_vm_that_exits_keeps_counts_and_name(neighbour):
    # A long interval: the name comes when the VM does (the kernel rings), not from reports.
    t = Traced("--format", "json", "--by", "vm", "-i", "60")
    # Runs for a second or more, then exits before the run ends.
    gone = subprocess.Popen([*GUEST, "-name", "guest=gone", "r:0x3fd:1:150000"], env=ENV,
                            stdout=subprocess.DEVNULL)
    assert gone.wait(timeout=120) == 0
    rc, text, err = t.stop()
    assert rc == 0, err
    rows = rows_by(json.loads(text), "pid", "vm")
    assert {k: v for k, v in rows.items() if k[0] == gone.pid} == {
        (gone.pid, "gone", "read", 0x3fd): (150000, 150000)}
    # Host-wide, over a second or more: the session's neighbour VM is there, by its name.
    assert {k[:2] for k in rows if k[0] == neighbour.pid} == {(neighbour.pid, "neighbour")}


def test_pid_errors_are_one_line():
    gone = subprocess.Popen(["true"])
    gone.wait()
    for arg, words in ((["-p", str(gone.pid)], "no such process"), (["-p", "x"], "not a PID"),
                       (["-p", "1,,2"], "not a PID")):
        out = subprocess.run(piobpf_cmd(*arg, "-d", "1"), env=ENV, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 2 and words in out.stderr
        assert len(out.stderr.splitlines()) == 1
    # A thread id is not a VMM process: say which process it belongs to.
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait)
    thread.start()
    try:
        out = subprocess.run(piobpf_cmd("-p", str(thread.native_id), "-d", "1"), env=ENV,
                             capture_output=True, text=True, timeout=60)
    finally:
        stop.set()
        thread.join()
    assert out.returncode == 2 and f"is a thread of process {os.getpid()}" in out.stderr
