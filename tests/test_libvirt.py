"""A libvirt-managed VM, for real: piobpf finds its monitor on QEMU's command
line and reads its map through virsh (libvirt keeps the monitor socket).

The module runs its own libvirtd (unless one already serves qemu:///system:
that one is used and left running) in a private mount namespace, where
temporary directories stand in for /etc/libvirt and /var/log/libvirt. Its
qemu.conf runs QEMU as root (/dev/kvm may be root's only) and has libvirtd
write QEMU's output to a file itself, so no virtlogd is needed. Nothing under
/etc changes on the host, the host's own libvirt configuration (networks to
autostart, persistent domains) stays out, and the daemon's and QEMU's logs
end up in the test's tmp_path. The daemon's runtime state and socket are the
host's (/run/libvirt, where virsh looks), and so is its cache of QEMU's
capabilities (/var/cache/libvirt: the first start probes QEMU, seconds).
"""

import json
import os
import re
import select
import shutil
import signal
import subprocess
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from xml.etree import ElementTree

import pytest

from helpers import HeldGuest, Traced, free_port, needs_tracing
from piobpf.naming import monitor, mtree, qemucmd, vms
from piobpf.naming.qemucmd import Monitor
from test_unit import Service, by_pid_port, env_file, scrape, source_unit

pytestmark = needs_tracing

VIRSH = ["virsh", "-q", "-c", monitor.LIBVIRT_URI]
SETUP = "scripts/setup.sh installs libvirt and creates its libvirt-qemu user"
START_TIMEOUT = 60      # a first start probes QEMU's capabilities: seconds, more if busy
QEMU_CONF = 'user = "root"\ngroup = "root"\nstdio_handler = "file"\n'
LIBVIRTD_CONF = 'log_outputs = "3:stderr"\n'
# libvirtd runs this under `unshare -m` (private propagation: the mounts stay
# in its namespace, and in its QEMUs', and end with them).
IN_NAMESPACE = ('mkdir -p /var/log/libvirt && mount --bind "$1" /etc/libvirt'
                ' && mount --bind "$2" /var/log/libvirt && exec libvirtd')

# SeaBIOS (the default firmware), an e1000 NIC on QEMU's user network (no
# host network needed) without its option ROM, so nothing but SeaBIOS runs.
DOMAIN_XML = """<domain type='kvm'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
    <interface type='user'><model type='e1000'/><rom enabled='no'/></interface>
  </devices>
</domain>
"""


def virsh(*args, timeout=30, check=True):
    out = subprocess.run(VIRSH + list(args), capture_output=True, text=True,
                         timeout=timeout, stdin=subprocess.DEVNULL)
    if check:
        assert out.returncode == 0, f"virsh {' '.join(args)}: {out.stderr.strip()}"
    return out


