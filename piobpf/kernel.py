"""The kernel side: load bpf/piobpf.bpf.c with BCC, attach it, read its map.

Thin on purpose: everything it returns is a plain Snapshot, and everything
that can go wrong on the way in is a TraceError with one line to show.
"""

import ctypes
import errno
import itertools
import os
import platform
import struct
import sys
import tempfile
from pathlib import Path

from .errors import warn
from .snapshot import READ, WRITE, Counts, Proc, Snapshot, Times

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
RAW_ARGS = ["rw", "port", "size", "count"]     # TP_PROTO order the raw probe reads
PORT_KEYS = 2 * 65536               # every (direction, port): the array by port
DEFAULT_MAX_ENTRIES = PORT_KEYS     # the hash by VM or vCPU
CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39
ENOTSUPP = 524      # the kernel's own "not supported", absent from Python's errno
BATCH = 4096        # map entries a batch lookup syscall reads
ATTACH_MODES = ("auto", "raw", "classic")
MAX_PIDS = 1024                     # processes -p can name: the pids map's size
# What the kernel could not count, slot by slot of the `dropped` array:
# events whose key found no room; with --latency, exit windows longer than
# MAX_WINDOW_NS (a stopped VM, not emulation), windows or threads the time
# maps had no room for, and exits already under way when tracing began.
DROPPED = ("events", "too_long", "no_room", "open_at_start")
# --latency: the time maps and the window's limits.
HIST_SLOTS = 35                     # log2 buckets of ns, up to 2^34 ns (17 s)
MAX_WINDOW_NS = 10 * 10**9
TIME_ENTRIES = 16384                # keys with timed exits
MAX_THREADS = 16384                 # vCPU threads timed at once
MAX_VMS = 16384     # VMM processes counted at once by VM or vCPU (at most --map-size)
RECENT = 64         # keys whose counts' slot each CPU remembers, by VM or vCPU
# What each --by adds to the key, as the BPF C's -D switches.
BY_KEYS = {"port": (), "vm": ("PIOBPF_KEY_TGID",), "vcpu": ("PIOBPF_KEY_TGID", "PIOBPF_KEY_TID")}
BY_MODES = tuple(BY_KEYS)
# The maps' structs as this module reads them. The counts are an array: by
# port indexed by the key, by VM or vCPU by a slot that `slots` gives each key.
KEY_FIELDS = {"port": ("value",), "vm": ("dirport", "vm", "tid"),
              "vcpu": ("dirport", "vm", "tid")}
LEAF_FIELDS = {"port": ("events", "bytes"), "vm": ("events", "bytes"),
               "vcpu": ("events", "bytes", "comm")}
TIME_FIELDS = ("windows", "time_ns", "max_ns", "hist")
# The latency programs' raw tracepoints (BCC attaches them at load).
LATENCY_RAW_TRACEPOINTS = ("kvm_fpu", "kvm_userspace_exit", "kvm_exit", "kvm_entry",
                           "sched_process_exit")
INDEX = ("value",)                  # an array's key, a slot, a VM id
VM_FIELDS = ("tgid", "exited", "start")
# A new VM's ring: its process, name and the first ARGS bytes of its command
# line (QEMU's -name, even of libvirt's long ones, comes early), in a ring of
# RING_PAGES pages: room for dozens of such VMs between two drains.
ARRIVAL_FIELDS = ("tgid", "args_len", "start", "comm", "args")
ARGS = 4096
RING_PAGES = 64
# Fields of the running kernel's own structs that the program reads by VM
# or vCPU (a process's start, name and command line, whether its last
# thread exits), as -D flags of their byte offsets: from the kernel's BTF,
# since the headers BCC compiles against may be another version's.
KERNEL_FIELDS = {"PIOBPF_TASK_GROUP_LEADER": ("task_struct", "group_leader"),
                 "PIOBPF_TASK_START_BOOTTIME": ("task_struct", "start_boottime"),
                 "PIOBPF_TASK_SIGNAL": ("task_struct", "signal"),
                 "PIOBPF_TASK_MM": ("task_struct", "mm"),
                 "PIOBPF_TASK_COMM": ("task_struct", "comm"),
                 "PIOBPF_SIGNAL_LIVE": ("signal_struct", "live"),
                 "PIOBPF_MM_ARG_START": ("mm_struct", "arg_start"),
                 "PIOBPF_MM_ARG_END": ("mm_struct", "arg_end")}
