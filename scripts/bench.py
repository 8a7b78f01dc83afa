"""What does tracing kvm:kvm_pio cost a guest? piobpf against the floor, bpftrace and perf.

Run through scripts/bench.sh (root). A guest does in-kernel port reads (PIC
port 0x21 with the in-kernel irqchip: the fastest exit path, where a tracer's
cost shows most). piobpf --latency is measured there too, and on a guest
whose every read (serial port 0x3fd) exits to this process, its VMM: there
--latency's programs on kvm_fpu and kvm_userspace_exit time each exit.
--before REV measures the --latency of that git revision beside this one's,
in the same process and the same blocks.

--mmio's cost per MMIO event, by address and by VM, is measured on a guest
reading the in-kernel LAPIC (a kvm_mmio event, no exit), beside the port
figures of the same programs.

What a tracer costs processes that are not VMs: a getppid loop pinned to
another CPU, timed by its own CPU clock, untraced and under each program in
interleaved rounds (a syscall tracepoint sends every syscall on the host
through the kernel's slow path; a KVM tracepoint should cost them nothing).

piobpf against the floor (an empty BPF program on the same raw tracepoint:
no BPF tracer of this event can cost less) is the comparison that matters,
and their difference is smaller than this machine's drift between seconds.
So both programs stay loaded in this process, one attached at a time, and
short runs alternate between them in ABBA/BAAB blocks: attaching is a
syscall, the runs are adjacent, and linear drift cancels within a block.
Each run is timed by the vCPU thread's own CPU clock (the program runs on
that thread), so other processes taking the CPU do not count. Blocks go on,
after --min-s, until the sign-test interval of the median difference is
narrower than the budget, or until the time cap.

bpftrace and perf record are whole processes: each traced run sits between
two untraced runs (wall-clock), and counts relative to their mean.
"""

import argparse
import contextlib
import ctypes
import fcntl
import glob
import json
import math
import os
import platform
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from tabulate import tabulate

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]
# The repository's, not an installed copy; the guest and perf helpers are the tests'.
from tools import guest, memory, perfrecord  # noqa: E402
from tools.mtreegen import one_port_ranges  # noqa: E402
from piobpf.core.keys import MODES, Key  # noqa: E402
from piobpf.naming import mtree  # noqa: E402
from piobpf.kernel.counter import CounterConfig, PioCounter  # noqa: E402

PY = "/usr/bin/python3"
ENV = dict(os.environ, PYTHONPATH=str(REPO))
GUEST = [PY, str(REPO / "tests" / "tools" / "guest.py")]
FLOOR = "floor (empty BPF)"
UNTRACED = "untraced"
LATENCY = "piobpf --latency"
FLOOR_PROGRAM = "RAW_TRACEPOINT_PROBE(kvm_pio) { return 0; }"
PROBE = "raw_tracepoint__kvm_pio"     # what RAW_TRACEPOINT_PROBE(kvm_pio) names its function
MMIO_PROBE = "raw_tracepoint__kvm_mmio"
MMIO = ("piobpf --mmio", "piobpf --mmio --by vm")   # measured on MMIO events, in runs of their own
LAPIC_ID = 0xFEE00020       # an in-kernel LAPIC register: its read is a kvm_mmio read, no exit
BPFTRACE_PROGRAM = "tracepoint:kvm:kvm_pio { @[args->rw, args->port] = count(); }"
FLOOR_CMD = [PY, "-c", "import sys; from bcc import BPF; b = BPF(text=sys.argv[1]); "
                       "print('Tracing', file=sys.stderr, flush=True); sys.stdin.read()",
             FLOOR_PROGRAM]
CHECKPOINT_PORT = 0x80      # not emulated in the kernel: its read ends a KVM_RUN
SERIAL_LSR = 0x3fd          # nor is the serial port (QEMU's is in user space)
CALIBRATE_OPS = 20_000
STATS_RUN_S = 0.3           # a run of the ns/event figures, CPU seconds
FOREIGN_MAX = 0.01          # other VMs' share of a run's events, beyond which it is run again
RETRIES = 3
BPF_STATS_RUN_TIME = 0      # enum bpf_stats_type


def guest_throughput(ops):
    """In-kernel port reads a second, as a guest process itself timed its vCPU."""
    out = subprocess.run([*GUEST, "--irqchip", f"r:0x21:1:{ops}"],
                         env=ENV, capture_output=True, text=True, check=True).stdout
    seconds = float(out.split("seconds=")[1])
    return ops / seconds


