"""--mmio's maps in a loaded program: the MMIO counts, a slot a key
(slots.py), and with --latency times, per (direction, gpa), by VM with the
VM's id, by vCPU the thread.

The counter (counter.py) merges them into its Snapshots as Keys whose
address is a Gpa, and moves an exited VM's keys out as it does its ports'.
"""

from ..core.keys import Gpa, Key, MODES, READ, WRITE
from ..core.snapshot import Counts, Times
from .program import LEAF_FIELDS, MMIO_KEY_FIELDS, MMIO_WRITE_BIT, TIME_FIELDS, layout
from .slots import SlotMaps

WRITE_FLAG = 1 << MMIO_WRITE_BIT


def address(dirgpa):
    """(direction, Gpa) of a kernel key's dirgpa."""
    return (WRITE if dirgpa & WRITE_FLAG else READ), Gpa(dirgpa & (WRITE_FLAG - 1))


class MmioMaps:
    """The MMIO maps of a program built with PIOBPF_MMIO.

    `owner(vm, tid)` is a Key whose vm and tid are those of a kernel key's
    VM id and thread (the counter's, which knows the VMs)."""

    def __init__(self, bpf, reader, by, latency, owner):
        self._owner = owner
        self._threads = MODES[by].per_thread     # counts carry the thread's name
        self._slots = SlotMaps(bpf, reader, "mmio_", MMIO_KEY_FIELDS, LEAF_FIELDS[by])
        self._times = bpf["mmio_times"] if latency else None
        if latency:
            layout(self._times.Leaf, TIME_FIELDS)   # read by field name: checked only
        self.capacity = self._slots.capacity
        self.entries = 0        # keys in the map at the last read

    def key(self, dirgpa, vm, tid):
        owner = self._owner(vm, tid)
        return Key(*address(dirgpa), owner.vm, owner.tid)

    def read(self, comms):
        """{Key: Counts} of the map; thread names (by vCPU) into `comms`,
        {(Proc, tid): name}, where not known yet."""
        counts = {}
        keys = self._slots.keys()
        for (dirgpa, vm, tid), value in self._slots.rows(keys):
            key = self.key(dirgpa, vm, tid)
            counts[key] = Counts(*value[:2])
            if self._threads and (key.vm, tid) not in comms:
                comms[key.vm, tid] = value[2].split(b"\0", 1)[0].decode(errors="replace")
        self.entries = len(keys)
        return counts

    def read_times(self):
        """{Key: Times} of the keys with timed exits (a few hundred at most)."""
        return {self.key(k.dirgpa, k.vm, k.tid): Times(t.windows, t.time_ns, t.max_ns,
                                                       tuple(t.hist))
                for k, t in self._times.items()}

    def evict(self, vms, counts, times, comms):
        """Move the keys of these exited VMs (kernel ids) out of the maps,
        adding their final Counts and Times into `counts` and `times`, and
        (by vCPU) the names of their threads into `comms`."""
        self._slots.take_back(self._slots.of_vms(vms), self.key, counts, comms)
        if self._times is not None:
            for k in [k for k in self._times.keys() if k.vm in vms]:
                t = self._times[k]
                key = self.key(k.dirgpa, k.vm, k.tid)
                times[key] = times.get(key, Times()) + Times(t.windows, t.time_ns, t.max_ns,
                                                             tuple(t.hist))
                del self._times[k]