# The fields --latency reads to find, from the current task, the kvm_run of
# the vCPU it has loaded: the task's preempt notifiers, which vcpu_load put
# the vCPU's own on (CONFIG_PREEMPT_NOTIFIERS, which KVM selects).
LATENCY_FIELDS = {"PIOBPF_TASK_PREEMPT_NOTIFIERS": ("task_struct", "preempt_notifiers"),
                  "PIOBPF_VCPU_PREEMPT_NOTIFIER": ("kvm_vcpu", "preempt_notifier"),
                  "PIOBPF_NOTIFIER_LINK": ("preempt_notifier", "link"),
                  "PIOBPF_VCPU_RUN": ("kvm_vcpu", "run")}
TICK_NS = 10**9 // os.sysconf("SC_CLK_TCK")    # the unit of /proc/PID/stat's start time


class TraceError(Exception):
    """A reason tracing cannot start, fit for one line on stderr."""


def bpf_source_path():
    """bpf/piobpf.bpf.c: installed beside the package, or in the source tree."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "bpf", here.parent / "bpf"):
        path = candidate / "piobpf.bpf.c"
        if path.is_file():
            return path
    raise TraceError("BPF program piobpf.bpf.c not found beside the package: reinstall piobpf")


def check_privileges():
    """Loading BPF and attaching to tracepoints needs CAP_BPF+CAP_PERFMON or CAP_SYS_ADMIN."""
    with open("/proc/self/status") as f:
        caps = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    has = lambda cap: bool(caps >> cap & 1)
    if not (has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON))):
        raise TraceError("needs root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN) to load "
                         "BPF programs: run it with sudo")


def find_tracefs():
    """The mounted tracefs; mounts it (like `mount -t tracefs`) when it is not."""
    for path in TRACEFS_CANDIDATES:
        if os.path.isdir(os.path.join(path, "events")):
            return path
        if os.path.ismount(path) and not os.access(path, os.R_OK | os.X_OK):
            raise TraceError(f"cannot read tracefs ({path}): needs root or CAP_DAC_READ_SEARCH")
    rc = os.system("mount -t tracefs nodev /sys/kernel/tracing >/dev/null 2>&1")
    if rc == 0 and os.path.isdir("/sys/kernel/tracing/events"):
        warn("mounted tracefs on /sys/kernel/tracing (it was not mounted); it stays mounted")
        return "/sys/kernel/tracing"
    raise TraceError("tracefs is not mounted and cannot be mounted "
                     "(mount -t tracefs nodev /sys/kernel/tracing failed)")


def kvm_pio_fields(tracefs):
    """The kvm:kvm_pio record's field names, in order, without common_*."""
    path = os.path.join(tracefs, "events", "kvm", "kvm_pio", "format")
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        raise TraceError("tracepoint kvm:kvm_pio not found: is the kvm module loaded? "
                         "(modprobe kvm_intel or kvm_amd)") from None
    except OSError as e:
        raise TraceError(f"cannot read {path}: {e.strerror}") from None
    names = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("field:"):
            decl = line[len("field:"):].split(";")[0]
            name = decl.split()[-1].split("[")[0]
            if not name.startswith("common_"):
                names.append(name)
    return names


def choose_attach(mode, fields, raw_supported):
    """raw when its argument layout matches the format (checked, not assumed)."""
    raw_ok = raw_supported and fields[:len(RAW_ARGS)] == RAW_ARGS
    if mode == "raw" and not raw_ok:
        raise TraceError("raw tracepoint kvm_pio unusable here (kernel support or argument "
                         f"layout {fields} differs): use --attach classic")
    if mode == "auto":
        return "raw" if raw_ok else "classic"
    return mode


def check_headers():
    """BCC compiles C against kernel headers; say what to install when absent."""
    # BCC also takes headers from the environment, or from the kernel itself
    # (CONFIG_IKHEADERS).
    if os.environ.get("BCC_KERNEL_SOURCE") or os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return
    release = platform.release()
    if not os.path.exists(f"/lib/modules/{release}/build"):
        raise TraceError(f"kernel headers for {release} not found at /lib/modules/{release}/build:"
                         f" install linux-headers-{release} (or run scripts/setup.sh, which"
                         " falls back to the distribution's generic headers)")


