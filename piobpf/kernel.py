"""The kernel side: load bpf/piobpf.bpf.c with BCC, attach it, read its map.

Thin on purpose: everything it returns is a plain Snapshot, and everything
that can go wrong on the way in is a TraceError with one line to show.
"""

import ctypes
import errno
import os
import platform
import struct
import sys
import tempfile
from pathlib import Path

from .errors import warn
from .snapshot import READ, WRITE, Counts, Snapshot, Times

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
# MAX_WINDOW_NS (a stopped VM, not emulation), windows of a vCPU whose
# kvm_run page was not looked up yet (see resolve_runs), and windows or
# threads the time maps had no room for.
DROPPED = ("events", "too_long", "unresolved", "no_room")
# --latency: the time maps and the window's limits.
HIST_SLOTS = 35                     # log2 buckets of ns, up to 2^34 ns (17 s)
MAX_WINDOW_NS = 10 * 10**9
TIME_ENTRIES = 16384                # keys with timed exits
MAX_THREADS = 16384                 # vCPU threads (and their fds) timed at once
# What each --by adds to the key, as the BPF C's -D switches.
BY_KEYS = {"port": (), "vm": ("PIOBPF_KEY_TGID",), "vcpu": ("PIOBPF_KEY_TGID", "PIOBPF_KEY_TID")}
BY_MODES = tuple(BY_KEYS)
# The map's structs as this module reads them (by port the key is the array index).
KEY_FIELDS = {"port": ("value",), "vm": ("dirport", "tgid", "tid"),
              "vcpu": ("dirport", "tgid", "tid")}
LEAF_FIELDS = {"port": ("events", "bytes"), "vm": ("events", "bytes"),
               "vcpu": ("events", "bytes", "comm")}
TIME_FIELDS = ("windows", "time_ns", "max_ns", "hist")
# The latency programs' raw tracepoints (BCC attaches them at load).
LATENCY_RAW_TRACEPOINTS = ("kvm_userspace_exit", "kvm_exit", "kvm_entry", "sched_process_exit")


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


VCPU_FD = "anon_inode:kvm-vcpu:"


