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

A monitor is spoken to only when it is the VM's own: the command line is the
VMM's word, and any user who may open /dev/kvm writes it. So a socket file
must belong to the VMM's effective uid and be served by the VMM's own pid,
and a libvirt domain's pid file must name the VMM; else nothing is sent
(NotOwn).
"""

import contextlib
import ctypes
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import time
from xml.etree import ElementTree

from . import vms

QUERY = "info mtree -f -o"
LIBVIRT_URI = "qemu:///system"
LIBVIRT_RUN = "/run/libvirt/qemu"   # qemu:///system's state: NAME.pid and NAME.xml per domain
_HMP_PROMPT = b"(qemu) "
_MAX_ANSWER = 4 << 20               # an mtree is tens of KB; never grow without bound


class MonitorError(Exception):
    """The map could not be read: one line saying why."""


class NotOwn(MonitorError):
    """The monitor named on the command line is not the VM's own: not asked."""


def _euid(pid):
    """The effective uid of process `pid` (the owner its new files get)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"Uid:"):
                    return int(line.split()[2])
    except OSError as e:
        raise MonitorError(f"cannot read the VMM's uid: {e.strerror or e}") from None
    raise MonitorError("cannot read the VMM's uid")


def _still(proc, what):
    """NotOwn unless `proc`'s pid still runs that process: a recycled pid is
    another process's, whatever it owns or serves."""
    if vms.start_time(proc.pid) != proc.start:
        raise NotOwn(f"{what}: pid {proc.pid} is not the VMM any more")


_walkers = set()    # pids of path walkers killed at their deadline, not reaped yet
# Filesystems a VMM's socket may live on: local ones, whose lookups never
# wait on another process (a FUSE daemon, a network server). statfs f_type.
LOCAL_FS = {0x01021994: "tmpfs", 0x858458F6: "ramfs", 0xEF53: "ext4", 0x58465342: "xfs",
            0x9123683E: "btrfs", 0x794C7630: "overlay", 0x2FC12FC1: "zfs", 0xF2F52010: "f2fs"}
_libc = ctypes.CDLL(None, use_errno=True)


def _open_own(path, uid, said, timeout):
    """An O_PATH fd of the socket at `path` if it is a socket owned by
    `uid` on a local filesystem; NotOwn if not.

    The path is the VMM's to name, and walking it may hang for good (a FUSE
    or network filesystem that never answers): it is walked in a forked
    child, which hands the fd back (SCM_RIGHTS). A hung child hangs alone,
    holding none of this process's fds (the BPF programs' among them), and
    this query gives up at its deadline. The socket being local, connecting
    to it here waits on no one."""
    for pid in list(_walkers):
        with contextlib.suppress(ChildProcessError):     # another worker's reaped it
            if not os.waitpid(pid, os.WNOHANG)[0]:
                continue
        _walkers.discard(pid)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    child = os.fork()
    if child == 0:      # a few syscalls, then _exit: nothing another thread may hold
        try:
            os.closerange(0, theirs.fileno())
            os.closerange(theirs.fileno() + 1, os.sysconf("SC_OPEN_MAX"))
            socket.send_fds(theirs, [b"S"], [_walk(path, uid, said)])
        except NotOwn as e:
            theirs.send(b"N" + str(e).encode())
        except OSError as e:
            theirs.send(b"E" + (e.strerror or str(e)).encode())
        except BaseException as e:
            theirs.send(b"E" + str(e).encode())
        finally:
            os._exit(0)
    theirs.close()
    try:
        ours.settimeout(timeout)
        message, fds, _, _ = socket.recv_fds(ours, 4096, 1)
    except socket.timeout:
        os.kill(child, signal.SIGKILL)  # it may not die while the walk hangs: reaped later
        _walkers.add(child)
        raise MonitorError(f"no answer in time ({said}: its path did not resolve)") from None
    finally:
        ours.close()
    os.waitpid(child, 0)    # it answered, and only exits now
    if fds:
        return fds[0]
    if message[:1] == b"N":
        raise NotOwn(message[1:].decode(errors="replace"))
    raise MonitorError(f"cannot connect: {message[1:].decode(errors='replace') or 'no reason'}")