def import_bcc():
    try:
        import bcc
    except ImportError:
        raise TraceError("BCC's Python bindings are missing: apt-get install python3-bpfcc "
                         "(Fedora: dnf install python3-bcc); the PyPI package 'bcc' is "
                         "unrelated") from None
    return bcc


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


class BtfType(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32),
                ("size", ctypes.c_uint32)]


class BtfMember(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("type", ctypes.c_uint32),
                ("offset", ctypes.c_uint32)]


BTF_KIND_STRUCT, BTF_KIND_UNION = 4, 5


def kernel_offsets(fields=KERNEL_FIELDS, option="--by vm|vcpu"):
    """{flag: byte offset} of each (struct, field) in the running kernel, read
    from its BTF with libbpf (which BCC itself links); a TraceError naming
    `option`, which reads them, when one is missing."""
    try:
        libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError:
        raise TraceError(f"{option} needs libbpf.so.1 (apt-get install libbpf1)") from None
    libbpf.btf__load_vmlinux_btf.restype = ctypes.c_void_p
    libbpf.btf__find_by_name_kind.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32]
    libbpf.btf__type_by_id.restype = ctypes.POINTER(BtfType)
    libbpf.btf__type_by_id.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    libbpf.btf__name_by_offset.restype = ctypes.c_char_p
    libbpf.btf__name_by_offset.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    libbpf.btf__free.argtypes = [ctypes.c_void_p]
    btf = libbpf.btf__load_vmlinux_btf()
    if not btf:
        raise TraceError(f"{option} needs the kernel's BTF (/sys/kernel/btf/vmlinux, "
                         "CONFIG_DEBUG_INFO_BTF), to read the kernel's own structures")

    def members(type_id, base=0):
        """(name, byte offset) of a struct's fields, those of anonymous members inlined."""
        t = libbpf.btf__type_by_id(btf, type_id).contents
        kind_flag = t.info >> 31
        kinds = ctypes.POINTER(BtfMember)
        array = ctypes.cast(ctypes.addressof(t) + ctypes.sizeof(BtfType), kinds)
        for m in array[:t.info & 0xFFFF]:
            at = base + (m.offset & 0xFFFFFF if kind_flag else m.offset) // 8
            name = libbpf.btf__name_by_offset(btf, m.name_off)
            inner = libbpf.btf__type_by_id(btf, m.type).contents.info >> 24 & 0x1F
            if not name and inner in (BTF_KIND_STRUCT, BTF_KIND_UNION):
                yield from members(m.type, at)
            elif name:
                yield name.decode(), at

    try:
        found, layouts = {}, {}
        for flag, (struct_name, field) in fields.items():
            if struct_name not in layouts:
                type_id = libbpf.btf__find_by_name_kind(btf, struct_name.encode(),
                                                        BTF_KIND_STRUCT)
                layouts[struct_name] = dict(members(type_id)) if type_id > 0 else {}
            if field not in layouts[struct_name]:
                raise TraceError(f"the kernel's BTF has no {struct_name}.{field}, which "
                                 f"{option} reads: not supported on this kernel")
            found[flag] = layouts[struct_name][field]
        return found
    finally:
        libbpf.btf__free(btf)


def load(bcc, path, cflags):
    """Compile and load; a failure is one line (clang's first error), not
    the pages clang writes to stderr."""
    sys.stderr.flush()      # our own pending output stays ours
    with tempfile.TemporaryFile() as log:
        saved = os.dup(2)
        os.dup2(log.fileno(), 2)
        try:
            return bcc.BPF(src_file=str(path).encode(), cflags=cflags)
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


