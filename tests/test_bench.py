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
    assert set(r["throughput_ratio"]) == {"piobpf", "floor (empty BPF)", "bpftrace",
                                          "perf record"}
    assert all(v > 0 for v in r["throughput_ratio"].values())
    assert {"piobpf", "floor (empty BPF)", "bpftrace"} <= set(r["bpf_ns_per_event"])
    assert set(r["bpf_ns_per_event_by_mode"]) == {"floor (empty BPF)", "piobpf --by port",
                                                 "piobpf --by vm", "piobpf --by vcpu"}
    assert r["full_map_keys"] == 131072
    for figure in ("untraced_events_per_s", "startup_s", "peak_rss_mb", "bpf_maps_bytes",
                   "bpf_maps_bytes_at_256_cpus", "full_map_read_s",
                   "perf_data_bytes_per_event", "perf_script_s", "awk_sort_s"):
        assert r[figure] > 0, figure
    assert "TRACER" in out.stdout and "piobpf" in out.stdout
