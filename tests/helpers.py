"""Shared test helpers: run piobpf and real KVM guests and real perf as processes."""

import atexit
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from piobpf.naming import ioports, names
from piobpf.naming.devices import HOST_IOPORTS, DeviceNames
from tools import perfrecord

REPO = Path(__file__).resolve().parent.parent
PY = sys.executable
ENV = dict(os.environ, PYTHONPATH=str(REPO), LC_ALL="C")
# The scripted KVM guest (tests/tools/guest.py), as a command.
GUEST = [PY, str(REPO / "tests" / "tools" / "guest.py")]


@functools.lru_cache(maxsize=None)
def readable_tree():
    """The package, its BPF C and the test tools, copied where anyone may read
    them and a service's sandbox sees them: the clone may sit in a mode-700
    home, which another user, a process without CAP_DAC_READ_SEARCH, or a unit
    with ProtectHome= cannot read (and PrivateTmp= hides /tmp). Removed at exit."""
    d = tempfile.mkdtemp(prefix="piobpf-tests-", dir="/run")
    os.chmod(d, 0o755)
    for part, to in (("piobpf", "piobpf"), ("bpf", "bpf"), ("tests/tools", "tools")):
        shutil.copytree(REPO / part, f"{d}/{to}", ignore=shutil.ignore_patterns("__pycache__"))
    atexit.register(shutil.rmtree, d, ignore_errors=True)
    return Path(d)


def readable_env():
    """ENV with the package taken from readable_tree()."""
    return dict(ENV, PYTHONPATH=str(readable_tree()))


def tool(name, user=None):
    """The path of a test tool (tests/tools/NAME), readable by `user` when given."""
    return str((readable_tree() / "tools" if user else REPO / "tests" / "tools") / name)


