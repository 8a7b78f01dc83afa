"""--prometheus: serve the kernel's cumulative counts at /metrics.

The map is read at each scrape, so every sample is exact and current, and as
the map is never cleared the counters never go backwards. `families` (a
snapshot to metric families) is pure and tested without root.
"""

import contextlib
import errno
import sys
import threading
from collections import defaultdict

from . import names
from .cli import CliError, Stopper, load_ioports, traced
from .snapshot import Counts

try:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector

    from . import httpserver     # on prometheus_client too
except ImportError:
    raise CliError("--prometheus needs prometheus_client: apt-get install "
                   "python3-prometheus-client (or pip install prometheus-client)") from None

LABELS = {"port": ["direction", "port", "device"],
          "vm": ["direction", "port", "device", "vm", "pid"],
          "vcpu": ["direction", "port", "device", "vm", "pid", "vcpu"]}


def label_values(key, name_of, label):
    """A key's label values: its `label` fields (--by vm|vcpu) are those of
    names.Labeler; unknown names are empty strings."""
    values = [key[0], f"{key[1]:#x}", name_of(key[1]) or ""]
    if label:
        fields = label(key)
        values += [fields["vm"] or "", str(fields["pid"])]
        if "tid" in fields:
            vcpu = fields["vcpu"]
            values.append(str(vcpu) if vcpu is not None else f"tid {fields['tid']}")
    return tuple(values)


def families(snapshot, name_of, max_entries, by="port", label=None):
    """The metric families of a cumulative snapshot."""
    # Keys can share labels (a vCPU thread replaced by one of the same name):
    # their sum is still a counter, where two series of one name would clash.
    summed = defaultdict(Counts)
    for key, c in snapshot.counts.items():
        summed[label_values(key, name_of, label)] += c
    events = CounterMetricFamily("piobpf_pio_events", "kvm:kvm_pio events: guest port I/O "
                                 "instructions that exit to the host", labels=LABELS[by])
    nbytes = CounterMetricFamily("piobpf_pio_bytes", "Bytes of those events: access size "
                                 "times count", labels=LABELS[by])
    for values, c in sorted(summed.items()):
        events.add_metric(values, c.events)
        nbytes.add_metric(values, c.bytes)
    return [
        events, nbytes,
        CounterMetricFamily("piobpf_dropped_events", "Events not counted per key because "
                            "the kernel map was full", value=snapshot.dropped),
        GaugeMetricFamily("piobpf_map_entries", "Keys counted so far: entries in use in "
                          "the kernel map, which is never cleared", value=len(snapshot.counts)),
        GaugeMetricFamily("piobpf_map_max_entries", "Keys the kernel map can hold",
                          value=max_entries),
    ]


class PioCollector(Collector):
    """Reads the counter at each scrape. Scrapes run in the server's threads
    and `learn` in the main one: a lock keeps them from reading at once."""

    def __init__(self, counter, name_of, max_entries, by="port", labeler=None):
        self._counter, self._name_of, self._max_entries = counter, name_of, max_entries
        self._by, self._labeler = by, labeler
        self._lock = threading.Lock()

    def _read(self):
        snap = self._counter.read()
        if self._labeler:
            self._labeler.learn(snap)
        return snap

    def learn(self):
        """Name the VMs that are new since the last read, while they run."""
        with self._lock:
            if self._counter:
                self._read()

    def collect(self):
        with self._lock:
            if not self._counter:
                return []
            return families(self._read(), self._name_of, self._max_entries, self._by,
                            self._labeler)

    def close(self):
        """Wait for a scrape under way; later ones find nothing (the map is going)."""
        with self._lock:
            self._counter = None


def where(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen(host, port, collector):
    """A server of the collector's metrics, bound to host:port (not yet serving).

    Our own server, not prometheus_client's start_http_server: that one
    (0.16) is wsgiref's, a thread per connection, and cannot be shut down."""
    registry = CollectorRegistry()   # only ours, not the default process metrics
    registry.register(collector)
    try:
        return httpserver.Server(host, port, registry)
    except OSError as e:
        hint = " (not an address of this host)" if e.errno == errno.EADDRNOTAVAIL else ""
        raise CliError(f"cannot listen on {where(host, port)}: {e.strerror}{hint}") from None


def run(args):
    """Serve until SIGINT/SIGTERM, then stop serving, then detach the program."""
    from .kernel import PioCounter
    stopper = Stopper()
    host, port = args.prometheus
    with contextlib.ExitStack() as undo:   # undone in reverse: server, collector, counter
        # Load first: a missing privilege or header is the one line to show.
        counter = PioCounter(attach=args.attach, max_entries=args.map_size, by=args.by,
                             pids=args.pid or ())
        undo.callback(counter.close)
        labeler = names.labeler(args.by, counter.comms)
        collector = PioCollector(counter, load_ioports(args.ioports).lookup, counter.capacity,
                                 args.by, labeler)
        undo.callback(collector.close)
        server = undo.enter_context(listen(host, port, collector))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            url = f"http://{where(host, port)}/metrics"
            print(f"Serving {traced(args)} at {url}... Ctrl-C to end.",
                  file=sys.stderr, flush=True)
            while not stopper.stopped:
                # Scrapes may be minutes apart: read every second to name short-lived VMs.
                stopper.wait(1.0 if labeler else float("inf"))
                if labeler:
                    collector.learn()
        finally:
            server.shutdown()
    return 0
