"""Bad input and broken environments: one line on stderr, non-zero exit."""

import json
import os
import signal
import subprocess
import time

import pytest

from helpers import (ENV, MIXED, MIXED_EXPECTED, PY, REPO, HeldGuest, Traced, around,
                     assert_one_line, by_key, needs_tracing, piobpf_cmd, readable_env, run)


@pytest.mark.parametrize("args,word", [
    (["-d", "-1"], "-d"), (["-d", "x"], "-d"), (["-d", "0"], "-d"), (["-d", "nan"], "-d"),
    (["-i", "0"], "-i"), (["-i", "soon"], "-i"), (["-i", "3e-320", "-d", "1"], "at least 0.001"),
    (["-n", "1.5"], "-n"), (["-n", "-3"], "-n"),
    (["--format", "xml"], "xml"), (["--bogus"], "--bogus"), (["extra"], "extra"),
])
def test_bad_arguments(args, word):
    assert_one_line(run(piobpf_cmd(*args)), 2, word)


@needs_tracing   # -o is opened once the program is loaded, so a failed start empties nothing
def test_unwritable_output(tmp_path):
    assert_one_line(run(piobpf_cmd("-d", "1", "-o", str(tmp_path / "no" / "such"))), 1,
                    "cannot write", "No such file")


@needs_tracing   # privileges, tracefs and the tracepoint are checked before bcc
def test_bcc_missing_says_how_to_install():
    code = ("import sys; sys.modules['bcc'] = None\n"   # as if python3-bpfcc were absent
            "from piobpf.cli.main import main; sys.exit(main(['-d', '1']))")
    assert_one_line(run([PY, "-c", code]), 1, "python3-bpfcc")


@needs_tracing
def test_not_root_says_which_privilege():
    out = run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
               "--inh-caps=-all", *piobpf_cmd("-d", "1")], cwd="/", env=readable_env())
    assert_one_line(out, 1, "root", "CAP_BPF")


@needs_tracing
def test_headers_missing_says_what_to_install():
    # A private mount namespace where /lib/modules is empty.
    out = run(["unshare", "-m", "sh", "-c",
               'mount -t tmpfs none /lib/modules && exec "$@"', "-", *piobpf_cmd("-d", "1")])
    assert_one_line(out, 1, "kernel headers", "linux-headers-")


@needs_tracing
def test_kvm_pio_absent():
    # A private mount namespace whose tracefs has no kvm events.
    out = run(["unshare", "-m", "sh", "-c",
               "mount -t tmpfs none /sys/kernel/tracing && mkdir /sys/kernel/tracing/events"
               ' && mount -t tmpfs none /sys/kernel/debug && exec "$@"', "-",
               *piobpf_cmd("-d", "1")])
    assert_one_line(out, 1, "kvm:kvm_pio", "kvm module")


@needs_tracing
def test_tracefs_not_mountable():
    # In a user namespace tracefs cannot be mounted; tmpfs hides the host's.
    out = run(["unshare", "-U", "-m", "-r", "sh", "-c",
               "mount -t tmpfs none /sys/kernel/tracing && mount -t tmpfs none /sys/kernel/debug"
               ' && exec "$@"', "-", *piobpf_cmd("-d", "1")])
    assert_one_line(out, 1, "tracefs")


@needs_tracing
def test_closed_pipe():
    guest = HeldGuest("r:0x3fd:1:10")
    t = Traced("--format", "seed", "-p", str(guest.pid))
    t.proc.stdout.close()     # the reader is gone before anything is written
    guest.start()
    guest.wait_done()
    rc, _, err = t.stop()
    guest.end()
    assert rc == 1
    assert err.splitlines() == ["piobpf: output closed before all results were written "
                                "(broken pipe)"]


@needs_tracing
def test_unreadable_ioports_file(tmp_path):
    out = run(piobpf_cmd("-d", "1", "--ioports", str(tmp_path / "none")))
    assert out.returncode == 1 and "cannot read" in out.stderr and "Traceback" not in out.stderr


def test_ioports_file_too_large_is_refused():
    # /dev/zero never ends: read only what an ioports file can hold, then refuse.
    capture = REPO / "tests" / "fixtures" / "perf-default.txt"
    out = run(piobpf_cmd("--from-perf", str(capture), "--ioports", "/dev/zero"))
    assert_one_line(out, 1, "/dev/zero", "not an ioports file")


