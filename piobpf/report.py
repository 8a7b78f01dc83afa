"""Turn a snapshot into sorted rows with device (and VM) names (pure: the
names come from a naming.Naming or anything with its device and labels)."""

from collections import defaultdict
from dataclasses import dataclass

from .snapshot import READ


@dataclass(frozen=True)
class Row:
    direction: str
    port: int
    device: object      # str, or None when no map names the port
    device_source: str  # where `device` came from: devices.VMM, IOPORTS_FILE, HOST_IOPORTS
    events: int
    bytes: int
    pid: object = None  # the rest only with --by vm (pid, vm) or vcpu (all)
    vm: object = None
    tid: object = None
    thread: object = None
    vcpu: object = None


@dataclass(frozen=True)
class Report:
    duration_s: float
    total_events: int   # over all rows, also those cut by `top`
    dropped_events: int
    rows: tuple
    by: str = "port"

    @property
    def rate(self):
        return self.total_events / self.duration_s if self.duration_s > 0 else 0.0


def _by_events(rows):
    return sorted(rows, key=lambda r: (-r.events, r.direction != READ, r.port))


def make_report(snapshot, duration_s, naming, top=None, by="port"):
    """Rows sorted by events, most first; ties by direction, then port.

    With --by vm|vcpu (`naming.labels` gives the extra fields of a key) rows
    are grouped per VM or vCPU, busiest group first, `top` rows per group."""
    groups = defaultdict(list)
    for key, c in snapshot.counts.items():
        groups[key[2:]].append(Row(key[0], key[1], *naming.device(key), c.events, c.bytes,
                                   **naming.labels(key)))
    ordered = sorted(groups.values(), key=lambda g: (-sum(r.events for r in g), g[0].pid or 0,
                                                     g[0].tid or 0))
    rows = []
    for group in ordered:
        group = _by_events(group)
        rows.extend(group[:top] if top else group)
    return Report(duration_s, snapshot.total_events, snapshot.dropped, tuple(rows), by)
