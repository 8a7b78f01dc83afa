"""Monitors that answer nonsense, beside a real QEMU: each is its own VM's
trouble. Each hostile monitor is served by its VMM's own process (a real KVM
guest, tests/scripted_vmm.py), as a hostile QEMU would: piobpf speaks only
to a VM's own monitor, so that is where nonsense can come from."""

import json
import os
import re
import subprocess
import tempfile
import time
from types import SimpleNamespace

from helpers import PY, HeldGuest, ScriptedGuest, around_all, needs_tracing, tool
from piobpf.core.keys import Gpa, Key
from piobpf.core.snapshot import Counts
from piobpf.naming import devices, mtree
from qemuvm import QemuVM, firmware_events, virtio_net

pytestmark = needs_tracing

G = '{"QMP": {"version": {}, "capabilities": []}}\n'
OK = '{"return": {}}\n'
# (protocol, what the monitor says: the first at once, each next one after a
# request line). Every QMP one but the last killed a naming worker before.
HOSTILE = {
    "number-greeting": ("qmp", ["5\n"]),
    "error-string": ("qmp", [G, '{"error": "boom"}\n']),
    "number-return": ("qmp", [G, OK, '{"return": 5}\n']),
    "string-greeting": ("qmp", ['"QMP"\n', OK, '{"return": ["io"]}\n']),
    "deep-nesting": ("qmp", ["[" * 100000 + "]" * 100000 + "\n"]),
    "list-reply": ("qmp", [G, "[1, 2]\n"]),
    "hmp-garbage": ("hmp", ["\x00\xff\x1b[2J junk (qemu) ", "\xde\xad no map\r\n(qemu) "]),
    "silent": ("qmp", []),     # accepts, never speaks: the per-VM deadline
}
WRITES = 50         # each hostile guest's PCI configuration writes,
DELAY_US = 200000   # one each 0.2 s: re-read triggers for 10 s


def backed_off(seconds):
    """How often a failing monitor may be asked in `seconds`: at 0, then after
    2, 4, 8, 16 s more (0, 2, 6, 14, 30), as devices.BACKOFF doubles."""
    asks, at, gap = 0, 0.0, devices.BACKOFF
    while at <= seconds:
        asks, at, gap = asks + 1, at + gap, gap * 2
    return asks


def test_hostile_monitors_beside_a_real_qemu_still_named():
    folder = tempfile.mkdtemp(prefix="hostile-")
    guests = {}
    devices = (virtio_net(0xC040, 2000),)
    try:
        for name, (protocol, script) in HOSTILE.items():
            guests[name] = ScriptedGuest([f"w:0xcfc:1:{WRITES}"],
                                         os.path.join(folder, f"{name}.sock"), script,
                                         protocol, ("--delay", f"0xcfc:{DELAY_US}"), name=name)
        with QemuVM("good", "qmp", devices) as vm:
            began = time.monotonic()
            # the good VM's map is read again after its BARs moved
            rc, out, err, tracer = around_all([*guests.values(), vm], "--format", "json",
                                              "--by", "vm", settle=3)
            lasted = time.monotonic() - began
    finally:
        for g in guests.values():
            g.end()
    assert rc == 0, err
    assert "Traceback" not in err and "Exception" not in err, err
    rows = json.loads(out)["rows"]

    # The real QEMU is named from its own map, as if it were alone.
    good = {(r["direction"], r["port"]): r for r in rows if r["pid"] == vm.pid}
    assert {k: (r["events"], r["bytes"]) for k, r in good.items()} == firmware_events(devices)
    assert (good[("read", 0xC040)]["device"], good[("read", 0xC040)]["device_source"]) \
        == ("virtio-pci net0", "vmm")
    assert {r["device_source"] for r in good.values()} == {"vmm"}

    lines = err.splitlines()
    for name, g in guests.items():
        mine = [r for r in rows if r["pid"] == g.pid]
        # Counted in full, named from the host like any VM without a map.
        assert [(r["direction"], r["port"], r["events"], r["device_source"]) for r in mine] \
            == [("write", 0xCFC, WRITES, "host-ioports")], name
        # One line says why, however often it was asked.
        said = [ln for ln in lines if re.match(rf"piobpf: pid {g.pid}: no device map ", ln)]
        assert len(said) == 1, (name, err)
        # Backed off, not asked at every one of the 10 s of configuration
        # writes (about 10 times).
        asked = len(g.connections(by=tracer))
        assert 1 <= asked <= backed_off(lasted), (name, asked, lasted)
    assert not [ln for ln in lines if f"pid {vm.pid}:" in ln], err


