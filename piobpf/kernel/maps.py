"""Reading a loaded program's maps: whole maps in batches of BATCH entries
a syscall, where the kernel has batch lookups (5.6), else entry by entry.
"""

import ctypes
import errno
import itertools
import os
import struct

from ..core.errors import TraceError

BATCH = 4096        # map entries a batch lookup syscall reads
ENOTSUPP = 524      # the kernel's own "not supported", absent from Python's errno


class MapReader:
    """Reads maps as rows of unpacked key and value fields; its buffers are
    allocated once a map."""

    def __init__(self, lib):
        self._lib = lib             # BCC's libbcc, for its bpf(2) wrappers
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
            res = self._lib.bpf_lookup_batch(table.map_fd, None if first else ctypes.byref(token),
                                             ctypes.byref(token), kbuf, vbuf, ctypes.byref(count))
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
