"""Bad input and broken environments: one line on stderr, non-zero exit."""

import subprocess

import pytest

from helpers import PY, Traced, assert_one_line, needs_tracing, piobpf_cmd, run, run_guest


@pytest.mark.parametrize("args,word", [
    (["-d", "-1"], "-d"), (["-d", "x"], "-d"), (["-d", "0"], "-d"), (["-d", "nan"], "-d"),
    (["-i", "0"], "-i"), (["-i", "soon"], "-i"), (["-n", "1.5"], "-n"), (["-n", "-3"], "-n"),
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
            "from piobpf.cli import main; sys.exit(main(['-d', '1']))")
    assert_one_line(run([PY, "-c", code]), 1, "python3-bpfcc")


@needs_tracing
def test_not_root_says_which_privilege():
    out = run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
               "--inh-caps=-all", *piobpf_cmd("-d", "1")], cwd="/")
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
    t = Traced("--format", "seed")
    t.proc.stdout.close()     # the reader is gone before anything is written
    run_guest("r:0x3fd:1:10")
    rc, _, err = t.stop()
    assert rc == 1
    assert err.splitlines() == ["piobpf: output closed before all results were written "
                                "(broken pipe)"]


@needs_tracing
def test_unreadable_ioports_file(tmp_path):
    out = run(piobpf_cmd("-d", "1", "--ioports", str(tmp_path / "none")))
    assert out.returncode == 1 and "cannot read" in out.stderr and "Traceback" not in out.stderr
