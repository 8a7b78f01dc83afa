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
often than every MIN_GAP seconds. A VM is a process (a Proc), so a map is
never taken for that of a new process with a recycled pid.
"""

import os
import queue
import threading
import time

from . import monitor, mtree, names, qemucmd
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

    def __init__(self, proc, mon):
        self.proc, self.monitor = proc, mon
        self.map = None         # the last map read (kept when a later read fails)
        self.asked_at = None    # when the last read was queued
        self.writes = 0         # configuration writes counted when it was queued
        self.busy = False       # a read queued or under way


class VmmMaps:
    """The I/O maps of QEMU processes (only `pids`, when given), read in the background."""

    def __init__(self, pids=None, proc="/proc", timeout=TIMEOUT, clock=time.monotonic):
        self._pids, self._proc, self._timeout, self._clock = pids, proc, timeout, clock
        self.vms = {}           # Proc -> Vm; kept after exit until forgotten, to name its ports
        self._known = set()     # every Proc looked at, VMM or not, while its pid runs
        self._queue = queue.SimpleQueue()
        for _ in range(WORKERS):
            # Daemon threads: a query stuck in a hung monitor never delays exit.
            threading.Thread(target=self._work, daemon=True, name="piobpf-vmm").start()
        self.scan()

    def scan(self):
        """Look at processes new since the last scan; queue reads of VMMs' maps.
        Returns the VMMs whose process has exited since."""
        pids = set(self._pids or {int(d) for d in os.listdir(self._proc) if d.isdigit()})
        for pid in pids - {p.pid for p in self._known}:
            p = names.process(pid, self._proc)
            if p:
                self.see(p)
        # Forget exited processes, so that a VMM reusing a pid is still found.
        gone = {p for p in self._known if p.pid not in pids}
        self._known -= gone
        return [p for p in gone if p in self.vms]

    def see(self, p):
        """A process (Proc) seen doing port I/O, or new on the host."""
        if p in self._known:
            return
        self._known.add(p)
        cmdline = names.read_proc(f"{self._proc}/{p.pid}/cmdline")
        mon = cmdline and qemucmd.find_monitor(cmdline.decode(errors="replace").split("\0"))
        if mon and names.start_time(p.pid, self._proc) == p.start:   # read of `p`
            self.vms[p] = vm = Vm(p, mon)
            self._ask(vm, 0)

    def forget(self, procs):
        """Drop the maps of these exited VMs."""
        for p in procs:
            self.vms.pop(p, None)

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
            count = writes.get(vm.proc, 0) if per_vm else total
            if vm.busy or now - vm.asked_at < MIN_GAP or vm.proc not in self._known:
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
                vm.map = mtree.parse(monitor.ask(vm.monitor, vm.proc.pid, self._timeout))
            except (monitor.MonitorError, ValueError):
                pass    # the fallback names its ports; the next trigger tries again
            vm.busy = False

    def map_of(self, proc):
        vm = self.vms.get(proc)
        return vm.map if vm else None

    def maps(self):
        return [vm.map for vm in list(self.vms.values()) if vm.map]


class DeviceNames:
    """(device, source) of a port: the VM's map (`proc`), or the map every VM
    agrees on (by port, no VM), else the fallback ioports `table`."""

    def __init__(self, table, source=HOST_IOPORTS, maps=None):
        self.table, self.source, self.maps = table, source, maps

    def __call__(self, port, proc=None):
        if self.maps:
            if proc is not None:
                found = self.maps.map_of(proc)
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