class PicGuest:
    """A VM in this process whose vCPU reads port 0x21 `ops` times, then port
    0x80, which exits to us, then starts over: each run() is one KVM_RUN."""

    workload = "in-kernel exits"
    probe = PROBE       # the program whose runs are its events

    def __init__(self, ops):
        self.ops = ops
        self._vm = guest.Guest([self.program(ops)], irqchip=True, forever=True)
        self._vcpu = self._vm.vcpus[0]
        self.run()      # the first run faults the guest's pages in

    @staticmethod
    def program(ops):
        return [guest.PortOp("read", 0x21, 1, ops), guest.PortOp("read", CHECKPOINT_PORT)]

    def enter(self):
        fcntl.ioctl(self._vcpu.fd, guest.KVM_RUN, 0)

    @property
    def events(self):
        """kvm_pio events a run makes: the reads, and the one of port 0x80."""
        return self.ops + 1

    def run(self):
        """CPU seconds this thread (the vCPU) took for `ops` exits."""
        t0 = time.thread_time()
        self.enter()
        took = time.thread_time() - t0
        reason = struct.unpack_from("<I", self._vcpu.run, 8)[0]
        if reason != guest.KVM_EXIT_IO:
            raise RuntimeError(f"bench guest: unexpected KVM exit reason {reason}")
        return took

    def close(self):
        """End the VM (one at a time in this process)."""
        self._vcpu.run.close()
        for fd in (self._vcpu.fd, self._vm.vm, self._vm.kvm):
            os.close(fd)
        self._vm.mem.close()


class SerialGuest(PicGuest):
    """A VM in this process whose vCPU polls the serial port's line status
    (0x3fd, as a guest's console driver does): each read exits to us, the
    VMM, which calls KVM_RUN again at once (the read gets what the kvm_run
    page holds). Each run() is `ops` KVM_RUNs."""

    workload = "user-space exits"

    @staticmethod
    def program(ops):
        return [guest.PortOp("read", SERIAL_LSR)]

    @property
    def events(self):
        return self.ops

    def enter(self):
        for _ in range(self.ops):
            fcntl.ioctl(self._vcpu.fd, guest.KVM_RUN, 0)


class MmioGuest(PicGuest):
    """As PicGuest, reading the in-kernel LAPIC's ID register instead (MMIO
    the kernel answers: one kvm_mmio event, no exit to us), 4 bytes a read."""

    workload = "in-kernel MMIO"
    probe = MMIO_PROBE

    @staticmethod
    def program(ops):
        return [guest.MmioOp("read", LAPIC_ID, 4, ops), guest.PortOp("read", CHECKPOINT_PORT)]

    @property
    def events(self):
        return self.ops


# What the paired runs set against the floor, on which guest: by port where a
# tracer's cost shows most; --latency there, and where its programs time exits;
# --mmio on in-kernel MMIO, which the floor (on kvm_pio only) leaves untraced.
PAIRED = (("piobpf", PicGuest), (LATENCY, PicGuest), (LATENCY, SerialGuest),
          (MMIO[0], MmioGuest))


def calibrated_ops(cls, run_s):
    """Exits a run of a `cls` guest needs to take about `run_s` CPU seconds
    here and now."""
    probe = cls(CALIBRATE_OPS)
    took = statistics.median(probe.run() for _ in range(5))
    probe.close()
    return max(1000, int(round(CALIBRATE_OPS * run_s / took, -3)))


@contextlib.contextmanager
def workload(cls, run_s, programs):
    """A calibrated `cls` guest, the only VM in this process while it lasts
    (its vCPU resolved for a --before revision that needs it)."""
    vm = cls(calibrated_ops(cls, run_s))
    programs.resolve()
    try:
        yield vm
    finally:
        vm.close()


def fdinfo(path):
    return dict(line.split(":\t", 1) for line in Path(path).read_text().splitlines()
                if ":\t" in line)


class Loaded:
    """A BCC object the bench attaches and detaches itself, as piobpf's
    PioCounter does: its own floor program, or a --before revision's
    counter (older revisions have no public kernel API: their BCC object)."""

    def __init__(self, bpf, owner=None):
        self._bpf, self._owner = bpf, owner
        # BCC attached each as it loaded: what to attach again.
        self._points = (list(bpf.raw_tracepoint_fds), list(bpf.tracepoint_fds))

    def attach(self):
        raw, classic = self._points
        for tp in raw:
            self._bpf.attach_raw_tracepoint(tp=tp, fn_name=b"raw_tracepoint__" + tp)
        for tp in classic:
            self._bpf.attach_tracepoint(tp=tp, fn_name=b"tracepoint__" + tp.replace(b":", b"__"))

    def detach(self):
        raw, classic = self._points
        for tp in raw:
            self._bpf.detach_raw_tracepoint(tp=tp)
        for tp in classic:
            self._bpf.detach_tracepoint(tp=tp)

    def stats(self):
        out = {}
        for name, f in self._bpf.funcs.items():
            info = fdinfo(f"/proc/self/fdinfo/{f.fd}")
            out[name.decode()] = (int(info["run_time_ns"]), int(info["run_cnt"]))
        return out

    def close(self):
        if self._owner:
            self._owner.close()
        else:
            self._bpf.cleanup()