class PioCounter:
    """kvm:kvm_pio counts aggregated in the kernel.

    Snapshot keys are (direction, port), plus the VMM process (a Proc: pid
    and start time) with by="vm", plus it and the tid with by="vcpu". `pids`
    limits counting to those VMM processes, in the kernel.

    By VM or vCPU, `doorbells` are fds that turn readable when a VM comes or
    goes; `sync` then says which, and moves the counts of a VM that exited
    out of the kernel map into this object, where reads find them until
    `forget`. `cmdlines` holds what the kernel saw of each new VM's process
    on its first count, {Proc: (command line, name)} as bytes of
    /proc/PID/cmdline and comm (the command line None when unreadable),
    for names to take (names.Labeler)."""

    def __init__(self, attach="auto", max_entries=DEFAULT_MAX_ENTRIES, by="port", pids=(),
                 latency=False):
        check_privileges()
        tracefs = find_tracefs()
        fields = kvm_pio_fields(tracefs)
        bcc = import_bcc()
        check_headers()
        self.attach = choose_attach(attach, fields, bcc.BPF.support_raw_tracepoint())
        self.by = by
        self.capacity = max_entries if BY_KEYS[by] else PORT_KEYS   # keys the map can hold
        cflags = [f"-DPIOBPF_PORT_KEYS={PORT_KEYS}", f"-DPIOBPF_MAX_ENTRIES={int(max_entries)}",
                  f"-DPIOBPF_MAX_PIDS={MAX_PIDS}", f"-DDROPPED_SLOTS={len(DROPPED)}"]
        cflags += [f"-DDROPPED_{name.upper()}={i}" for i, name in enumerate(DROPPED)]
        cflags += [f"-D{k}" for k in BY_KEYS[by]]
        if BY_KEYS[by]:
            cflags += [f"-DPIOBPF_MAX_VMS={min(MAX_VMS, int(max_entries))}",
                       f"-DPIOBPF_RECENT={RECENT}", f"-DPIOBPF_ARGS={ARGS}",
                       f"-DPIOBPF_RING_PAGES={RING_PAGES}"]
            cflags += [f"-D{flag}={offset}" for flag, offset in kernel_offsets().items()]
        if latency:
            cflags += ["-DPIOBPF_LATENCY", f"-DPIOBPF_HIST_SLOTS={HIST_SLOTS}",
                       f"-DPIOBPF_MAX_WINDOW_NS={MAX_WINDOW_NS}ULL",
                       f"-DPIOBPF_TIME_ENTRIES={TIME_ENTRIES}",
                       f"-DPIOBPF_MAX_THREADS={MAX_THREADS}"]
            cflags += [f"-D{flag}={offset}"
                       for flag, offset in kernel_offsets(LATENCY_FIELDS, "--latency").items()]
        self.latency = latency
        if self.attach == "classic":
            cflags.append("-DPIOBPF_CLASSIC")
        if pids:
            cflags.append("-DPIOBPF_FILTER_PIDS")
        self._bpf = load(bcc, bpf_source_path(), cflags)
        self._counts = self._bpf["counts"]
        self._dropped = self._bpf["dropped"]
        keys = self._bpf["slots"] if BY_KEYS[by] else self._counts
        self._kfmt = layout(keys.Key, KEY_FIELDS[by])
        self._vfmt = layout(self._counts.Leaf, LEAF_FIELDS[by])
        if latency:
            self._times, self._pending = self._bpf["times"], self._bpf["pending"]
            layout(self._times.Leaf, TIME_FIELDS)
        self._batch = True
        self._buffers = {}      # map fd -> batch read buffers, allocated once
        self.comms = {}     # (Proc, tid) -> thread name the kernel saw (by vcpu)
        self.cmdlines = {}
        self.entries = 0    # keys in the kernel map at the last read
        self._evicted = {}  # key -> final Counts, of exited VMs not yet forgotten
        self._evicted_times = {}    # key -> final Times, the same with --latency
        self.doorbells = []
        # The program counts nothing for a filtered run until its pids are in.
        if pids:
            table = self._bpf["pids"]
            for pid in pids:
                table[table.Key(pid)] = table.Leaf(1)
        if BY_KEYS[by]:
            self._start_vms(max_entries)

    def _start_vms(self, max_entries):
        """By VM or vCPU: give the program every slot of counts, then start it."""
        self._slots, self._vms = self._bpf["slots"], self._bpf["vms"]
        self._spare = self._bpf["spare"]
        self._ifmt = layout(self._counts.Key, INDEX)
        self._sfmt = layout(self._slots.Leaf, INDEX)
        self._mfmt = layout(self._vms.Leaf, VM_FIELDS)
        self._procs = {}        # VM id -> Proc, of the VMs in the kernel's table
        # Slot 0 on top: keys take the low slots, so reads stop early. (A
        # syscall a slot: stacks have no batch update.)
        from bcc import lib
        slot = ctypes.c_uint32()
        for slot.value in range(max_entries - 1, -1, -1):
            if lib.bpf_update_elem(self._spare.map_fd, None, ctypes.byref(slot), 0):
                raise TraceError(f"filling the BPF map failed: {os.strerror(ctypes.get_errno())}")
        # A per-CPU map's value is an array of the struct, one a CPU.
        self._afmt = layout(self._bpf["arrivals"].Leaf._type_, ARRIVAL_FIELDS)
        doorbell = self._bpf["doorbell"]
        doorbell.open_ring_buffer(self._rang)
        self.doorbells = [doorbell.map_fd]
        epoch = self._bpf["epoch"]
        epoch[epoch.Key(0)] = epoch.Leaf(1)

    def _rang(self, ctx, data, size):
        """A ring: a VM's arrival keeps what names it; the rest (a VM's
        exit, its tgid only) just wakes `sync`, and vms says which."""
        full = struct.calcsize(self._afmt)
        if size > 4:
            record = ctypes.string_at(data, min(size, full)).ljust(full, b"\0")
            tgid, length, start, comm, args = struct.unpack(self._afmt, record)
            cmdline = args[:length]
            if length > len(cmdline):       # cut short: its last argument may be partial
                cmdline = cmdline[:cmdline.rfind(b"\0") + 1]
            self.cmdlines[Proc(tgid, start // TICK_NS)] = (
                cmdline if length else None, comm.split(b"\0", 1)[0])
        return 0

    def _lookup_batch(self, table, limit=None):
        """A map's entries as (key bytes, value bytes), BATCH entries a syscall
        (an array's first `limit` only), or None where the kernel lacks batch
        lookups (before 5.6)."""
        from bcc import lib
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
            res = lib.bpf_lookup_batch(table.map_fd, None if first else ctypes.byref(token),
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

    def _rows(self, table, kfmt, vfmt, limit=None):
        """(key fields, value fields) of a map's entries (an array's first `limit`)."""
        batch = self._lookup_batch(table, limit) if self._batch else None
        if batch is None:
            self._batch = False
            for k, v in itertools.islice(table.items(), limit):
                yield struct.unpack(kfmt, bytes(k)), struct.unpack(vfmt, bytes(v))
            return
        yield from zip(struct.iter_unpack(kfmt, batch[0]), struct.iter_unpack(vfmt, batch[1]))

    def _entries(self, slots):
        """(dirport, vm, tid, events, bytes, comm) for every key counted.

        By port the counts are an array indexed by dirport; by VM or vCPU an
        array of slots, `slots` giving each slot's key (`_slot_keys`).
        Values are struct pio_counts (`layout`)."""
        no_comm = () if self.by == "vcpu" else (b"",)
        if self.by == "port":
            for (dirport,), value in self._rows(self._counts, self._kfmt, self._vfmt):
                yield (dirport, 0, 0) + value + no_comm
            return
        for (slot,), value in self._rows(self._counts, self._ifmt, self._vfmt,
                                         max(slots, default=-1) + 1):
            if slot in slots:
                yield slots[slot] + value + no_comm

    def _key(self, dirport, vm, tid):
        """A Snapshot key: (direction, port[, Proc[, tid]])."""
        direction = WRITE if dirport >> 16 else READ
        if self.by == "port":
            return direction, dirport & 0xFFFF
        if vm not in self._procs:
            self._vm_table()        # a VM new since the last look at the table
        proc = self._procs[vm]
        return (direction, dirport & 0xFFFF, proc, tid)[:2 + len(BY_KEYS[self.by])]

    def read(self):
        """The cumulative counts now: the kernel map's, plus the final counts
        of exited VMs moved out of it and not yet forgotten."""
        slots = self._slot_keys() if BY_KEYS[self.by] else None    # read once for both maps
        counts = {}
        for dirport, vm, tid, events, nbytes, comm in self._entries(slots):
            if not events:
                continue    # an array slot no event has touched
            key = self._key(dirport, vm, tid)
            counts[key] = Counts(events, nbytes)
            if comm and (key[2], tid) not in self.comms:
                self.comms[key[2], tid] = comm.split(b"\0", 1)[0].decode(errors="replace")
        self.entries = len(counts)
        evicted = Snapshot(self._evicted, 0, self._evicted_times)
        if not self.latency:
            return Snapshot(counts, self._dropped[0].value) + evicted
        return Snapshot(counts, self._dropped[0].value, self._read_times(slots),
                        {name: self._dropped[i].value for i, name in enumerate(DROPPED)
                         if i}) + evicted

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
        for direction, port in keys:
            c = self._counts[self._counts.Key((direction == WRITE) << 16 | port)]
            if c.events:
                counts[direction, port] = Counts(c.events, c.bytes)
        return Snapshot(counts, self._dropped[0].value)

    # The lifecycle of VMs, by VM or vCPU.

    def _slot_keys(self):
        """{slot: (dirport, vm, tid)} of every key in the kernel map."""
        return {slot: key for key, (slot,) in self._rows(self._slots, self._kfmt, self._sfmt)}

    def _vm_table(self):
        """{VM id: exited} of the kernel's VM table; learns each one's process
        and, from the ring, what names it (cmdlines)."""
        table = {}
        for (vm,), (tgid, exited, start) in self._rows(self._vms, self._sfmt, self._mfmt):
            if vm not in self._procs:
                self._procs[vm] = Proc(tgid, start // TICK_NS)
            table[vm] = exited
        # After the table: a VM's arrival is rung a moment after it enters it.
        self._bpf.ring_buffer_consume()
        return table

    @property
    def vms(self):
        """The processes of the VMs in the kernel's table: running, or
        exited and not moved out yet."""
        return set(self._procs.values()) if BY_KEYS[self.by] else set()

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
        keys = {slot: key for slot, key in self._slot_keys().items() if key[1] in gone}
        for slot, (dirport, vm, tid) in keys.items():
            c = self._counts[self._counts.Key(slot)]
            key = self._key(dirport, vm, tid)
            self._evicted[key] = self._evicted.get(key, Counts()) + Counts(c.events, c.bytes)
            if self.by == "vcpu" and (key[2], tid) not in self.comms:
                self.comms[key[2], tid] = c.comm.decode(errors="replace")
        if keys:
            doomed = (self._slots.Key * len(keys))(*(self._slots.Key(*k) for k in keys.values()))
            if self._batch:
                self._slots.items_delete_batch(doomed)
            else:
                for k in doomed:
                    del self._slots[k]
        for slot in keys:
            self._counts[self._counts.Key(slot)] = self._counts.Leaf()
            if self.latency:    # its exit windows are closed too: its threads are gone
                t = self._times.get(self._times.Key(slot))
                if t:
                    key = self._key(*keys[slot])
                    self._evicted_times[key] = self._evicted_times.get(key, Times()) + Times(
                        t.windows, t.time_ns, t.max_ns, tuple(t.hist))
                    del self._times[self._times.Key(slot)]
            self._spare.push(self._spare.Leaf(slot))
        for vm in vms:
            del self._vms[self._vms.Key(vm)]
        return [self._procs.pop(vm) for vm in vms]

    def forget(self, procs):
        """Drop what is kept of these exited VMs: final counts, thread names."""
        procs = set(procs)
        self._evicted = {k: c for k, c in self._evicted.items() if k[2] not in procs}
        self._evicted_times = {k: t for k, t in self._evicted_times.items()
                               if k[2] not in procs}
        for key in [k for k in self.comms if k[0] in procs]:
            del self.comms[key]
        for p in procs & self.cmdlines.keys():     # never named (named ones took theirs)
            del self.cmdlines[p]

    def detach(self):
        """Stop counting; the maps stay readable for the final read."""
        if self.attach == "raw":
            self._bpf.detach_raw_tracepoint(tp=b"kvm_pio")
        else:
            self._bpf.detach_tracepoint(tp=b"kvm:kvm_pio")
        if self.latency:
            for tp in LATENCY_RAW_TRACEPOINTS:
                self._bpf.detach_raw_tracepoint(tp=tp.encode())

    def close(self):
        self._bpf.cleanup()