@pytest.fixture
def full_dir(tmp_path):
    """A real tmpfs of one page, filled: every new write fails with ENOSPC."""
    d = tmp_path / "full"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k", "none", str(d)], check=True)
    try:
        (d / "filler").write_bytes(b"x" * 4096)
        yield d
    finally:
        subprocess.run(["umount", str(d)], check=True)


@needs_tracing
def test_full_disk_keeps_the_results(full_dir):
    rc, out, err = around(HeldGuest(*MIXED), "--format", "json", "-o", str(full_dir / "out.json"))
    assert rc == 1
    assert err.splitlines() == [f"piobpf: cannot write {full_dir}/out.json: No space left "
                                "on device; stopping, results on stdout"]
    assert by_key(json.loads(out)["rows"]) == MIXED_EXPECTED


@needs_tracing
def test_full_disk_during_intervals_stops_with_what_was_counted(full_dir):
    t = Traced("--format", "csv", "-i", "0.2", "-o", str(full_dir / "out.csv"))
    # The first interval's write fails: piobpf ends the run by itself.
    rc = t.proc.wait(timeout=60)
    out, err = t.proc.stdout.read(), t.proc.stderr.read()
    assert rc == 1
    assert err.splitlines() == [f"piobpf: cannot write {full_dir}/out.csv: No space left "
                                "on device; stopping, results on stdout"]
    assert out.splitlines()[0].startswith("elapsed_s,direction,port,device")


@needs_tracing
def test_sighup_writes_what_was_counted(tmp_path):
    # An ssh session closed under it.
    rc, _, err = around(HeldGuest(*MIXED), "--format", "json", "-o", str(tmp_path / "out.json"),
                        sig=signal.SIGHUP)
    assert rc == 0, err
    assert by_key(json.loads((tmp_path / "out.json").read_text())["rows"]) == MIXED_EXPECTED


@needs_tracing
def test_interval_shorter_than_a_read_is_said_once():
    # A full read of the by-port array takes ~0.1 s: -i 0.001 cannot be kept.
    rc, out, err = around(HeldGuest(*MIXED), "--format", "json", "-i", "0.001")
    assert rc == 0, err
    warnings = [l for l in err.splitlines() if "shorter than a read" in l]
    assert len(warnings) == 1 and warnings[0].startswith("piobpf: -i 0.001 is shorter")
    total = {}
    for line in out.splitlines():   # coarser intervals, still exact sums
        for r in json.loads(line)["rows"]:
            key = (r["direction"], r["port"])
            e, b = total.get(key, (0, 0))
            total[key] = (e + r["events"], b + r["bytes"])
    assert total == MIXED_EXPECTED


@needs_tracing
def test_mounting_tracefs_is_said():
    # A private mount namespace without tracefs: piobpf mounts it, and says so.
    out = run(["unshare", "-m", "sh", "-c",
               "umount /sys/kernel/tracing; umount -l /sys/kernel/debug 2>/dev/null;"
               ' exec "$@"', "-", *piobpf_cmd("-d", "0.5", "--format", "json")])
    assert out.returncode == 0, out.stderr
    assert out.stderr.splitlines()[0] == ("piobpf: mounted tracefs on /sys/kernel/tracing "
                                          "(it was not mounted); it stays mounted")


@needs_tracing
@pytest.mark.parametrize("after", [0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.12])
def test_ctrl_c_while_it_loads_is_one_line(after):
    # SIGINT while the modules load: nothing counted yet, so one line and 130,
    # or, once the run has begun, the run's (empty) table; never a traceback, and
    # never death by SIGINT (CPython's own after an interrupted exec(): dataclasses).
    # The console script's own code, and a byte on a pipe as run() starts to import
    # the modules: SIGINT before that would hit Python's start-up, not piobpf.
    ready, ready_w = os.pipe()
    code = ("import os, sys; sys.argv = ['piobpf', '-d', '5']\n"
            "class Ready:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            f"        if name == 'piobpf.cli.main': os.write({ready_w}, b'.')\n"
            "sys.meta_path.insert(0, Ready())\n"
            "from piobpf.__main__ import run; sys.exit(run())")
    proc = subprocess.Popen([PY, "-c", code], env=ENV, text=True, pass_fds=(ready_w,),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(ready_w)
    assert os.read(ready, 1) == b"."
    os.close(ready)
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert "Traceback" not in err, err
    assert (proc.returncode, out, err) == (130, "", "piobpf: interrupted\n") or \
        proc.returncode == 0, (proc.returncode, out, err)
