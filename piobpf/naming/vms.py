"""Name VMs and vCPUs: QEMU's -name, process and thread names.

A VM is a process: its pid and start time (a Proc), so a new process that
gets a recycled pid is another VM. Names are looked up once per process,
while it runs, and kept until `forget`, so a VM that exits keeps its name
as long as its counts are shown, and memory stays bounded however many VMs
come and go.
"""

import os
import re

from ..core.keys import MODES, Proc
from .qemucmd import qemu_name

_VCPU = re.compile(r"^CPU (\d+)/KVM$")
KVM_VM_FD = "anon_inode:kvm-vm"     # what a VMM's VM file descriptor links to


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


def start_time(pid, proc="/proc"):
    """When the process started, in clock ticks after boot; None when it is gone."""
    stat = read_proc(f"{proc}/{pid}/stat")
    # Field 22, counted after the name in parentheses (which may hold anything).
    return int(stat.rsplit(b")", 1)[1].split()[19]) if stat else None


def process(pid, proc="/proc"):
    """The Proc running as `pid` now; None when there is none."""
    start = start_time(pid, proc)
    return None if start is None else Proc(pid, start)


def cmdline_name(cmdline):
    """QEMU's -name in a command line: bytes of NUL-separated arguments, as
    /proc/PID/cmdline. None without one."""
    return cmdline and qemu_name(cmdline.decode(errors="replace").split("\0")) or None


def comm_name(comm):
    """A process name as /proc/PID/comm's bytes; None when empty."""
    return comm and comm.decode(errors="replace").strip() or None


def process_name(p, proc="/proc"):
    """QEMU's -name, else the process name, of Proc `p`; None when it is gone
    (its pid gone, or another process's by now)."""
    if start_time(p.pid, proc) != p.start:
        return None
    name = cmdline_name(read_proc(f"{proc}/{p.pid}/cmdline"))
    if not name:
        name = comm_name(read_proc(f"{proc}/{p.pid}/comm"))
    # Still the same process after the reads: they were of `p`.
    return name if start_time(p.pid, proc) == p.start else None


def runs_vm(pid, proc="/proc"):
    """Whether the process holds a KVM VM's file descriptor (a VMM)."""
    try:
        fds = os.listdir(f"{proc}/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"{proc}/{pid}/fd/{fd}") == KVM_VM_FD:
                return True
        except OSError:
            pass        # closed meanwhile
    return False


def vmm_processes(proc="/proc"):
    """{Proc: name} of every process running a KVM VM now."""
    found = {}
    for d in os.listdir(proc):
        if d.isdigit() and runs_vm(d, proc):
            p = process(int(d), proc)
            if p:
                found[p] = process_name(p, proc)
    return found


class Labeler:
    """Extra row fields (pid, vm; tid, thread, vcpu) for keys of --by vm|vcpu.

    `comms` maps (Proc, tid) to the thread name the kernel saw (by vcpu);
    `known` holds names looked up already ({Proc: name}); `cmdlines` what
    the kernel saw of new VMs' processes ({Proc: (command line, comm)}, as
    kernel.PioCounter's), taken as they are named."""

    def __init__(self, by, comms, proc="/proc", known=None, cmdlines=None):
        self.by, self.comms, self.proc = by, comms, proc
        self._vm = dict(known or {})
        self._cmdlines = {} if cmdlines is None else cmdlines

    def learn(self, snapshot):
        """Look up the processes new in `snapshot` while they still run."""
        for key in snapshot.counts:
            self.vm(key.vm)

    def vm(self, p):
        """The name of Proc `p`, looked up once: the -name of the command
        line the kernel saw on its first count, which holds for a process
        gone by now; else from /proc (the whole command line); else the
        process name the kernel saw; None for a process gone before any."""
        cmdline, comm = self._cmdlines.pop(p, (None, None))
        if p not in self._vm:
            self._vm[p] = cmdline_name(cmdline) or process_name(p, self.proc) or comm_name(comm)
        return self._vm[p]

    def forget(self, procs):
        for p in procs:
            self._vm.pop(p, None)

    def __call__(self, key):
        p = key.vm
        fields = {"pid": p.pid, "vm": self.vm(p)}
        if MODES[self.by].per_thread:
            tid = key.tid
            thread = self.comms.get((p, tid))
            fields.update(tid=tid, thread=thread, vcpu=vcpu_index(thread))
        return fields


def labeler(by, comms, known=None, cmdlines=None):
    """The Labeler of --by vm|vcpu; None by port, where rows carry no labels."""
    return Labeler(by, comms, known=known, cmdlines=cmdlines) if MODES[by].per_vm else None
