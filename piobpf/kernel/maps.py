"""The loaded program's maps, read and written with bpf(2): a Table offers
the part of BCC's table API this package uses, a RingBuffer drains a ring,
and MapReader reads whole maps in batches of BATCH entries a syscall, where
the kernel has batch lookups (5.6), else entry by entry.
"""

import ctypes
import errno
import itertools
import mmap
import os
import struct

from ..core.errors import TraceError
from . import syscalls
from .syscalls import BatchAttr, ElemAttr, address, bpf

BATCH = 4096        # map entries a batch lookup syscall reads
ENOTSUPP = 524      # the kernel's own "not supported", absent from Python's errno
# enum bpf_map_type, of those this package opens
HASH, ARRAY, PERCPU_ARRAY, STACK, RINGBUF = 1, 2, 6, 23, 27


class Table:
    """A map, by its fd. Key and Leaf are ctypes types of its key and value
    (Key None for a stack, Leaf one CPU's value for a per-CPU map, which is
    not read here). An int is taken for an array's key, as BCC does."""

    def __init__(self, fd, key, leaf):
        info = syscalls.map_info(fd)
        self.map_fd, self.type, self.max_entries = fd, info.type, info.max_entries
        self.Key, self.Leaf = key, leaf
        sizes = (ctypes.sizeof(key) if key else 0, ctypes.sizeof(leaf) if leaf else 0)
        if self.type != RINGBUF and sizes != (info.key_size, info.value_size):
            raise TraceError(f"a BPF map's key and value ({sizes} bytes) are not the kernel's "
                             f"({info.key_size}, {info.value_size}): reinstall piobpf")

    def _elem(self, cmd, key, value=None, flags=0):
        """bpf(cmd) on one element: 0, or -1 with the errno in ctypes.get_errno()."""
        if isinstance(key, int):
            key = self.Key(key)
        return bpf(cmd, ElemAttr(self.map_fd, address(key), address(value), flags))

    def _failed(self, what):
        err = ctypes.get_errno()
        if err == errno.ENOENT:
            raise KeyError(what)
        raise TraceError(f"{what} of a BPF map failed: {os.strerror(err)}")

    def __getitem__(self, key):
        leaf = self.Leaf()
        if self._elem(syscalls.MAP_LOOKUP_ELEM, key, leaf):
            self._failed("a lookup")
        return leaf

    def get(self, key, default=None):
        try:
            return self[key]
        except KeyError:
            return default

    def __setitem__(self, key, leaf):
        if self._elem(syscalls.MAP_UPDATE_ELEM, key, leaf):
            self._failed("an update")

    def __delitem__(self, key):
        if self._elem(syscalls.MAP_DELETE_ELEM, key):
            self._failed("a delete")

    def push(self, leaf):
        """On a stack: leaf on top."""
        if bpf(syscalls.MAP_UPDATE_ELEM, ElemAttr(self.map_fd, 0, address(leaf), 0)):
            self._failed("a push")

    def fill(self, values):
        """On a stack of a simple type: pushes each value, the last on top
        (a syscall each: stacks have no batch update)."""
        leaf = self.Leaf()
        attr = ElemAttr(self.map_fd, 0, address(leaf), 0)
        for leaf.value in values:
            if bpf(syscalls.MAP_UPDATE_ELEM, attr):
                self._failed("filling")

    def keys(self):
        """Every key, one syscall each (BCC's walk): for small maps."""
        key, following = None, self.Key()
        while not self._elem(syscalls.MAP_GET_NEXT_KEY, key, following):
            yield following
            key, following = following, self.Key()
        if ctypes.get_errno() != errno.ENOENT:
            self._failed("a walk")

    def items(self):
        """(key, value) of every key still there when its value is read."""
        for key in self.keys():
            value = self.get(key)
            if value is not None:
                yield key, value

    def values(self):
        return (v for _, v in self.items())

    def lookup_batch(self, token, first, keys, values, count):
        """One BPF_MAP_LOOKUP_BATCH: up to count.value entries into keys and
        values, from `token` (from the start when `first`); -1 and the errno
        at the end of the map or on failure, count.value what it read."""
        attr = BatchAttr(in_batch=0 if first else address(token), out_batch=address(token),
                         keys=address(keys), values=address(values), count=count.value,
                         map_fd=self.map_fd)
        res = bpf(syscalls.MAP_LOOKUP_BATCH, attr)
        count.value = attr.count
        return res

    def items_delete_batch(self, keys):
        """Deletes a ctypes array of keys in one syscall."""
        attr = BatchAttr(keys=address(keys), count=len(keys), map_fd=self.map_fd)
        if bpf(syscalls.MAP_DELETE_BATCH, attr):
            self._failed("a batch delete")


