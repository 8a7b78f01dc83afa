"""kvm:kvm_pio counted in the kernel: attach, read, detach.

The layer's public face. PioCounter loads the program for a CounterConfig,
hands back plain Snapshots, and by VM or vCPU moves the counts of exited
VMs out of the kernel map; `stats` and `program_fds` serve the bench and
whoever needs the loaded programs themselves. Everything that can go wrong
on the way in is a TraceError of one line. The program is loaded in a child
(loader.py): this process holds its fds, never BCC.
"""

import os
import struct
from dataclasses import dataclass

from ..core.keys import MODES, READ, WRITE, Key, Proc
from ..core.snapshot import Counts, Snapshot, Times
from . import loader, program
from .maps import MapReader, RingBuffer
from .mmio import MmioMaps
from .program import (ARRIVAL_FIELDS, DROPPED, INDEX, KEY_FIELDS, LATENCY_RAW_TRACEPOINTS,
                      LEAF_FIELDS, MMIO_TRACEPOINTS, PORT_KEYS, TIME_FIELDS, UNTIMED, VM_FIELDS,
                      layout)
from .slots import SlotMaps

TICK_NS = 10**9 // os.sysconf("SC_CLK_TCK")    # the unit of /proc/PID/stat's start time


@dataclass(frozen=True)
class CounterConfig:
    """What the kernel counts: per --by mode, of `pids` only (all when
    empty), with --latency's exit times; through the raw or classic
    tracepoint; by VM or vCPU in a map of `map_size` keys; with `mmio`
    also guest MMIO, in a map of `mmio_map_size` keys."""
    by: str = "port"
    pids: tuple = ()
    latency: bool = False
    attach: str = "auto"
    map_size: int = program.DEFAULT_MAX_ENTRIES
    mmio: bool = False
    mmio_map_size: int = program.DEFAULT_MMIO_ENTRIES


