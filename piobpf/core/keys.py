"""What a count is kept per: the Key, and the one table of --by modes.

Every layer reads MODES: the kernel for its C switches, naming for the
labels a key needs, the sinks for their fields, columns and labels. A new
mode is one entry here.
"""

from dataclasses import dataclass
from typing import NamedTuple, Optional

READ, WRITE = "read", "write"
IO, MMIO = "io", "mmio"     # the address spaces, as JSON rows name them


class Gpa(int):
    """A guest-physical address in a key: Key(direction, Gpa(gpa), ...) counts
    MMIO where Key(direction, port, ...) counts port I/O. It is never equal to
    the port of the same number, so one Snapshot holds both spaces and every
    key keeps its shape; it orders and formats as the int it is."""
    __slots__ = ()

    def __eq__(self, other):
        return type(other) is Gpa and int(self) == int(other)

    def __ne__(self, other):
        return not self == other

    def __hash__(self):
        return hash((MMIO, int(self)))

    def __repr__(self):
        return f"Gpa({int(self):#x})"


def space(address):
    """IO or MMIO: the space of a key's address."""
    return MMIO if type(address) is Gpa else IO


class Proc(NamedTuple):
    """A process: its pid and start time (clock ticks after boot, as in
    /proc/PID/stat), so that a pid recycled for a new process is another."""
    pid: int
    start: int


class Key(NamedTuple):
    """One count's key: the access, and by VM its VMM process, by vCPU also
    the thread. The parts a mode does not key by are None."""
    direction: str
    port: int
    vm: Optional[Proc] = None
    tid: Optional[int] = None

    @property
    def group(self):
        """The VM or vCPU whose rows go together (None, None by port)."""
        return self.vm, self.tid


@dataclass(frozen=True)
class Mode:
    """One --by mode, as each layer sees it."""
    name: str
    per: str            # the start-up line's "per ...(direction, port)"
    key_parts: int      # parts of Key it fills: 2 (direction, port), 3 (+ vm), 4 (+ tid)
    c_switches: tuple   # the BPF C's -D switches
    fields: tuple       # JSON fields and CSV columns it adds to a row
    columns: tuple      # table columns before DIR
    labels: tuple       # Prometheus labels after direction, port, device

    @property
    def per_vm(self):
        return self.key_parts > 2

    @property
    def per_thread(self):
        return self.key_parts > 3


MODES = {m.name: m for m in (
    Mode("port", "", 2, (), (), (), ()),
    Mode("vm", "VM and ", 3, ("PIOBPF_KEY_TGID",), ("pid", "vm"), ("VM",), ("vm", "pid")),
    Mode("vcpu", "vCPU and ", 4, ("PIOBPF_KEY_TGID", "PIOBPF_KEY_TID"),
         ("pid", "vm", "tid", "thread", "vcpu"), ("VM", "VCPU"), ("vm", "pid", "vcpu")),
)}
LABELS = ("direction", "port", "device")   # every mode's first Prometheus labels


def describe(by, pids=None, mmio=False):
    """What is counted, for the start-up line: kvm:kvm_pio of PID 1 per VM and
    (direction, port); with --mmio also kvm:kvm_mmio per (direction, gpa)."""
    of = f" of PID {', '.join(map(str, pids))}" if pids else ""
    what = f"kvm:kvm_pio{of} per {MODES[by].per}(direction, port)"
    return what + (" and kvm:kvm_mmio per (direction, gpa)" if mmio else "")