class Programs:
    """BPF programs on the kvm_pio raw tracepoint, loaded once in this
    process; `use` attaches one, then detaches the other, so the tracepoint
    never goes without a program (no static-key flips between runs).
    --latency's programs on its other tracepoints come and go with its own."""

    def __init__(self, before=None):
        # piobpf's programs as piobpf itself builds and loads them, by port,
        # by VM and with --latency (and that of a --before revision).
        raw = dict(attach="raw")
        self.loaded = {"piobpf": PioCounter(CounterConfig(**raw)),
                       "piobpf --by vm": PioCounter(CounterConfig(by="vm", **raw)),
                       LATENCY: PioCounter(CounterConfig(latency=True, **raw)),
                       MMIO[0]: PioCounter(CounterConfig(mmio=True, **raw)),
                       MMIO[1]: PioCounter(CounterConfig(by="vm", mmio=True, **raw))}
        self.before = f"{LATENCY} @{before[0]}" if before else None
        if before:
            old = before[1]
            counter = (old.PioCounter(old.CounterConfig(latency=True, **raw))
                       if hasattr(old, "CounterConfig") else old.PioCounter(latency=True, **raw))
            self.loaded[self.before] = counter if hasattr(counter, "stats") else Loaded(
                counter._bpf, counter)
        from bcc import BPF
        self.loaded[FLOOR] = Loaded(BPF(text=FLOOR_PROGRAM))
        for program in self.loaded.values():
            program.detach()
        self.on = None

    def use(self, name):
        if name != self.on:
            self.loaded[name].attach()
            self.off()
            self.on = name

    def off(self):
        if self.on:
            self.loaded[self.on].detach()
            self.on = None

    def resolve(self):
        """A --before revision that found kvm_run pages in /proc/PID/maps
        (until 2026-12) is told where this process's vCPU has it, else its
        exits would take its cheaper "unresolved" path."""
        old = self.loaded.get(self.before)
        old = getattr(old, "_owner", old)
        if hasattr(old, "resolve_runs"):
            old.resolve_runs([os.getpid()])

    def timed_exits(self):
        """The serial port's exits --latency's program has timed so far."""
        t = self.loaded[LATENCY].read().times.get(Key("read", SERIAL_LSR))
        return t.windows if t else 0

    def stats(self, name, probe=PROBE):
        """(run_time_ns of all its programs, run_cnt of its `probe` one,
        kvm_pio's or kvm_mmio's), counted while bpf_stats() is on: an event
        costs what the mode runs for it on any tracepoint."""
        stats = self.loaded[name].stats()
        return sum(ns for ns, _ in stats.values()), stats[probe][1]

    def close(self):
        self.off()
        for program in self.loaded.values():
            program.close()


