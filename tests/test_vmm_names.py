"""DEVICE from each VM's own device model: real QEMU VMs, their monitors, the
real tracepoint. The host's /proc/ioports knows none of these BARs."""

import json
import os
import socket

import pytest

from helpers import around_all, by_key, needs_tracing
from piobpf.naming import ioports
from qemuvm import QemuVM, SeabiosVM, e1000, firmware_events, virtio_net

pytestmark = needs_tracing

# A look each second sees the firmware program its BARs (writes of PCI
# configuration data) and reads the VM's map again: within two seconds.
SETTLE = 3.0


def trace(vms, *args):
    """piobpf -p around the VMs' runs, start to marker, then the refresh."""
    rc, out, err, _ = around_all(vms, "--format", "json", *args, settle=SETTLE)
    assert rc == 0, err
    return json.loads(out)


def named(rows):
    return {(r["direction"], r["port"]): (r["device"], r["device_source"]) for r in rows}


@pytest.mark.parametrize("monitor", ["qmp", "hmp", "chardev-qmp", "chardev-hmp"])
def test_busiest_row_names_the_bar_device_by_id(monitor):
    devices = (virtio_net(0xC040, 20000),)
    with QemuVM(f"vmm-{monitor}", monitor, devices) as vm:
        result = trace([vm])
    top = result["rows"][0]
    assert (top["direction"], top["port"], top["events"]) == ("read", 0xC040, 20000)
    assert (top["device"], top["device_source"]) == ("virtio-pci net0", "vmm")
    assert ioports.load().lookup(0xC040) != "virtio-pci net0"   # the host has no such thing
    assert by_key(result["rows"]) == firmware_events(devices)    # naming costs no count
    assert {r["device_source"] for r in result["rows"]} == {"vmm"}


def test_by_vm_names_each_vm_from_its_own_map():
    a_devices = (virtio_net(0xC000, 3000),)
    b_devices = (e1000(0xC000, 2000), virtio_net(0xC100, 1000))
    with QemuVM("vm-a", "qmp", a_devices) as a, QemuVM("vm-b", "chardev-qmp", b_devices) as b:
        result = trace([a, b], "--by", "vm")
        rows = {pid: named(r for r in result["rows"] if r["pid"] == pid)
                for pid in (a.pid, b.pid)}
    assert rows[a.pid][("read", 0xC000)] == ("virtio-pci net0", "vmm")
    assert rows[b.pid][("read", 0xC000)] == ("e1000-io nic1", "vmm")
    assert rows[b.pid][("read", 0xC100)] == ("virtio-pci net0", "vmm")


def test_by_port_says_plainly_where_vms_disagree():
    with QemuVM("vm-c", "qmp", (virtio_net(0xC000, 300), e1000(0xD000, 200))) as c, \
            QemuVM("vm-d", "hmp", (e1000(0xC000, 100), virtio_net(0xD040, 50))) as d:
        rows = named(trace([c, d])["rows"])
    assert rows[("read", 0xC000)] == ("varies: e1000-io nic1 | virtio-pci net0", "vmm")
    # Where one VM names a port and in the other nothing claims it: the name.
    assert rows[("read", 0xD000)] == ("e1000-io nic1", "vmm")
    assert rows[("read", 0xD040)] == ("virtio-pci net0", "vmm")


def test_seabios_legacy_ports_named_from_qemu():
    with SeabiosVM("seabios") as vm:
        rows = trace([vm], "--by", "vm")["rows"]
    got = named(rows)
    assert got[("read", 0x92)] == ("port92", "vmm")
    assert got[("read", 0x1F7)] == ("ide", "vmm")
    assert got[("write", 0x510)] == ("fwcfg", "vmm")
    assert got[("read", 0xC000)] == ("virtio-pci disk0", "vmm")    # the boot disk's BAR
    assert {r["device_source"] for r in rows} == {"vmm"}


def test_vm_without_monitor_is_named_from_host_ioports():
    devices = (virtio_net(0xC040, 500),)
    with QemuVM("nomon", "none", devices) as vm:
        result = trace([vm])
    host = ioports.load()
    assert {r["device_source"] for r in result["rows"]} == {"host-ioports"}
    assert all(r["device"] == host.lookup(r["port"]) for r in result["rows"])
    assert by_key(result["rows"]) == firmware_events(devices)


def test_device_map_host_asks_no_vm():
    devices = (virtio_net(0xC040, 500),)
    with QemuVM("hostmap", "qmp", devices) as vm:
        result = trace([vm], "--device-map", "host")
    assert {r["device_source"] for r in result["rows"]} == {"host-ioports"}


def test_a_monitor_that_never_answers_delays_nothing():
    # The harness drives the VM through stdio; its QMP socket, the one piobpf
    # finds, is taken by a client that never reads: QEMU serves one at a
    # time, so piobpf's connection is accepted and never greeted.
    devices = (virtio_net(0xC040, 5000),)
    with QemuVM("held", "none", devices,
                extra=["-qmp", "unix:held.sock,server=on,wait=off"]) as vm:
        holder = socket.socket(socket.AF_UNIX)
        holder.connect(os.path.join(vm.dir, "held.sock"))
        try:
            result = trace([vm], "--by", "vm")
        finally:
            holder.close()
    assert by_key(result["rows"]) == firmware_events(devices)
    assert {r["device_source"] for r in result["rows"]} == {"host-ioports"}
