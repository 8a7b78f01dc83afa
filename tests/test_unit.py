"""piobpf-exporter.service, run as systemd would run it (tests/unitrun.py):
its sandbox still lets piobpf attach, count exactly, read the monitors of
other users' VMMs (in their /tmp, under /home) and serve over TLS with basic
auth from /etc/default; and each capability it keeps is needed.

The VMMs are real QEMU processes of the user libvirt-qemu (as libvirt runs
them), their monitor sockets theirs, in directories of mode 0700.
"""

import base64
import re
import shutil
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import bcrypt
import pytest

from helpers import PY, REPO, HeldGuest, free_port, make_certs, needs_tracing
from qemuvm import QemuVM, firmware_events, virtio_net
from unitrun import Unit

UNIT = REPO / "deploy" / "piobpf-exporter.service"
DEFAULTS = REPO / "deploy" / "piobpf-exporter.default"
VMM_USER = "libvirt-qemu"
PORT = 0xC000
DEVICES = (virtio_net(PORT, 300),)
READS = firmware_events(DEVICES)[("read", PORT)][0]     # the VM's exact events on PORT
PASSWORD = "s3cret"


def source_unit(env_file, caps=None):
    """The unit with the source tree's piobpf in place of /usr/sbin/piobpf."""
    return Unit(UNIT, env_file, caps, program=[PY, "-m", "piobpf"],
                extra_env={"PYTHONPATH": str(REPO)})


def env_file(directory, listen, opts):
    """The shipped defaults with PIOBPF_LISTEN and PIOBPF_OPTS set as an admin would."""
    text = DEFAULTS.read_text()
    text = re.sub(r"(?m)^PIOBPF_LISTEN=.*$", f"PIOBPF_LISTEN={listen}", text)
    text = re.sub(r"(?m)^PIOBPF_OPTS=.*$", f"PIOBPF_OPTS={opts}", text)
    path = directory / "piobpf-exporter"
    path.write_text(text)
    return path


@pytest.fixture
def confdir():
    """A directory the service sees as the host does (not in /tmp or /home,
    which its sandbox hides), for its configuration; removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="piobpf-test-", dir="/run"))
    yield path
    shutil.rmtree(path)


@pytest.fixture
def home():
    """A home directory of VMM_USER under /home, removed afterwards."""
    path = tempfile.mkdtemp(prefix="piobpf-test-", dir="/home")
    shutil.chown(path, VMM_USER)
    yield path
    shutil.rmtree(path)


class Service:
    """The unit's ExecStart started in its sandbox, stopped at the end."""

    def __init__(self, unit):
        self.unit = unit
        self.proc = unit.start(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.first = self.proc.stderr.readline()

    def stop(self, terminate=True):
        """End it (SIGTERM, as systemctl stop) or wait for its end: (rc, stderr)."""
        if terminate and self.proc.poll() is None:
            self.proc.terminate()
        out, err = self.proc.communicate(timeout=60)
        self.unit.cleanup()
        return self.proc.returncode, self.first + err


@pytest.fixture
def service():
    started = []

    def start(unit):
        started.append(Service(unit))
        return started[-1]
    yield start
    for s in started:
        s.stop()


def scrape(url, context=None, auth=None):
    request = urllib.request.Request(url)
    if auth:
        request.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
    with urllib.request.urlopen(request, timeout=10, context=context) as r:
        return r.read().decode()


def by_pid_port(text):
    """{(pid, port): (events, device)} of piobpf_pio_events_total by VM."""
    got = {}
    for m in re.finditer(r"(?m)^piobpf_pio_events_total\{(.*)\} (\S+)$", text):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        got[labels["pid"], labels["port"]] = (float(m.group(2)), labels["device"])
    return got


def test_systemd_analyze_verifies_the_unit(tmp_path):
    # verify wants ExecStart's program to exist: the source tree's piobpf in
    # place of /usr/sbin/piobpf, the rest unchanged (test_deb verifies the
    # installed unit as it is).
    launcher = tmp_path / "piobpf"
    launcher.write_text(f"#!/bin/sh\nPYTHONPATH={REPO} exec {PY} -m piobpf \"$@\"\n")
    launcher.chmod(0o755)
    text = UNIT.read_text()
    assert text.count("ExecStart=/usr/sbin/piobpf ") == 1
    unit = tmp_path / UNIT.name
    unit.write_text(text.replace("ExecStart=/usr/sbin/piobpf ", f"ExecStart={launcher} "))
    out = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True,
                         text=True, timeout=60)
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")


