"""What does tracing kvm:kvm_pio cost a guest? piobpf against the floor, bpftrace and perf.

Run through scripts/bench.sh (root). A guest does in-kernel port reads (PIC
port 0x21 with the in-kernel irqchip: the fastest exit path, where a tracer's
cost shows most). Each traced run sits between two untraced runs, and its
throughput is taken relative to their mean: this machine's speed drifts by
several per cent between minutes, adjacent pairs cancel that. Several rounds,
interleaved; the figures are medians of those pair ratios.

The floor is an empty BPF program on the kvm_pio raw tracepoint: no BPF
tracer of this event can cost less.
"""

import argparse
import contextlib
import glob
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tabulate import tabulate

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from piobpf import perfrecord  # noqa: E402  (the repository's, not an installed copy)
PY = "/usr/bin/python3"
ENV = dict(os.environ, PYTHONPATH=str(REPO))
FLOOR_PROGRAM = "RAW_TRACEPOINT_PROBE(kvm_pio) { return 0; }"
BPFTRACE_PROGRAM = "tracepoint:kvm:kvm_pio { @[args->rw, args->port] = count(); }"
FLOOR_CMD = [PY, "-c", "import sys; from bcc import BPF; b = BPF(text=sys.argv[1]); "
                       "print('Tracing', file=sys.stderr, flush=True); sys.stdin.read()",
             FLOOR_PROGRAM]


def guest_throughput(ops):
    """In-kernel port reads a second, as the guest itself timed its vCPU."""
    out = subprocess.run([PY, "-m", "piobpf.guest", "--irqchip", f"r:0x21:1:{ops}"],
                         env=ENV, capture_output=True, text=True, check=True).stdout
    seconds = float(out.split("seconds=")[1])
    return ops / seconds


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
        """fdinfo texts of this process's BPF programs ("prog") or maps ("map")."""
        found = []
        for path in glob.glob(f"/proc/{self.proc.pid}/fdinfo/*"):
            try:
                text = Path(path).read_text()
            except OSError:
                continue
            if f"{kind}_type:" in text:
                found.append(dict(line.split(":\t", 1) for line in text.splitlines()
                                  if ":\t" in line))
        return found

    def peak_rss_mb(self):
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024

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
    if name.startswith("piobpf"):     # "piobpf --by vm": its options follow
        return Tracer(name, [PY, "-m", "piobpf", "--format", "json", *name.split()[1:]],
                      "stderr")
    if name == "floor (empty BPF)":
        return Tracer(name, FLOOR_CMD, "stderr", stdin=subprocess.PIPE)
    if name == "bpftrace":
        return Tracer(name, ["bpftrace", "-e", BPFTRACE_PROGRAM], "stdout")
    d = tempfile.mkdtemp(dir=tmp)
    return PerfTracer(f"{d}/perf.data")


def bpf_ns_per_event(tracer):
    """run_time_ns / run_cnt of the tracer's programs (kernel.bpf_stats_enabled)."""
    progs = tracer.bpf_fds("prog")
    runs = sum(int(p.get("run_cnt", 0)) for p in progs)
    return sum(int(p.get("run_time_ns", 0)) for p in progs) / runs if runs else None


def bpf_costs(names, ops, tmp):
    """ns per event of each BPF tracer, from the kernel's own accounting.

    Measured in runs of their own: kernel.bpf_stats_enabled times every
    program run, which costs too, so it is off while throughput is measured."""
    stats = Path("/proc/sys/kernel/bpf_stats_enabled")
    was = stats.read_text().strip()
    costs = {}
    try:
        for name in names:
            with running(name, tmp) as tracer:
                stats.write_text("1")
                guest_throughput(ops)
                costs[name] = bpf_ns_per_event(tracer)
                stats.write_text(was)
    finally:
        stats.write_text(was)
    return costs


def costs_by_mode(ops, tmp, rounds):
    """ns per event of piobpf's program by port, VM and vCPU, and of the floor:
    medians of interleaved runs, as they differ by less than single runs scatter."""
    names = ["floor (empty BPF)"] + [f"piobpf --by {by}" for by in ("port", "vm", "vcpu")]
    runs = {name: [] for name in names}
    for rnd in range(rounds):
        turn = names[rnd % len(names):] + names[:rnd % len(names)]
        for name, ns in bpf_costs(turn, ops, tmp).items():
            runs[name].append(ns)
    return {name: statistics.median(ns) for name, ns in runs.items()}


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


