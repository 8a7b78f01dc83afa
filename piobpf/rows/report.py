"""Turn a snapshot into sorted rows with device (and VM) names (pure: the
names come from a names.Names or anything with its device and labels)."""

from collections import defaultdict
from dataclasses import dataclass

from ..core.keys import MMIO, READ, space
from ..core.snapshot import Counts, Times


@dataclass(frozen=True)
class Row:
    direction: str
    port: int           # the address: a port, or a keys.Gpa for MMIO
    device: object      # str, or None when no map names the port
    device_source: str  # where `device` came from: devices.VMM, IOPORTS_FILE, HOST_IOPORTS
    events: int
    bytes: int
    times: object = None    # snapshot.Times with --latency, else None
    pid: object = None  # the rest only with --by vm (pid, vm) or vcpu (all)
    vm: object = None
    tid: object = None
    thread: object = None
    vcpu: object = None

    @property
    def time_ns(self):
        return self.times.time_ns if self.times else 0

    @property
    def space(self):
        return space(self.port)


@dataclass(frozen=True)
class Report:
    duration_s: float
    total_events: int   # over all rows, also those cut by `top`
    dropped_events: int
    rows: tuple
    by: str = "port"
    latency: bool = False
    total_time_ns: int = 0      # over all rows, also those cut by `top`
    untimed: dict = None        # with latency: exits counted but not timed, by reason
    mmio: bool = False          # rows say their space: --mmio, or MMIO rows among them
    drops: dict = None          # with --mmio: dropped events by reason

    @property
    def rate(self):
        return self.total_events / self.duration_s if self.duration_s > 0 else 0.0


SORTS = {"events": lambda r: r.events, "time": lambda r: r.time_ns}


def make_report(snapshot, duration_s, naming, top=None, by="port", sort="events",
                latency=False, mmio=False):
    """Rows sorted by `sort` (events, or time with --latency), most first;
    ties by events, direction, space (ports first), then address. With
    `mmio` (--mmio), or MMIO keys in the snapshot, rows say their space.

    With --by vm|vcpu (`naming.labels` gives the extra fields of a key) rows
    are grouped per VM or vCPU, busiest group first, `top` rows per group."""
    weight = SORTS[sort]
    groups = defaultdict(list)
    # A window can end in an interval after its event's: keys of either map.
    for key in snapshot.counts.keys() | snapshot.times.keys():
        c = snapshot.counts.get(key, Counts())
        times = snapshot.times.get(key, Times()) if latency else None
        groups[key.group].append(Row(key.direction, key.port, *naming.device(key), c.events, c.bytes,
                                   times, **naming.labels(key)))
    ordered = sorted(groups.values(), key=lambda g: (-sum(weight(r) for r in g), g[0].pid or 0,
                                                     g[0].tid or 0))
    rows = []
    for group in ordered:
        group.sort(key=lambda r: (-weight(r), -r.events, r.direction != READ,
                                  r.space == MMIO, r.port))
        rows.extend(group[:top] if top else group)
    mmio = mmio or any(space(key.port) == MMIO for key in snapshot.counts)
    return Report(duration_s, snapshot.total_events, snapshot.dropped, tuple(rows), by,
                  latency, sum(t.time_ns for t in snapshot.times.values()),
                  snapshot.untimed if latency else None, mmio, snapshot.drops or None)
