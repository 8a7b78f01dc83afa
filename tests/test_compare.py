"""--from-perf and --compare through the command line, on files (no root)."""

import io
import json

import pytest

from helpers import assert_one_line, run_piobpf
from piobpf.core.keys import Gpa, Key
from piobpf.core.snapshot import Counts, Snapshot
from piobpf.offline import compare, results
from test_perfscript import EXPECTED, FIXTURES, MMIO_EXPECTED

PERF = str(FIXTURES / "perf-default.txt")


def as_json(counts, duration=1.0):
    """A piobpf JSON result: rows of ports as they were before MMIO (no
    "space"), rows of Gpas in the form that has "space": "mmio" and "gpa"."""
    rows = [{"direction": d, **({"space": "mmio", "gpa": int(p)} if isinstance(p, Gpa)
                                else {"port": p}),
             "device": None, "events": c.events, "bytes": c.bytes}
            for (d, p, _, _), c in counts.items()]
    return json.dumps({"duration_s": duration, "dropped_events": 0,
                       "total_events": sum(c.events for c in counts.values()), "rows": rows})


def test_from_perf_json_has_the_perf_counts():
    out = run_piobpf("--from-perf", PERF, "--format", "json", "--ioports", "/dev/null")
    assert out.returncode == 0, out.stderr
    obj = json.loads(out.stdout)
    assert {Key(r["direction"], r["port"]): Counts(r["events"], r["bytes"])
            for r in obj["rows"]} == EXPECTED
    assert obj["total_events"] == 13


def test_from_perf_stdin_and_all_formats():
    text = (FIXTURES / "perf-default.txt").read_text()
    for fmt in ("table", "json", "csv", "seed"):
        a = run_piobpf("--from-perf", "-", "--format", fmt, stdin=text)
        b = run_piobpf("--from-perf", PERF, "--format", fmt)
        assert a.returncode == b.returncode == 0
        assert a.stdout == b.stdout != ""


def test_from_perf_reports_malformed_lines():
    text = (FIXTURES / "perf-F-trace.txt").read_text() + "pio_read at 0x3fd size\n"
    out = run_piobpf("--from-perf", "-", "--format", "seed", stdin=text)
    assert out.returncode == 0
    assert "R:0x3fd          3\n" in out.stdout
    assert out.stderr.splitlines()[-1] == (
        "piobpf: -: 1 malformed kvm_pio line(s) not counted; first at line 26: "
        "pio_read at 0x3fd size")


def test_load_detects_json_lines_and_perf():
    one = results.load(io.StringIO(as_json({Key("read", 1): Counts(2, 2)})))
    lines = results.load(io.StringIO(as_json({Key("read", 1): Counts(2, 2)}) + "\n"
                                     + as_json({Key("read", 1): Counts(3, 6)}) + "\n"))
    perf = results.load(open(PERF))
    assert one.kind == lines.kind == "json" and perf.kind == "perf"
    assert lines.snapshot.counts == {Key("read", 1): Counts(5, 8)}
    assert perf.snapshot.counts == EXPECTED


def test_load_rejects_json_that_is_not_ours():
    with pytest.raises(ValueError, match="not a piobpf JSON result"):
        results.load(io.StringIO('{"rows": [{"port": 1}]}'))


def test_differing_rows_come_first():
    a = Snapshot({Key("read", 1): Counts(5, 5), Key("read", 2): Counts(100, 100),
                  Key("write", 3): Counts(7, 7)})
    b = Snapshot({Key("read", 1): Counts(5, 5), Key("read", 2): Counts(90, 90),
                  Key("read", 4): Counts(1, 1)})
    rows = compare.compare(a, b).rows
    assert [(r.direction, r.port, r.diff) for r in rows] == [
        ("read", 2, -10), ("write", 3, -7), ("read", 4, 1), ("read", 1, 0)]
    assert rows[0].diff_pct == -10.0 and rows[2].diff_pct is None


def test_compare_exit_codes(tmp_path):
    same = tmp_path / "same.json"
    same.write_text(as_json(EXPECTED))
    other = tmp_path / "other.json"
    other.write_text(as_json({**EXPECTED, Key("read", 0x3fd): Counts(4, 4)}))
    equal = run_piobpf("--compare", PERF, str(same))
    assert equal.returncode == 0, equal.stderr
    assert "all 7 (direction, port) counts are equal" in equal.stdout
    differ = run_piobpf("--compare", PERF, str(other), "--format", "json")
    assert differ.returncode == 1
    obj = json.loads(differ.stdout)
    assert obj["equal"] is False
    assert obj["rows"][0] == {"space": "io", "direction": "read", "port": 0x3fd,
                              "device": obj["rows"][0]["device"],
                              "events_a": 3, "events_b": 4, "diff": 1, "diff_pct": 100 / 3}
    assert all(r["diff"] == 0 for r in obj["rows"][1:])