@needs_tracing
def test_service_counts_other_users_vms_and_serves_tls_with_auth(confdir, home, service):
    certs = make_certs(confdir)
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(10)).decode()
    web = confdir / "web-config.yml"
    web.write_text(f"tls_server_config:\n  cert_file: {certs['server.crt']}\n"
                   f"  key_file: {certs['server.key']}\nbasic_auth_users:\n  prom: {hashed}\n")
    port = free_port()
    with QemuVM("unit-tmp", "qmp", DEVICES, user=VMM_USER) as in_tmp, \
            QemuVM("unit-home", "hmp", DEVICES, user=VMM_USER, parent=home) as in_home:
        guest = HeldGuest("w:0x3f8:1:77")
        pids = f"{in_tmp.pid},{in_home.pid},{guest.pid}"
        unit = source_unit(env_file(confdir, f"127.0.0.1:{port}",
                                    f"--by vm -p {pids} --web.config.file {web}"))
        # What the sandbox hides: the monitors' own paths, and /proc/ioports's
        # ranges from a reader without CAP_SYS_ADMIN.
        hidden = unit.run(["sh", "-c", f"ls {in_tmp.monitor_path} {in_home.monitor_path}; "
                                       "grep -c '03f8-03ff : serial' /proc/ioports"])
        assert hidden.stdout == "0\n" and hidden.stderr.count("No such file") == 2, hidden
        s = service(unit)
        assert s.first.startswith("Serving kvm:kvm_pio"), s.stop()
        with open(f"/proc/{s.proc.pid}/status") as f:
            status = dict(line.split(":\t", 1) for line in f.read().splitlines())
        # CAP_DAC_OVERRIDE 1, CAP_SYS_PTRACE 19, CAP_PERFMON 38, CAP_BPF 39.
        assert int(status["CapEff"], 16) == (1 << 1 | 1 << 19 | 1 << 38 | 1 << 39)
        assert status["NoNewPrivs"] == "1"
        for vm in (in_tmp, in_home):
            vm.start()
        guest.start()
        for vm in (in_tmp, in_home):
            vm.wait_done()
        guest.wait_done()
        url = f"https://127.0.0.1:{port}/metrics"
        context = ssl.create_default_context(cafile=certs["ca.crt"])
        with pytest.raises(urllib.error.HTTPError, match="401"):
            scrape(url, context)
        want = {(str(vm.pid), f"{PORT:#x}"): (READS, "virtio-pci net0")
                for vm in (in_tmp, in_home)}
        want[(str(guest.pid), "0x3f8")] = (77, "serial")
        # Monitors are read in the background: until then the ports are
        # named from the host's ranges.
        end = time.monotonic() + 60
        while True:
            got = by_pid_port(scrape(url, context, f"prom:{PASSWORD}"))
            got = {k: got.get(k) for k in want}
            if got == want or time.monotonic() > end:
                break
            time.sleep(0.2)
        assert got == want
        guest.end()
        rc, err = s.stop()
        assert rc == 0, err


@needs_tracing
@pytest.mark.parametrize("cap,instead", [("CAP_BPF", None), ("CAP_PERFMON", None),
                                         ("CAP_SYS_PTRACE", None), ("CAP_DAC_OVERRIDE", None),
                                         ("CAP_DAC_OVERRIDE", "CAP_DAC_READ_SEARCH")])
def test_each_capability_is_needed(confdir, service, cap, instead):
    """The unit's set less one: no attach, or no monitor of another user's VMM.
    CAP_DAC_READ_SEARCH would open the VMM's directory but not let it connect:
    connect(2) needs write permission on the socket."""
    caps = [c for c in Unit(UNIT, DEFAULTS).caps if c != cap] + ([instead] if instead else [])
    port = free_port()
    with QemuVM("unit-cap", "qmp", DEVICES, user=VMM_USER) as vm:
        s = service(source_unit(env_file(confdir, f"127.0.0.1:{port}", f"--by vm -p {vm.pid}"),
                                caps))
        if cap in ("CAP_BPF", "CAP_PERFMON"):
            rc, err = s.stop(terminate=False)
            assert rc == 1 and err.startswith("piobpf: ") and len(err.splitlines()) == 1, err
            assert "CAP_BPF and CAP_PERFMON" in err
            return
        assert s.first.startswith("Serving kvm:kvm_pio"), s.stop()
        vm.start()
        vm.wait_done()
        # Its monitor refused it: counted exactly, named from the host's ranges.
        line = s.proc.stderr.readline()
        assert f"pid {vm.pid}: no device map from its monitor" in line, line
        assert "Permission denied" in line, line
        got = by_pid_port(scrape(f"http://127.0.0.1:{port}/metrics"))
        assert got[(str(vm.pid), f"{PORT:#x}")][0] == READS
        assert got[(str(vm.pid), f"{PORT:#x}")][1] != "virtio-pci net0"
        assert s.stop()[0] == 0