def vcpu_runs(pid, proc="/proc"):
    """{fd: user address of its kvm_run} for a process's vCPU fds. An fd's
    link names its vCPU (anon_inode:kvm-vcpu:N) and so does the VMM's mapping
    of it in /proc/PID/maps, which starts with the kvm_run page. Nothing for
    a process that holds two VMs, whose vCPU names clash."""
    try:
        fds, vms = {}, 0
        with os.scandir(f"{proc}/{pid}/fd") as entries:
            for entry in entries:
                try:
                    link = os.readlink(entry.path)
                except OSError:
                    continue
                vms += link == "anon_inode:kvm-vm"
                if link.startswith(VCPU_FD):
                    fds[int(entry.name)] = link
        if not fds or vms > 1:
            return {}
        starts = {}
        with open(f"{proc}/{pid}/maps") as f:
            for line in f:
                if VCPU_FD in line:
                    fields = line.split()
                    starts[fields[-1]] = int(fields[0].split("-")[0], 16)
    except OSError:     # the process is gone
        return {}
    return {fd: starts[name] for fd, name in fds.items() if name in starts}


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

    Snapshot keys are (direction, port), plus the VMM's pid with by="vm",
    plus pid and tid with by="vcpu". `pids` limits counting to those VMM
    processes, in the kernel."""

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
        if latency:
            cflags += ["-DPIOBPF_LATENCY", f"-DPIOBPF_HIST_SLOTS={HIST_SLOTS}",
                       f"-DPIOBPF_MAX_WINDOW_NS={MAX_WINDOW_NS}ULL",
                       f"-DPIOBPF_TIME_ENTRIES={TIME_ENTRIES}",
                       f"-DPIOBPF_MAX_THREADS={MAX_THREADS}"]
        self.latency = latency
        if self.attach == "classic":
            cflags.append("-DPIOBPF_CLASSIC")
        if pids:
            cflags.append("-DPIOBPF_FILTER_PIDS")
        self._bpf = load(bcc, bpf_source_path(), cflags)
        self._counts = self._bpf["counts"]
        self._dropped = self._bpf["dropped"]
        self._kfmt = layout(self._counts.Key, KEY_FIELDS[by])
        self._vfmt = layout(self._counts.Leaf, LEAF_FIELDS[by])
        if latency:
            self._times, self._pending = self._bpf["times"], self._bpf["pending"]
            self._runs, self._unresolved = self._bpf["runs"], self._bpf["unresolved"]
            layout(self._times.Leaf, TIME_FIELDS)
            self.resolve_runs(pids or [int(d) for d in os.listdir("/proc") if d.isdigit()])
        self._batch = True
        # Batch reads go through buffers of BATCH entries, allocated once.
        self._chunk = min(self._counts.max_entries, BATCH)
        self._ksize = ctypes.sizeof(self._counts.Key)
        self._vsize = ctypes.sizeof(self._counts.Leaf)
        self._kbuf = ctypes.create_string_buffer(self._chunk * self._ksize)
        self._vbuf = ctypes.create_string_buffer(self._chunk * self._vsize)
        self.comms = {}     # (pid, tid) -> thread name the kernel saw (by vcpu)
        # The program counts nothing for a filtered run until its pids are in.
        if pids:
            table = self._bpf["pids"]
            for pid in pids:
                table[table.Key(pid)] = table.Leaf(1)

    def _lookup_batch(self):
        """All entries as (key bytes, value bytes), BATCH entries a syscall,
        or None where the kernel lacks batch lookups (before 5.6)."""
        from bcc import lib
        keys, values = [], []
        token, count, first = ctypes.c_uint32(0), ctypes.c_uint32(0), True
        while True:
            count.value = self._chunk
            res = lib.bpf_lookup_batch(self._counts.map_fd, None if first else ctypes.byref(token),
                                       ctypes.byref(token), self._kbuf, self._vbuf,
                                       ctypes.byref(count))
            err = ctypes.get_errno()
            keys.append(self._kbuf.raw[:count.value * self._ksize])
            values.append(self._vbuf.raw[:count.value * self._vsize])
            if res != 0:
                if err == errno.ENOENT:     # the end of the map
                    break
                if first and err in (errno.EINVAL, ENOTSUPP, errno.EOPNOTSUPP):
                    return None
                raise TraceError(f"reading the BPF map failed: {os.strerror(err)}")
            first = False
        return b"".join(keys), b"".join(values)

    def _entries(self):
        """(dirport, tgid, tid, events, bytes, comm) for every map entry.

        By port the map is an array indexed by dirport; by VM or vCPU a hash
        keyed by struct pio_key. Values are struct pio_counts (`layout`)."""
        batch = self._lookup_batch() if self._batch else None
        if batch is None:
            self._batch = False
            for k, v in self._counts.items():
                ids = (k.value, 0, 0) if self.by == "port" else (k.dirport, k.tgid, k.tid)
                yield ids + (v.events, v.bytes, getattr(v, "comm", b""))
            return
        keys = struct.iter_unpack(self._kfmt, batch[0])
        if self.by == "port":
            keys = ((dirport, 0, 0) for (dirport,) in keys)
        values = struct.iter_unpack(self._vfmt, batch[1])
        if self.by != "vcpu":
            values = (value + (b"",) for value in values)
        for ids, value in zip(keys, values):
            yield ids + value

    def _key(self, dirport, tgid=0, tid=0):
        width = 2 + len(BY_KEYS[self.by])
        return (WRITE if dirport >> 16 else READ, dirport & 0xFFFF, tgid, tid)[:width]

    def read(self):
        """The cumulative counts now."""
        counts = {}
        for dirport, tgid, tid, events, nbytes, comm in self._entries():
            if not events:
                continue    # an array slot no event has touched
            counts[self._key(dirport, tgid, tid)] = Counts(events, nbytes)
            if comm and (tgid, tid) not in self.comms:
                self.comms[tgid, tid] = comm.split(b"\0", 1)[0].decode(errors="replace")
        if not self.latency:
            return Snapshot(counts, self._dropped[0].value)
        return Snapshot(counts, self._dropped[0].value, self._read_times(),
                        {name: self._dropped[i].value for i, name in enumerate(DROPPED)
                         if i})

    def _read_times(self):
        """Times per key: the time map holds only keys with timed exits, a few
        hundred at most, so a plain walk serves."""
        times = {}
        for k, t in self._times.items():
            ids = (k.value,) if self.by == "port" else (k.dirport, k.tgid, k.tid)
            times[self._key(*ids)] = Times(t.windows, t.time_ns, t.max_ns, tuple(t.hist))
        return times

    def resolve_runs(self, pids=()):
        """Tell the program where each vCPU's kvm_run page is: for the
        (process, fd) pairs it asked about, and for every vCPU of `pids`."""
        if not self.latency:
            return
        wanted = set(pids) | {k.tgid for k in self._unresolved.keys()}
        # An fd asked about while this runs is asked about again at its next exit.
        self._unresolved.clear()
        for pid in wanted:
            for fd, address in vcpu_runs(pid).items():
                self._runs[self._runs.Key(pid, fd)] = ctypes.c_uint64(address)

    def open_windows(self):
        """Exits under way now (after detach: never to be timed)."""
        return sum(1 for p in self._pending.values() if p.user_ts)

    def read_keys(self, keys):
        """The cumulative counts of a few (direction, port) keys, by port only:
        a handful of lookups where a full read walks all 131072 slots."""
        counts = {}
        for direction, port in keys:
            c = self._counts[self._counts.Key((direction == WRITE) << 16 | port)]
            if c.events:
                counts[direction, port] = Counts(c.events, c.bytes)
        return Snapshot(counts, self._dropped[0].value)

    def detach(self):
        """Stop counting; the maps stay readable for the final read."""
        if self.attach == "raw":
            self._bpf.detach_raw_tracepoint(tp=b"kvm_pio")
        else:
            self._bpf.detach_tracepoint(tp=b"kvm:kvm_pio")
        if self.latency:
            for tp in LATENCY_RAW_TRACEPOINTS:
                self._bpf.detach_raw_tracepoint(tp=tp.encode())
            self._bpf.detach_tracepoint(tp=b"syscalls:sys_enter_ioctl")

    def close(self):
        self._bpf.cleanup()
