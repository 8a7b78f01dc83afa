"""The Prometheus sink: a tracing session's cumulative counts as metrics.

The map is read at each scrape, so every sample is exact and current, and
counters never go backwards: a VM that exits keeps its final counts for the
retention, then its series end. A new VM with its pid and name has the same
labels: their series is the sum of both, until both are done with.
`families` (a snapshot to metric families) is pure and tested without root.
"""

import errno
import threading
import time
from collections import defaultdict

from ..core.errors import CliError
from ..core.keys import IO, LABELS, MMIO, MODES, space
from ..core.snapshot import Counts, Times

try:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                        HistogramMetricFamily)
    from prometheus_client.registry import Collector

    from . import httpserver     # on prometheus_client too
except ImportError:
    raise CliError("--prometheus needs prometheus_client: apt-get install "
                   "python3-prometheus-client (or pip install prometheus-client)") from None



def labels(by, where="port"):
    """The labels of a mode's series: `where` names the address ("gpa" for MMIO)."""
    return tuple(where if l == "port" else l for l in LABELS) + MODES[by].labels


def label_values(key, naming):
    """A key's label values, named as the printed rows are (names.Names);
    unknown names are empty strings."""
    values = [key.direction, f"{key.port:#x}", naming.device(key)[0] or ""]
    if key.vm is not None:
        fields = naming.labels(key)
        values += [fields["vm"] or "", str(fields["pid"])]
        if "tid" in fields:
            vcpu = fields["vcpu"]
            values.append(str(vcpu) if vcpu is not None else f"tid {fields['tid']}")
    return tuple(values)


# --latency: the exit-time histogram's buckets, upper bounds 2^FIRST_SLOT ns
# (1 us) up, one per log2 slot of the kernel's; the slots below fold into the first.
FIRST_SLOT = 10
# Per address space: the series' prefix, the address label, what is counted.
SERIES = {IO: "piobpf_pio", MMIO: "piobpf_mmio"}
ADDRESS = {IO: "port", MMIO: "gpa"}
WHAT = {IO: "port I/O", MMIO: "MMIO"}


def exit_seconds(times, by, space=IO):
    """The --latency histogram family from {label values: Times}."""
    family = HistogramMetricFamily(
        SERIES[space] + "_exit_seconds", f"How long {WHAT[space]} exits keep the vCPU out of "
        "the guest: from the exit to user space to the VMM's next KVM_RUN (or kvm_exit to "
        "kvm_entry where those fire)", labels=labels(by, ADDRESS[space]))
    for values, t in sorted(times.items()):
        cumulative, buckets = 0, []
        for slot, n in enumerate(t.hist):
            cumulative += n
            if slot >= FIRST_SLOT:
                buckets.append((repr((1 << slot) / 1e9), cumulative))
        buckets.append(("+Inf", t.windows))
        family.add_metric(values, buckets, sum_value=t.time_ns / 1e9)
    return family


COUNTED = {IO: ("kvm:kvm_pio events: guest port I/O instructions that exit to the host",
                 "Bytes of those events: access size times count"),
           MMIO: ("kvm:kvm_mmio (read, write) and kvm:kvm_fast_mmio events: guest MMIO "
                  "accesses emulated by KVM or its VMM", "Bytes of those events: access "
                  "size (0 for kvm_fast_mmio)")}


def counted(summed, by, space):
    """The events and bytes families of one address space."""
    help_events, help_bytes = COUNTED[space]
    events = CounterMetricFamily(SERIES[space] + "_events", help_events,
                                 labels=labels(by, ADDRESS[space]))
    nbytes = CounterMetricFamily(SERIES[space] + "_bytes", help_bytes,
                                 labels=labels(by, ADDRESS[space]))
    for values, c in sorted(summed.items()):
        events.add_metric(values, c.events)
        nbytes.add_metric(values, c.bytes)
    return [events, nbytes]


def dropped(snapshot):
    """Events not counted; with --mmio by reason (kernel.program.DROPPED)."""
    family = CounterMetricFamily(
        "piobpf_dropped_events", "Events not counted per key because the kernel map was full",
        **({"labels": ("reason",)} if snapshot.drops else {"value": snapshot.dropped}))
    for reason, n in snapshot.drops.items():
        family.add_metric((reason,), n)
    return family


