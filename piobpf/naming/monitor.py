"""Ask a QEMU process's monitor for its I/O map (qemucmd finds the monitor).

The monitor is the VM's control channel, so piobpf only reads: it sends the
QMP handshake and `info mtree -f -o` (through QMP's human-monitor-command, or
typed at an HMP prompt), nothing else, and hangs up after one answer. QEMU
serves one client at a time: a monitor in use (a management tool connected)
does not greet, and the query gives up at its deadline.

libvirt keeps its VMs' monitors for itself, so a libvirt VM is asked through
`virsh qemu-monitor-command --hmp`, which libvirt logs as a "custom-monitor"
taint of the domain. The domain is given by its UUID: virsh would take a
numeric name for another domain's ID.
"""

import json
import os
import socket
import subprocess
import time

QUERY = "info mtree -f -o"
LIBVIRT_URI = "qemu:///system"
_HMP_PROMPT = b"(qemu) "
_MAX_ANSWER = 4 << 20               # an mtree is tens of KB; never grow without bound


class MonitorError(Exception):
    """The map could not be read: one line saying why."""


class _Conn:
    """A unix socket client with one deadline for the whole conversation."""

    def __init__(self, path, deadline):
        self.deadline, self.buf = deadline, b""
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        # Through a directory fd: the path may be long (sun_path holds 108 bytes).
        try:
            folder = os.open(os.path.dirname(path), os.O_PATH)
            try:
                self._timeout()
                self.sock.connect(f"/proc/self/fd/{folder}/{os.path.basename(path)}")
            finally:
                os.close(folder)
        except OSError as e:
            self.sock.close()
            raise MonitorError(f"cannot connect: {e.strerror or e}") from None
        except BaseException:
            self.sock.close()
            raise

    def _timeout(self):
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise MonitorError("no answer in time (monitor busy or hung)")
        self.sock.settimeout(left)

    def send(self, data):
        self._timeout()
        self.sock.sendall(data)

    def until(self, marker):
        """Everything up to and including `marker`."""
        while marker not in self.buf:
            self._timeout()
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise MonitorError("no answer in time (monitor busy or hung)") from None
            if not chunk:
                raise MonitorError("the monitor closed the connection")
            self.buf += chunk
            if len(self.buf) > _MAX_ANSWER:
                raise MonitorError("answer too long")
        text, _, self.buf = self.buf.partition(marker)
        return text + marker

    def close(self):
        self.sock.close()


_JSON_TYPES = {dict: "object", list: "array", str: "string", int: "number", float: "number",
               bool: "boolean", type(None): "null"}


def _kind(value):
    return f"a JSON {_JSON_TYPES.get(type(value), type(value).__name__)}"


def plain(text, limit=200):
    """A monitor's own words, fit for one line: printable, bounded."""
    text = "".join(c if c.isprintable() else " " for c in str(text))
    return text[:limit] + ("..." if len(text) > limit else "")


def _json(conn):
    """The next line as JSON; a monitor may send any JSON, so its shape is checked
    by the caller, never assumed."""
    try:
        return json.loads(conn.until(b"\n"))
    except RecursionError:      # nesting deeper than the parser goes
        raise MonitorError("bad answer: JSON nested too deep") from None


def _qmp_reply(conn):
    """The next reply (not an asynchronous event) from a QMP monitor."""
    while True:
        msg = _json(conn)
        if not isinstance(msg, dict):
            raise MonitorError(f"bad answer: {_kind(msg)}, not an object")
        if "return" in msg:
            return msg["return"]
        if "error" in msg:
            error = msg["error"]
            desc = error.get("desc", error) if isinstance(error, dict) else error
            raise MonitorError(f"QMP error: {plain(desc)}")


def _ask_qmp(conn):
    greeting = _json(conn)
    if not (isinstance(greeting, dict) and "QMP" in greeting):
        raise MonitorError("not a QMP greeting")
    conn.send(b'{"execute": "qmp_capabilities"}\n')
    _qmp_reply(conn)
    conn.send(json.dumps({"execute": "human-monitor-command",
                          "arguments": {"command-line": QUERY}}).encode() + b"\n")
    answer = _qmp_reply(conn)
    if not isinstance(answer, str):
        raise MonitorError(f"bad answer: {_kind(answer)}, not the map's text")
    return answer


def _ask_hmp(conn):
    conn.until(_HMP_PROMPT)
    conn.send(QUERY.encode() + b"\r\n")
    # The answer ends at the next prompt; the echoed command line before it
    # matches no map line, so the parser passes over it.
    return conn.until(_HMP_PROMPT)[:-len(_HMP_PROMPT)].decode(errors="replace")


def _ask_libvirt(domain, timeout):
    try:
        out = subprocess.run(["virsh", "-q", "-c", LIBVIRT_URI, "qemu-monitor-command",
                              "--hmp", domain, QUERY], capture_output=True, text=True,
                             timeout=timeout, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise MonitorError("virsh not found (apt-get install libvirt-clients)") from None
    except subprocess.TimeoutExpired:
        raise MonitorError("no answer in time from libvirt") from None
    if out.returncode:
        lines = (out.stderr.strip() or "virsh failed").splitlines()
        raise MonitorError(plain(lines[0]))
    return out.stdout


def ask(monitor, pid, timeout):
    """The answer to QUERY of the monitor of process `pid`; MonitorError when none.

    Socket paths are taken as the process sees them: through /proc/PID/root
    and /proc/PID/cwd, so a VMM in a container or another mount namespace is
    reached too."""
    if monitor.protocol == "libvirt":
        return _ask_libvirt(monitor.address, timeout)
    base = "root" if monitor.address.startswith("/") else "cwd"
    conn = _Conn(f"/proc/{pid}/{base}/{monitor.address.lstrip('/')}",
                 time.monotonic() + timeout)
    try:
        return _ask_qmp(conn) if monitor.protocol == "qmp" else _ask_hmp(conn)
    except (ValueError, OSError) as e:   # not JSON, a reset connection
        raise MonitorError(f"bad answer: {plain(e)}") from None
    finally:
        conn.close()
