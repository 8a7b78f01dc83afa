"""The process that counts holds the program by the fds a short-lived child
handed it (kernel/loader.py): detaching closes them, attaching again uses
the program fds. Real guests on the real tracepoint, each run counting only
its own (pids), so the counts are exact however busy the host is. (That the
exporter never maps BCC: tests/test_prometheus.py.)"""

import pytest

from helpers import HeldGuest, needs_tracing
from piobpf.kernel.counter import CounterConfig, PioCounter
from test_by_vm import A_EXPECTED, A_OPS, B_EXPECTED, B_OPS

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
