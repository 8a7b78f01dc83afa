"""scripts/bench.sh in smoke mode produces every figure (it measures; it asserts no speed)."""

import json
import subprocess

from helpers import REPO, needs_tracing


@needs_tracing
def test_bench_smoke_produces_its_figures(tmp_path):
    out_file = tmp_path / "bench.json"
    out = subprocess.run(["bash", str(REPO / "scripts" / "bench.sh"), "--smoke",
                          "-o", str(out_file)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    r = json.loads(out_file.read_text())
    p = r["paired"]
    assert p["blocks"] == len(p["diffs"]) >= 6
    lo, hi = p["ci95"]
    assert lo <= p["median"] <= hi and p["resolved"] == (hi - lo < p["budget"])
    assert set(r["throughput_ratio"]) == {"floor (empty BPF)", "bpftrace", "perf record"}
    assert all(v > 0 for v in r["throughput_ratio"].values())
    assert set(r["bpf_ns_per_event"]) == {"piobpf", "piobpf --by vm", "floor (empty BPF)",
                                          "bpftrace"}
    assert all(c["median"] > 0 for c in r["bpf_ns_per_event"].values())
    assert r["full_map_keys"] == 131072
    for figure in ("untraced_events_per_s", "startup_s", "peak_rss_mb", "bpf_maps_bytes",
                   "bpf_maps_bytes_at_256_cpus", "piobpf_cpu_ms_per_s", "full_map_read_s",
                   "perf_data_bytes_per_event", "perf_script_s", "awk_sort_s"):
        assert r[figure] > 0, figure
    assert "piobpf - floor" in out.stdout and "TRACER" in out.stdout
