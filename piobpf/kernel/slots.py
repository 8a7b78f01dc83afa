"""Keys with slots of counts: the program gives each new key a slot of a
counts array, from a stack of spare slots, and a hash maps keys to slots.
Ports by VM or vCPU (slots, counts, spare) and --mmio's addresses in every
mode (mmio_slots, mmio_counts, mmio_spare) are kept so: most events then
find their counts by array index, through a CPU's recent slots, without
hashing.

User space gives every slot at start, reads counts slot by slot, and takes
back the slots of exited VMs, zeroed.
"""

from ..core.snapshot import Counts
from .program import INDEX, layout


class SlotMaps:
    """The three maps `<prefix>slots`, `<prefix>counts` and `<prefix>spare`
    of a loaded program; keys are rows of `key_fields`, counts of
    `leaf_fields` (events, bytes and, by vCPU, the thread's name)."""

    def __init__(self, bpf, reader, prefix, key_fields, leaf_fields):
        self._reader = reader
        self._slots, self._counts = bpf[prefix + "slots"], bpf[prefix + "counts"]
        self._spare = bpf[prefix + "spare"]
        self.key_format = layout(self._slots.Key, key_fields)
        self._sfmt = layout(self._slots.Leaf, INDEX)
        self._ifmt = layout(self._counts.Key, INDEX)
        self._vfmt = layout(self._counts.Leaf, leaf_fields)
        self.capacity = self._counts.max_entries
        # Slot 0 on top: keys take the low slots, so reads stop early. (A
        # syscall a slot: stacks have no batch update.)
        self._spare.fill(range(self.capacity - 1, -1, -1))

    def keys(self):
        """{slot: key fields} of every key in the map."""
        return {slot: key for key, (slot,) in
                self._reader.rows(self._slots, self.key_format, self._sfmt)}

    def rows(self, keys):
        """(key fields, count fields) of each key counted; `keys` as keys() gives."""
        for (slot,), value in self._reader.rows(self._counts, self._ifmt, self._vfmt,
                                                max(keys, default=-1) + 1):
            if slot in keys and value[0]:
                yield keys[slot], value

    def of_vms(self, vms):
        """{slot: key fields} of the keys of these VMs (kernel ids)."""
        return {slot: key for slot, key in self.keys().items() if key[1] in vms}

    def take_back(self, keys, key_of, counts, comms):
        """Remove these keys, {slot: key fields}, of exited VMs (whose counts
        can no longer grow) and free their slots, zeroed. Their final Counts
        are added into `counts`, {Key: Counts}, under key_of(key fields);
        by vCPU, their threads' names into `comms`, {(Proc, tid): name},
        where not known yet."""
        for slot, fields in keys.items():
            c = self._counts[self._counts.Key(slot)]
            key = key_of(*fields)
            counts[key] = counts.get(key, Counts()) + Counts(c.events, c.bytes)
            if hasattr(c, "comm") and (key.vm, fields[2]) not in comms:
                comms[key.vm, fields[2]] = c.comm.decode(errors="replace")
        if keys:
            doomed = (self._slots.Key * len(keys))(*(self._slots.Key(*k) for k in keys.values()))
            if self._reader.batch:
                self._slots.items_delete_batch(doomed)
            else:
                for k in doomed:
                    del self._slots[k]
        for slot in keys:
            self._counts[self._counts.Key(slot)] = self._counts.Leaf()
            self._spare.push(self._spare.Leaf(slot))