def libvirt_answers():
    try:
        return virsh("version", timeout=10, check=False).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def tail(path, lines=20):
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Libvirtd:
    """libvirtd serving qemu:///system: ours, or one that already did (left alone)."""

    def __init__(self, base):
        self.base, self.proc = base, None
        self.log = base / "libvirtd.log"
        self.logs = base / "log"            # /var/log/libvirt in the namespace
        missing = [p for p in ("virsh", "libvirtd") if not shutil.which(p)]
        if missing:
            pytest.fail(f"{' and '.join(missing)} not found: {SETUP}")
        if libvirt_answers():
            return
        etc = base / "etc"
        etc.mkdir()
        self.logs.mkdir()
        (etc / "qemu.conf").write_text(QEMU_CONF)
        (etc / "libvirtd.conf").write_text(LIBVIRTD_CONF)
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                ["unshare", "--mount", "--propagation", "private", "sh", "-c", IN_NAMESPACE,
                 "sh", str(etc), str(self.logs)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + START_TIMEOUT
        while not libvirt_answers():
            if self.proc.poll() is not None:
                pytest.fail(f"libvirtd exited ({self.proc.returncode}; {SETUP}):\n"
                            f"{tail(self.log)}")
            if time.monotonic() > deadline:
                self.stop()
                pytest.fail(f"libvirtd not answering after {START_TIMEOUT} s:\n{tail(self.log)}")
            time.sleep(0.1)

    def stop(self):
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def _gone(pid, cmdline):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read() != cmdline
    except OSError:
        return True


class Domain:
    """A transient domain and its QEMU process."""

    def __init__(self, daemon, name, paused=False, xml=DOMAIN_XML):
        # virsh reads a number as an ID before a name: virsh is given the
        # UUID, the domain's one unambiguous handle.
        self.daemon, self.name, self.uuid = daemon, name, str(uuid.uuid4())
        path = daemon.base / f"{self.uuid}.xml"
        path.write_text(xml.format(name=name, uuid=self.uuid))
        out = virsh("create", *(["--paused"] if paused else []), str(path), timeout=60,
                    check=False)
        assert out.returncode == 0, f"virsh create: {out.stderr.strip()}\n{self.qemu_log()}"
        self.pid, self.cmdline = None, b""
        try:
            with open(f"/run/libvirt/qemu/{name}.pid") as f:
                self.pid = int(f.read())
            with open(f"/proc/{self.pid}/cmdline", "rb") as f:
                self.cmdline = f.read()
        except BaseException:
            self.destroy()
            raise
        self.argv = self.cmdline.decode().split("\0")
        assert qemucmd.qemu_name(self.argv) == name

    def qemu_log(self):
        return tail(self.daemon.logs / "qemu" / f"{self.name}.log")

    def dumpxml(self):
        return ElementTree.fromstring(virsh("dumpxml", self.uuid).stdout)

    def hmp(self, command):
        return virsh("qemu-monitor-command", "--hmp", self.uuid, command).stdout

    def destroy(self):
        """Destroyed by libvirt, else killed; gone either way."""
        try:
            virsh("destroy", self.uuid, check=False)
        except subprocess.TimeoutExpired:
            pass
        deadline = time.monotonic() + 10
        while self.pid and not _gone(self.pid, self.cmdline):
            if time.monotonic() > deadline:
                try:
                    os.kill(self.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                deadline = time.monotonic() + 10
            time.sleep(0.05)


@pytest.fixture(scope="module")
def libvirtd(tmp_path_factory):
    daemon = Libvirtd(tmp_path_factory.mktemp("libvirt"))
    yield daemon
    daemon.stop()


@pytest.fixture(scope="module")
def domains(libvirtd):
    """make(suffix, paused, xml, name) -> a Domain, destroyed when the module ends."""
    made = []

    def make(suffix, paused=False, xml=DOMAIN_XML, name=None):
        name = name or f"piobpf-test-{os.getpid()}-{suffix}"
        made.append(Domain(libvirtd, name, paused, xml))
        return made[-1]
    yield make
    # At once: libvirt takes seconds over each.
    with ThreadPoolExecutor(max(1, len(made))) as pool:
        for done in [pool.submit(dom.destroy) for dom in made]:
            done.result()


IO_LINE = re.compile(r"^\s*([0-9a-f]+)-([0-9a-f]+) \(prio \d+, i/o\): (\S+) "
                     r"owner:\{dev id=([^}]+)\}")


def io_devices(text):
    """{region: (start, end, id)} of the devices with ids in the I/O address space."""
    found = {}
    for line in mtree.space_lines(text)[0]:
        m = IO_LINE.match(line)
        if m:
            found[m[3]] = (int(m[1], 16), int(m[2], 16), m[4])
    return found


@pytest.fixture(scope="module")
def booted(domains):
    """A running domain whose firmware has given the e1000 its I/O BAR."""
    dom = domains("booted")
    deadline = time.monotonic() + 30
    while "e1000-io" not in io_devices(dom.hmp(monitor.QUERY)):
        assert time.monotonic() < deadline, f"no e1000-io BAR after 30 s\n{dom.qemu_log()}"
        time.sleep(0.2)
    return dom


def test_find_monitor_on_a_libvirt_command_line(booted):
    assert qemucmd.find_monitor(booted.argv) == Monitor("libvirt", booted.name)
    assert qemucmd.qemu_name(booted.argv) == booted.name


def test_map_read_through_libvirt_names_the_nic_by_its_alias(booted):
    alias = booted.dumpxml().find("devices/interface/alias").get("name")
    answer = monitor.ask(qemucmd.find_monitor(booted.argv), vms.process(booted.pid), timeout=30)
    start, end, owner = io_devices(answer)["e1000-io"]
    assert owner == alias
    io = mtree.parse(answer)
    assert io.lookup(start) == io.lookup(end) == f"e1000-io {alias}"
    assert io.lookup(start - 1) != io.lookup(start)
    assert io.lookup(0x510) == io.lookup(0x511) == "fwcfg"
    assert io.lookup(0x92) == "port92"
    assert io.lookup(0xcf8) == "pci-conf-idx"


def test_piobpf_names_a_libvirt_vms_ports_from_its_own_map(domains):
    dom = domains("e2e", paused=True)
    t = Traced("--format", "json", "--by", "vm", "-p", str(dom.pid))
    try:
        virsh("resume", dom.uuid)
        time.sleep(2)          # SeaBIOS: PCI enumeration, fw_cfg, then no boot device
    finally:
        rc, out, err = t.stop()
    assert rc == 0, err
    result = json.loads(out)
    rows = result["rows"]
    assert rows and result["dropped_events"] == 0
    for r in rows:
        assert (r["pid"], r["vm"], r["device_source"]) == (dom.pid, dom.name, "vmm"), r
    device = {r["port"]: r["device"] for r in rows}
    # Each as the VM's own map has it (SeaBIOS touches no port a BAR moves).
    own = mtree.parse(dom.hmp(monitor.QUERY))
    assert device == {port: own.lookup(port) for port in device}
    assert device[0x510] == "fwcfg"
    assert device[0x92] == "port92"
    assert device[0xcf8] == "pci-conf-idx"
    assert device[0xcfc] == "pci-conf-data"


def test_a_domain_named_as_another_ones_id_is_asked_for_its_own_map(booted, domains):
    # virsh reads a domain argument as an ID first, then a UUID, then a name.
    # This domain alone has a serial port: its map must name it.
    other_id = virsh("domid", booted.uuid).stdout.strip()
    dom = domains("numeric", paused=True, name=other_id,
                  xml=DOMAIN_XML.replace("<memballoon", "<serial type='null'/><memballoon"))
    alias = dom.dumpxml().find("devices/serial/alias").get("name")
    assert mtree.parse(booted.hmp(monitor.QUERY)).lookup(0x3f8) == mtree.UNASSIGNED
    answer = monitor.ask(qemucmd.find_monitor(dom.argv), vms.process(dom.pid), timeout=30)
    assert mtree.parse(answer).lookup(0x3f8) == f"serial {alias}"


def test_the_service_names_a_libvirt_vms_ports_through_virsh(domains, tmp_path):
    # piobpf-exporter.service's sandbox (tests/unitrun.py: its capabilities,
    # no new privileges, /root hidden, all read-only) still lets virsh ask
    # libvirt for the VM's map: the host's ioports say "PCI conf1" for 0xcf8.
    dom = domains("unit", paused=True)
    port = free_port()
    unit = source_unit(env_file(tmp_path, f"127.0.0.1:{port}", f"--by vm -p {dom.pid}"))
    service = Service(unit)
    try:
        assert service.first.startswith("Serving kvm:kvm_pio"), service.stop()
        virsh("resume", dom.uuid)
        deadline = time.monotonic() + 60
        while True:
            got = by_pid_port(scrape(f"http://127.0.0.1:{port}/metrics"))
            device = got.get((str(dom.pid), "0xcf8"), (0, None))[1]
            if device == "pci-conf-idx" or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert device == "pci-conf-idx"
    finally:
        rc, err = service.stop()
    assert rc == 0 and "no device map" not in err, err


def test_a_vmm_naming_a_domain_libvirt_runs_elsewhere_is_not_asked(booted, domains, tmp_path):
    # Any KVM process may say it is a libvirt QEMU of any domain: libvirt's
    # pid file of that domain names another process, so nothing is asked.
    # piobpf runs virsh through a wrapper that logs its arguments (other
    # tracers on the host may ask the domain: libvirt's taint would not tell);
    # the real `booted` domain, traced too, shows the log works.
    calls = tmp_path / "virsh.log"
    (tmp_path / "virsh").write_text(f'#!/bin/sh\necho "$*" >> {calls}\n'
                                    f'exec {shutil.which("virsh")} "$@"\n')
    (tmp_path / "virsh").chmod(0o755)
    dom = domains("victim", paused=True)
    guest = HeldGuest("r:0x92:1:77", name=dom.name, args=(
        "-chardev", "socket,id=charmonitor,fd=3,server=on,wait=off",
        "-mon", "chardev=charmonitor,id=monitor,mode=control"))
    try:
        t = Traced("--format", "json", "--by", "vm", "-p", f"{guest.pid},{booted.pid}",
                   wrap=["env", f"PATH={tmp_path}:{os.environ['PATH']}"])
        guest.start()
        guest.wait_done()
        refused = (f"piobpf: vm {dom.name} (pid {guest.pid}): libvirt domain {dom.name}: "
                   f"its pid file {monitor.LIBVIRT_RUN}/{dom.name}.pid names pid {dom.pid}, "
                   f"not the VMM: not asked\n")
        # Both asked (or refused) before the run ends: the refusal is said at a
        # look of the second's, the booted domain's virsh call is logged.
        said, deadline = b"", time.monotonic() + 30
        os.set_blocking(t.proc.stderr.fileno(), False)
        while refused.encode() not in said or booted.uuid not in (
                calls.read_text() if calls.exists() else ""):
            assert time.monotonic() < deadline, (said, "piobpf did not ask the booted domain")
            said += os.read(t.proc.stderr.fileno(), 65536) if select.select(
                [t.proc.stderr], [], [], 0.1)[0] else b""
        os.set_blocking(t.proc.stderr.fileno(), True)
        rc, out, err = t.stop()
    finally:
        guest.end()
    assert rc == 0, err
    assert said.decode() + err == refused
    rows = [r for r in json.loads(out)["rows"] if r["pid"] == guest.pid]
    assert [(r["port"], r["events"], r["device_source"]) for r in rows] \
        == [(0x92, 77, "host-ioports")]
    asked = calls.read_text().splitlines()
    assert asked and all(booted.uuid in line for line in asked), asked
