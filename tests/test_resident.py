"""The process that counts holds the program by the fds a short-lived child
handed it (kernel/loader.py): detaching closes them, attaching again uses
the program fds. Real guests on the real tracepoint, each run counting only
its own (pids), so the counts are exact however busy the host is. (That the
exporter never maps BCC: tests/test_prometheus.py.)"""

import os
import signal
import subprocess
import time

import pytest

from helpers import ENV, HeldGuest, assert_one_line, needs_tracing, piobpf_cmd
from piobpf.kernel.counter import CounterConfig, PioCounter
from test_by_vm import A_EXPECTED, A_OPS, B_EXPECTED, B_OPS
from tools.memory import tree

pytestmark = needs_tracing


@pytest.mark.parametrize("attach", ["raw", "classic"])
def test_detach_then_attach_again_counts_only_while_attached(attach):
    a, b = HeldGuest(*A_OPS), HeldGuest(*B_OPS)
    counter = PioCounter(CounterConfig(attach=attach, pids=(a.pid, b.pid)))
    # Its loader's child inherits the first counter's fds: they must not
    # keep that one attached once it detaches (nor must its own child's).
    other = PioCounter(CounterConfig(attach=attach, pids=(1,)))
    try:
        assert counter.attach_mode == attach
        counter.detach()
        a.start()
        a.wait_done()
        counter.attach()    # with the program fds the child handed over
        b.start()
        b.wait_done()
        counter.detach()
        snap = counter.read()
    finally:
        counter.close()
        other.close()
        a.end()
        b.end()
    assert {(k.direction, k.port): (c.events, c.bytes)
            for k, c in snap.counts.items()} == B_EXPECTED


def test_loader_killed_is_one_line():
    # As the kernel's OOM killer would end it, while it compiles.
    proc = subprocess.Popen(piobpf_cmd("-d", "1"), env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not tree(proc.pid)[1:] and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(tree(proc.pid)[1], signal.SIGKILL)
    out, err = proc.communicate(timeout=60)
    assert_one_line(subprocess.CompletedProcess(proc.args, proc.returncode, out, err), 1,
                    "loading the BPF program failed: its loader ended (killed by signal 9)")
