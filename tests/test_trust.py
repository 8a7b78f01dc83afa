"""piobpf speaks only to a VM's own monitor: real users, real sockets, real VMMs.

An unprivileged user, made for the module (and removed after it, as is
/dev/kvm's mode: 0666 only meanwhile), runs KVM VMMs whose command lines
name monitors that are not theirs: root-only sockets of a root service, a
socket of theirs served by another of their processes, a symlink, a file.
Each service logs every connection and what it received. The user's own
real QEMU and a root QEMU, in the same run, are still named from their maps.
"""

import json
import os
import pwd
import shutil
import stat
import subprocess
import tempfile
import time

import pytest

from helpers import HeldGuest, ScriptedGuest, Traced, around_all, by_key, needs_tracing
from piobpf.core.keys import Proc
from piobpf.naming import ioports, monitor, qemucmd, vms
from qemuvm import QemuVM, e1000, firmware_events, virtio_net

pytestmark = needs_tracing

KVM = "/dev/kvm"


@pytest.fixture(scope="module")
def user():
    """(uid, gid) of a user made for the module, who may open /dev/kvm."""
    name = f"piobpf-t{os.getpid()}"
    subprocess.run(["useradd", "-M", "-U", "-s", "/usr/sbin/nologin", name], check=True,
                   capture_output=True)
    try:
        os.chmod(KVM, 0o666)
        entry = pwd.getpwnam(name)
        yield entry.pw_uid, entry.pw_gid
    finally:
        os.chown(KVM, 0, 0)
        os.chmod(KVM, 0o600)
        subprocess.run(["userdel", name], check=True, capture_output=True)


@pytest.fixture
def folders(user):
    """root: a root-only folder under /run; theirs: a folder of the user's."""
    root = tempfile.mkdtemp(prefix="piobpf-trust-", dir="/run")
    theirs = tempfile.mkdtemp(prefix="piobpf-trust-")
    os.chown(theirs, *user)
    yield root, theirs
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(theirs, ignore_errors=True)


def io_map(name, *ports):
    """`info mtree -f -o` text naming each of `ports` `name`."""
    lines = ["FlatView #0", ' AS "I/O", root: io', " Root memory region: io"]
    lines += [f"  {p:016x}-{p:016x} (prio 0, i/o): {name}" for p in ports]
    return "\r\n".join(lines) + "\r\n"


PORTS = (0x510, 0x92, 0x80, 0x70, 0x61)
# What the services would answer: a map naming every port of the user's VMs,
# so a row named from one would show.
QMP = ['{"QMP": {"version": {}, "capabilities": []}}\n', '{"return": {}}\n',
       json.dumps({"return": io_map("stolen", *PORTS)}) + "\n"]
HMP = ["(qemu) ", io_map("stolen", *PORTS) + "(qemu) "]


