import json

from helpers import fixed_naming
from piobpf.core.keys import Gpa, Key, Proc
from piobpf.core.snapshot import Counts, Snapshot
from piobpf.naming import mmiomap, vms
from piobpf.rows.report import make_report
from piobpf.sinks import formats


def test_vcpu_index():
    assert vms.vcpu_index("CPU 3/KVM") == 3
    assert vms.vcpu_index("CPU 12/KVM") == 12
    assert vms.vcpu_index("qemu-kvm") is None
    assert vms.vcpu_index(None) is None


def fake_proc(tmp, pid, argv, comm, start=100, vm_fd=False):
    """/proc/PID of a process started at `start` (ticks); a VMM holds a kvm-vm fd."""
    d = tmp / str(pid)
    d.mkdir(exist_ok=True)
    (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
    (d / "comm").write_text(comm + "\n")
    # The name in parentheses may hold spaces and parentheses itself.
    (d / "stat").write_text(f"{pid} ({comm} (x) y) S 1 " + " ".join(["0"] * 17)
                            + f" {start} 0 0\n")
    (d / "fd").mkdir(exist_ok=True)
    if vm_fd:
        (d / "fd" / "7").symlink_to("anon_inode:kvm-vm")
    return Proc(pid, start)


def test_labeler_looks_up_once_and_keeps_names_of_gone_processes(tmp_path):
    web1 = fake_proc(tmp_path, 10, ["qemu-system-x86_64", "-name", "guest=web1"], "qemu-system-x86")
    fc = fake_proc(tmp_path, 11, ["firecracker", "--api-sock", "/x"], "firecracker")
    lab = vms.Labeler("vm", {}, proc=str(tmp_path))
    lab.learn(Snapshot({Key("read", 1, web1): Counts(1, 1), Key("read", 1, fc): Counts(1, 1)}))
    for pid in (10, 11):
        for f in ("cmdline", "comm", "stat"):
            (tmp_path / str(pid) / f).unlink()
    assert lab(Key("read", 1, web1)) == {"pid": 10, "vm": "web1"}
    assert lab(Key("read", 1, fc)) == {"pid": 11, "vm": "firecracker"}
    assert lab(Key("read", 1, Proc(12, 100))) == {"pid": 12, "vm": None}


def test_a_recycled_pid_is_another_vm(tmp_path):
    old = fake_proc(tmp_path, 10, ["qemu", "-name", "old"], "qemu", start=100)
    lab = vms.Labeler("vm", {}, proc=str(tmp_path))
    assert lab.vm(old) == "old"
    new = fake_proc(tmp_path, 10, ["qemu", "-name", "new"], "qemu", start=250)
    assert (lab.vm(old), lab.vm(new)) == ("old", "new")
    # A process looked up first after its pid went to another: no name, not the other's.
    assert vms.process_name(Proc(10, 180), str(tmp_path)) is None
    lab.forget([old])
    assert lab.vm(old) is None      # looked up again: gone


def test_vmm_processes_are_those_holding_a_vm(tmp_path):
    web1 = fake_proc(tmp_path, 10, ["qemu", "-name", "guest=web1"], "qemu", vm_fd=True)
    fake_proc(tmp_path, 11, ["bash"], "bash")
    assert vms.vmm_processes(str(tmp_path)) == {web1: "web1"}
    lab = vms.Labeler("vm", {}, proc=str(tmp_path), known={web1: "web1"})
    (tmp_path / "10" / "stat").unlink()
    assert lab.vm(web1) == "web1"


def test_labeler_vcpu_fields(tmp_path):
    web1 = fake_proc(tmp_path, 10, ["qemu", "-name", "web1"], "qemu")
    lab = vms.Labeler("vcpu", {(web1, 21): "CPU 1/KVM", (web1, 22): "worker"},
                        proc=str(tmp_path))
    assert lab(Key("read", 1, web1, 21)) == {"pid": 10, "vm": "web1", "tid": 21,
                                          "thread": "CPU 1/KVM", "vcpu": 1}
    assert lab(Key("read", 1, web1, 22))["vcpu"] is None


SNAP = Snapshot({Key("read", 0x3fd, 10): Counts(5, 5), Key("write", 0x20, 10): Counts(7, 7),
                 Key("read", 0x3fd, 20): Counts(100, 100), Key("read", 0x60, 20): Counts(1, 1),
                 Key("read", 0x61, 20): Counts(2, 2)})
LABEL = {10: "small", 20: "big"}


def report(top=None):
    return make_report(SNAP, 1.0, fixed_naming(by="vm", labeler=lambda k: {
        "pid": k[2], "vm": LABEL[k[2]]}), top, by="vm")


def test_groups_busiest_vm_first_top_per_vm():
    rows = report(top=2).rows
    assert [(r.vm, r.port) for r in rows] == [("big", 0x3fd), ("big", 0x61),
                                               ("small", 0x20), ("small", 0x3fd)]
    assert report(top=2).total_events == 115


def test_vm_table_json_csv_seed():
    r = report()
    lines = formats.table(r).splitlines()
    assert lines[0].split()[:2] == ["VM", "DIR"]
    assert lines[2].split()[:4] == ["big", "[20]", "read", "0x03fd"]
    assert lines[3].split()[:2] == ["read", "0x0061"]        # VM shown once per group
    row = json.loads(formats.json_line(r))["rows"][0]
    assert row == {"direction": "read", "port": 0x3fd, "device": None,
                   "device_source": "host-ioports", "events": 100, "bytes": 100, "pid": 20,
                   "vm": "big"}
    assert formats.csv_text(r).splitlines()[0] == ("direction,port,device,device_source,"
                                                   "events,bytes,pid,vm")
    assert formats.seed(r).splitlines()[0] == "R:0x3fd          105"


def test_table_escapes_control_characters_in_names():
    snap = Snapshot({Key("read", 0x3fd, 10): Counts(5, 5)})
    naming = fixed_naming({0x3fd: "ser\tial\x1b[2J"}, "vm",
                          lambda k: {"pid": 10, "vm": "evil\nread   0x0001  fake"})
    lines = formats.table(make_report(snap, 1.0, naming, by="vm")).splitlines()
    assert len(lines) == 6      # header, rule, one row, blank, summary, footnote
    assert "evil\\nread" in lines[2] and "ser\\tial\\x1b[2J" in lines[2]
    assert not any(ch in "".join(lines) for ch in "\t\x1b")
    # JSON keeps the names as they are: its own escaping is exact.
    assert json.loads(formats.json_line(make_report(snap, 1.0, naming, by="vm")))["rows"][0][
        "vm"] == "evil\nread   0x0001  fake"


def test_without_a_memory_map_mmio_is_named_from_the_pc_fixed_table():
    naming = fixed_naming({0x3fd: "serial"})
    assert naming.device(Key("read", Gpa(0xFEE00030))) == ("lapic", mmiomap.PC_FIXED)
    assert naming.device(Key("read", Gpa(0xFEBC0000))) == ("unassigned", mmiomap.PC_FIXED)
    assert naming.device(Key("read", Gpa(0x3FD))) == ("unassigned", mmiomap.PC_FIXED)
    assert naming.device(Key("read", 0x3FD)) == ("serial", "host-ioports")
