"""The process that counts never holds BCC: a child loads and attaches the
program and hands over its fds. Real guests, the real exporter scraped by a
real Prometheus, and the kernel layer's detach and attach.

Each run counts only its own guests (-p), so the counts are exact however
busy the host is.
"""

import time

import pytest

from helpers import HeldGuest, needs_tracing
from piobpf.kernel.counter import CounterConfig, PioCounter
from test_by_vm import A_EXPECTED, A_OPS, B_EXPECTED, B_OPS
from test_prometheus import Exporter, prometheus, running, scraped_after  # noqa: F401 (fixtures)
from tools.memory import maps_library, tree, tree_rss_kb

pytestmark = needs_tracing

# A gross regression guard, not a size target: the exporter held 172 MB
# with BCC in it (2026-12-06), some 27 MB without.
RSS_GUARD_KB = 100 * 1024


def test_exporter_by_vm_exact_without_bcc(running, prometheus, record_property):
    a, b = HeldGuest(*A_OPS, name="resident-a"), HeldGuest(*B_OPS, name="resident-b")
    exporter = Exporter(running, "--by", "vm", "-p", f"{a.pid},{b.pid}")
    url = prometheus(exporter.target)
    for g in (a, b):
        g.start()
    for g in (a, b):
        g.wait_done()
    series = scraped_after(url, time.time())
    scraped_after(url, time.time())     # and one more scrape
    pid = exporter.proc.pid
    rss, procs = tree_rss_kb(pid), tree(pid)
    bcc = maps_library(pid, "libbcc")
    rc, _, err = exporter.stop()
    for g in (a, b):
        g.end()
    assert rc == 0, err

    events = {(s["pid"], s["vm"], s["direction"], int(s["port"], 16)): (v, s)
              for s, v in series if s["__name__"] == "piobpf_pio_events_total"}
    nbytes = {(s["pid"], s["vm"], s["direction"], int(s["port"], 16)): v
              for s, v in series if s["__name__"] == "piobpf_pio_bytes_total"}
    got = {k: (e, nbytes[k]) for k, (e, _) in events.items()}
    assert got == {(str(g.pid), name, *key): value
                   for g, name, expected in ((a, "resident-a", A_EXPECTED),
                                             (b, "resident-b", B_EXPECTED))
                   for key, value in expected.items()}
    # BCC (libbcc, its LLVM) was only ever in the child that loaded.
    assert not bcc
    print(f"exporter --by vm, {len(procs)} process(es), VmRSS summed: {rss / 1024:.1f} MB")
    record_property("exporter_tree_rss_mb", round(rss / 1024, 1))
    assert rss < RSS_GUARD_KB


@pytest.mark.parametrize("attach", ["raw", "classic"])
def test_detach_then_attach_again_counts_only_while_attached(attach):
    a, b = HeldGuest(*A_OPS), HeldGuest(*B_OPS)
    counter = PioCounter(CounterConfig(attach=attach, pids=(a.pid, b.pid)))
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
        a.end()
        b.end()
    assert {(k.direction, k.port): (c.events, c.bytes)
            for k, c in snap.counts.items()} == B_EXPECTED
