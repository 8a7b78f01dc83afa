"""QEMU command lines: the VM's name and its monitor (pure, no root)."""

import pytest

from piobpf.naming import qemucmd
from piobpf.naming.qemucmd import Monitor

Q = ["qemu-system-x86_64", "-m", "64"]


def test_qemu_name():
    assert qemucmd.qemu_name(["qemu", "-name", "guest=web1,debug-threads=on"]) == "web1"
    assert qemucmd.qemu_name(["qemu", "-name", "db2"]) == "db2"
    assert qemucmd.qemu_name(["qemu", "-name", "db2,process=qemu:db2"]) == "db2"
    assert qemucmd.qemu_name(["qemu", "-name", "process=x,guest=a,,b"]) == "a,b"
    assert qemucmd.qemu_name(["qemu", "--name", "x"]) == "x"
    assert qemucmd.qemu_name(["qemu", "-m", "1G"]) is None
    assert qemucmd.qemu_name(["qemu", "-name"]) is None
    assert qemucmd.qemu_name(["qemu", "-name", "debug-threads=on"]) is None


@pytest.mark.parametrize("args,monitor", [
    (["-qmp", "unix:/run/q.sock,server=on,wait=off"], Monitor("qmp", "/run/q.sock")),
    (["-qmp", "unix:/run/q.sock,server,nowait"], Monitor("qmp", "/run/q.sock")),   # old form
    (["--qmp", "unix:rel.sock,server=on"], Monitor("qmp", "rel.sock")),
    (["-qmp-pretty", "unix:/a,,b,server=on"], Monitor("qmp", "/a,b")),     # ",," is a comma
    (["-monitor", "unix:/run/h.sock,server=on,wait=off"], Monitor("hmp", "/run/h.sock")),
    (["-chardev", "socket,id=m0,path=/run/c.sock,server=on,wait=off",
      "-mon", "chardev=m0,mode=control"], Monitor("qmp", "/run/c.sock")),
    (["-chardev", "socket,id=m0,path=/run/c.sock,server=on,wait=off",
      "-mon", "chardev=m0"], Monitor("hmp", "/run/c.sock")),     # readline is the default
    (["-chardev", "socket,id=m0,path=/run/c.sock,server=on", "-mon", "m0,mode=readline"],
     Monitor("hmp", "/run/c.sock")),
    # Proxmox VE: one QMP socket, connected per command.
    (["-chardev", "socket,id=qmp,path=/var/run/qemu-server/100.qmp,server=on,wait=off",
      "-mon", "chardev=qmp,mode=control"], Monitor("qmp", "/var/run/qemu-server/100.qmp")),
    # QMP wins over HMP, whichever comes first.
    (["-monitor", "unix:/h,server=on", "-qmp", "unix:/q,server=on"], Monitor("qmp", "/q")),
    # libvirt passes its own listening socket as an fd: ask libvirt, by domain
    # name (its pid file is by name; virsh is given the UUID libvirt keeps).
    (["-name", "guest=web1,debug-threads=on",
      "-chardev", "socket,id=charmonitor,fd=28,server=on,wait=off",
      "-mon", "chardev=charmonitor,id=monitor,mode=control"], Monitor("libvirt", "web1")),
    # ... the command line's UUID is not taken: libvirt's own is.
    (["-name", "guest=7,debug-threads=on", "-uuid", "4b98d0aa-376f-48a3-8e69-7c7f90789604",
      "-chardev", "socket,id=charmonitor,fd=24,server=on,wait=off",
      "-mon", "chardev=charmonitor,id=monitor,mode=control"], Monitor("libvirt", "7")),
    # Nothing to dial: QEMU is the client, or not a unix socket, or no -mon.
    (["-qmp", "unix:/run/q.sock"], None),
    (["-qmp", "tcp:127.0.0.1:4444,server=on"], None),
    (["-monitor", "stdio"], None),
    (["-chardev", "socket,id=m0,path=/run/c.sock,server=on"], None),
    (["-chardev", "socket,id=s0,path=/run/c.sock,server=on", "-mon", "chardev=other"], None),
    (["-chardev", "socket,id=m0,fd=3,server=on", "-mon", "chardev=m0"], None),
    (["-chardev", "file,id=m0,path=/tmp/f", "-mon", "chardev=m0"], None),
    ([], None),
])
def test_find_monitor(args, monitor):
    assert qemucmd.find_monitor(Q + args) == monitor


def test_options_without_values_hide_nothing():
    # -S and -nographic take no value: the pairing of each option with the
    # next word must not swallow the monitor after them.
    argv = Q + ["-S", "-nographic", "-qmp", "unix:/q,server=on", "-enable-kvm"]
    assert qemucmd.find_monitor(argv) == Monitor("qmp", "/q")
    assert qemucmd.find_monitor(["-qmp", "unix:/q,server=on"]) is None   # argv[0] is QEMU