class RingBuffer:
    """A BPF ring buffer map, read through its mmap as libbpf reads it (the
    kernel maps the data twice in a row, so a record that wraps is read
    whole): each record's bytes go to `callback`. Its fd turns readable
    when records wait."""

    BUSY, DISCARD, HEADER = 1 << 31, 1 << 30, 8

    def __init__(self, table, callback):
        self.fd, self._callback, self._mask = table.map_fd, callback, table.max_entries - 1
        self._consumer = mmap.mmap(self.fd, mmap.PAGESIZE, mmap.MAP_SHARED,
                                   mmap.PROT_READ | mmap.PROT_WRITE)
        self._producer = mmap.mmap(self.fd, mmap.PAGESIZE + 2 * table.max_entries,
                                   mmap.MAP_SHARED, mmap.PROT_READ, offset=mmap.PAGESIZE)
        self._data = memoryview(self._producer)[mmap.PAGESIZE:]

    def consume(self):
        """Hands every committed record to the callback, in order."""
        (pos,) = struct.unpack_from("Q", self._consumer)
        while True:
            (end,) = struct.unpack_from("Q", self._producer)
            if pos >= end:
                return
            while pos < end:
                at = pos & self._mask
                (length,) = struct.unpack_from("I", self._data, at)
                if length & self.BUSY:      # still being written: the next drain has it
                    return
                size = length & ~(self.BUSY | self.DISCARD)
                if not length & self.DISCARD:
                    start = at + self.HEADER
                    self._callback(bytes(self._data[start:start + size]))
                pos += (size + self.HEADER + 7) & ~7
                struct.pack_into("Q", self._consumer, 0, pos)

    def close(self):
        self._data.release()
        self._producer.close()
        self._consumer.close()


class MapReader:
    """Reads maps as rows of unpacked key and value fields; its buffers are
    allocated once a map."""

    def __init__(self):
        self.batch = True           # until the kernel says it has no batch lookups
        self._buffers = {}          # map fd -> batch read buffers

    def _lookup_batch(self, table, limit=None):
        """A map's entries as (key bytes, value bytes), BATCH entries a syscall
        (an array's first `limit` only), or None where the kernel lacks batch
        lookups (before 5.6)."""
        ksize, vsize = ctypes.sizeof(table.Key), ctypes.sizeof(table.Leaf)
        if table.map_fd not in self._buffers:
            chunk = min(table.max_entries, BATCH)
            self._buffers[table.map_fd] = (chunk, ctypes.create_string_buffer(chunk * ksize),
                                         ctypes.create_string_buffer(chunk * vsize))
        chunk, kbuf, vbuf = self._buffers[table.map_fd]
        keys, values = [], []
        token, count, first = ctypes.c_uint32(0), ctypes.c_uint32(0), True
        left = table.max_entries if limit is None else limit
        while left > 0:
            count.value = min(chunk, left)
            res = table.lookup_batch(token, first, kbuf, vbuf, count)
            err = ctypes.get_errno()
            keys.append(kbuf.raw[:count.value * ksize])
            values.append(vbuf.raw[:count.value * vsize])
            left -= count.value
            if res != 0:
                if err == errno.ENOENT:     # the end of the map
                    break
                if first and err in (errno.EINVAL, ENOTSUPP, errno.EOPNOTSUPP):
                    return None
                raise TraceError(f"reading the BPF map failed: {os.strerror(err)}")
            first = False
        return b"".join(keys), b"".join(values)

    def rows(self, table, kfmt, vfmt, limit=None):
        """(key fields, value fields) of a map's entries (an array's first `limit`)."""
        batch = self._lookup_batch(table, limit) if self.batch else None
        if batch is None:
            self.batch = False
            for k, v in itertools.islice(table.items(), limit):
                yield struct.unpack(kfmt, bytes(k)), struct.unpack(vfmt, bytes(v))
            return
        yield from zip(struct.iter_unpack(kfmt, batch[0]), struct.iter_unpack(vfmt, batch[1]))
