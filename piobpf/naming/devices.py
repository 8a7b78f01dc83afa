"""DEVICE of a port, and where the name came from: the VM's own map, else ioports.

QEMU knows which of its devices owns each port of each VM (`info mtree`);
the host's /proc/ioports only knows the host's hardware, which matches a VM
for the legacy PC ports at best. VmmMaps finds QEMU processes with a monitor
and reads their maps in background threads, so a slow or hung monitor never
holds up counting or output: until a VM's map is in, its ports are named
from the fallback table.

A map is read when the VM is first seen, then again when its guest may have
moved a BAR (it wrote PCI configuration data, ports 0xcfc-0xcff), when
(--mmio) it reached a guest-physical address that its last map left
unassigned (a BAR placed by the firmware since: each such address asks
once), and every REFRESH seconds (configuration through MMIO is not seen
here), never more often than every MIN_GAP seconds. With --mmio the VM's
memory map is parsed from the same answer as its I/O map: one query. A VM
is a process (a Proc), so a map is never taken for that of a new process
with a recycled pid.

A monitor that is not the VM's own (monitor.NotOwn: a socket of another
user or process, a libvirt domain whose pid file names another process) is
sent nothing: its VM is named from the fallback, with one line on stderr.
Whatever a monitor answers is its VM's trouble only: a failed read is one
line on stderr (the first of a run of failures), its ports keep the fallback
names, and it is asked again only after a backoff that doubles up to REFRESH,
so a hostile or broken monitor cannot keep the workers from other VMs.
"""

import contextlib
import hashlib
import os
import queue
import sys
import threading
import time

from ..core.keys import Key, MMIO, WRITE, space
from . import mmiomap, monitor, mtree, qemucmd, vms
from .monitor import MonitorError

VMM, IOPORTS_FILE, HOST_IOPORTS = "vmm", "ioports-file", "host-ioports"
TIMEOUT = 1.0       # seconds one monitor query may take
MIN_GAP = 1.0       # seconds between two reads of one VM's map, at least
REFRESH = 30.0      # seconds after which a map is read again anyway
WORKERS = 4         # maps read at once
BACKOFF = 2.0       # seconds before a VM whose read failed is asked again; doubles
CONFIG_DATA = range(0xCFC, 0xD00)
CONFIG_WRITES = tuple(Key(WRITE, port) for port in CONFIG_DATA)   # the keys worth a look
VARIES = "varies: "


class Vm:
    """One VMM process with a monitor, and what is known of its map."""

    def __init__(self, proc, mon, name):
        self.proc, self.monitor, self.name = proc, mon, name   # name: for stderr lines
        self.map = None         # the last map read (kept when a later read fails)
        self.asked_at = None    # when the last read was queued
        self.writes = 0         # configuration writes counted when it was queued
        self.busy = False       # a read queued or under way
        self.failures = 0       # reads failed in a row
        self.retry_at = 0.0     # not asked again before (the backoff after a failure)
        self.answer = None      # digest of the last answer parsed,
        self.refused = None     # and why it gave no map (None: it gave `map`)
        self.memory = None      # --mmio: the memory map of the last answer that had one
        self.unknown = set()    # guest-physical addresses that asked for a read already
        self.due = False        # one of them asks for a read now