def test_only_the_vms_own_monitors_are_spoken_to(user, folders):
    root, theirs = folders
    uid = user[0]
    services, guests = {}, {}
    try:
        # Root's services, root-only sockets; and one of the user's own
        # processes serving a socket of the user's, that is no VMM.
        services["qmp"] = ScriptedGuest([], f"{root}/victim-qmp.sock", QMP, serve_only=True)
        services["hmp"] = ScriptedGuest([], f"{root}/victim-hmp.sock", HMP, "hmp",
                                        serve_only=True)
        services["peer"] = ScriptedGuest([], f"{theirs}/other.sock", QMP, serve_only=True,
                                         user=user)
        assert stat.S_IMODE(os.stat(f"{root}/victim-qmp.sock").st_mode) == 0o600
        os.symlink(f"{root}/victim-qmp.sock", f"{theirs}/link.sock")
        os.chown(f"{theirs}/link.sock", *user, follow_symlinks=False)
        with open(f"{theirs}/file.sock", "w"):
            pass
        os.chown(f"{theirs}/file.sock", *user)
        named = {  # VM: (its op, its monitor, the socket's path)
            "mal1": ("w:0x510:2:111", "-qmp", f"{root}/victim-qmp.sock"),
            "mal2": ("r:0x92:1:222", "-monitor", f"{root}/victim-hmp.sock"),
            "mal3": ("w:0x80:4:33", "-qmp", f"{theirs}/other.sock"),
            "mal4": ("r:0x70:1:44", "-qmp", f"{theirs}/link.sock"),
            "mal5": ("r:0x61:1:55", "-qmp", f"{theirs}/file.sock"),
        }
        for vm, (op, flag, path) in named.items():
            guests[vm] = HeldGuest(op, name=vm, user=user,
                                   args=(flag, f"unix:{path},server=on"))
        own = (virtio_net(0xC040, 700),)
        roots = (e1000(0xC000, 500),)
        with QemuVM("mine", "qmp", own, user=user) as mine, \
                QemuVM("roots", "qmp", roots) as root_vm:
            assert os.stat(mine.monitor_path).st_uid == uid
            # the QEMUs' maps are read again after their BARs moved
            rc, out, err, tracer = around_all([*guests.values(), mine, root_vm], "--format",
                                              "json", "--by", "vm", settle=3)
    finally:
        for g in list(guests.values()) + list(services.values()):
            g.end()
    assert rc == 0, err
    rows = json.loads(out)["rows"]

    # This piobpf connected to no root service; to the user's other process
    # (its socket is the user's) but sent it not a byte. (Other tracers on
    # the host may connect to these: their connections are not counted.)
    ours = {name: s.connections(by=tracer) for name, s in services.items()}
    assert ours["qmp"] == [] and ours["hmp"] == []
    assert ours["peer"] and set(ours["peer"]) == {0}

    # One line per refused VM, saying why; no other.
    p = {vm: g.pid for vm, g in guests.items()}
    not_own = "is not the VMM's own"
    assert sorted(err.splitlines()) == sorted([
        f"piobpf: vm mal1 (pid {p['mal1']}): monitor socket {root}/victim-qmp.sock "
        f"{not_own} (owner uid 0, VMM uid {uid}): not asked",
        f"piobpf: vm mal2 (pid {p['mal2']}): monitor socket {root}/victim-hmp.sock "
        f"{not_own} (owner uid 0, VMM uid {uid}): not asked",
        f"piobpf: vm mal3 (pid {p['mal3']}): monitor socket {theirs}/other.sock "
        f"{not_own} (served by pid {services['peer'].pid}): not asked",
        f"piobpf: vm mal4 (pid {p['mal4']}): monitor socket {theirs}/link.sock "
        f"is not a socket: not asked",
        f"piobpf: vm mal5 (pid {p['mal5']}): monitor socket {theirs}/file.sock "
        f"is not a socket: not asked",
    ]), err

    # The refused VMs: counted exactly, named by the fallback.
    host = ioports.load()
    for vm, (op, _, _) in named.items():
        direction, port, size, reps = op.split(":")
        port, size, reps = int(port, 16), int(size), int(reps)
        mine_rows = [(r["direction"], r["port"], r["events"], r["bytes"], r["device"],
                      r["device_source"]) for r in rows if r["pid"] == p[vm]]
        assert mine_rows == [({"r": "read", "w": "write"}[direction], port, reps, reps * size,
                              host.lookup(port), "host-ioports")], vm
    # The user's own QEMU and root's: named from their own maps.
    for vm, devices, device in ((mine, own, "virtio-pci net0"), (root_vm, roots, "e1000-io nic1")):
        got = [r for r in rows if r["pid"] == vm.pid]
        assert by_key(got) == firmware_events(devices)
        assert {r["device_source"] for r in got} == {"vmm"}
        assert [r["device"] for r in got if r["port"] == devices[0].port] == [device]


