"""scripts/bench.sh in smoke mode produces every figure (it measures; it asserts no speed)."""

import json
import subprocess

from helpers import REPO, needs_tracing


@needs_tracing
def test_bench_smoke_produces_its_figures(tmp_path):
    out_file = tmp_path / "bench.json"
    # --before HEAD: another revision's --latency, loaded beside this one's
    # (here the same code, which is enough to exercise the path).
    out = subprocess.run(["bash", str(REPO / "scripts" / "bench.sh"), "--smoke",
                          "--before", "HEAD", "-o", str(out_file)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    r = json.loads(out_file.read_text())
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True, check=True).stdout.strip()
    before = f"piobpf --latency @{head}"
    assert [(p["program"], p["workload"]) for p in r["paired"]] == [
        ("piobpf", "in-kernel exits"), ("piobpf --latency", "in-kernel exits"),
        ("piobpf --latency", "user-space exits"), ("piobpf --mmio", "in-kernel MMIO"),
        (before, "user-space exits")]
    for p in r["paired"]:
        assert p["blocks"] == len(p["diffs"]) >= 6
        lo, hi = p["ci95"]
        assert lo <= p["median"] <= hi and p["resolved"] == (hi - lo < p["budget"])
    assert set(r["throughput_ratio"]) == {"floor (empty BPF)", "bpftrace", "perf record"}
    assert all(v > 0 for v in r["throughput_ratio"].values())
    programs = {"piobpf", "piobpf --by vm", "piobpf --latency", before, "floor (empty BPF)"}
    mmio = {"piobpf --mmio", "piobpf --mmio --by vm"}
    ns = r["bpf_ns_per_event"]
    assert set(ns["in-kernel exits"]) == programs | {"bpftrace"}
    assert set(ns["user-space exits"]) == programs
    assert set(ns["in-kernel MMIO"]) == mmio
    assert all(c["median"] > 0 for costs in ns.values() for c in costs.values())
    # --latency timed the guest's exits to user space: its vCPU was resolved.
    assert 0.95 < ns["user-space exits"]["piobpf --latency"]["timed_share"] < 1.05
    # Another process's syscalls, untraced and under each mode.
    assert set(r["syscall_ns"]) == programs - {"floor (empty BPF)"} | mmio | {"untraced"}
    assert all(c["median_ns"] > 0 for c in r["syscall_ns"].values())
    assert r["full_map_keys"] == 131072
    # The exporter's resident memory per mode (a figure: no bound asserted).
    assert set(r["exporter_rss_mb"]) == {"port", "vm", "vcpu"}
    assert all(mb > 0 for mb in r["exporter_rss_mb"].values())
    assert set(r["map_parse_s"]) == {"4000", "65536"} and all(
        s > 0 for s in r["map_parse_s"].values())
    for figure in ("untraced_events_per_s", "startup_s", "peak_rss_mb", "bpf_maps_bytes",
                   "bpf_maps_bytes_at_256_cpus", "piobpf_cpu_ms_per_s", "full_map_read_s",
                   "perf_data_bytes_per_event", "perf_script_s", "awk_sort_s"):
        assert r[figure] > 0, figure
    assert "piobpf - floor" in out.stdout and "TRACER" in out.stdout and "EXPORTER" in out.stdout