def load_revision(rev, tmp):
    """(short hash, kernel module) of piobpf at git revision `rev`, from a
    copy of its tree in `tmp`, imported beside this one as piobpf_<hash>."""
    short = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", rev], check=True,
                           capture_output=True, text=True).stdout.strip()
    name = f"piobpf_{short}"
    archive = subprocess.run(["git", "-C", str(REPO), "archive", short, "piobpf", "bpf"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
    os.rename(os.path.join(tmp, "piobpf"), os.path.join(tmp, name))
    sys.path.insert(0, tmp)
    import importlib
    try:        # the kernel layer's counter, since it has a folder of its own
        return short, importlib.import_module(f"{name}.kernel.counter")
    except ImportError:
        return short, importlib.import_module(f"{name}.kernel")


SYSCALL_LOOP = ("import os, sys, time\n"
                "os.sched_setaffinity(0, {int(sys.argv[1])})\n"
                "n = int(sys.argv[2]); t0 = time.thread_time()\n"
                "for _ in range(n): os.getppid()\n"
                "print((time.thread_time() - t0) / n * 1e9)")


def syscall_costs(programs, rounds, calls):
    """ns a getppid call takes another process, pinned to a CPU other than
    this one's: untraced, and under each piobpf mode (all its programs
    attached), in rounds that rotate the order; medians."""
    cpus = sorted(os.sched_getaffinity(0))
    other = str(cpus[-1])
    names = [UNTRACED] + [n for n in programs.loaded if n != FLOOR]
    runs = {name: [] for name in names}
    for rnd in range(rounds):
        for name in names[rnd % len(names):] + names[:rnd % len(names)]:
            if name == UNTRACED:
                programs.off()
            else:
                programs.use(name)
            out = subprocess.run([PY, "-c", SYSCALL_LOOP, other, str(calls)], check=True,
                                 capture_output=True, text=True).stdout
            runs[name].append(float(out))
    programs.off()
    base = statistics.median(runs[UNTRACED])
    return {name: {"median_ns": statistics.median(r), "ratio": statistics.median(r) / base,
                   "runs": r} for name, r in runs.items()}


def median_interval(xs, confidence=0.95):
    """Sign-test interval of the median: order statistics, no assumption on
    the distribution; None below the 6 values a 95 % interval needs."""
    xs, n = sorted(xs), len(xs)
    k, tail = 0, 0.0    # values cut off each end; their binomial probability
    while k < n and tail + math.comb(n, k) / 2 ** n <= (1 - confidence) / 2:
        tail += math.comb(n, k) / 2 ** n
        k += 1
    return (xs[k - 1], xs[n - k]) if k else None


def ab_block(programs, pic, k, a="piobpf", b=FLOOR):
    """One ABBA (even k) or BAAB block: a's throughput relative to b's, minus 1."""
    seconds = {a: 0.0, b: 0.0}
    for name in (a, b, b, a) if k % 2 == 0 else (b, a, a, b):
        programs.use(name)
        seconds[name] += pic.run()
    return seconds[b] / seconds[a] - 1


def paired(programs, pic, name, budget, min_s, max_s):
    """ABBA blocks of `name` against the floor for at least `min_s` seconds
    (conditions here shift between minutes: the figure should span more than
    a moment), then until the median difference's interval is narrower than
    `budget`, or for `max_s`."""
    diffs, t0, note = [], time.monotonic(), 30
    while True:
        diffs.append(ab_block(programs, pic, len(diffs), a=name))
        ci, elapsed = median_interval(diffs), time.monotonic() - t0
        if ci and (elapsed > max_s or elapsed >= min_s and ci[1] - ci[0] < budget):
            break
        if ci and elapsed >= note:
            note += 30
            print(f"paired: {len(diffs)} blocks, interval {ci[0]:+.4f} to {ci[1]:+.4f}",
                  file=sys.stderr, flush=True)
    programs.use(FLOOR)
    floor_s = statistics.median(pic.run() for _ in range(5))
    median = statistics.median(diffs)
    # In time: how much longer each exit took under `name` than under the floor.
    ns = lambda d: (1 / (1 + d) - 1) * floor_s / pic.ops * 1e9
    return {"program": name, "workload": pic.workload, "blocks": len(diffs),
            "ops_per_run": pic.ops, "wall_s": time.monotonic() - t0, "max_s": max_s,
            "floor_run_cpu_s": floor_s, "floor_events_per_cpu_s": pic.ops / floor_s,
            "budget": budget, "median": median, "ci95": list(ci),
            "resolved": ci[1] - ci[0] < budget, "ns_per_event": ns(median),
            "ns_per_event_ci95": [ns(ci[1]), ns(ci[0])], "diffs": diffs}


def describe_paired(p):
    """The difference with its interval, and whether that resolves the budget."""
    head = (f"{p['program']} - floor, {p['workload']}: {p['median']:+.4f} of the floor's "
            f"guest throughput ({100 * p['median']:+.2f} %), {p['ns_per_event']:+.1f} ns an "
            f"exit; {p['blocks']} ABBA blocks of {p['ops_per_run']} exits a run, "
            f"{p['wall_s']:.0f} s")
    lo, hi = p["ci95"]
    span = (f"95 % interval {lo:+.4f} to {hi:+.4f} ({100 * lo:+.2f} % to {100 * hi:+.2f} %),"
            f" {hi - lo:.4f} wide")
    if p["resolved"]:
        return f"{head}\n{span}: narrower than the budget {p['budget']}"
    return (f"{head}\nNOT RESOLVED within the {p['max_s']:g} s cap: the {span}, "
            f"not narrower than the budget {p['budget']}")


@contextlib.contextmanager
def bpf_stats():
    """The kernel's run_time_ns and run_cnt accounting, on for the block. An
    fd holds it (libbpf's bpf_enable_stats) where the sysctl would not: the
    kernel counts its holders, so another process that writes
    kernel.bpf_stats_enabled meanwhile (other benchmarks here do) neither
    turns it off under us nor is turned off by us."""
    libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)     # BCC's own dependency
    fd = libbpf.bpf_enable_stats(BPF_STATS_RUN_TIME)
    if fd < 0:
        raise OSError(-fd, f"bpf_enable_stats: {os.strerror(-fd)}")
    try:
        yield
    finally:
        os.close(fd)


def bpf_costs(programs, pic, rounds, names=None):
    """ns per event of each program, from the kernel's BPF stats, in runs
    of their own: the accounting costs too, so it is off in the paired runs.
    The counts are every process's: a run in which other VMs on this machine
    made more than FOREIGN_MAX of the events is run again, up to RETRIES
    times, and the figures are the clean runs' (all runs' if none is);
    `foreign` keeps the share of each run kept. `names`: the programs
    measured (default: all but --mmio's, which MmioGuest's runs measure)."""
    names = list(names or (n for n in programs.loaded if n not in MMIO))
    runs = {name: [] for name in names}
    retried = dict.fromkeys(names, 0)
    for rnd in range(rounds):
        for name in names[rnd % len(names):] + names[:rnd % len(names)]:
            programs.use(name)
            for retry in range(RETRIES + 1):
                ns0, cnt0 = programs.stats(name, pic.probe)
                with bpf_stats():
                    pic.run()
                ns1, cnt1 = programs.stats(name, pic.probe)
                foreign = 1 - pic.events / (cnt1 - cnt0)
                if foreign <= FOREIGN_MAX:
                    break
            retried[name] += retry
            runs[name].append(((ns1 - ns0) / (cnt1 - cnt0), foreign))
    costs = {}
    for name, r in runs.items():
        clean = [x for x, f in r if f <= FOREIGN_MAX]
        ns = clean or [x for x, _ in r]
        costs[name] = {"median": statistics.median(ns), "min": min(ns), "max": max(ns),
                       "clean_runs": len(clean), "retried": retried[name],
                       "runs": [x for x, _ in r], "foreign": [f for _, f in r]}
    return costs


class Tracer:
    """A tracer process, started and attached; `stop` ends it."""

    def __init__(self, name, cmd, ready, stdin=None):
        self.name = name
        t0 = time.monotonic()
        self.proc = subprocess.Popen(cmd, env=ENV, text=True, stdin=stdin,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stream = self.proc.stderr if ready == "stderr" else self.proc.stdout
        line = stream.readline()
        if not line:
            raise RuntimeError(f"{name} did not start: {self.proc.stderr.read().strip()}")
        self.startup_s = time.monotonic() - t0

    def bpf_fds(self, kind):
        """fdinfo of this process's BPF programs ("prog") or maps ("map")."""
        found = []
        for path in glob.glob(f"/proc/{self.proc.pid}/fdinfo/*"):
            try:
                info = fdinfo(path)
            except OSError:
                continue
            if f"{kind}_type" in info:
                found.append(info)
        return found

    def peak_rss_mb(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

    def cpu_s(self):
        """CPU time of all its threads so far (schedstat: nanoseconds, not ticks)."""
        return sum(int(Path(p).read_text().split()[0])
                   for p in glob.glob(f"/proc/{self.proc.pid}/task/*/schedstat")) / 1e9

    def stop(self):
        self.proc.send_signal(signal.SIGINT)
        self.proc.communicate(timeout=120)


class PerfTracer(Tracer):
    """perf record -e kvm:kvm_pio -a, recording when the constructor returns."""

    def __init__(self, data):
        self.name, self.data = "perf record", data
        t0 = time.monotonic()
        self.proc = perfrecord.start(data)
        self.startup_s = time.monotonic() - t0

    def stop(self):
        perfrecord.stop(self.proc)


@contextlib.contextmanager
def running(name, tmp):
    """A started tracer, stopped (killed if it must be) however the block ends."""
    tracer = start(name, tmp)
    try:
        yield tracer
    finally:
        try:
            tracer.stop()
        except subprocess.TimeoutExpired:
            tracer.proc.kill()
            tracer.proc.wait()


def start(name, tmp):
    if name == "piobpf":
        return Tracer(name, [PY, "-m", "piobpf", "--format", "json"], "stderr")
    if name == FLOOR:
        return Tracer(name, FLOOR_CMD, "stderr", stdin=subprocess.PIPE)
    if name == "bpftrace":
        return Tracer(name, ["bpftrace", "-e", BPFTRACE_PROGRAM], "stdout")
    d = tempfile.mkdtemp(dir=tmp)
    return PerfTracer(f"{d}/perf.data")


def bpf_ns_per_event(tracer):
    """run_time_ns / run_cnt of a tracer process's programs."""
    progs = tracer.bpf_fds("prog")
    runs = sum(int(p.get("run_cnt", 0)) for p in progs)
    return sum(int(p.get("run_time_ns", 0)) for p in progs) / runs if runs else None


def bpftrace_cost(pic, rounds, tmp):
    """bpftrace's ns per event, measured like bpf_costs' but in one process."""
    with running("bpftrace", tmp) as tracer:
        with bpf_stats():
            for _ in range(rounds):
                pic.run()
        return bpf_ns_per_event(tracer)


def process_figures(pic, starts, window_s, tmp):
    """The piobpf process's start-up, memory and CPU use beside a running guest."""
    startup = []
    for i in range(starts):
        with running("piobpf", tmp) as tracer:
            startup.append(tracer.startup_s)
            if i < starts - 1:
                continue
            cpu0, t0 = tracer.cpu_s(), time.monotonic()
            while time.monotonic() - t0 < window_s:
                pic.run()
            cpu = (tracer.cpu_s() - cpu0) / (time.monotonic() - t0)
            figures = {"peak_rss_mb": tracer.peak_rss_mb(), **map_memory(tracer),
                       "piobpf_cpu_ms_per_s": 1000 * cpu}
    return {"startup_s": statistics.median(startup), **figures}


def perf_pipeline(tracer, events_hint):
    """Bytes perf wrote per event, and the seed's post-processing time."""
    size = os.path.getsize(tracer.data)
    script = tracer.data + ".txt"
    t0 = time.monotonic()
    with open(script, "w") as out:
        subprocess.run(["perf", "script", "-i", tracer.data], stdout=out,
                       stderr=subprocess.DEVNULL, check=True)
    t1 = time.monotonic()
    awk = ("awk '/pio_write/ {o[\"W:\"$8]++} /pio_read/ {o[\"R:\"$8]++} "
           "END {for (k in o) printf \"%-16.16s %d\\n\", k, o[k]}' " + script + " | sort -nk 2 -r")
    out = subprocess.run(awk, shell=True, capture_output=True, text=True, check=True).stdout
    t2 = time.monotonic()
    events = sum(int(line.split()[1]) for line in out.splitlines()) or events_hint
    os.unlink(script)
    return {"perf_data_bytes_per_event": size / events, "perf_events_recorded": events,
            "perf_script_s": t1 - t0, "awk_sort_s": t2 - t1}


def between_untraced(tracers, rounds, ops, tmp):
    """Each traced run against the mean of the untraced runs either side."""
    ratios = {t: [] for t in tracers}
    extra = {}
    untraced = [guest_throughput(ops)]
    for rnd in range(rounds):
        # Each round starts with another tracer: no tracer always runs
        # right after the same one.
        for name in tracers[rnd % len(tracers):] + tracers[:rnd % len(tracers)]:
            with running(name, tmp) as tracer:
                traced = guest_throughput(ops)
            if name == "perf record" and not ratios[name]:
                extra.update(perf_pipeline(tracer, ops))
            after = guest_throughput(ops)
            ratios[name].append(traced / ((untraced[-1] + after) / 2))
            untraced.append(after)
            print(f"round {rnd + 1}/{rounds} {name}: {ratios[name][-1]:.4f}",
                  file=sys.stderr, flush=True)
    return {"untraced_events_per_s": statistics.median(untraced),
            "throughput_ratio": {t: statistics.median(r) for t, r in ratios.items()},
            "throughput_ratios": ratios, **extra}


def full_map_read():
    """One read of a map holding all 131072 (direction, port) keys, seconds (median of 5)."""
    counter = PioCounter()
    try:
        subprocess.run([*GUEST, "r:0-0xffff", "w:0-0xffff"], env=ENV,
                       check=True, capture_output=True)
        times, keys = [], 0
        for _ in range(5):
            t0 = time.perf_counter()
            keys = len(counter.read().counts)
            times.append(time.perf_counter() - t0)
        return {"full_map_read_s": statistics.median(times), "full_map_keys": keys}
    finally:
        counter.close()


RESIDENT_GUESTS = 3      # guests the exporter counts before its memory is read
RESIDENT_SCRAPES = 5


def exporter_rss():
    """VmRSS summed over the exporter's process tree, MB, per --by mode:
    serving, after RESIDENT_GUESTS guests counted (its own only, -p) and
    RESIDENT_SCRAPES scrapes."""
    rss = {}
    for by in MODES:
        guests = [subprocess.Popen([*GUEST, "--wait", "--hold", "r:0x3fd:1:1000", "w:0x3f8:2:30"],
                                   env=ENV, text=True, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE) for _ in range(RESIDENT_GUESTS)]
        with socket.socket() as s:      # a free port
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cmd = [PY, "-m", "piobpf", "--prometheus", f"127.0.0.1:{port}", "--by", by,
               "-p", ",".join(str(g.pid) for g in guests)]
        try:
            for g in guests:
                g.stdout.readline()     # ready
            exporter = Tracer(f"exporter --by {by}", cmd, "stderr")
            try:
                for g in guests:
                    g.stdin.write("go\n")
                    g.stdin.flush()
                for g in guests:
                    g.stdout.readline()     # done
                for _ in range(RESIDENT_SCRAPES):
                    urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read()
                rss[by] = memory.tree_rss_kb(exporter.proc.pid) / 1024
            finally:
                exporter.stop()
        finally:
            for g in guests:
                g.stdin.close()
                g.wait()
    return rss


def map_parse_s(sizes=(4000, mtree.MAX_RANGES)):
    """CPU seconds to parse a VM's map of n one-port ranges (median of 3):
    what a hostile monitor's largest answer costs, re-read every REFRESH."""
    out = {}
    for n in sizes:
        text, times = one_port_ranges(n), []
        for _ in range(3):
            t0 = time.process_time()
            mtree.parse(text)
            times.append(time.process_time() - t0)
        out[str(n)] = statistics.median(times)
    return {"map_parse_s": out}


def map_memory(tracer):
    maps = tracer.bpf_fds("map")
    memlock = sum(int(m["memlock"]) for m in maps)
    ncpu = os.cpu_count()
    # Arrays do not grow with CPUs; a preallocated hash (map_type 1) holds
    # max_entries plus one spare element per possible CPU. No map is per-CPU.
    spare = sum((256 - ncpu) * int(m["memlock"]) / (int(m["max_entries"]) + ncpu)
                for m in maps if m["map_type"] == "1")
    return {"bpf_maps_bytes": memlock, "cpus": ncpu,
            "bpf_maps_bytes_at_256_cpus": round(memlock + spare)}


def sweep(programs, lengths, total_s):
    """Which run length resolves piobpf - floor fastest: blocks of each length,
    interleaved, each length given the same wall-clock time."""
    pics = {s: PicGuest(calibrated_ops(PicGuest, s)) for s in lengths}
    diffs = {s: [] for s in lengths}
    spent = dict.fromkeys(lengths, 0.0)
    # At least 6 blocks each: the fewest that give a 95 % interval.
    while sum(spent.values()) < total_s or min(map(len, diffs.values())) < 6:
        s = min(lengths, key=spent.get)
        t0 = time.monotonic()
        diffs[s].append(ab_block(programs, pics[s], len(diffs[s])))
        spent[s] += time.monotonic() - t0
    rows = {}
    for s in lengths:
        d, ci = diffs[s], median_interval(diffs[s])
        q = statistics.quantiles(d, n=4)
        rows[s] = {"ops_per_run": pics[s].ops, "blocks": len(d), "wall_s": spent[s],
                   "median": statistics.median(d), "stdev": statistics.stdev(d),
                   "iqr": q[2] - q[0], "ci95": list(ci), "ci95_width": ci[1] - ci[0],
                   "diffs": d}
    return rows


def environment():
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            "machine": f"{platform.node()} {platform.release()} {os.cpu_count()} CPUs",
            "loadavg_start": os.getloadavg()}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default="bench.json", help="JSON results (bench.json)")
    ap.add_argument("--budget", type=float, default=0.01,
                    help="resolve piobpf - floor to an interval narrower than this (0.01)")
    ap.add_argument("--min-s", type=float, default=60,
                    help="paired runs go on at least this long, seconds (60)")
    ap.add_argument("--max-s", type=float, default=600,
                    help="cap on the paired runs, seconds (600)")
    ap.add_argument("--run-s", type=float, default=0.01,
                    help="CPU seconds a paired run takes; sets its reads (0.01)")
    ap.add_argument("--rounds", type=int, default=15,
                    help="rounds of bpftrace and perf between untraced runs, and of ns/event")
    ap.add_argument("--ops", type=int, default=1_500_000,
                    help="guest port reads a run between untraced runs")
    ap.add_argument("--sweep", metavar="S,S,...",
                    help="only compare paired run lengths (CPU seconds), over --max-s")
    ap.add_argument("--syscalls", type=int, default=2_000_000,
                    help="getppid calls of another process a run, under each mode")
    ap.add_argument("--before", metavar="REV",
                    help="also measure --latency of this git revision, e.g. an older design")
    ap.add_argument("--smoke", action="store_true", help="one quick round: checks it works")
    args = ap.parse_args()
    if args.smoke:
        args.rounds, args.ops, args.min_s, args.max_s, args.syscalls = 1, 100_000, 0, 0, 100_000
    result = environment()
    tmp = tempfile.mkdtemp(prefix="piobpf-before-")
    try:
        programs = Programs(load_revision(args.before, tmp) if args.before else None)
        try:
            (run_sweep if args.sweep else run_bench)(args, programs, result)
        finally:
            programs.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run_sweep(args, programs, result):
    result["sweep"] = sweep(programs, [float(s) for s in args.sweep.split(",")], args.max_s)
    write(args.output, result)
    print(tabulate([[s, r["ops_per_run"], r["blocks"], f"{r['stdev']:.4f}", f"{r['iqr']:.4f}",
                     f"{r['ci95_width']:.4f}"] for s, r in result["sweep"].items()],
                   ["RUN CPU s", "OPS", "BLOCKS", "STDEV", "IQR", "CI95 WIDTH"],
                   disable_numparse=True))


def run_bench(args, programs, result):
    result["paired"] = []
    before = [(programs.before, SerialGuest)] if programs.before else []
    for name, cls in PAIRED + tuple(before):
        with workload(cls, args.run_s, programs) as vm:
            result["paired"].append(paired(programs, vm, name, args.budget, args.min_s,
                                           args.max_s))
        print(describe_paired(result["paired"][-1]), file=sys.stderr, flush=True)
    ns = result["bpf_ns_per_event"] = dict.fromkeys([PicGuest.workload, SerialGuest.workload])
    with workload(SerialGuest, STATS_RUN_S, programs) as vm:
        timed = programs.timed_exits()
        ns[vm.workload] = bpf_costs(programs, vm, args.rounds)
        latency = ns[vm.workload][LATENCY]
        # Of the guest's exits under --latency, the share it timed: about 1
        # when the bench's vCPU is resolved, so that its cost is the real path's.
        latency["timed_share"] = ((programs.timed_exits() - timed)
                                  / ((len(latency["runs"]) + latency["retried"]) * vm.events))
    programs.off()
    result["syscall_ns"] = syscall_costs(programs, args.rounds, args.syscalls)
    with workload(MmioGuest, STATS_RUN_S, programs) as vm:
        ns[vm.workload] = bpf_costs(programs, vm, args.rounds, MMIO)
    with workload(PicGuest, STATS_RUN_S, programs) as pic:
        ns[pic.workload] = bpf_costs(programs, pic, args.rounds)
        programs.off()
        tracers = [FLOOR] + (["bpftrace"] if shutil.which("bpftrace") else [])
        tmp = tempfile.mkdtemp(prefix="piobpf-bench-")
        try:
            if "bpftrace" in tracers:
                ns[pic.workload]["bpftrace"] = {"median": bpftrace_cost(pic, args.rounds, tmp)}
            result.update(process_figures(pic, min(args.rounds, 5), 1 if args.smoke else 10,
                                          tmp))
            result.update(rounds=args.rounds, ops_per_run=args.ops)
            result.update(between_untraced(tracers + ["perf record"], args.rounds, args.ops,
                                           tmp))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    result.update(full_map_read())
    result["exporter_rss_mb"] = exporter_rss()
    result.update(map_parse_s())
    result["loadavg_end"] = os.getloadavg()
    write(args.output, result)
    report(result)


def write(path, result):
    Path(path).write_text(json.dumps(result, indent=2) + "\n")
    print(f"JSON: {path}", file=sys.stderr)


def report(r):
    for p in r["paired"]:
        print(describe_paired(p))
    print()
    print(tabulate([[name, kind, f"{c['median']:.1f}",
                     f"{c['min']:.1f}-{c['max']:.1f}" if "min" in c else "-",
                     f"{c['clean_runs']}/{len(c['runs'])}" if "runs" in c else "-"]
                    for kind, costs in r["bpf_ns_per_event"].items()
                    for name, c in costs.items()],
                   ["BPF PROGRAM", "WORKLOAD", "ns/EVENT", "RANGE", "CLEAN RUNS"],
                   disable_numparse=True))
    print()
    print(tabulate([[name, f"{c['median_ns']:.1f}", f"{c['ratio']:.3f}"]
                    for name, c in r["syscall_ns"].items()],
                   ["WHILE ATTACHED", "getppid ns (another process)", "VS UNTRACED"],
                   disable_numparse=True))
    print()
    floor = r["throughput_ratio"][FLOOR]
    print(tabulate([[t, f"{x:.4f}", f"{x - floor:+.4f}"]
                    for t, x in sorted(r["throughput_ratio"].items(), key=lambda x: -x[1])],
                   ["TRACER", "THROUGHPUT (untraced = 1)", "VS FLOOR"], disable_numparse=True))
    print()
    print(tabulate([[f"--prometheus --by {by}", f"{mb:.1f}"]
                    for by, mb in r["exporter_rss_mb"].items()],
                   ["EXPORTER", f"VmRSS MB, {RESIDENT_GUESTS} VMs and {RESIDENT_SCRAPES} scrapes"],
                   disable_numparse=True))
    print()
    print(tabulate([[k, v] for k, v in r.items()
                    if not isinstance(v, (dict, list)) or k.startswith("loadavg")]
                   + [[f"map_parse_s ({n} ranges)", s] for n, s in r["map_parse_s"].items()],
                   tablefmt="plain"))


if __name__ == "__main__":
    main()
