"""The BPF program: its parameters (the one source of each constant the C
uses), compiling and loading it with BCC, and the layouts of its maps'
structs as this package reads them.
"""

import ctypes
import os
import struct
import sys
import tempfile
from pathlib import Path

from ..core.errors import TraceError
from ..core.keys import MODES
from . import btf

PORT_KEYS = 2 * 65536               # every (direction, port): the array by port
DEFAULT_MAX_ENTRIES = PORT_KEYS     # keys by VM or vCPU
MAX_PIDS = 1024                     # processes -p can name: the pids map's size
MAX_VMS = 16384     # VMM processes counted at once by VM or vCPU (at most --map-size)
RECENT = 64         # keys whose counts' slot each CPU remembers, by VM or vCPU, and MMIO's
# A new VM's ring: its process, name and the first ARGS bytes of its command
# line (QEMU's -name, even of libvirt's long ones, comes early), in a ring of
# RING_PAGES pages: room for dozens of such VMs between two drains.
ARGS = 4096
RING_PAGES = 64
# --latency: the time maps and the window's limits.
HIST_SLOTS = 35                     # log2 buckets of ns, up to 2^34 ns (17 s)
MAX_WINDOW_NS = 10 * 10**9
TIME_ENTRIES = 16384                # keys with timed exits
MAX_THREADS = 16384                 # vCPU threads timed at once
# Why an exit is counted but not timed, slot by slot of the `untimed` array:
# a window longer than MAX_WINDOW_NS (a stopped VM, not emulation), no room
# in the time maps, an exit already under way when tracing began.
UNTIMED = ("too_long", "no_room", "open_at_start")
# Why an event is not counted, slot by slot of the `dropped` array: its key
# found no room in the count map (by VM or vCPU), or in the MMIO map.
DROPPED = ("map_full", "mmio_map_full")
# --mmio: MMIO keys (and slots of counts) by default; kvm_mmio's types counted
# (KVM_TRACE_MMIO_READ, _WRITE; not _READ_UNSATISFIED, 0, the first half of
# a read completed in user space); the bit of a key that says write (x86's
# guest-physical addresses have at most 52).
DEFAULT_MMIO_ENTRIES = 16384
MMIO_READ, MMIO_WRITE = 1, 2
MMIO_WRITE_BIT = 63
MMIO_KEY_FIELDS = ("dirgpa", "vm", "tid")
# The MMIO programs' tracepoints, raw or classic as kvm_pio's.
MMIO_TRACEPOINTS = ("kvm_mmio", "kvm_fast_mmio")

# The maps' structs as this package reads them. The counts are an array: by
# port indexed by the key, by VM or vCPU by a slot that `slots` gives each key.
KEY_FIELDS = {"port": ("value",), "vm": ("dirport", "vm", "tid"),
              "vcpu": ("dirport", "vm", "tid")}
LEAF_FIELDS = {"port": ("events", "bytes"), "vm": ("events", "bytes"),
               "vcpu": ("events", "bytes", "comm")}
TIME_FIELDS = ("windows", "time_ns", "max_ns", "hist")
INDEX = ("value",)                  # an array's key, a slot, a VM id
VM_FIELDS = ("tgid", "exited", "start")
ARRIVAL_FIELDS = ("tgid", "args_len", "start", "comm", "args")
# The latency programs' raw tracepoints (BCC attaches them at load).
LATENCY_RAW_TRACEPOINTS = ("kvm_fpu", "kvm_userspace_exit", "kvm_exit", "kvm_entry",
                           "sched_process_exit")


