"""A filesystem whose server never answers a lookup: a FUSE mount at MOUNTPOINT
(made with mount(2) over /dev/fuse, as fusermount makes one for its user),
served here by a loop that answers only what mounting needs and leaves every
LOOKUP waiting. Any path under MOUNTPOINT/ hangs whoever walks it, until this
process ends. Prints "mounted" once it serves.

usage: hungfs.py MOUNTPOINT   (root; unmount with umount -l after)
"""

import ctypes
import errno
import os
import struct
import sys

FUSE_LOOKUP, FUSE_FORGET, FUSE_GETATTR, FUSE_INIT, FUSE_INTERRUPT = 1, 2, 3, 26, 36
FUSE_OPENDIR, FUSE_RELEASEDIR, FUSE_BATCH_FORGET = 27, 29, 42
MS_NOSUID, MS_NODEV = 2, 4


def main():
    mountpoint = sys.argv[1]
    fd = os.open("/dev/fuse", os.O_RDWR)
    libc = ctypes.CDLL(None, use_errno=True)
    opts = f"fd={fd},rootmode=40000,user_id=0,group_id=0".encode()
    if libc.mount(b"hungfs", mountpoint.encode(), b"fuse", MS_NOSUID | MS_NODEV, opts):
        raise OSError(ctypes.get_errno(), "mount")

    def reply(unique, body=b"", err=0):
        os.write(fd, struct.pack("<IiQ", 16 + len(body), -err, unique) + body)

    root = struct.pack("<QQQQQQIIIIIIIIII", 1, 0, 0, 0, 0, 0, 0, 0, 0, 0o40755, 2, 0, 0, 0,
                       4096, 0)
    print("mounted", flush=True)
    while True:
        try:
            req = os.read(fd, 1 << 21)
        except OSError as e:
            if e.errno in (errno.EINTR, errno.ENOENT):
                continue
            raise
        _, op, unique, _ = struct.unpack_from("<IIQQ", req)
        if op == FUSE_INIT:     # protocol 7.31, 4 KB writes
            reply(unique, struct.pack("<IIIIHHIIHHII", 7, 31, 0, 0, 12, 9, 4096, 1, 32, 0, 0, 0)
                  + bytes(24))
        elif op == FUSE_GETATTR:
            reply(unique, struct.pack("<QII", 100, 0, 0) + root)
        elif op == FUSE_OPENDIR:
            reply(unique, struct.pack("<QII", 1, 0, 0))
        elif op in (FUSE_LOOKUP, FUSE_FORGET, FUSE_BATCH_FORGET, FUSE_INTERRUPT):
            pass        # a lookup never answered; the rest want no answer
        elif op == FUSE_RELEASEDIR:
            reply(unique)
        else:
            reply(unique, err=errno.ENOSYS)


if __name__ == "__main__":
    main()