class PioCounter:
    """kvm:kvm_pio counts aggregated in the kernel.

    Snapshot keys are Keys: (direction, port), by VM with the VMM process (a
    Proc: pid and start time), by vCPU also the tid; with --mmio also
    (direction, Gpa), from the MMIO maps (mmio.MmioMaps).

    By VM or vCPU, `doorbells` are fds that turn readable when a VM comes or
    goes; `sync` then says which, and moves the counts of a VM that exited
    out of the kernel map into this object, where reads find them until
    `forget`. `cmdlines` holds what the kernel saw of each new VM's process
    on its first count, {Proc: (command line, name)} as bytes of
    /proc/PID/cmdline and comm (the command line None when unreadable),
    for names to take (naming.vms.Labeler)."""

    def __init__(self, config=CounterConfig()):
        self._bpf = loader.load(config)
        self.attach_mode = self._bpf.attach_mode
        self.config, self.by, self.latency = config, config.by, config.latency
        self._mode = MODES[config.by]
        # keys the map can hold
        self.capacity = config.map_size if self._mode.per_vm else PORT_KEYS
        self._reader = MapReader()
        # The Key parts (vm, tid) of a kernel key's VM id and thread.
        self._mmio = MmioMaps(self._bpf, self._reader, config.by, config.latency,
                              lambda vm, tid: self._key(0, vm, tid)) if config.mmio else None
        self._counts = self._bpf["counts"]
        self._dropped = self._bpf["dropped"]
        if not self._mode.per_vm:
            self._kfmt = layout(self._counts.Key, KEY_FIELDS[config.by])
            self._vfmt = layout(self._counts.Leaf, LEAF_FIELDS[config.by])
        if config.latency:
            self._times, self._pending = self._bpf["times"], self._bpf["pending"]
            self._untimed = self._bpf["untimed"]
            layout(self._times.Leaf, TIME_FIELDS)
        self.comms = {}     # (Proc, tid) -> thread name the kernel saw (by vcpu)
        self.cmdlines = {}
        self.entries = 0    # keys in the kernel map at the last read
        self._evicted = {}  # key -> final Counts, of exited VMs not yet forgotten
        self._evicted_times = {}    # key -> final Times, the same with --latency
        self.doorbells = []
        self._ring = None
        # The program counts nothing for a filtered run until its pids are in.
        if config.pids:
            table = self._bpf["pids"]
            for pid in config.pids:
                table[table.Key(pid)] = table.Leaf(1)
        if self._mode.per_vm:
            self._start_vms()
        if self._mode.per_vm or self._mmio:
            # Every slot is given: the program may count from now on.
            epoch = self._bpf["epoch"]
            epoch[epoch.Key(0)] = epoch.Leaf(1)

    def _start_vms(self):
        """By VM or vCPU: give the program every slot of counts; hear of VMs."""
        self._slots = SlotMaps(self._bpf, self._reader, "", KEY_FIELDS[self.by],
                               LEAF_FIELDS[self.by])
        self._vms = self._bpf["vms"]
        self._sfmt = layout(self._vms.Key, INDEX)
        self._mfmt = layout(self._vms.Leaf, VM_FIELDS)
        self._procs = {}        # VM id -> Proc, of the VMs in the kernel's table
        self._afmt = layout(self._bpf["arrivals"].Leaf, ARRIVAL_FIELDS)
        self._ring = RingBuffer(self._bpf["doorbell"], self._rang)
        self.doorbells = [self._ring.fd]

    def _rang(self, record):
        """A ring: a VM's arrival keeps what names it; the rest (a VM's
        exit, its tgid only) just wakes `sync`, and vms says which."""
        full = struct.calcsize(self._afmt)
        if len(record) > 4:
            record = record[:full].ljust(full, b"\0")
            tgid, length, start, comm, args = struct.unpack(self._afmt, record)
            cmdline = args[:length]
            if length > len(cmdline):       # cut short: its last argument may be partial
                cmdline = cmdline[:cmdline.rfind(b"\0") + 1]
            self.cmdlines[Proc(tgid, start // TICK_NS)] = (
                cmdline if length else None, comm.split(b"\0", 1)[0])

    def _entries(self, slots):
        """(dirport, vm, tid, events, bytes, comm) for every key counted.

        By port the counts are an array indexed by dirport; by VM or vCPU an
        array of slots, `slots` giving each slot's key (SlotMaps.keys).
        Values are struct pio_counts (`layout`)."""
        no_comm = () if self._mode.per_thread else (b"",)
        if not self._mode.per_vm:
            for (dirport,), value in self._reader.rows(self._counts, self._kfmt, self._vfmt):
                yield (dirport, 0, 0) + value + no_comm
            return
        for key, value in self._slots.rows(slots):
            yield key + value + no_comm

    def _key(self, dirport, vm, tid):
        """The Key of a kernel key's fields."""
        direction = WRITE if dirport >> 16 else READ
        if not self._mode.per_vm:
            return Key(direction, dirport & 0xFFFF)
        if vm not in self._procs:
            self._vm_table()        # a VM new since the last look at the table
        return Key(direction, dirport & 0xFFFF, self._procs[vm],
                   tid if self._mode.per_thread else None)

    def read(self):
        """The cumulative counts now: the kernel map's, plus the final counts
        of exited VMs moved out of it and not yet forgotten."""
        slots = self._slots.keys() if self._mode.per_vm else None   # read once for both maps
        counts = {}
        for dirport, vm, tid, events, nbytes, comm in self._entries(slots):
            if not events:
                continue    # an array slot no event has touched
            key = self._key(dirport, vm, tid)
            counts[key] = Counts(events, nbytes)
            if comm and (key.vm, tid) not in self.comms:
                self.comms[key.vm, tid] = comm.split(b"\0", 1)[0].decode(errors="replace")
        self.entries = len(counts)
        if self._mmio:
            counts.update(self._mmio.read(self.comms))
        evicted = Snapshot(self._evicted, 0, self._evicted_times)
        dropped, drops = self._read_dropped()
        if not self.latency:
            return Snapshot(counts, dropped, drops=drops) + evicted
        times = self._read_times(slots)
        if self._mmio:
            times.update(self._mmio.read_times())
        return Snapshot(counts, dropped, times,
                        {name: self._untimed[i].value for i, name in enumerate(UNTIMED)},
                        drops) + evicted

    def _read_dropped(self):
        """(events dropped, {reason: events} with --mmio, else {})."""
        drops = {name: self._dropped[i].value for i, name in enumerate(DROPPED)}
        return sum(drops.values()), drops if self._mmio else {}

    @property
    def mmio_entries(self):
        """MMIO keys in the kernel map at the last read, and those it can hold."""
        return (self._mmio.entries, self._mmio.capacity) if self._mmio else (0, 0)

    def _read_times(self, slots):
        """Times per key. The time map is keyed as counts is indexed (by VM
        or vCPU: by slot, `slots` giving each slot's key) and holds only keys
        with timed exits, a few hundred at most, so a plain walk serves."""
        times = {}
        for k, t in self._times.items():
            if slots is None or k.value in slots:
                ids = (k.value, 0, 0) if slots is None else slots[k.value]
                times[self._key(*ids)] = Times(t.windows, t.time_ns, t.max_ns, tuple(t.hist))
        return times

    def open_windows(self):
        """Exits to user space under way now (after detach: never to be
        timed): a thread's state is WINDOW_NONE, 0, when it has none."""
        return sum(1 for p in self._pending.values() if p.state)

    def read_keys(self, keys):
        """The cumulative counts of a few (direction, port) keys, by port only:
        a handful of lookups where a full read walks all 131072 slots."""
        counts = {}
        for key in keys:
            c = self._counts[self._counts.Key((key.direction == WRITE) << 16 | key.port)]
            if c.events:
                counts[key] = Counts(c.events, c.bytes)
        return Snapshot(counts, self._dropped[0].value)

    # The lifecycle of VMs, by VM or vCPU.

    def _vm_table(self):
        """{VM id: exited} of the kernel's VM table; learns each one's process
        and, from the ring, what names it (cmdlines)."""
        table = {}
        for (vm,), (tgid, exited, start) in self._reader.rows(self._vms, self._sfmt, self._mfmt):
            if vm not in self._procs:
                self._procs[vm] = Proc(tgid, start // TICK_NS)
            table[vm] = exited
        # After the table: a VM's arrival is rung a moment after it enters it.
        self._ring.consume()
        return table

    @property
    def vms(self):
        """The processes of the VMs in the kernel's table: running, or
        exited and not moved out yet."""
        return set(self._procs.values()) if self._mode.per_vm else set()

    def sync(self):
        """After a doorbell: (VMs new since the last sync, VMs that exited),
        as Procs; the exited ones' counts are moved out of the kernel map."""
        known = set(self._procs)
        table = self._vm_table()
        exited = [vm for vm, done in table.items() if done]
        return [self._procs[vm] for vm in table if vm not in known], self._evict(exited)

    def _evict(self, vms):
        """Move the keys of exited VMs out of the kernel map, keeping their
        counts here; returns their processes.

        Exact without an atomic read-and-delete: the program marks a VM
        exited when the last thread of its process has exited, and vms was
        read before these counts, so no event can add to them any more (a
        process that gets the pid next is a new VM with keys of its own).
        Their slots go back to spare, zeroed."""
        gone = set(vms)
        keys = self._slots.of_vms(gone)
        if self.latency:    # first, while no other key can have the slot
            for slot, ids in keys.items():
                t = self._times.get(self._times.Key(slot))
                if t:   # its exit windows are closed too: its threads are gone
                    key = self._key(*ids)
                    self._evicted_times[key] = self._evicted_times.get(key, Times()) + Times(
                        t.windows, t.time_ns, t.max_ns, tuple(t.hist))
                    del self._times[self._times.Key(slot)]
        self._slots.take_back(keys, self._key, self._evicted, self.comms)
        if self._mmio:
            self._mmio.evict(gone, self._evicted, self._evicted_times, self.comms)
        for vm in vms:
            del self._vms[self._vms.Key(vm)]
        return [self._procs.pop(vm) for vm in vms]

    def forget(self, procs):
        """Drop what is kept of these exited VMs: final counts, thread names."""
        procs = set(procs)
        self._evicted = {k: c for k, c in self._evicted.items() if k.vm not in procs}
        self._evicted_times = {k: t for k, t in self._evicted_times.items()
                               if k.vm not in procs}
        for key in [k for k in self.comms if k[0] in procs]:
            del self.comms[key]
        for p in procs & self.cmdlines.keys():     # never named (named ones took theirs)
            del self.cmdlines[p]

    def _tracepoints(self):
        """The tracepoints of counting and timing: raw ones by name, the
        classic ones as category:name. Without --latency, by VM,
        sched_process_exit stays attached to the end, so that a VM's exit
        is seen after detach too."""
        counted = ["kvm_pio"] + (list(MMIO_TRACEPOINTS) if self._mmio else [])
        tps = [tp if self.attach_mode == "raw" else f"kvm:{tp}" for tp in counted]
        if self.latency:
            tps += LATENCY_RAW_TRACEPOINTS
        return [tp.encode() for tp in tps]

    def detach(self):
        """Stop counting; the maps stay readable for the final read."""
        for tp in self._tracepoints():
            self._bpf.detach(tp)

    def attach(self):
        """Count again after `detach` (the bench switches programs so)."""
        for tp in self._tracepoints():
            self._bpf.attach(tp)

    def program_fds(self):
        """{program name: fd} of the loaded programs."""
        return dict(self._bpf.programs)

    def stats(self):
        """{program name: (run_time_ns, run_cnt)}, counted by the kernel
        while kernel.bpf_stats_enabled is 1."""
        out = {}
        for name, fd in self.program_fds().items():
            with open(f"/proc/self/fdinfo/{fd}") as f:
                info = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
            out[name] = (int(info.get("run_time_ns", 0)), int(info.get("run_cnt", 0)))
        return out

    def close(self):
        if self._ring:
            self._ring.close()
        self._bpf.close()
