"""Loading in a short-lived child: BCC and its LLVM (some 145 MB of the 172
the exporter held with them, 2026-12-06) never enter the process that
keeps counting.

A forked child checks, compiles, loads and attaches the program with BCC,
then hands this process, over a unix socket (SCM_RIGHTS), every fd that
keeps it alive: its maps (by name, with the ctypes types BCC made of their
C structs, as plain data), its programs, and the fds that keep each one
attached (a raw tracepoint's, a classic tracepoint's perf event); then it
leaves with os._exit, so that BCC's exit handlers, which would detach,
never run. Here maps are read and written with bpf(2) (maps.Table), and
detaching closes an attachment's fd.
"""

import ctypes
import json
import os
import socket
import sys

from ..core.errors import TraceError
from . import preflight, program, syscalls
from .maps import Table

MAX_FDS = 253       # SCM_MAX_FD: the fds one message can carry
MESSAGE = 1 << 20   # bytes of the child's message, at most
# ctypes' simple types by their code, to rebuild a type described as data
SIMPLE = {t._type_: t for t in (
    ctypes.c_char, ctypes.c_bool, ctypes.c_byte, ctypes.c_ubyte, ctypes.c_short,
    ctypes.c_ushort, ctypes.c_int, ctypes.c_uint, ctypes.c_long, ctypes.c_ulong,
    ctypes.c_longlong, ctypes.c_ulonglong, ctypes.c_float, ctypes.c_double)}


def describe(ctype):
    """A ctypes type as JSON data (None for none)."""
    if ctype is None:
        return None
    if issubclass(ctype, ctypes.Array):
        return ["array", describe(ctype._type_), ctype._length_]
    if issubclass(ctype, (ctypes.Structure, ctypes.Union)):
        return ["union" if issubclass(ctype, ctypes.Union) else "struct", ctype.__name__,
                [[f[0], describe(f[1]), *f[2:]] for f in ctype._fields_],
                list(getattr(ctype, "_anonymous_", ())), getattr(ctype, "_pack_", 0)]
    return ctype._type_


def rebuild(desc):
    """The ctypes type `describe` described."""
    if desc is None:
        return None
    if isinstance(desc, str):
        return SIMPLE[desc]
    if desc[0] == "array":
        return rebuild(desc[1]) * desc[2]
    kind, name, fields, anonymous, pack = desc
    attrs = dict(_fields_=[(f[0], rebuild(f[1]), *f[2:]) for f in fields],
                 _anonymous_=anonymous)
    if pack:
        attrs["_pack_"] = pack
    return type(name, (ctypes.Union if kind == "union" else ctypes.Structure,), attrs)


class Loaded:
    """A program a child loaded and attached, held by its fds: maps by name
    (`self[name]`, a Table), `programs` {name: fd}, `links` {tracepoint:
    fd} of those attached now (raw ones by name, classic ones as
    "category:name")."""

    def __init__(self, message, fds):
        self.attach_mode, self._tracefs = message["attach"], message["tracefs"]
        self.programs = {name: fds[i] for name, i in message["programs"].items()}
        self.links = {tp.encode(): fds[i] for tp, i in message["links"].items()}
        self._maps = {name: fds[i] for name, (i, _, _) in message["maps"].items()}
        self._types = {name: (key, leaf) for name, (_, key, leaf) in message["maps"].items()}
        self._tables = {}

    def __getitem__(self, name):
        if name not in self._tables:
            key, leaf = self._types[name]
            self._tables[name] = Table(self._maps[name], rebuild(key), rebuild(leaf))
        return self._tables[name]

    def attach(self, tp):
        """Attaches the program BCC named for tracepoint `tp` (bytes) again."""
        if b":" in tp:
            fd = syscalls.tracepoint_open(self._tracefs, tp, self.programs[
                "tracepoint__" + tp.decode().replace(":", "__")])
        else:
            fd = syscalls.raw_tracepoint_open(tp, self.programs["raw_tracepoint__" + tp.decode()])
        self.links[tp] = fd

    def detach(self, tp):
        """Detaches the program from `tp`: its attachment's fd closes."""
        os.close(self.links.pop(tp))

    def close(self):
        for tp in list(self.links):
            self.detach(tp)
        for fd in list(self.programs.values()) + list(self._maps.values()):
            os.close(fd)
        self.programs, self._maps, self._tables = {}, {}, {}


def load(config):
    """The program of a CounterConfig, loaded and attached in a child; a
    TraceError of the child's is raised here, as it said it."""
    parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sys.stderr.flush()      # else the child, which flushes its stderr, would repeat it
    pid = os.fork()
    if pid == 0:                    # never returns
        parent.close()
        _child(child, config)
    child.close()
    try:
        with parent:
            data, fds, flags, _ = socket.recv_fds(parent, MESSAGE, MAX_FDS,
                                                  socket.MSG_CMSG_CLOEXEC)
    finally:
        # Its exit (some 15 ms: it frees LLVM's memory) closes the copies it
        # has of every fd, this process's earlier counters' too (fork copied
        # them): until then, closing one here would not detach.
        status = os.waitpid(pid, 0)[1]
    if not data or flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
        for fd in fds:
            os.close(fd)
        how = (f"killed by signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status)
               else f"exit status {os.waitstatus_to_exitcode(status)}")
        raise TraceError(f"loading the BPF program failed: its loader ended ({how})")
    message = json.loads(data)
    if "error" in message:
        raise TraceError(message["error"])
    return Loaded(message, fds)


def _child(sock, config):
    """Load and attach with BCC, send every fd to the parent, and leave
    without BCC's exit handlers (they would detach)."""
    status = 1
    try:
        try:
            message, fds = _loaded(config)
        except TraceError as e:
            message, fds = {"error": str(e)}, []
        except Exception as e:      # a fault of ours: the parent says it in one line
            message, fds = {"error": f"loading the BPF program failed: "
                                     f"{type(e).__name__}: {e}"}, []
        socket.send_fds(sock, [json.dumps(message).encode()], fds)
        status = 0
    finally:
        sys.stderr.flush()
        os._exit(status)


def _loaded(config):
    """(message, fds): what `Loaded` is made of, of a program BCC loaded here."""
    bcc, attach_mode = preflight.attach_mode(config.attach, config.mmio)
    bpf = program.load(bcc, program.cflags(attach_mode, config.by, config.map_size,
                                           config.pids, config.latency,
                                           config.mmio and config.mmio_map_size))
    fds = []

    def index(fd):
        fds.append(fd)
        return len(fds) - 1

    lib = bcc.lib
    lib.bpf_num_tables.restype, lib.bpf_num_tables.argtypes = ctypes.c_size_t, [ctypes.c_void_p]
    lib.bpf_table_name.restype = ctypes.c_char_p
    lib.bpf_table_name.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    maps = {}
    for i in range(lib.bpf_num_tables(bpf.module)):
        name = lib.bpf_table_name(bpf.module, i)
        table = bpf[name]
        maps[name.decode()] = (index(table.map_fd), describe(getattr(table, "Key", None)),
                               describe(getattr(table, "sLeaf", table.Leaf)))
    programs = {name.decode(): index(f.fd) for name, f in bpf.funcs.items()}
    links = {tp.decode(): index(fd) for tp, fd in list(bpf.raw_tracepoint_fds.items())
             + list(bpf.tracepoint_fds.items())}
    return {"attach": attach_mode, "tracefs": preflight.find_tracefs(), "maps": maps,
            "programs": programs, "links": links}, fds