class VmmMaps:
    """The I/O maps (with `memory`, also the memory maps) of QEMU processes
    (only `pids`, when given), read in the background."""

    def __init__(self, pids=None, proc="/proc", timeout=TIMEOUT, clock=time.monotonic,
                 memory=False):
        self._pids, self._proc, self._timeout, self._clock = pids, proc, timeout, clock
        self.memory = memory
        self.vms = {}           # Proc -> Vm; kept after exit until forgotten, to name its ports
        self._known = set()     # every Proc looked at, VMM or not, while its pid runs
        self._queue = queue.SimpleQueue()
        self._reports = queue.SimpleQueue()     # lines for stderr, printed by scan()
        for _ in range(WORKERS):
            # Daemon threads: a query stuck in a hung monitor never delays exit.
            threading.Thread(target=self._work, daemon=True, name="piobpf-vmm").start()
        self.scan()

    def scan(self):
        """Look at processes new since the last scan; queue reads of VMMs' maps.
        Returns the VMMs whose process has exited since."""
        self.report()
        pids = set(self._pids or {int(d) for d in os.listdir(self._proc) if d.isdigit()})
        for pid in pids - {p.pid for p in self._known}:
            p = vms.process(pid, self._proc)
            if p:
                self.see(p, counted=False)
        # Forget exited processes, so that a VMM reusing a pid is still found;
        # a VMM's pid may already be another process's (or -p's pid recycled).
        gone = {p for p in self._known if p.pid not in pids}
        gone |= {p for p in self.vms if p in self._known and p not in gone
                 and vms.start_time(p.pid, self._proc) != p.start}
        self._known -= gone
        return [p for p in gone if p in self.vms]

    def see(self, p, counted=True):
        """A process (Proc) the kernel counted, or (not `counted`) new on the host."""
        if p in self._known:
            return
        cmdline = vms.read_proc(f"{self._proc}/{p.pid}/cmdline")
        mon = cmdline and qemucmd.find_monitor(cmdline.decode(errors="replace").split("\0"))
        if mon and not counted and not vms.runs_vm(p.pid, self._proc):
            # Anyone may write a monitor into argv: a process is asked once it
            # holds a KVM VM (looked at again each scan) or counts, so that
            # hundreds of sham ones cannot keep the workers from real VMs.
            return
        self._known.add(p)
        if mon:
            name = vms.process_name(p, self._proc)     # None: not `p` by now
            if name is not None:
                self.vms[p] = vm = Vm(p, mon, name)
                self._ask(vm, 0)

    def forget(self, procs):
        """Drop the maps of these exited VMs."""
        for p in procs:
            self.vms.pop(p, None)

    def refresh(self, snapshot):
        """Read again the maps that may have changed; `snapshot` holds the counts
        of configuration writes (per VM with --by vm|vcpu, else of all VMs)
        and (--mmio) the guest-physical addresses reached."""
        per_vm, writes, total = False, {}, 0
        for key, c in snapshot.counts.items():
            if space(key.port) == MMIO:
                self._reached(key.port, key.vm)
            elif key.direction == WRITE and key.port in CONFIG_DATA:
                per_vm = key.vm is not None
                if per_vm:
                    writes[key.vm] = writes.get(key.vm, 0) + c.events
                total += c.events
        now = self._clock()
        for vm in self.vms.values():
            count = writes.get(vm.proc, 0) if per_vm else total
            if (vm.busy or now - vm.asked_at < MIN_GAP or now < vm.retry_at
                    or vm.proc not in self._known):
                continue
            if count != vm.writes or vm.due or now - vm.asked_at >= REFRESH:
                self._ask(vm, count)

    def _reached(self, gpa, proc):
        """An address of the guest of `proc` (by port: of any VM): one its
        memory map leaves unassigned asks once for a new read."""
        if proc is None:
            vms = list(self.vms.values())
        else:
            vms = [self.vms[proc]] if proc in self.vms else []
        for vm in vms:
            if (vm.memory and gpa not in vm.unknown
                    and vm.memory.lookup(gpa) == mtree.UNASSIGNED):
                vm.unknown.add(gpa)
                vm.due = True

    def _ask(self, vm, writes):
        vm.busy, vm.asked_at, vm.writes, vm.due = True, self._clock(), writes, False
        self._queue.put(vm)

    def _work(self):
        while True:
            vm = self._queue.get()
            try:
                self._read(vm)
            except Exception as e:      # noqa: BLE001 -- a worker outlives any one VM
                self._failed(vm, MonitorError(f"{type(e).__name__}: {e}"))
            finally:
                vm.busy = False

    def _read(self, vm):
        try:
            answer = monitor.ask(vm.monitor, vm.proc, self._timeout)
            # An unchanged answer (most re-reads) keeps its outcome: no parse.
            digest = hashlib.sha256(answer.encode(errors="replace")).digest()
            if digest != vm.answer:
                vm.answer, vm.refused = digest, None
                try:
                    vm.map = mtree.parse(answer)
                except ValueError as e:
                    vm.refused = str(e)
                if self.memory and not vm.refused:
                    # No memory space (not QEMU's answer as we know it): MMIO
                    # keeps the fixed names; the ports have their map.
                    with contextlib.suppress(ValueError):
                        vm.memory = mtree.parse(answer, mtree.MEMORY)
            if vm.refused:
                raise MonitorError(vm.refused)
        except MonitorError as e:
            self._failed(vm, e)
            return
        vm.failures, vm.retry_at = 0, 0.0

    def _failed(self, vm, error):
        """The fallback names its ports (or the last good map); ask again later
        (a monitor not the VM's own too: the checks are made anew each time)."""
        vm.failures += 1
        vm.retry_at = self._clock() + min(REFRESH, BACKOFF * 2 ** (vm.failures - 1))
        if vm.failures > 1:
            return
        if isinstance(error, monitor.NotOwn):
            self._reports.put(f"piobpf: vm {monitor.plain(vm.name)} (pid {vm.proc.pid}): "
                              f"{error}: not asked")
            return
        m = vm.monitor
        then = "its ports keep their last names" if vm.map else \
            "its ports are named from the ioports table"
        self._reports.put(f"piobpf: pid {vm.proc.pid}: no device map from its monitor "
                          f"({m.protocol} {monitor.plain(m.address)}): "
                          f"{monitor.plain(error)}; {then}")

    def report(self):
        """Print the lines the workers queued (stderr is the main thread's)."""
        while True:
            try:
                line = self._reports.get_nowait()
            except queue.Empty:
                return
            print(line, file=sys.stderr, flush=True)

    def map_of(self, proc, memory=False):
        """The I/O map (with `memory`, the memory map) of a VM, if read."""
        vm = self.vms.get(proc)
        return (vm.memory if memory else vm.map) if vm else None

    def maps(self, memory=False):
        return [m for m in (vm.memory if memory else vm.map for vm in list(self.vms.values()))
                if m]


class DeviceNames:
    """(device, source) of a port or a Gpa: the VM's map (`proc`), or the map
    every VM agrees on (by port, no VM), else the fallback: the ioports
    `table` for a port, the PC's fixed addresses (mmiomap) for a Gpa."""

    def __init__(self, table, source=HOST_IOPORTS, maps=None):
        self.table, self.source, self.maps = table, source, maps

    def __call__(self, port, proc=None):
        memory = space(port) == MMIO
        if self.maps:
            if proc is not None:
                found = self.maps.map_of(proc, memory)
                if found:
                    return found.lookup(port), VMM
            else:
                names = {m.lookup(port) for m in self.maps.maps(memory)}
                if names:
                    return agreed(names), VMM
        if memory:
            return mmiomap.lookup(port), mmiomap.PC_FIXED
        return self.table.lookup(port), self.source


def agreed(names):
    """The one name of a port that several VMs give it, or all of them, plainly.

    A VM where nothing claims the port has no say while another names it."""
    named = sorted(names - {mtree.UNASSIGNED}) or [mtree.UNASSIGNED]
    return named[0] if len(named) == 1 else VARIES + " | ".join(named)
