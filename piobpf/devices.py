"""DEVICE of a port, and where the name came from: the VM's own map, else ioports.

QEMU knows which of its devices owns each port of each VM (`info mtree`);
the host's /proc/ioports only knows the host's hardware, which matches a VM
for the legacy PC ports at best. VmmMaps finds QEMU processes with a monitor
and reads their maps in background threads, so a slow or hung monitor never
holds up counting or output: until a VM's map is in, its ports are named
from the fallback table.

A map is read when the VM is first seen, then again when its guest may have
moved a BAR (it wrote PCI configuration data, ports 0xcfc-0xcff) and every
REFRESH seconds (configuration through MMIO is not seen here), never more
often than every MIN_GAP seconds.
"""

import os
import queue
import threading
import time

from . import monitor, mtree, qemucmd
from .names import read_proc
from .snapshot import WRITE

VMM, IOPORTS_FILE, HOST_IOPORTS = "vmm", "ioports-file", "host-ioports"
TIMEOUT = 1.0       # seconds one monitor query may take
MIN_GAP = 1.0       # seconds between two reads of one VM's map, at least
REFRESH = 30.0      # seconds after which a map is read again anyway
WORKERS = 4         # maps read at once
CONFIG_DATA = range(0xCFC, 0xD00)
CONFIG_WRITES = tuple((WRITE, port) for port in CONFIG_DATA)   # the keys worth a look
VARIES = "varies: "


class Vm:
    """One VMM process with a monitor, and what is known of its map."""

    def __init__(self, pid, mon):
        self.pid, self.monitor = pid, mon
        self.map = None         # the last map read (kept when a later read fails)
        self.error = None       # why the last read failed
        self.asked_at = None    # when the last read was queued
        self.writes = 0         # configuration writes counted when it was queued
        self.busy = False       # a read queued or under way


class VmmMaps:
    """The I/O maps of QEMU processes (only `pids`, when given), read in the background."""

    def __init__(self, pids=None, proc="/proc", timeout=TIMEOUT, clock=time.monotonic):
        self._pids, self._proc, self._timeout, self._clock = pids, proc, timeout, clock
        self.vms = {}           # pid -> Vm; kept after exit, to name its counted ports
        self._known = set()     # every pid looked at, VMM or not
        self._queue = queue.SimpleQueue()
        for _ in range(WORKERS):
            # Daemon threads: a query stuck in a hung monitor never delays exit.
            threading.Thread(target=self._work, daemon=True, name="piobpf-vmm").start()
        self.scan()

    def scan(self):
        """Look at processes new since the last scan; queue reads of VMMs' maps."""
        pids = self._pids or {int(d) for d in os.listdir(self._proc) if d.isdigit()}
        for pid in set(pids) - self._known:
            self.see(pid)
        # Forget exited pids, so that a VMM reusing one is still found.
        self._known &= set(pids)

    def see(self, pid):
        """A process seen doing port I/O, or new on the host."""
        if pid in self._known:
            return
        self._known.add(pid)
        cmdline = read_proc(f"{self._proc}/{pid}/cmdline")
        mon = cmdline and qemucmd.find_monitor(cmdline.decode(errors="replace").split("\0"))
        if mon:
            self.vms[pid] = vm = Vm(pid, mon)
            self._ask(vm, 0)

    def learn(self, snapshot):
        """Read again the maps that may have changed; `snapshot` holds the counts
        of configuration writes (per VM with --by vm|vcpu, else of all VMs)."""
        per_vm, writes, total = False, {}, 0
        for key, c in snapshot.counts.items():
            if key[0] == WRITE and key[1] in CONFIG_DATA:
                per_vm = len(key) > 2
                if per_vm:
                    writes[key[2]] = writes.get(key[2], 0) + c.events
                total += c.events
        now = self._clock()
        for vm in self.vms.values():
            count = writes.get(vm.pid, 0) if per_vm else total
            if vm.busy or now - vm.asked_at < MIN_GAP or vm.pid not in self._known:
                continue
            if count != vm.writes or now - vm.asked_at >= REFRESH:
                self._ask(vm, count)

    def _ask(self, vm, writes):
        vm.busy, vm.asked_at, vm.writes = True, self._clock(), writes
        self._queue.put(vm)

    def _work(self):
        while True:
            vm = self._queue.get()
            try:
                vm.map = mtree.parse(monitor.ask(vm.monitor, vm.pid, self._timeout))
                vm.error = None
            except (monitor.MonitorError, ValueError) as e:
                vm.error = str(e)
            vm.busy = False

    def map_of(self, pid):
        vm = self.vms.get(pid)
        return vm.map if vm else None

    def maps(self):
        return [vm.map for vm in list(self.vms.values()) if vm.map]


class DeviceNames:
    """(device, source) of a port: the VM's map (`pid`), or the map every VM
    agrees on (by port, no pid), else the fallback ioports `table`."""

    def __init__(self, table, source=HOST_IOPORTS, maps=None):
        self.table, self.source, self.maps = table, source, maps

    def __call__(self, port, pid=None):
        if self.maps:
            if pid is not None:
                found = self.maps.map_of(pid)
                if found:
                    return found.lookup(port), VMM
            else:
                names = {m.lookup(port) for m in self.maps.maps()}
                if names:
                    return agreed(names), VMM
        return self.table.lookup(port), self.source


def agreed(names):
    """The one name of a port that several VMs give it, or all of them, plainly.

    A VM where nothing claims the port has no say while another names it."""
    named = sorted(names - {mtree.UNASSIGNED}) or [mtree.UNASSIGNED]
    return named[0] if len(named) == 1 else VARIES + " | ".join(named)
