"""The fast paths count exactly what the plain paths count.

By port piobpf counts in an array on the raw tracepoint; the plain paths are
the classic tracepoint and the hash map that --by vm uses. All three trace
the same guest at the same time, on a workload whose port changes on every
event."""

from helpers import MIXED, MIXED_EXPECTED, HeldGuest, around_each, needs_tracing, sum_rows

pytestmark = needs_tracing

# 40 sweeps over the 8 serial ports: the key changes on every event.
INTERLEAVED = ["r:0x3f8-0x3ff"] * 40 + ["w:0x2f8-0x2ff:2"] * 40


def test_array_raw_equals_classic_and_hash():
    results = []
    for rc, out, err in around_each(HeldGuest(*INTERLEAVED, *MIXED),
                                    ["--format", "json", "--attach", "raw"],
                                    ["--format", "json", "--attach", "classic"],
                                    ["--format", "json", "--by", "vm", "--attach", "classic"]):
        assert rc == 0, err
        results.append(sum_rows(out))     # by VM: one VM's rows, per port
    expected = dict(MIXED_EXPECTED)
    for port in range(0x3f8, 0x400):
        e, b = expected.get(("read", port), (0, 0))
        expected[("read", port)] = (e + 40, b + 40)
    for port in range(0x2f8, 0x300):
        expected[("write", port)] = (40, 80)
    assert results[0] == results[1] == results[2] == expected


def test_intervals_leave_nothing_behind():
    sums = []
    for rc, out, err in around_each(HeldGuest(*INTERLEAVED, thread_name="CPU 0/KVM"),
                                    ["--format", "json", "-i", "0.1", "--by", "vcpu"],
                                    ["--format", "json", "-i", "0.1"]):
        assert rc == 0, err
        sums.append(sum_rows(out))
    assert sums[0] == sums[1]
    assert sum(e for e, _ in sums[0].values()) == 640