def source_path():
    """bpf/piobpf.bpf.c: installed beside the package, or in the source tree."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "bpf", here.parent / "bpf"):
        path = candidate / "piobpf.bpf.c"
        if path.is_file():
            return path
    raise TraceError("BPF program piobpf.bpf.c not found beside the package: reinstall piobpf")


def cflags(attach, by, max_entries, filtering, latency, mmio_entries=None):
    """The -D flags of a build (with --mmio, `mmio_entries` MMIO keys): every
    parameter has a numeric value, so nothing given here can become C code."""
    mode = MODES[by]
    flags = {"PIOBPF_PORT_KEYS": PORT_KEYS, "PIOBPF_MAX_ENTRIES": int(max_entries),
             "PIOBPF_MAX_PIDS": MAX_PIDS, "PIOBPF_FILTERING": int(bool(filtering)),
             "PIOBPF_UNTIMED_SLOTS": len(UNTIMED), "PIOBPF_DROPPED_SLOTS": len(DROPPED)}
    flags.update({f"PIOBPF_DROPPED_{name.upper()}": i for i, name in enumerate(DROPPED)})
    switches = list(mode.c_switches) + (["PIOBPF_CLASSIC"] if attach == "classic" else [])
    if mmio_entries:
        switches.append("PIOBPF_MMIO")
        flags.update(PIOBPF_MMIO_ENTRIES=int(mmio_entries), PIOBPF_MMIO_READ=MMIO_READ,
                     PIOBPF_MMIO_WRITE=MMIO_WRITE, PIOBPF_MMIO_WRITE_BIT=MMIO_WRITE_BIT)
    if mmio_entries or mode.per_vm:
        flags.update(PIOBPF_RECENT=RECENT)
    if mode.per_vm:
        flags.update(PIOBPF_MAX_VMS=min(MAX_VMS, int(max_entries)),
                     PIOBPF_ARGS=ARGS, PIOBPF_RING_PAGES=RING_PAGES)
        flags.update(btf.kernel_offsets())
    elif filtering:
        flags.update(btf.kernel_offsets(btf.EXIT_FIELDS, "-p"))
    if latency:
        switches.append("PIOBPF_LATENCY")
        flags.update(PIOBPF_HIST_SLOTS=HIST_SLOTS, PIOBPF_MAX_WINDOW_NS=f"{MAX_WINDOW_NS}ULL",
                     PIOBPF_TIME_ENTRIES=TIME_ENTRIES, PIOBPF_MAX_THREADS=MAX_THREADS)
        flags.update({f"PIOBPF_UNTIMED_{name.upper()}": i for i, name in enumerate(UNTIMED)})
        flags.update(btf.kernel_offsets(btf.LATENCY_FIELDS, "--latency"))
    return [f"-D{k}={v}" for k, v in flags.items()] + [f"-D{s}" for s in switches]


def source(path=None):
    """The program as one text: its own headers (`#include "x.h"`) put in
    place. BCC rewrites map accesses (`counts.lookup(...)`) only in the
    file it compiles, not in the files that one includes."""
    path = path or source_path()
    out = []
    for line in path.read_text().splitlines(keepends=True):
        if line.startswith('#include "'):
            out.append(source(path.parent / line.split('"')[1]))
        else:
            out.append(line)
    return "".join(out)


def load(bcc, flags):
    """Compile and load; a failure is one line (clang's first error), not
    the pages clang writes to stderr."""
    sys.stderr.flush()      # our own pending output stays ours
    with tempfile.TemporaryFile() as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            return bcc.BPF(text=source().encode(), cflags=flags)
        except Exception as e:   # BCC raises bare Exception for compile/load failures
            failure = e
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        lines = log.read().decode(errors="replace").splitlines() + str(failure).splitlines()
    reason = next((l for l in lines if "error:" in l), lines[0] if lines else
                  type(failure).__name__)
    raise TraceError(f"cannot load the BPF program: {reason.strip()}")


def layout(ctype, names):
    """The struct module's format of a map's key or value type, as BCC built
    it from the C; TraceError when its fields are not `names`, so a change to
    the C's structs can never be misread silently."""
    fields = getattr(ctype, "_fields_", None) or [("value", ctype)]
    fmt = "@" + "".join(f"{t._length_}s" if issubclass(t, ctypes.Array) else t._type_
                        for _, t in fields)
    fmt += "x" * (ctypes.sizeof(ctype) - struct.calcsize(fmt))   # trailing padding
    if tuple(n for n, _ in fields) != names or struct.calcsize(fmt) != ctypes.sizeof(ctype):
        raise TraceError(f"the BPF program's map layout {fields} is not the {names} "
                         "this piobpf reads: reinstall piobpf")
    return fmt
