"""The Prometheus sink: a tracing session's cumulative counts as metrics.

The map is read at each scrape, so every sample is exact and current, and
counters never go backwards: a VM that exits keeps its final counts for the
retention, then its series end (at once when a new VM gets its pid, as the
two could share their labels). `families` (a snapshot to metric families)
is pure and tested without root.
"""

import errno
import socket
import threading
import time
from collections import defaultdict
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from .errors import CliError
from .snapshot import Counts

try:
    from prometheus_client import CollectorRegistry, make_wsgi_app
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError:
    raise CliError("--prometheus needs prometheus_client: apt-get install "
                   "python3-prometheus-client (or pip install prometheus-client)") from None

LABELS = {"port": ["direction", "port", "device"],
          "vm": ["direction", "port", "device", "vm", "pid"],
          "vcpu": ["direction", "port", "device", "vm", "pid", "vcpu"]}


def label_values(key, naming):
    """A key's label values, named as the printed rows are (naming.Naming);
    unknown names are empty strings."""
    values = [key[0], f"{key[1]:#x}", naming.device(key)[0] or ""]
    if len(key) > 2:
        fields = naming.labels(key)
        values += [fields["vm"] or "", str(fields["pid"])]
        if "tid" in fields:
            vcpu = fields["vcpu"]
            values.append(str(vcpu) if vcpu is not None else f"tid {fields['tid']}")
    return tuple(values)


def families(snapshot, naming, max_entries, by="port", entries=None):
    """The metric families of a cumulative snapshot; `entries`: keys in the
    kernel map now (default: the snapshot's keys)."""
    # Keys can share labels (a vCPU thread replaced by one of the same name):
    # their sum is still a counter, where two series of one name would clash.
    summed = defaultdict(Counts)
    for key, c in snapshot.counts.items():
        summed[label_values(key, naming)] += c
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
        GaugeMetricFamily("piobpf_map_entries", "Entries in use in the kernel map (by VM or "
                          "vCPU, the keys of exited VMs leave it)",
                          value=len(snapshot.counts) if entries is None else entries),
        GaugeMetricFamily("piobpf_map_max_entries", "Keys the kernel map can hold",
                          value=max_entries),
    ]


class PioCollector(Collector):
    """Reads the counter at each scrape. Scrapes run in the server's threads
    and `learn` in the main one: a lock keeps them from reading at once.

    An exited VM's final counts are served `retention` seconds, then forgotten."""

    def __init__(self, session, retention):
        self._session, self.retention = session, retention
        self._lock = threading.Lock()

    def _sync(self):
        """VMs that came and went; those exited more than the retention ago,
        or whose pid a new VM has, forgotten."""
        came = self._session.sync()
        self._session.expire(time.monotonic() - self.retention, {p.pid for p in came})

    def learn(self):
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
            return families(snapshot, s.naming, s.capacity, s.naming.by, s.entries)

    def close(self):
        """Wait for a scrape under way; later ones find nothing (the map is going)."""
        with self._lock:
            self._session = None


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):
        """No line per scrape on stderr (the journal, under systemd)."""


class Server(ThreadingMixIn, WSGIServer):
    # A scrape under way does not hold up the end of the run.
    daemon_threads = True


class Server6(Server):
    address_family = socket.AF_INET6


def where(host, port):
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen(host, port, collector):
    """A server of the collector's metrics, bound to host:port (not yet serving).

    Our own server, not prometheus_client's start_http_server: that one
    (0.16) cannot be shut down."""
    registry = CollectorRegistry()   # only ours, not the default process metrics
    registry.register(collector)
    try:
        return make_server(host, port, make_wsgi_app(registry),
                           Server6 if ":" in host else Server, QuietHandler)
    except OSError as e:
        hint = " (not an address of this host)" if e.errno == errno.EADDRNOTAVAIL else ""
        raise CliError(f"cannot listen on {where(host, port)}: {e.strerror}{hint}") from None
