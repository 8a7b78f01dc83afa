"""Real-guest integration: real KVM guests, the real tracepoint, real BPF."""

import json
import signal

import pytest

from helpers import (MIXED, MIXED_EXPECTED, HeldGuest, PerfRecord, Traced, around, by_key,
                     free_port, needs_tracing, run_piobpf, sum_rows, trace_json)
from piobpf.naming import ioports

pytestmark = needs_tracing


@pytest.mark.parametrize("attach", ["raw", "classic"])
def test_mixed_workload_exact(attach):
    result = trace_json(MIXED, "--attach", attach)
    assert by_key(result["rows"]) == MIXED_EXPECTED
    assert result["total_events"] == sum(e for e, _ in MIXED_EXPECTED.values())
    assert result["dropped_events"] == 0
    events = [r["events"] for r in result["rows"]]
    assert events == sorted(events, reverse=True)


# Ports no device or firmware uses, so no other VM on the host touches them:
# host-wide runs count other VMs too, and check only these.
LONE = ["r:0x7a3d:1:5000", "w:0x7a38:1:300", "w:0x7a38:2:7", "r:0x7a61:1:3:16",
        "w:0x7a70:1:2:8", "r:0x7a80:4:13"]
LONE_EXPECTED = {("read", 0x7a3d): (5000, 5000), ("write", 0x7a38): (307, 314),
                 ("read", 0x7a61): (3, 48), ("write", 0x7a70): (16, 16),
                 ("read", 0x7a80): (13, 52)}


@pytest.mark.parametrize("attach", ["raw", "classic"])
def test_host_wide_counts_every_vm_and_a_lone_port_exactly(attach):
    # No -p: the unfiltered program, as most users run it.
    t = Traced("--format", "json", "--attach", attach)
    rc, out, err = around(HeldGuest(*LONE), "--format", "json", "--attach", attach)
    assert rc == 0, err
    rc, whole, err = t.stop()
    assert rc == 0, err
    result = json.loads(whole)
    assert by_key(json.loads(out)["rows"]) == LONE_EXPECTED       # -p, the same run
    rows = by_key(result["rows"])
    assert {k: v for k, v in rows.items() if k[1] >> 8 == 0x7a} == LONE_EXPECTED
    assert ("read", 0x3fd) in rows and ("write", 0x70) in rows    # the neighbour's too
    assert result["total_events"] == sum(e for e, _ in rows.values())
    assert result["dropped_events"] == 0


def test_device_names_from_proc_ioports():
    table = ioports.load()
    result = trace_json(MIXED)
    names = {r["port"]: r["device"] for r in result["rows"]}
    assert names[0x3fd] == "serial" == table.lookup(0x3fd)
    for port, name in names.items():
        assert name == table.lookup(port)


def test_interval_lines_add_up_to_the_workload():
    # Long enough to span many intervals, so reads race with the counting.
    rc, out, err = around(HeldGuest("r:0x3fd:1:150000", *MIXED), "--format", "json", "-i", "0.2")
    assert rc == 0, err
    lines = [json.loads(l) for l in out.splitlines()]
    busy = [l for l in lines if l["total_events"]]
    assert len(busy) >= 3, out
    expected = dict(MIXED_EXPECTED)
    expected[("read", 0x3fd)] = (155000, 155000)
    assert sum_rows(out) == expected
    assert sum(l["total_events"] for l in lines) == sum(e for e, _ in expected.values())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_prints_what_was_counted(sig):
    for fmt in ("table", "json"):
        rc, out, err = around(HeldGuest("r:0x3fd:1:777"), "--format", fmt, "-d", "600", sig=sig)
        assert rc == 0 and "Traceback" not in err
        if fmt == "json":
            assert by_key(json.loads(out)["rows"]) == {("read", 0x3fd): (777, 777)}
        else:
            assert "serial" in out and " 777 " in out


def test_duration_ends_the_run():
    out = run_piobpf("-d", "0.5", "--format", "json")
    assert out.returncode == 0, out.stderr
    assert 0.5 <= json.loads(out.stdout)["duration_s"] < 5


@pytest.mark.parametrize("mode", [["--attach", "raw"], ["--attach", "classic"],
                                  ["--by", "vm"], ["--by", "vcpu", "--attach", "classic"],
                                  ["-i", "0.1", "--attach", "classic"], ["--prometheus"]])
def test_perf_is_not_blinded(mode):
    """perf recording kvm:kvm_pio beside piobpf, in any mode, sees every event."""
    if mode == ["--prometheus"]:
        mode = ["--prometheus", str(free_port()), "--attach", "classic"]
    else:
        mode = ["--format", "json", *mode]
    guest = HeldGuest("r:0x3fd:1:3000", "w:0x3f8:1:101")
    t = Traced(*mode, "-p", str(guest.pid))
    perf = PerfRecord()
    guest.start()
    guest.wait_done()
    text = perf.script(guest.pid)
    rc, out, err = t.stop()
    guest.end()
    assert rc == 0, err
    assert text.count("pio_read at 0x3fd ") == 3000
    assert text.count("pio_write at 0x3f8 ") == 101
    if "--prometheus" not in mode:       # one object, or one per interval
        assert sum_rows(out) == {("read", 0x3fd): (3000, 3000), ("write", 0x3f8): (101, 101)}
