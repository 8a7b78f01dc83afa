"""The raw tracepoint is chosen only when its argument layout is checked."""

import os
import pty
import re
import subprocess

import pytest

from helpers import ENV, needs_tracing, piobpf_cmd
from piobpf.core.errors import TraceError
from piobpf.kernel.preflight import choose_attach, find_tracefs, kvm_pio_fields

LAYOUT = ["rw", "port", "size", "count", "val"]


def test_auto_takes_raw_when_layout_matches():
    assert choose_attach("auto", LAYOUT, raw_supported=True) == "raw"


@pytest.mark.parametrize("fields,supported", [
    (["port", "rw", "size", "count", "val"], True),   # reordered: args[] would lie
    (["rw", "port", "count"], True),
    (LAYOUT, False)])
def test_auto_falls_back_to_classic(fields, supported):
    assert choose_attach("auto", fields, supported) == "classic"
    with pytest.raises(TraceError, match="--attach classic"):
        choose_attach("raw", fields, supported)
    assert choose_attach("classic", fields, supported) == "classic"


@needs_tracing
def test_this_kernels_format_has_the_raw_layout():
    assert kvm_pio_fields(find_tracefs())[:4] == LAYOUT[:4]


@needs_tracing
def test_progress_on_a_terminal():
    master, slave = pty.openpty()
    out = subprocess.run(piobpf_cmd("-d", "2.5", "--format", "json"), env=ENV, stderr=slave,
                         stdout=subprocess.PIPE, text=True, timeout=60)
    os.close(slave)
    err = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:
            break
        if not chunk:
            break
        err += chunk
    os.close(master)
    assert out.returncode == 0
    assert re.search(rb"\r1/2.5 s, \d+ events .*\r2/2.5 s, \d+ events ", err, re.S), err
    assert out.stdout.startswith("{")