def qmp_map(text):
    """A QMP monitor's words that answer `text` to the query."""
    return [G, OK, json.dumps({"return": text}) + "\n"]


def io_map(*ranges):
    """`info mtree -f -o` text of one-port ranges (port, name)."""
    lines = ["FlatView #0", ' AS "I/O", root: io', " Root memory region: io"]
    lines += [f"  {p:016x}-{p:016x} (prio 0, i/o): {n}" for p, n in ranges]
    return "\r\n".join(lines) + "\r\n"


class Snapshot:
    counts = {}     # no configuration writes: only REFRESH asks again


def read_map(maps, vm, clock):
    """Ask again (the clock past REFRESH) and wait for the read to end."""
    clock[0] += devices.REFRESH
    maps.refresh(Snapshot)
    wait(vm)


def wait(vm, timeout=10):
    deadline = time.monotonic() + timeout
    while vm.busy and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not vm.busy


def test_an_unchanged_answer_is_not_parsed_again_and_a_huge_one_refused(tmp_path, capsys):
    path = str(tmp_path / "m.sock")
    guest = ScriptedGuest(["r:0x510"], path, qmp_map(io_map((0x510, "fwcfg"))))
    clock = [1000.0]
    try:
        # A deadline for a 3.5 MB answer on a busy host; the clock only ours.
        maps = devices.VmmMaps([guest.pid], timeout=5, clock=lambda: clock[0])
        (vm,) = maps.vms.values()
        wait(vm)     # the first read, queued when seen
        first = vm.map
        assert first.lookup(0x510) == "fwcfg"
        read_map(maps, vm, clock)
        assert len(guest.connections(by=os.getpid())) == 2 and vm.map is first      # asked, not parsed
        guest.set_script(qmp_map(io_map((0x510, "fwcfg"), (0x92, "port92"))))
        read_map(maps, vm, clock)
        assert vm.map is not first and vm.map.lookup(0x92) == "port92"
        # One range over the bound: refused, the last map kept, one line.
        kept = vm.map
        guest.set_script(qmp_map(io_map(*((p, "d") for p in range(mtree.MAX_RANGES + 1)))))
        read_map(maps, vm, clock)
        assert len(guest.connections(by=os.getpid())) == 4 and vm.map is kept
        maps.scan()     # prints what the workers found
        err = capsys.readouterr().err
        assert err == (f"piobpf: pid {guest.pid}: no device map from its monitor (qmp {path}): "
                       f"more than 65536 ranges in the I/O map; its ports keep their last names\n")
    finally:
        guest.end()


def memory_map(*ranges):
    """io_map's text with a memory space of ranges (start, end, name)."""
    lines = ["FlatView #1", ' AS "memory", root: system', " Root memory region: system"]
    lines += [f"  {s:016x}-{e:016x} (prio 1, i/o): {n}" for s, e, n in ranges]
    return io_map((0x510, "fwcfg")) + "\r\n".join(lines) + "\r\n"


HPET = (0xFED00000, 0xFED003FF, "hpet")
E1000 = (0xFEBC0000, 0xFEBDFFFF, "e1000-mmio owner:{dev id=nic1}")


