"""Name VMs and vCPUs: QEMU's -name, process and thread names.

Names are looked up once per process or thread and kept, so a VM that exits
during the run keeps its counts and its last known name.
"""

import re

from .qemucmd import qemu_name

_VCPU = re.compile(r"^CPU (\d+)/KVM$")


def vcpu_index(thread):
    """QEMU names vCPU threads `CPU 3/KVM`: 3. None for other names."""
    m = _VCPU.match(thread or "")
    return int(m.group(1)) if m else None


def read_proc(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def process_name(pid, proc="/proc"):
    """QEMU's -name, else the process name; None when the process is gone."""
    cmdline = read_proc(f"{proc}/{pid}/cmdline")
    if cmdline:
        name = qemu_name(cmdline.decode(errors="replace").split("\0"))
        if name:
            return name
    comm = read_proc(f"{proc}/{pid}/comm")
    return comm.decode(errors="replace").strip() if comm else None


class Labeler:
    """Extra row fields (pid, vm; tid, thread, vcpu) for keys of --by vm|vcpu.

    `comms` maps (pid, tid) to the thread name the kernel saw (by vcpu)."""

    def __init__(self, by, comms, proc="/proc"):
        self.by, self.comms, self.proc = by, comms, proc
        self._vm = {}

    def learn(self, snapshot):
        """Look up the processes new in `snapshot` while they still run."""
        for key in snapshot.counts:
            self.vm(key[2])

    def vm(self, pid):
        """The VM's name, looked up once; None for a process gone before that."""
        if pid not in self._vm:
            self._vm[pid] = process_name(pid, self.proc)
        return self._vm[pid]

    def __call__(self, key):
        pid = key[2]
        fields = {"pid": pid, "vm": self.vm(pid)}
        if self.by == "vcpu":
            tid = key[3]
            thread = self.comms.get((pid, tid))
            fields.update(tid=tid, thread=thread, vcpu=vcpu_index(thread))
        return fields


def labeler(by, comms):
    """The Labeler of --by vm|vcpu; None by port, where rows carry no labels."""
    return None if by == "port" else Labeler(by, comms)
