"""piobpf and perf on the same real workload, at the same time, agree."""

import json
import subprocess
import time

from helpers import (ENV, MIXED, MIXED_EXPECTED, REPO, HeldGuest, PerfRecord, Traced,
                     awk_pipeline, by_key, needs_tracing, piobpf_cmd)

pytestmark = needs_tracing


def record_both(thread_name, tmp_path):
    """The mixed workload under piobpf and perf record at once, of this guest
    only (piobpf -p, perf script --pid); their files."""
    guest = HeldGuest(*MIXED, thread_name=thread_name)
    t = Traced("--format", "json", "-p", str(guest.pid))
    perf = PerfRecord()
    guest.start()
    guest.wait_done()
    perf_text = perf.script(guest.pid)
    rc, out, err = t.stop()
    guest.end()
    assert rc == 0, err
    (tmp_path / "pio_stat").write_text(perf_text)
    (tmp_path / "piobpf.json").write_text(out)
    return tmp_path / "pio_stat", tmp_path / "piobpf.json"


def test_compare_perf_and_piobpf_with_spaces_in_thread_names(tmp_path):
    perf_file, json_file = record_both("CPU 0/KVM", tmp_path)
    assert "CPU 0/KVM" in perf_file.read_text()
    out = subprocess.run(piobpf_cmd("--compare", str(perf_file), str(json_file)),
                         env=ENV, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"all {len(MIXED_EXPECTED)} (direction, port) counts are equal" in out.stdout
    parsed = subprocess.run(piobpf_cmd("--from-perf", str(perf_file), "--format", "json"),
                            env=ENV, capture_output=True, text=True, timeout=60)
    assert by_key(json.loads(parsed.stdout)["rows"]) == MIXED_EXPECTED
    assert by_key(json.loads(json_file.read_text())["rows"]) == MIXED_EXPECTED


def seed_of(perf_file):
    out = subprocess.run(piobpf_cmd("--from-perf", str(perf_file), "--format", "seed"),
                         env=ENV, capture_output=True, text=True, timeout=60, check=True)
    return out.stdout


def test_seed_equals_awk_without_spaces(tmp_path):
    perf_file, _ = record_both("qemu-kvm", tmp_path)
    awk = awk_pipeline(perf_file.read_text(), tmp_path)
    assert set(seed_of(perf_file).splitlines()) == set(awk.splitlines())
    assert len(awk.splitlines()) == len(MIXED_EXPECTED)


def test_seed_is_right_where_awk_is_wrong(tmp_path):
    perf_file, _ = record_both("CPU 0/KVM", tmp_path)
    right = {"%-16.16s %d" % (f"{'R' if d == 'read' else 'W'}:{p:#x}", e)
             for (d, p), (e, _) in MIXED_EXPECTED.items()}
    assert set(seed_of(perf_file).splitlines()) == right
    # The awk takes field 8 as the port; `CPU 0/KVM` shifts it to "pio_read".
    assert set(awk_pipeline(perf_file.read_text(), tmp_path).splitlines()) != right


def test_perf_capture_script_beside_piobpf(tmp_path):
    # The script records the whole host: its lines of other VMs are left
    # out by port, the guest's ports being ones no device uses.
    guest = HeldGuest("r:0x7a3d:1:2000", "w:0x7a38:1:5", thread_name="CPU 0/KVM")
    t = Traced("--format", "json", "-p", str(guest.pid))
    capture = subprocess.Popen(["bash", str(REPO / "scripts" / "perf-capture.sh"), "8",
                                str(tmp_path / "capture")], stderr=subprocess.PIPE, text=True)
    time.sleep(3)          # perf record attaches well within this
    guest.start()
    guest.wait_done()
    assert capture.wait(timeout=60) == 0, capture.stderr.read()
    rc, out, err = t.stop()
    guest.end()
    assert rc == 0, err
    lines = (tmp_path / "capture").read_text().splitlines(keepends=True)
    (tmp_path / "pio_stat").write_text("".join(l for l in lines if " at 0x7a" in l))
    (tmp_path / "piobpf.json").write_text(out)
    cmp = subprocess.run(piobpf_cmd("--compare", str(tmp_path / "pio_stat"),
                                    str(tmp_path / "piobpf.json")),
                         env=ENV, capture_output=True, text=True, timeout=60)
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    assert by_key(json.loads(out)["rows"]) == {("read", 0x7a3d): (2000, 2000),
                                               ("write", 0x7a38): (5, 5)}
