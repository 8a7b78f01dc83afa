"""The test guest's MMIO ops against the real kvm:kvm_mmio tracepoint, counted
by real perf on the guest process alone (no other helper's guest in it)."""

import json
import re
import subprocess
from collections import Counter

import pytest

from helpers import ENV, GUEST, needs_tracing, run_piobpf
from piobpf.core.keys import Gpa, Key
from piobpf.core.snapshot import Counts
from piobpf.offline import perfscript
from test_compare import as_json
from tools import guest

pytestmark = needs_tracing
DONE = ("write", 1, guest.DONE_GPA)     # the done marker's write, one per vCPU


def guest_cmd(*args):
    return [*GUEST, *args]


def perf_record(tmp_path, *args, events=("kvm:kvm_mmio", "kvm:kvm_fast_mmio", "kvm:kvm_pio")):
    """perf record of the guest process and its threads; (guest stdout, perf script text)."""
    data = tmp_path / "perf.data"
    cmd = ["perf", "record", "-q", "-o", str(data)]
    for e in events:
        cmd += ["-e", e]
    out = subprocess.run(cmd + ["--"] + guest_cmd(*args), env=ENV, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    script = subprocess.run(["perf", "script", "-i", str(data)], capture_output=True,
                            text=True, timeout=300)
    assert script.returncode == 0, script.stderr
    return out.stdout, script.stdout


_MMIO = re.compile(r"kvm_mmio: mmio (\S+) len (\d+) gpa 0x([0-9a-f]+)")
_FAST = re.compile(r"kvm_fast_mmio: fast mmio at gpa 0x([0-9a-f]+)")


def mmio_events(text):
    """Counter of (type, len, gpa) of kvm_mmio lines, and of gpa of kvm_fast_mmio."""
    mmio = Counter((m[1], int(m[2]), int(m[3], 16)) for m in _MMIO.finditer(text))
    return mmio, Counter(int(m[1], 16) for m in _FAST.finditer(text))


def test_perf_stat_each_write_once_each_user_space_read_twice():
    out = subprocess.run(
        ["perf", "stat", "-x,", "-e", "kvm:kvm_mmio,kvm:kvm_userspace_exit,kvm:kvm_pio", "--"]
        + guest_cmd("mr:0xfebc0000:4:1000", "mw:0xfebc0004:4:500", "mr:0x10000:1:7",
                    "mw:0xfed00000:2:3", "r:0x3fd:1:11"),
        env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "done exits=1521 " in out.stdout
    counts = {line.split(",")[2]: int(line.split(",")[0])
              for line in out.stderr.splitlines() if ",kvm:" in line}
    # 1007 reads x 2 (unsatisfied-read out, read back in) + 503 writes + the done marker.
    assert counts == {"kvm:kvm_mmio": 2 * 1007 + 503 + 1,
                      "kvm:kvm_userspace_exit": 1007 + 503 + 11 + 1, "kvm:kvm_pio": 11}


def test_every_access_by_type_size_and_gpa_on_two_vcpus(tmp_path):
    stdout, text = perf_record(
        tmp_path, "mr:0xfebc0000:4:3", "mw:0xfebc0004:2:2", "mr:0x10001:1", "w:0x80",
        "+", "mw:0xfffffffc:4:5", "mr:0xc0000000:2:4", "mw:0x1fffe:2")
    assert "done exits=17 " in stdout
    mmio, fast = mmio_events(text)
    assert mmio == Counter({("unsatisfied-read", 4, 0xfebc0000): 3, ("read", 4, 0xfebc0000): 3,
                            ("write", 2, 0xfebc0004): 2,
                            ("unsatisfied-read", 1, 0x10001): 1, ("read", 1, 0x10001): 1,
                            ("write", 4, 0xfffffffc): 5,
                            ("unsatisfied-read", 2, 0xc0000000): 4, ("read", 2, 0xc0000000): 4,
                            ("write", 2, 0x1fffe): 1, DONE: 2})
    assert not fast and text.count("kvm:kvm_pio:") == 1


def test_in_kernel_lapic_and_ioapic_reads_fire_once(tmp_path):
    # With the in-kernel irqchip KVM answers the LAPIC and IOAPIC itself: a
    # read is one `read`, no unsatisfied-read, and nothing exits.
    stdout, text = perf_record(tmp_path, "--irqchip", "mr:0xfee00030:4:2", "mw:0xfee00080:4",
                               "mr:0xfec00010:4:3", "mw:0xfec00000:4")
    assert "done exits=0 " in stdout
    mmio, _ = mmio_events(text)
    assert mmio == Counter({("read", 4, 0xfee00030): 2, ("write", 4, 0xfee00080): 1,
                            ("read", 4, 0xfec00010): 3, ("write", 4, 0xfec00000): 1, DONE: 1})


def test_ioeventfd_writes_stay_in_the_kernel(tmp_path):
    # A zero-length ioeventfd takes each write in the kernel: kvm_fast_mmio on
    # VMX's EPT-misconfig fast path, else (SVM, shadow paging, no MMIO caching)
    # an emulated write, kvm_mmio `write`. Either way one event a write, no exit.
    stdout, text = perf_record(tmp_path, "ew:0xfe003000:4:7", "ew:0xfe003004:2:3",
                               "mw:0xfe003008:1")
    assert "done exits=1 " in stdout
    mmio, fast = mmio_events(text)
    writes = Counter({gpa: n for (kind, _, gpa), n in mmio.items() if kind == "write"})
    assert writes + fast == Counter({0xfe003000: 7, 0xfe003004: 3, 0xfe003008: 1,
                                     guest.DONE_GPA: 1})
    assert set(mmio) <= {("write", 4, 0xfe003000), ("write", 2, 0xfe003004),
                         ("write", 1, 0xfe003008), DONE}


@pytest.mark.parametrize("op,why", [
    ("mr:0x8000", "GPA 0x10000-0xffffffff"),            # the guest's own RAM: no exit
    ("mw:0x20000", "not the done marker"),
    ("mw:0x1ffff:2", "a multiple of it"),                # unaligned
    ("mr:0x7fffe000:4", "KVM's TSS"),
    ("mr:0xfffffffc:8", "size 1/2/4"),
    ("mr:0x100000000", "GPA 0x10000-0xffffffff"),
    ("mr:0x10000:1:0", "reps >= 1"),
    ("mr:0x10000:1:1:1", "want mr|mw|ew:GPA"),
])
def test_bad_mmio_ops_are_refused(op, why):
    out = subprocess.run(guest_cmd(op), env=ENV, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and why in out.stderr and out.stderr.startswith("guest: bad op")


def test_an_eventfd_gpa_cannot_also_be_read_or_written():
    out = subprocess.run(guest_cmd("ew:0xfe003000", "+", "mw:0xfe003000"), env=ENV,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "ew GPA" in out.stderr


def test_real_perf_of_mmio_and_ports_compares_equal_to_the_ops(tmp_path):
    # perf's own record of the guest, parsed (unsatisfied-reads dropped), is
    # exactly the ops; --compare matches it per (space, direction, address).
    ops = ["mr:0xfebc0000:4:300", "mw:0xfebc0000:4:200", "mr:0xfebc0010:2:7", "r:0x3fd:1:5",
           "+", "mw:0xfed00000:1:9", "w:0x80:2:3", "ew:0xfebff000:2:6"]
    stdout, text = perf_record(tmp_path, *ops)
    assert "done exits=524 " in stdout
    expected = {Key("read", Gpa(0xfebc0000)): Counts(300, 1200),
                Key("write", Gpa(0xfebc0000)): Counts(200, 800),
                Key("read", Gpa(0xfebc0010)): Counts(7, 14), Key("read", 0x3fd): Counts(5, 5),
                Key("write", Gpa(0xfed00000)): Counts(9, 9), Key("write", 0x80): Counts(3, 6),
                Key("write", Gpa(guest.DONE_GPA)): Counts(2, 2)}
    # ew: one write a write, of 2 bytes (kvm_mmio) or of unknown size (kvm_fast_mmio).
    fast = text.count("kvm:kvm_fast_mmio:")
    expected[Key("write", Gpa(0xfebff000))] = Counts(6, 2 * (6 - fast))
    parsed = perfscript.parse(text.splitlines(keepends=True))
    assert parsed.snapshot.counts == expected and parsed.malformed == 0
    perf_file = tmp_path / "perf.txt"
    perf_file.write_text(text)
    result = tmp_path / "ops.json"
    result.write_text(as_json(expected))
    out = run_piobpf("--compare", str(perf_file), str(result), "--format", "json")
    assert out.returncode == 0, out.stdout + out.stderr
    obj = json.loads(out.stdout)
    assert obj["equal"] and len(obj["rows"]) == 8
    assert {r["device"] for r in obj["rows"] if r["space"] == "mmio"} == {"hpet", "unassigned"}