def test_compare_errors_exit_2(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"hello": 1}')
    for args in (["--compare", PERF, str(tmp_path / "missing")],
                 ["--compare", PERF, str(bad)],
                 ["--compare", PERF],
                 ["--compare", "-", "-"],
                 ["--compare", PERF, PERF, "--format", "seed"],
                 ["--compare", PERF, PERF, "-d", "1"],
                 ["--from-perf", PERF, "--compare", PERF, PERF]):
        out = run_piobpf(*args)
        assert out.returncode == 2, args
        assert len(out.stderr.splitlines()) == 1 and out.stderr.startswith("piobpf: ")


def test_from_perf_missing_file():
    out = run_piobpf("--from-perf", "/nonexistent/pio_stat")
    assert out.returncode == 1
    assert out.stderr == "piobpf: cannot read /nonexistent/pio_stat: No such file or directory\n"


def test_compare_names_ports_as_the_trace_did(tmp_path):
    # A trace's JSON carries the names its VMs' maps gave: --compare shows
    # those, not what the host's /proc/ioports says of the port.
    row = {"direction": "read", "port": 0xC040, "device": "virtio-pci net0",
           "device_source": "vmm", "events": 7, "bytes": 28}
    for name in ("a.json", "b.json"):
        (tmp_path / name).write_text(json.dumps(
            {"duration_s": 1.0, "total_events": 7, "dropped_events": 0, "rows": [row]}))
    out = run_piobpf("--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json"))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[2].split()[:4] == ["read", "0xc040", "virtio-pci", "net0"]


def test_from_perf_range_checks_values():
    text = ("qemu 1 [000] 5.0: kvm:kvm_pio: pio_read at 0x3fd size 1 count 1 val 0x60\n"
            "qemu 1 [000] 2.0: kvm:kvm_pio: pio_read at 0x3fd size 1 count 1 val 0x60\n"
            "qemu 1 [000] 2.0: kvm:kvm_pio: pio_read at 0x3fd size 99999 count 99999 val 0x60\n")
    out = run_piobpf("--from-perf", "-", "--format", "json", stdin=text)
    assert out.returncode == 0
    obj = json.loads(out.stdout)
    assert (obj["duration_s"], obj["total_events"], obj["rows"][0]["bytes"]) == (3.0, 2, 2)
    assert out.stderr.splitlines() == [
        "piobpf: -: 1 malformed kvm_pio line(s) not counted; first at line 3: "
        "qemu 1 [000] 2.0: kvm:kvm_pio: pio_read at 0x3fd size 99999 count 99999 val 0x60"]


def row_json(dropped=0, **row):
    return json.dumps({"dropped_events": dropped, "rows": [
        {"direction": "read", "port": 1, "events": 1, "bytes": 1, **row}]})


NOT_COUNTS = [
    ('{"dropped_events":1e400,"rows":[]}', "dropped_events inf"),
    ('{"dropped_events":0,"rows":' + "[" * 100000, "recursion"),
    (row_json(events=True), "events True"),
    (row_json(events=-1), "events -1"),
    (row_json(events=2**64), "events 18446744073709551616"),
    (row_json(bytes=1.5), "bytes 1.5"),
    (row_json(port=0x10000), "port 65536 is not an integer 0..0xffff"),
    (row_json(port="0x3fd"), "port '0x3fd'"),
    (row_json(dropped=-5), "dropped_events -5"),
    (row_json(device=["serial"]), "bad device"),
    ('{"dropped_events":0,"rows":{}}', "rows is not a list"),
]


@pytest.mark.parametrize("text,why", NOT_COUNTS, ids=[why for _, why in NOT_COUNTS])
def test_load_rejects_values_that_are_not_counts(text, why):
    with pytest.raises(ValueError, match="not a piobpf JSON result") as e:
        results.load(io.StringIO(text))
    assert why in str(e.value)


def test_json_lines_error_names_its_own_line():
    text = as_json({Key("read", 1): Counts(2, 2)}) + "\n" + '{"rows": [1,]}\n'
    with pytest.raises(ValueError, match="line 2 column 13"):
        results.load(io.StringIO(text))