def test_an_unassigned_gpa_asks_once_for_the_memory_map_again(tmp_path):
    # A BAR placed after the first read (MMIO configuration, which the port
    # watch cannot see): the first access to its unassigned address asks
    # again, once per address, no sooner than MIN_GAP after the last read.
    path = str(tmp_path / "m.sock")
    guest = ScriptedGuest(["r:0x510"], path, qmp_map(memory_map(HPET)))
    asked = lambda: len(guest.connections(by=os.getpid()))
    clock = [1000.0]
    try:
        maps = devices.VmmMaps([guest.pid], timeout=5, clock=lambda: clock[0], memory=True)
        names = devices.DeviceNames(None, maps=maps)
        (vm,) = maps.vms.values()
        wait(vm)
        nic = Gpa(0xFEBC0008)
        assert names(nic, vm.proc) == ("unassigned", devices.VMM)
        assert names(Gpa(0xFED000F0), vm.proc) == ("hpet", devices.VMM)
        assert names(0x510, vm.proc) == ("fwcfg", devices.VMM)     # one answer, both maps
        guest.set_script(qmp_map(memory_map(HPET, E1000)))
        reached = lambda *gpas: SimpleNamespace(counts={Key("read", Gpa(g), vm.proc): Counts(1, 4)
                                                        for g in gpas})
        maps.refresh(reached(nic))                  # within MIN_GAP of the first read: later
        assert asked() == 1 and vm.due
        clock[0] += devices.MIN_GAP
        maps.refresh(reached(0xFED000F0))           # a named address asks nothing, the due one goes
        wait(vm)
        assert asked() == 2
        assert names(nic, vm.proc) == ("e1000-mmio nic1", devices.VMM)
        assert names(nic, None) == ("e1000-mmio nic1", devices.VMM)   # by port, the VMs agree
        clock[0] += devices.MIN_GAP
        gap = Gpa(0xC0000000)
        maps.refresh(reached(gap))                  # unassigned: asks once ...
        wait(vm)
        clock[0] += devices.MIN_GAP
        maps.refresh(reached(gap, nic))             # ... and no more
        wait(vm)
        assert asked() == 3
        assert names(gap, vm.proc) == ("unassigned", devices.VMM)
    finally:
        guest.end()


@needs_tracing
def test_a_monitor_path_that_hangs_stalls_nothing(tmp_path):
    # A socket path through a filesystem whose server never answers (a FUSE
    # mount, as any user with fusermount may make): the walk hangs in a child
    # of piobpf's, which holds none of its fds; the run ends on time, exact,
    # the VM named from the fallback and said so. Before, the naming workers
    # hung in the kernel for good, and so did piobpf's exit (even SIGKILL's).
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    fs = subprocess.Popen([PY, tool("hungfs.py"), str(mnt)], stdout=subprocess.PIPE, text=True)
    g = None
    try:
        assert fs.stdout.readline() == "mounted\n"
        g = HeldGuest("r:0x3fd:1:7", name="hung", args=("-qmp", f"unix:{mnt}/sub/q.sock,server=on"))
        rc, out, err, _ = around_all([g], "--format", "json", "--by", "vm", settle=2)
    finally:
        if g:
            g.end()
        fs.kill()
        fs.wait()
        subprocess.run(["umount", "-l", str(mnt)], check=False)
    assert rc == 0, err
    rows = json.loads(out)["rows"]
    assert [(r["vm"], r["port"], r["events"], r["device_source"]) for r in rows] == [
        ("hung", 0x3FD, 7, "host-ioports")]
    assert err.count("\n") == 1 and "no answer in time (monitor socket " \
        f"{mnt}/sub/q.sock: its path did not resolve)" in err, err


def test_a_process_that_runs_no_vm_is_not_asked_for_what_its_argv_says(tmp_path):
    # Anyone may write a monitor into argv: hundreds of such processes, each
    # serving a silent socket, kept the naming workers from real VMs for good.
    # A process is asked once it holds a KVM VM (or the kernel counts it).
    path = str(tmp_path / "m.sock")
    sham = subprocess.Popen([PY, "-c", "import time; time.sleep(60)",
                             "-qmp", f"unix:{tmp_path}/sham.sock,server=on"])
    guest = ScriptedGuest(["r:0x510"], path, qmp_map(io_map((0x510, "fwcfg"))))
    try:
        maps = devices.VmmMaps([sham.pid, guest.pid], timeout=5)
        (vm,) = maps.vms.values()
        assert vm.proc.pid == guest.pid
        wait(vm)
        assert vm.map.lookup(0x510) == "fwcfg"
    finally:
        sham.kill()
        sham.wait()
        guest.end()
