"""tests/qemuvm.py: real QEMU VMs make exactly the port I/O they promise,
through every monitor form, and the fixtures are this QEMU's own words."""

import json
import re
import socket
import struct
from contextlib import ExitStack

import pytest

from helpers import Traced, by_key, needs_tracing
from qemuvm import (BIOS_SIZE, FIXTURE_DEVICES, FIXTURES, MARKER, MONITORS, QemuVM,
                    SeabiosVM, firmware, firmware_events, flatviews, virtio_net)

OPS = ["r:0x92", "r:0x1f7:1:3", "w:0x80:1:2"]
# Every port instruction of firmware(FIXTURE_DEVICES, OPS), one event each.
EXPECTED = {
    ("write", 0xCF8): (4, 16),        # config address: BAR, then command, per device
    ("write", 0xCFC): (4, 12),        # the BAR (4 bytes), I/O space on (2 bytes)
    ("read", 0xC000): (1000, 4000),   # net0's BAR
    ("read", 0xD000): (300, 1200),    # nic1's BAR
    ("read", 0x92): (1, 1),
    ("read", 0x1F7): (3, 3),
    ("write", 0x80): (2, 2),
    ("write", 0x3F8): (5, 5),         # "done\n"
}


def traced(*vms):
    """piobpf --by vm -p around the VMs' runs, start to marker:
    {VM name: {(direction, port): (events, bytes)}}"""
    t = Traced("--format", "json", "--by", "vm", "-p", ",".join(str(vm.pid) for vm in vms))
    try:
        for vm in vms:
            vm.start()
        for vm in vms:
            vm.wait_done()
    finally:
        rc, out, err = t.stop()
    assert rc == 0, err
    rows = json.loads(out)["rows"]
    assert {(r["pid"], r["vm"]) for r in rows} == {(vm.pid, vm.name) for vm in vms}
    return {vm.name: by_key([r for r in rows if r["pid"] == vm.pid]) for vm in vms}


def bar_line(port, size, region, id):
    return f"  {port:016x}-{port + size - 1:016x} (prio 1, i/o): {region} owner:{{dev id={id}}}"


def test_firmware_events_list_every_instruction():
    assert firmware_events(FIXTURE_DEVICES, OPS) == EXPECTED


def test_image_is_whole_64k_with_a_far_jump_at_the_reset_vector():
    image = firmware(FIXTURE_DEVICES, OPS)
    assert len(image) == BIOS_SIZE
    opcode, entry, segment = struct.unpack_from("<BHH", image, BIOS_SIZE - 16)
    assert (opcode, segment) == (0xEA, 0xF000)
    assert image[entry:BIOS_SIZE - 16].endswith(b"\xfa\xf4\xeb\xfd")   # cli; hlt; jmp
    with pytest.raises(ValueError, match="plain in/out"):
        firmware(ops=["r:0x60:1:3:16"])


@needs_tracing
@pytest.mark.parametrize("monitor", MONITORS)
def test_firmware_port_io_is_exact_through_each_monitor(monitor):
    with QemuVM(f"fw-{monitor}", monitor, FIXTURE_DEVICES, OPS) as vm:
        assert (vm.monitor_path is None) == (monitor == "none")
        counts = traced(vm)[vm.name]
        assert counts == EXPECTED
        assert vm.serial_bytes() == MARKER
        # The BARs sit where the firmware put them, and every monitor form
        # says so in the same text (\r\n line ends included).
        mtree = vm.human("info mtree -f -o")
    lines = mtree.splitlines()
    assert bar_line(0xC000, 0x20, "virtio-pci", "net0") in lines
    assert bar_line(0xD000, 0x40, "e1000-io", "nic1") in lines
    fixture = (FIXTURES / "mtree-firmware.txt").read_bytes().decode()
    assert flatviews(mtree) == flatviews(fixture), \
        "QEMU's mtree differs from the fixture: PYTHONPATH=. /usr/bin/python3 tests/qemuvm.py"


@needs_tracing
@pytest.mark.parametrize("monitor", ["qmp", "chardev-hmp"])
def test_monitor_serves_one_client_at_a_time(monitor):
    """Why start() disconnects at once: a second client's connect() succeeds,
    but QEMU greets it only when the first has gone."""
    with QemuVM("one-client", monitor) as vm, socket.socket(socket.AF_UNIX) as first, \
            socket.socket(socket.AF_UNIX) as second:
        greeting = b'{"QMP"' if monitor.endswith("qmp") else b"QEMU "
        first.connect(vm.monitor_path)
        first.settimeout(10)
        assert first.recv(4096).startswith(greeting)
        second.connect(vm.monitor_path)
        second.settimeout(0.5)
        with pytest.raises(socket.timeout):
            second.recv(4096)
        first.close()
        second.settimeout(10)
        assert second.recv(4096).startswith(greeting)


@needs_tracing
def test_two_vms_same_device_at_different_ports():
    a_dev, b_dev = virtio_net(0xC000, reads=700), virtio_net(0xC100, reads=1300)
    with ExitStack() as stack:
        a = stack.enter_context(QemuVM("vm-a", "qmp", [a_dev]))
        b = stack.enter_context(QemuVM("vm-b", "hmp", [b_dev]))
        counts = traced(a, b)
        assert counts == {"vm-a": firmware_events([a_dev]), "vm-b": firmware_events([b_dev])}
        assert counts["vm-b"][("read", 0xC100)] == (1300, 5200)
        assert bar_line(0xC000, 0x20, "virtio-pci", "net0") in a.human("info mtree -f -o")
        assert bar_line(0xC100, 0x20, "virtio-pci", "net0") in b.human("info mtree -f -o")


@needs_tracing
def test_seabios_boot_touches_legacy_ports_and_the_bars_it_placed():
    with SeabiosVM("seabios", "chardev-hmp") as vm:
        counts = traced(vm)[vm.name]
        assert "SeaBIOS (version" in vm.serial_text() and vm.serial_bytes().endswith(MARKER), \
            vm.serial_text()
        mtree = vm.human("info mtree -f -o")
        noowner = vm.human("info mtree -f")
    for key in [("read", 0x92), ("write", 0x92), ("read", 0x1F7), ("write", 0x1F6),
                ("write", 0x510), ("read", 0x511), ("write", 0xCF8), ("read", 0xCFC)]:
        assert counts.get(key, (0, 0))[0] > 0, f"no {key} in {sorted(counts)}"
    # SeaBIOS's virtio-blk driver booted through disk0's BAR, wherever it put it.
    first, last = (int(x, 16) for x in re.search(
        r"([0-9a-f]{16})-([0-9a-f]{16}) \(prio 1, i/o\): virtio-pci owner:\{dev id=disk0\}",
        mtree).groups())
    assert any(first <= port <= last for _, port in counts), sorted(counts)
    for text, name in ((mtree, "mtree-seabios.txt"), (noowner, "mtree-noowner.txt")):
        fixture = (FIXTURES / name).read_bytes().decode()
        assert flatviews(text) == flatviews(fixture), \
            f"QEMU's mtree differs from {name}: PYTHONPATH=. /usr/bin/python3 tests/qemuvm.py"