# The least capabilities that work here (measured: each one less fails):
# counting needs BPF and PERFMON (load, attach) and DAC_READ_SEARCH (tracefs
# is root's, 0700); naming from another user's VMM's monitor needs
# SYS_PTRACE (its /proc/PID/root) and DAC_OVERRIDE (writing to its socket,
# which also reads tracefs).
COUNTING = ("bpf", "perfmon", "dac_read_search")
NAMING = ("bpf", "perfmon", "sys_ptrace", "dac_override")
CAP_BITS = {"dac_override": 1, "dac_read_search": 2, "sys_ptrace": 19, "perfmon": 38, "bpf": 39}


def as_user(user, caps):
    """setpriv: run as `user` (uid, gid), no groups, with only `caps`."""
    some = ",".join(["-all"] + [f"+{c}" for c in caps])
    return ["setpriv", f"--reuid={user[0]}", f"--regid={user[1]}", "--clear-groups",
            f"--inh-caps={some}", f"--ambient-caps={some}", f"--bounding-set={some}"]


def ids_and_caps(pid):
    """(real, effective uid; effective capabilities) of a process."""
    with open(f"/proc/{pid}/status") as f:
        status = dict(line.split(":", 1) for line in f)
    uids = status["Uid"].split()
    return int(uids[0]), int(uids[1]), int(status["CapEff"], 16)


@pytest.mark.parametrize("caps", [COUNTING, NAMING], ids=["counting", "naming"])
def test_a_user_with_only_these_capabilities_traces(user, tmp_path, caps):
    # The host's ioports, saved by root (reading the ranges needs
    # CAP_SYS_ADMIN), named with --ioports.
    saved = tmp_path / "ioports.txt"
    shutil.copy("/proc/ioports", saved)
    devices = (virtio_net(0xC040, 700),)
    with QemuVM("rootvm", "qmp", devices) as vm:
        t = Traced("--format", "json", "--by", "vm", "--ioports", str(saved), "-p", str(vm.pid),
                   wrap=as_user(user, caps))
        try:
            assert ids_and_caps(t.proc.pid) == (
                user[0], user[0], sum(1 << CAP_BITS[c] for c in caps))
            vm.start()
            vm.wait_done()
            time.sleep(3)   # the map read again after its BARs moved
        finally:
            rc, out, err = t.stop()
    assert rc == 0, err
    rows = json.loads(out)["rows"]
    assert by_key(rows) == firmware_events(devices)
    assert {r["vm"] for r in rows} == {"rootvm"}
    bar = [(r["device"], r["device_source"]) for r in rows if r["port"] == 0xC040]
    if caps == NAMING:
        assert err == ""
        assert bar == [("virtio-pci net0", "vmm")]
    else:
        # Not root's socket to open: the fallback names it, as said.
        assert err == (f"piobpf: pid {vm.pid}: no device map from its monitor (qmp "
                       f"{vm.monitor_path}): cannot connect: Permission denied; its ports "
                       f"are named from the ioports table\n")
        assert bar == [(ioports.load(str(saved)).lookup(0xC040), "ioports-file")]


@needs_tracing
def test_a_vmm_whose_pid_is_another_process_by_now_is_sent_nothing(tmp_path):
    # A VMM serving its own QMP socket, asked as the process that had its pid
    # before (another start time): what a recycled pid looks like. Nothing
    # is connected to (the owner checked would be another process's). Asked
    # as itself, it answers.
    path = str(tmp_path / "own.sock")
    g = ScriptedGuest(["r:0x3fd:1:1"], path, QMP)
    try:
        mon = qemucmd.find_monitor(["qemu", "-qmp", f"unix:{path},server=on"])
        me = vms.process(g.pid)
        with pytest.raises(monitor.NotOwn, match=f"pid {g.pid} is not the VMM any more"):
            monitor.ask(mon, Proc(me.pid, me.start - 1), timeout=5)
        assert monitor.ask(mon, me, timeout=5)
        # One connection, the second ask's: the first never even connected.
        asked = g.served(os.getpid(), 1)
        assert len(asked) == 1 and asked[0] > 0, asked
    finally:
        g.end()