def full_map_read():
    """One read of a map holding all 131072 (direction, port) keys, seconds (median of 5)."""
    from piobpf.kernel import PioCounter
    counter = PioCounter()
    try:
        subprocess.run([PY, "-m", "piobpf.guest", "r:0-0xffff", "w:0-0xffff"], env=ENV,
                       check=True, capture_output=True)
        times, keys = [], 0
        for _ in range(5):
            t0 = time.perf_counter()
            keys = len(counter.read().counts)
            times.append(time.perf_counter() - t0)
        return {"full_map_read_s": statistics.median(times), "full_map_keys": keys}
    finally:
        counter.close()


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


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", default="bench.json", help="JSON results (bench.json)")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--ops", type=int, default=1_500_000, help="guest port reads per run")
    ap.add_argument("--smoke", action="store_true", help="one quick round: checks it works")
    args = ap.parse_args()
    if args.smoke:
        args.rounds, args.ops = 1, 100_000
    tracers = ["piobpf", "floor (empty BPF)"]
    tracers += ["bpftrace"] if shutil.which("bpftrace") else []
    tracers += ["perf record"]
    ratios = {t: [] for t in tracers}
    extra = {"startup_s": []}
    tmp = tempfile.mkdtemp(prefix="piobpf-bench-")
    try:
        base = guest_throughput(args.ops)
        untraced = [base]
        for rnd in range(args.rounds):
            # Each round starts with another tracer: no tracer always runs
            # right after the same one.
            for name in tracers[rnd % len(tracers):] + tracers[:rnd % len(tracers)]:
                with running(name, tmp) as tracer:
                    traced = guest_throughput(args.ops)
                    if name == "piobpf":
                        extra["startup_s"].append(tracer.startup_s)
                        extra["peak_rss_mb"] = tracer.peak_rss_mb()
                        extra.update(map_memory(tracer))
                if name == "perf record" and not ratios[name]:
                    extra.update(perf_pipeline(tracer, args.ops))
                after = guest_throughput(args.ops)
                ratios[name].append(traced / ((untraced[-1] + after) / 2))
                untraced.append(after)
                print(f"round {rnd + 1}/{args.rounds} {name}: {ratios[name][-1]:.4f}",
                      file=sys.stderr, flush=True)
        extra["bpf_ns_per_event"] = bpf_costs([t for t in tracers if t != "perf record"],
                                              args.ops, tmp)
        extra["bpf_ns_per_event_by_mode"] = costs_by_mode(args.ops, tmp, args.rounds)
        extra.update(full_map_read())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    result = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": f"{platform.node()} {platform.release()} {os.cpu_count()} CPUs",
        "rounds": args.rounds, "ops_per_run": args.ops,
        "untraced_events_per_s": statistics.median(untraced),
        "throughput_ratio": {t: statistics.median(r) for t, r in ratios.items()},
        "throughput_ratios": ratios,
        "bpf_ns_per_event": extra.pop("bpf_ns_per_event"),
        "startup_s": statistics.median(extra.pop("startup_s")),
        **extra,
    }
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    floor = result["throughput_ratio"]["floor (empty BPF)"]
    rows = [[t, f"{r:.4f}", f"{r - floor:+.4f}",
             f"{result['bpf_ns_per_event'].get(t, float('nan')):.1f}"]
            for t, r in sorted(result["throughput_ratio"].items(), key=lambda x: -x[1])]
    print(tabulate(rows, ["TRACER", "THROUGHPUT", "VS FLOOR", "BPF ns/EVENT"],
                   tablefmt="simple", disable_numparse=True))
    print()
    print(tabulate([[k, v] for k, v in result.items()
                    if not isinstance(v, dict) and k not in ("throughput_ratios",)],
                   tablefmt="plain"))
    print("\nBPF ns/event by mode (medians of interleaved runs): " + ", ".join(
        f"{name} {ns:.1f}" for name, ns in result["bpf_ns_per_event_by_mode"].items()))
    print(f"\nJSON: {args.output}", file=sys.stderr)


if __name__ == "__main__":
    main()