def _walk(path, uid, said):
    """In the walker child: the socket at `path`, opened as an O_PATH fd
    without following a last symlink (the inode checked is the inode
    connected to), and checked."""
    folder = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY)
    fd = os.open(os.path.basename(path), os.O_PATH | os.O_NOFOLLOW, dir_fd=folder)
    st = os.fstat(fd)
    if not stat.S_ISSOCK(st.st_mode):
        raise NotOwn(f"{said} is not a socket")
    if st.st_uid != uid:
        raise NotOwn(f"{said} is not the VMM's own (owner uid {st.st_uid}, VMM uid {uid})")
    fs = (ctypes.c_long * 16)()     # struct statfs: f_type first
    if _libc.fstatfs(fd, fs) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    if fs[0] & 0xFFFFFFFF not in LOCAL_FS:
        raise NotOwn(f"{said} is on a filesystem that is not a local one "
                     f"(type {fs[0] & 0xFFFFFFFF:#x})")
    return fd


class _Conn:
    """A client of the VMM's own unix socket, with one deadline for the whole
    conversation.

    The socket is opened as the VMM sees it, through /proc/PID/root or cwd
    (a VMM in a container or another mount namespace is reached too), and
    its owner is checked before connecting (a root-only socket of another
    service is never even connected to): `_open_own`. The listener's pid
    (SO_PEERCRED) is checked after, before a byte; the VMM's start time
    before and after."""

    def __init__(self, address, proc, deadline):
        pid = proc.pid
        self.deadline, self.buf = deadline, b""
        said = f"monitor socket {plain(address)}"
        uid = _euid(pid)
        _still(proc, said)      # the uid read was of the VMM: the owner checked is its
        base = "root" if address.startswith("/") else "cwd"
        path = f"/proc/{pid}/{base}/{address.lstrip('/')}"
        self.sock = None
        try:
            fd = _open_own(path, uid, said, max(deadline - time.monotonic(), 0.001))
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self._timeout()
                self.sock.connect(f"/proc/self/fd/{fd}")    # spares sun_path's 108 bytes
            finally:
                os.close(fd)
            peer = struct.unpack("3i", self.sock.getsockopt(
                socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[0]
            if peer != pid:
                raise NotOwn(f"{said} is not the VMM's own (served by pid {peer})")
            _still(proc, said)  # the peer checked was the VMM
        except OSError as e:
            if self.sock:
                self.sock.close()
            raise MonitorError(f"cannot connect: {e.strerror or e}") from None
        except BaseException:
            if self.sock:
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


def _libvirt_uuid(name, pid):
    """The UUID of libvirt's domain `name` (the command line's -name), when
    libvirt's pid file of that domain names `pid`; NotOwn otherwise. The UUID
    is libvirt's own (its status file), not the command line's."""
    said = f"libvirt domain {plain(name)}"
    if "/" in name or name.startswith("."):
        raise NotOwn(f"{said}: not a name libvirt gives")
    pidfile = f"{LIBVIRT_RUN}/{name}.pid"
    try:
        with open(pidfile, "rb") as f:
            owner = int(f.read().strip() or 0)
    except FileNotFoundError:
        raise NotOwn(f"{said}: no pid file {plain(pidfile)}") from None
    except (OSError, ValueError) as e:
        raise NotOwn(f"{said}: pid file {plain(pidfile)} unreadable: {plain(e)}") from None
    if owner != pid:
        raise NotOwn(f"{said}: its pid file {plain(pidfile)} names pid {owner}, not the VMM")
    try:
        uuid = ElementTree.parse(f"{LIBVIRT_RUN}/{name}.xml").findtext("domain/uuid")
    except (OSError, ElementTree.ParseError) as e:
        raise MonitorError(f"{said}: no status file: {plain(e)}") from None
    if not uuid:
        raise MonitorError(f"{said}: no UUID in its status file")
    return uuid.strip()


def _ask_libvirt(name, proc, timeout):
    domain = _libvirt_uuid(name, proc.pid)
    _still(proc, f"libvirt domain {plain(name)}")  # the pid file named the VMM
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


def ask(monitor, proc, timeout):
    """The answer to QUERY of the monitor of process `proc` (a Proc: a pid
    recycled for another process is not it); MonitorError when none, NotOwn
    (nothing sent) when the monitor is not that process's own."""
    if monitor.protocol == "libvirt":
        return _ask_libvirt(monitor.address, proc, timeout)
    conn = _Conn(monitor.address, proc, time.monotonic() + timeout)
    try:
        return _ask_qmp(conn) if monitor.protocol == "qmp" else _ask_hmp(conn)
    except (ValueError, OSError) as e:   # not JSON, a reset connection
        raise MonitorError(f"bad answer: {plain(e)}") from None
    finally:
        conn.close()