def families(snapshot, naming, max_entries, by="port", entries=None, latency=False,
             mmio=None):
    """The metric families of a cumulative snapshot; `entries`: keys in the
    kernel map now (default: the snapshot's keys); `mmio` (--mmio): the
    MMIO map's (entries, max entries)."""
    # Keys can share labels (a vCPU thread replaced by one of the same name):
    # their sum is still a counter, where two series of one name would clash.
    summed = {IO: defaultdict(Counts), MMIO: defaultdict(Counts)}
    times = {IO: defaultdict(Times), MMIO: defaultdict(Times)}
    for key, c in snapshot.counts.items():
        summed[space(key.port)][label_values(key, naming)] += c
    for key, t in snapshot.times.items():
        times[space(key.port)][label_values(key, naming)] += t
    spaces = (IO, MMIO) if mmio else (IO,)
    out = [family for s in spaces for family in counted(summed[s], by, s)] + [
        dropped(snapshot),
        GaugeMetricFamily("piobpf_map_entries", "Entries in use in the kernel map (by VM or "
                          "vCPU, the keys of exited VMs leave it)",
                          value=sum(space(k.port) == IO for k in snapshot.counts)
                          if entries is None else entries),
        GaugeMetricFamily("piobpf_map_max_entries", "Keys the kernel map can hold",
                          value=max_entries),
    ]
    if mmio:
        out += [GaugeMetricFamily("piobpf_mmio_map_entries", "Entries in use in the kernel's "
                                  "MMIO map (the keys of exited VMs leave it)", value=mmio[0]),
                GaugeMetricFamily("piobpf_mmio_map_max_entries", "Keys the kernel's MMIO map "
                                  "can hold (--mmio-map-size)", value=mmio[1])]
    return out + ([exit_seconds(times[s], by, s) for s in spaces] if latency else [])


class PioCollector(Collector):
    """Reads the counter at each scrape. Scrapes run in the server's threads
    and `look` in the main one: a lock keeps them from reading at once.

    An exited VM's final counts are served `retention` seconds, then
    forgotten; not before a VM of the same pid and name is, as their labels
    are the same: one series, the sum, which must never go back."""

    def __init__(self, session, retention, latency=False, mmio=False):
        self._session, self.retention, self.latency, self.mmio = session, retention, latency, mmio
        self._lock = threading.Lock()

    def _sync(self):
        """VMs that came and went; those exited more than the retention ago
        forgotten, whatever their lives (one may come and go between two)."""
        s = self._session
        s.sync()
        s.expire(time.monotonic() - self.retention, lambda p: (p.pid, s.naming.labeler.vm(p)))

    def look(self):
        """At a ring and each second: VMs that came and went, and the look of
        each second (new VMMs' maps)."""
        with self._lock:
            if self._session:
                self._sync()
                self._session.look()

    def collect(self):
        with self._lock:
            if not self._session:
                return []
            s = self._session
            self._sync()
            snapshot = s.read()
            return families(snapshot, s.naming, s.capacity, s.naming.by, s.entries,
                            self.latency, s.mmio_entries if self.mmio else None)

    def close(self):
        """Wait for a scrape under way; later ones find nothing (the map is going)."""
        with self._lock:
            self._session = None


def where(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen(host, port, collector, web=None):
    """A server of the collector's metrics, bound to host:port (not yet serving);
    `web`: its webconfig.WebConfig, if any.

    Our own server, not prometheus_client's start_http_server: that one
    (0.16) is wsgiref's, a thread per connection, and cannot be shut down."""
    registry = CollectorRegistry()   # only ours, not the default process metrics
    registry.register(collector)
    try:
        return httpserver.Server(host, port, registry, web=web)
    except OSError as e:
        hint = " (not an address of this host)" if e.errno == errno.EADDRNOTAVAIL else ""
        raise CliError(f"cannot listen on {where(host, port)}: {e.strerror}{hint}") from None
