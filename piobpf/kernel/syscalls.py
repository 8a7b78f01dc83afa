"""bpf(2) and perf_event_open(2) through ctypes, for the process that holds
the loaded program's fds without BCC (or libbpf) mapped in it.

The numbers are x86-64's: port I/O, and so kvm:kvm_pio, is x86's alone.
"""

import ctypes
import os

SYS_BPF, SYS_PERF_EVENT_OPEN = 321, 298
# enum bpf_cmd
MAP_LOOKUP_ELEM, MAP_UPDATE_ELEM, MAP_DELETE_ELEM, MAP_GET_NEXT_KEY = 1, 2, 3, 4
OBJ_GET_INFO_BY_FD, RAW_TRACEPOINT_OPEN = 15, 17
MAP_LOOKUP_BATCH, MAP_DELETE_BATCH = 24, 27
PERF_TYPE_TRACEPOINT, PERF_FLAG_FD_CLOEXEC = 2, 8
PERF_EVENT_IOC_ENABLE, PERF_EVENT_IOC_SET_BPF = 0x2400, 0x40042408

_libc = ctypes.CDLL(None, use_errno=True)
_bpf = _libc["syscall"]         # a function object of its own: its own argtypes
_bpf.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_uint]
_bpf.restype = ctypes.c_long
_perf = _libc["syscall"]
_perf.argtypes = [ctypes.c_long, ctypes.c_void_p, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                  ctypes.c_ulong]
_perf.restype = ctypes.c_long
_ioctl = _libc["ioctl"]
_ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_long]


class ElemAttr(ctypes.Structure):
    """union bpf_attr, as the MAP_*_ELEM commands read it."""
    _fields_ = [("map_fd", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class BatchAttr(ctypes.Structure):
    """union bpf_attr, as the MAP_*_BATCH commands read it."""
    _fields_ = [("in_batch", ctypes.c_uint64), ("out_batch", ctypes.c_uint64),
                ("keys", ctypes.c_uint64), ("values", ctypes.c_uint64),
                ("count", ctypes.c_uint32), ("map_fd", ctypes.c_uint32),
                ("elem_flags", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32),
                ("info", ctypes.c_uint64)]


class MapInfo(ctypes.Structure):
    """The head of struct bpf_map_info: the kernel fills what fits."""
    _fields_ = [("type", ctypes.c_uint32), ("id", ctypes.c_uint32),
                ("key_size", ctypes.c_uint32), ("value_size", ctypes.c_uint32),
                ("max_entries", ctypes.c_uint32)]


class RawTracepointAttr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_uint64), ("prog_fd", ctypes.c_uint32)]


class PerfEventAttr(ctypes.Structure):
    """struct perf_event_attr up to PERF_ATTR_SIZE_VER0 (64 bytes): a
    tracepoint event for a BPF program needs no more."""
    _fields_ = [("type", ctypes.c_uint32), ("size", ctypes.c_uint32),
                ("config", ctypes.c_uint64), ("sample_period", ctypes.c_uint64),
                ("rest", ctypes.c_uint8 * 40)]


def address(obj):
    """A ctypes object's address as a bpf_attr field holds it (0 for None)."""
    return ctypes.addressof(obj) if obj is not None else 0


def bpf(cmd, attr):
    """bpf(cmd, attr): its result, or -1 with the errno in ctypes.get_errno()."""
    return _bpf(SYS_BPF, cmd, ctypes.byref(attr), ctypes.sizeof(attr))


def check(result, what):
    """An fd or 0 from bpf(2), else OSError naming `what`."""
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return result


def map_info(fd):
    info = MapInfo()
    check(bpf(OBJ_GET_INFO_BY_FD, InfoAttr(fd, ctypes.sizeof(info), address(info))),
          "reading a BPF map's info")
    return info


def raw_tracepoint_open(name, prog_fd):
    """Attaches a raw tracepoint program; the fd returned keeps it attached."""
    buf = ctypes.create_string_buffer(name)
    return check(bpf(RAW_TRACEPOINT_OPEN, RawTracepointAttr(address(buf), prog_fd)),
                 f"attaching to raw tracepoint {name.decode()}")


def tracepoint_open(tracefs, tracepoint, prog_fd):
    """Attaches a classic tracepoint program as BCC does: one perf event of
    every process on CPU 0 (the program runs on every CPU); the fd
    returned keeps it attached."""
    category, name = tracepoint.decode().split(":")
    with open(os.path.join(tracefs, "events", category, name, "id")) as f:
        tp_id = int(f.read())
    attr = PerfEventAttr(type=PERF_TYPE_TRACEPOINT, size=ctypes.sizeof(PerfEventAttr),
                         config=tp_id, sample_period=1)
    fd = _perf(SYS_PERF_EVENT_OPEN, ctypes.byref(attr), -1, 0, -1, PERF_FLAG_FD_CLOEXEC)
    check(fd, f"opening tracepoint {tracepoint.decode()}")
    for request, arg in ((PERF_EVENT_IOC_SET_BPF, prog_fd), (PERF_EVENT_IOC_ENABLE, 0)):
        if _ioctl(fd, request, arg) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, f"attaching to tracepoint {tracepoint.decode()}: "
                               f"{os.strerror(err)}")
    return fd