def _kvm_pio_present():
    return any(os.path.isdir(f"{t}/events/kvm/kvm_pio")
               for t in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"))


def why_not_tracing():
    if os.geteuid() != 0:
        return "needs root to load BPF programs"
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "needs /dev/kvm to run guests"
    if not _kvm_pio_present():
        return "needs the kvm:kvm_pio tracepoint (tracefs mounted, kvm loaded)"
    return None


# Skips only where the machine cannot trace; on a KVM host as root all run.
needs_tracing = pytest.mark.skipif(why_not_tracing() is not None,
                                   reason=why_not_tracing() or "")


def piobpf_cmd(*args):
    return [PY, "-m", "piobpf", *args]


def run(cmd, stdin=None, cwd=None, env=ENV):
    """A command to its end, output captured."""
    return subprocess.run(cmd, env=env, capture_output=True, text=True, input=stdin,
                          cwd=cwd, timeout=120)


def run_piobpf(*args, stdin=None):
    return run(piobpf_cmd(*args), stdin=stdin)


def assert_one_line(out, rc, *words):
    """A failed run: exit `rc`, nothing on stdout, one `piobpf: ` line holding `words`."""
    assert out.returncode == rc, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("piobpf: "), out.stderr
    for w in words:
        assert w in lines[0]
    assert out.stdout == ""


def fixed_naming(devices=None, by="port", labeler=None, source=HOST_IOPORTS, maps=None):
    """A names.Names whose fallback table names ports from a {port: name} dict."""
    table = ioports.IoPorts(ioports.Range(p, p, n, 0) for p, n in (devices or {}).items())
    return names.Names(DeviceNames(table, source, maps), by, labeler, maps)


def free_port(host="127.0.0.1"):
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def sum_rows(text):
    """{(direction, port): (events, bytes)} summed over JSON objects, one a line."""
    total = {}
    for line in text.splitlines():
        for r in json.loads(line)["rows"]:
            key = (r["direction"], r["port"])
            e, b = total.get(key, (0, 0))
            total[key] = (e + r["events"], b + r["bytes"])
    return total


def run_guest(*ops, thread_name=None, irqchip=False):
    cmd = [*GUEST, *ops]
    if thread_name:
        cmd += ["--thread-name", thread_name]
    if irqchip:
        cmd.append("--irqchip")
    out = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


class HeldGuest:
    """A guest process that waits to start (its pid known) and stays alive after.

    program: the test tool python runs and its first arguments (a script
    taking tests/tools/guest.py's arguments); user: (uid, gid) to run it as,
    no other groups."""

    def __init__(self, *ops, name=None, thread_name=None, args=(), program=("guest.py",),
                 user=None):
        cmd = [PY, tool(program[0], user), *program[1:], "--wait", "--hold", *args, *ops]
        if name:
            cmd += ["-name", f"guest={name},debug-threads=on"]
        if thread_name:
            cmd += ["--thread-name", thread_name]
        ids = dict(user=user[0], group=user[1], extra_groups=[]) if user else {}
        self.proc = subprocess.Popen(cmd, env=readable_env() if user else ENV, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, **ids)
        assert self.proc.stdout.readline() == "ready\n"
        self.pid = self.proc.pid

    def start(self):
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()

    def wait_done(self):
        line = self.proc.stdout.readline()
        assert line.startswith("done"), line

    def end(self):
        self.proc.stdin.close()
        assert self.proc.wait(timeout=60) == 0


class ScriptedGuest(HeldGuest):
    """A HeldGuest whose process serves its own monitor at `path`
    (tests/tools/scripted_vmm.py), saying `script` (a list of str, latin-1 bytes);
    set_script() changes what the next connection hears. serve_only: a
    process that serves the socket and is no VMM (no ops)."""

    def __init__(self, ops, path, script, protocol="qmp", args=(), serve_only=False, **kw):
        self.script_file, self.log = f"{path}.script", f"{path}.log"
        self.set_script(script)
        flag = "-qmp" if protocol == "qmp" else "-monitor"
        program = ("scripted_vmm.py", self.script_file, self.log,
                   *(["--serve-only"] if serve_only else []))
        super().__init__(*ops, program=program,
                         args=(flag, f"unix:{path},server=on", *args), **kw)

    def set_script(self, script):
        with open(self.script_file, "w") as f:
            json.dump(script, f)

    def connections(self, by):
        """[bytes received] of each connection by process `by` so far (None:
        under way). Connections are served one at a time, so a "got" line
        is of the "connect" line before it."""
        try:
            with open(self.log) as f:
                lines = f.read().split()
        except FileNotFoundError:
            return []
        found, peer = [], None
        for word, value in zip(lines[::2], lines[1::2]):
            if word == "connect":
                peer = int(value)
                if peer == by:
                    found.append(None)
            elif peer == by:
                found[-1] = int(value)
        return found

    def served(self, by, count, timeout=10):
        """connections(by) once `count` of them have ended (the VMM logs a
        connection as it serves it, after the client may have gone)."""
        deadline = time.monotonic() + timeout
        while True:
            found = self.connections(by)
            if (len(found) >= count and None not in found) or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


class Traced:
    """A piobpf process, started and attached (its 'Tracing...' or 'Serving...' line
    seen); `wrap`: a command that runs it (setpriv ...), which then runs the
    package from readable_tree()."""

    def __init__(self, *args, wrap=()):
        env = readable_env() if wrap else ENV
        self.proc = subprocess.Popen([*wrap, *piobpf_cmd(*args)], env=env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = self.proc.stderr.readline()
        assert line.startswith(("Tracing", "Serving")), line + self.proc.stderr.read()

    def stop(self, sig=signal.SIGINT):
        """End the run with `sig`; returns (rc, stdout, rest of stderr)."""
        self.proc.send_signal(sig)
        if self.proc.stdout.closed:
            err = self.proc.stderr.read()
            return self.proc.wait(timeout=60), None, err
        out, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, out, err


def around(guest, *args, sig=signal.SIGINT):
    """piobpf ARGS -p GUEST around a HeldGuest's whole run: (rc, stdout, stderr)."""
    return around_each(guest, args, sig=sig)[0]


def around_each(guest, *runs, sig=signal.SIGINT):
    """A piobpf ARGS -p GUEST for each ARGS in `runs`, all at once around a
    HeldGuest's whole run: [(rc, stdout, stderr)], in the order of `runs`."""
    tracers = [Traced(*args, "-p", str(guest.pid)) for args in runs]
    guest.start()
    guest.wait_done()
    results = [t.stop(sig) for t in tracers]
    guest.end()
    return results


def around_all(members, *args, settle=0):
    """piobpf ARGS -p (every member's pid) around the whole runs of guests
    and QEMU VMs (anything with pid, start, wait_done), then `settle`
    seconds for names to be read again: (rc, stdout, stderr, piobpf's pid)."""
    t = Traced(*args, "-p", ",".join(str(m.pid) for m in members))
    try:
        for m in members:
            m.start()
        for m in members:
            m.wait_done()
        time.sleep(settle)
    finally:
        result = t.stop()
    return (*result, t.proc.pid)


def trace_json(ops, *args, **guest_kw):
    """piobpf --format json -p around one guest's run; returns the parsed object."""
    rc, out, err = around(HeldGuest(*ops, **guest_kw), "--format", "json", *args)
    assert rc == 0, err
    return json.loads(out)


def by_key(rows):
    """{(direction, port): (events, bytes)} from JSON rows."""
    return {(r["direction"], r["port"]): (r["events"], r["bytes"]) for r in rows}


class PerfRecord:
    """`perf record -e kvm:kvm_pio -a` (or other `events`), recording when
    the constructor returns."""

    def __init__(self, events=("kvm:kvm_pio",)):
        self.dir = tempfile.TemporaryDirectory()
        self.data = f"{self.dir.name}/perf.data"
        self.proc = perfrecord.start(self.data, events=events)

    def script(self, pid):
        """Stop recording; the `perf script` text of what it saw of process
        `pid` (it records the whole host, as the seed's recipe does)."""
        perfrecord.stop(self.proc)
        out = subprocess.run(["perf", "script", "-i", self.data, "--pid", str(pid)],
                             capture_output=True, text=True, timeout=300)
        self.dir.cleanup()
        assert out.returncode == 0, out.stderr
        return out.stdout


# The mixed workload: several ports, both directions, sizes 1/2/4, rep ins and
# rep outs, all on ports that exit to user space (exactly one event each).
MIXED = ["r:0x3fd:1:5000", "w:0x3f8:1:300", "w:0x3f8:2:7", "r:0x3fb:2:11",
         "r:0x60:1:3:16", "w:0x70:1:2:8", "r:0x61:4:5", "w:0x80:4:13", "r:0x71:1:1"]
MIXED_EXPECTED = {
    ("read", 0x3fd): (5000, 5000),
    ("write", 0x3f8): (307, 300 + 14),
    ("read", 0x3fb): (11, 22),
    ("read", 0x60): (3, 48),          # rep insb: one event of count 16 each
    ("write", 0x70): (16, 16),        # rep outsb: one event per byte
    ("read", 0x61): (5, 20),
    ("write", 0x80): (13, 52),
    ("read", 0x71): (1, 1),
}


# The seed's pio_calculate.awk, verbatim (../shared/seed-kvm_pio.md).
AWK = r'''{
    if ($0 ~ /pio_write/) {
        ops["W:"$8]++
    } else if ($0 ~ /pio_read/) {
        ops["R:"$8]++
    }
}

END {
    for (op in ops) {
        printf "%-16.16s %d\n", op, ops[op]
    }
}
'''


def awk_pipeline(perf_text, tmp_path):
    """`awk -f pio_calculate.awk pio_stat | sort -nk 2 -r`, run for real."""
    (tmp_path / "pio_calculate.awk").write_text(AWK)
    (tmp_path / "pio_stat").write_text(perf_text)
    out = subprocess.run("awk -f pio_calculate.awk pio_stat | sort -nk 2 -r", shell=True,
                         cwd=tmp_path, capture_output=True, text=True, check=True,
                         env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"})
    return out.stdout


def make_certs(directory):
    """Test certificates made by the openssl CLI in `directory` (a Path): a CA
    (ca.crt), a server certificate of it for 127.0.0.1, ::1 and localhost
    (server.crt, server.key), a client certificate of it (client.*), and one
    of another CA (stranger.*). Returns {name: path string}."""
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)
    key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for ca in ("ca", "otherca"):
        openssl("req", "-x509", *key, "-keyout", f"{ca}.key", "-out", f"{ca}.crt",
                "-days", "2", "-subj", f"/CN=piobpf test {ca}")
    for name, ca, ext in (("server", "ca", "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost"),
                          ("client", "ca", "extendedKeyUsage=clientAuth"),
                          ("stranger", "otherca", "extendedKeyUsage=clientAuth")):
        (directory / f"{name}.ext").write_text(ext + "\n")
        openssl("req", *key, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt")
    return {f"{n}.{kind}": str(directory / f"{n}.{kind}")
            for n in ("ca", "server", "client", "stranger") for kind in ("crt", "key")}