@pytest.mark.parametrize("text,why", NOT_COUNTS[:3], ids=[why for _, why in NOT_COUNTS[:3]])
def test_compare_rejects_them_in_one_line_exit_2(tmp_path, text, why):
    bad = tmp_path / "bad.json"
    bad.write_text(text)
    assert_one_line(run_piobpf("--compare", PERF, str(bad)), 2, str(bad), why)


def test_compare_refuses_what_is_not_a_result(tmp_path):
    files = {"garbage.bin": b"\x8f\x00\x13binary\n", "empty.txt": b"", "array.json": b"[1,2,3]\n",
             "text.txt": b"#\xff\xfe no NUL\n# but hash lines\n"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    for name, why in [("garbage.bin", "binary data"), ("empty.txt", "not perf script output"),
                      ("array.json", "not perf script output"),
                      ("text.txt", "not perf script output")]:
        path = str(tmp_path / name)
        assert_one_line(run_piobpf("--compare", PERF, path), 2, f"piobpf: {path}: ", why)
        assert_one_line(run_piobpf("--compare", path, PERF), 2, f"piobpf: {path}: ", why)
    assert_one_line(run_piobpf("--compare", str(tmp_path / "garbage.bin"),
                               str(tmp_path / "empty.txt")), 2, "garbage.bin")
    assert_one_line(run_piobpf("--compare", "/proc/self/mem", PERF), 2,
                    "cannot read /proc/self/mem")


def test_two_empty_captures_compare_equal_when_they_show_they_are_perf(tmp_path):
    header = tmp_path / "header.txt"
    header.write_text("# ========\n# captured on    : Thu Nov 26 00:12:04 2026\n")
    other = tmp_path / "other.txt"
    other.write_text("qemu 1 [000] 1.0: kvm:kvm_userspace_exit: reason KVM_EXIT_IO (2)\n")
    out = run_piobpf("--compare", str(header), str(other))
    assert out.returncode == 0 and out.stderr == ""
    assert out.stdout.endswith("no kvm_pio or kvm_mmio events in either result\n")


def test_from_perf_refuses_what_is_not_perf_script_text():
    # --from-perf keeps its exit status for errors: 1.
    assert_one_line(run_piobpf("--from-perf", "-", stdin=""), 1,
                    "piobpf: -: not perf script output", "perf script --header")
    assert_one_line(run_piobpf("--from-perf", "-", stdin="x\0y"), 1, "piobpf: -: binary data")
    assert_one_line(run_piobpf("--from-perf", "/proc/self/mem"), 1, "cannot read /proc/self/mem")


def test_a_side_that_dropped_events_is_never_equal():
    counts = {Key("read", 0x3fd): Counts(1, 1)}
    c = compare.compare(Snapshot(counts), Snapshot(counts, dropped=5))
    assert [r.diff for r in c.rows] == [0] and not c.equal
    assert compare.table(c, "a.txt", "b.json").endswith(
        "A: a.txt\nB: b.json (5 events dropped: the kernel map was full)\n"
        "all 1 (direction, port) counts are equal, but B dropped events: not equal\n")
    obj = json.loads(compare.to_json(c, "a.txt", "b.json"))
    assert (obj["dropped_a"], obj["dropped_b"], obj["equal"]) == (0, 5, False)
    both = compare.compare(Snapshot({}, dropped=1), Snapshot({}, dropped=2))
    assert compare.table(both, "a", "b").splitlines()[-1] == (
        "no kvm_pio or kvm_mmio events in either result, but A and B dropped events: not equal")
    assert compare.compare(Snapshot(counts), Snapshot(counts)).equal


def test_compare_with_dropped_events_exits_1_in_every_format(tmp_path):
    perf = tmp_path / "one.txt"
    perf.write_text("qemu 1 [000] 1.0: kvm:kvm_pio: pio_read at 0x3fd size 1 count 1 val 0x60\n")
    dropped = tmp_path / "dropped.json"
    dropped.write_text('{"dropped_events":5,"rows":[{"direction":"read","port":1021,'
                       '"events":1,"bytes":1}]}')
    outs = {fmt: run_piobpf("--compare", str(perf), str(dropped), "--format", fmt)
            for fmt in ("table", "json", "csv")}
    for out in outs.values():
        assert out.returncode == 1
        assert out.stderr == (f"piobpf: {dropped}: 5 events dropped (the kernel map was full):"
                              " the results cannot be equal\n")
    assert outs["table"].stdout.endswith(", but B dropped events: not equal\n")
    assert json.loads(outs["json"].stdout)["dropped_b"] == 5
    assert outs["csv"].stdout.splitlines()[1].endswith(",1,1,0")


MMIO_PERF = str(FIXTURES / "mmio-perf-default.txt")


def test_load_mmio_rows_beside_port_rows():
    text = json.dumps({"dropped_events": 0, "rows": [
        {"space": "mmio", "direction": "write", "gpa": 0x80, "device": "e1000-mmio nic0",
         "events": 2, "bytes": 8},
        {"space": "io", "direction": "write", "port": 0x80, "device": "dma page reg",
         "events": 1, "bytes": 1},
        {"direction": "write", "port": 0x80, "device": None, "events": 1, "bytes": 1},
        {"space": "mmio", "direction": "read", "gpa": 2**64 - 1, "events": 1, "bytes": 4}]})
    loaded = results.load(io.StringIO(text))
    assert loaded.snapshot.counts == {Key("write", Gpa(0x80)): Counts(2, 8),
                                      Key("write", 0x80): Counts(2, 2),
                                      Key("read", Gpa(2**64 - 1)): Counts(1, 4)}
    assert loaded.names == {Gpa(0x80): "e1000-mmio nic0", 0x80: "dma page reg"}


@pytest.mark.parametrize("row", [
    {"space": "mmio", "direction": "read", "port": 0x80},             # mmio needs gpa
    {"space": "mmio", "direction": "read", "gpa": 2**64},
    {"space": "mmio", "direction": "read", "gpa": -1},
    {"space": "mmio", "direction": "read", "gpa": "0x80"},
    {"space": "io", "direction": "read", "port": 0x10000},
    {"space": "pci", "direction": "read", "port": 1},
    {"space": None, "direction": "read", "port": 1},
])
def test_load_rejects_bad_space_rows(row):
    text = json.dumps({"dropped_events": 0, "rows": [{"events": 1, "bytes": 1, **row}]})
    with pytest.raises(ValueError, match="not a piobpf JSON result"):
        results.load(io.StringIO(text))


def test_compare_real_mmio_perf_with_json_rows(tmp_path):
    same = tmp_path / "same.json"
    same.write_text(as_json(MMIO_EXPECTED))
    out = run_piobpf("--compare", MMIO_PERF, str(same))
    assert out.returncode == 0, out.stderr
    assert "all 11 (space, direction, address) counts are equal" in out.stdout
    head = out.stdout.splitlines()[0].split()
    assert head[:3] == ["SPACE", "DIR", "ADDRESS"]
    lines = out.stdout.splitlines()
    assert any(line.split()[:4] == ["mmio", "read", "0xfee00030", "lapic"] for line in lines)
    assert any(line.split()[:3] == ["io", "read", "0x03fd"] for line in lines)
    # One count off on the MMIO side only: that row, not its port namesake.
    other = tmp_path / "other.json"
    other.write_text(as_json({**MMIO_EXPECTED, Key("write", Gpa(0x20000)): Counts(2, 2)}))
    differ = run_piobpf("--compare", MMIO_PERF, str(other), "--format", "json")
    assert differ.returncode == 1
    rows = json.loads(differ.stdout)["rows"]
    assert rows[0] == {"space": "mmio", "direction": "write", "gpa": 0x20000,
                       "device": "unassigned", "events_a": 3, "events_b": 2, "diff": -1,
                       "diff_pct": -100 / 3}
    assert {r["space"] for r in rows} == {"io", "mmio"} and all(r["diff"] == 0 for r in rows[1:])
    assert all(("gpa" in r) == (r["space"] == "mmio") != ("port" in r) for r in rows)
    csv = run_piobpf("--compare", MMIO_PERF, str(other), "--format", "csv").stdout.splitlines()
    assert csv[0] == "space,direction,address,device,events_a,events_b,diff"
    assert csv[1] == "mmio,write,0x20000,unassigned,3,2,-1"


def test_a_port_and_a_gpa_of_one_number_are_two_rows():
    a = Snapshot({Key("write", 0x80): Counts(1, 1), Key("write", Gpa(0x80)): Counts(4, 4)})
    b = Snapshot({Key("write", 0x80): Counts(1, 1)})
    c = compare.compare(a, b)
    assert [(r.space, r.port, r.diff) for r in c.rows] == [("mmio", Gpa(0x80), -4),
                                                                ("io", 0x80, 0)]
    assert not c.equal
