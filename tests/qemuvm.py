"""Real QEMU VMs doing known port I/O, for tests that need QEMU itself (its
monitor, its device map) and not only KVM.

QemuVM boots a tiny BIOS made here (no assembler, as tests/tools/guest.py does):
it gives PCI devices' I/O BARs the ports asked for, reads them, writes a
marker to the serial port and halts. Every port instruction of it exits, so
kvm:kvm_pio sees exactly the events that firmware_events() lists:

- per device: `out` of the BAR's config address to 0xcf8 (4 bytes), the port
  to 0xcfc (4 bytes), the command register's address to 0xcf8 (4 bytes),
  and 1 (I/O space on) to 0xcfc (2 bytes): 2 writes of 0xcf8 and 2 of 0xcfc;
- per device, `reads` times `in eax, dx` of its port (4 bytes each);
- each op, e.g. "r:0x92" or "w:0x80:1:3" (tests/tools/guest.py's syntax, plain in/out
  only; writes write 0), REPS times;
- one byte written to 0x3f8 per byte of the marker.

MultibootVM has SeaBIOS load a multiboot `-kernel` image made here, which
runs in 32-bit protected mode with flat segments: it does MMIO (MmioOp:
reads or writes of an absolute guest-physical address, or of an offset
into the e1000's MMIO BAR, which it finds in PCI configuration space),
then writes the marker and halts.

SeabiosVM boots Debian's SeaBIOS instead, from a legacy virtio-blk disk whose
boot sector writes the marker: real firmware port I/O (PCI set-up, IDE probe,
fw_cfg, port 0x92 ...) whose counts are not ours to choose.

Both start paused (-S) with one of MONITORS; start() resumes the guest
through the monitor and disconnects at once, as a QEMU monitor socket serves
one client at a time and the code under test connects after.

tests/fixtures/mtree-*.txt are this QEMU's `info mtree` of FIXTURE_DEVICES
and of a SeabiosVM, legacy and modern (mtree-modern.txt: its "memory" space
holds the MMIO BARs SeaBIOS placed), as the monitor sends them (\r\n line ends). To write
them anew, as root: PYTHONPATH=. /usr/bin/python3 tests/qemuvm.py
"""

import json
import os
import pwd
import re
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tools.guest import PortOp, parse_op

QEMU = "/usr/bin/qemu-system-x86_64"
MONITORS = ("qmp", "hmp", "chardev-qmp", "chardev-hmp", "none")
MARKER = b"done\n"
SERIAL = 0x3F8
CONFIG_ADDRESS = 0xCF8   # PCI configuration mechanism #1
CONFIG_DATA = 0xCFC
BIOS_SIZE = 0x10000      # QEMU takes -bios images in whole 64 KiB units only
HMP_PROMPT = b"(qemu) "
TIMEOUT = 30


@dataclass(frozen=True)
class PciIo:
    """A PCI device on bus 0 whose I/O BAR the firmware sets to `port`."""
    device: str          # QEMU -device option, without id and addr
    id: str
    slot: int
    bar: int             # index of its I/O BAR
    port: int
    reads: int = 0       # `in eax, dx` of `port`, this many times

    def arg(self):
        return f"{self.device},id={self.id},addr={self.slot:#x}"


def virtio_net(port, reads=0, id="net0", slot=3):
    """Legacy virtio-net: I/O BAR 0 of 32 ports, offset 0 the host features."""
    return PciIo("virtio-net-pci,disable-modern=on,romfile=", id, slot, 0, port, reads)


def e1000(port, reads=0, id="nic1", slot=4):
    """e1000: I/O BAR 1 of 64 ports (BAR 0 is its MMIO, left off)."""
    return PciIo("e1000,romfile=", id, slot, 1, port, reads)


# The firmware VM of tests/fixtures/mtree-firmware.txt.
FIXTURE_DEVICES = (virtio_net(0xC000, reads=1000), e1000(0xD000, reads=300))
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def flatviews(mtree):
    """`info mtree -f` text as its sorted FlatView blocks, less their numbers:
    QEMU lists them in an order that changes from run to run."""
    return sorted(re.split(r"FlatView #\d+\r\n", mtree)[1:])


def _config_address(slot, offset):
    return 0x80000000 | slot << 11 | offset   # bus 0, function 0


def _out(port, value, size):
    """mov (e)ax, value; mov dx, port; out dx, (e)ax"""
    wide = b"\x66" if size == 4 else b""
    return (wide + b"\xb8" + struct.pack("<I" if size == 4 else "<H", value)
            + b"\xba" + struct.pack("<H", port) + wide + b"\xef")


def _loop(op):
    """An op's instruction REPS times, counted in EBP."""
    if op.last is not None or op.strcount:
        raise ValueError("firmware ops are plain in/out: no sweeps, no strings")
    wide = b"\x66" if op.size == 4 else b""
    insn = wide + bytes([(0xEC if op.direction == "read" else 0xEE) + (op.size > 1)])
    body = b"\xba" + struct.pack("<H", op.port) + insn
    code = b"\x66\x31\xc0" if op.direction == "write" else b""    # xor eax, eax
    code += b"\x66\xbd" + struct.pack("<I", op.reps)                # mov ebp, reps
    return code + body + b"\x66\x4d\x75" + struct.pack("<b", -(len(body) + 4))


def _finish(marker):
    """The marker to the serial port, a byte an `out`; then halt for good."""
    code = b"\xba" + struct.pack("<H", SERIAL)
    code += b"".join(b"\xb0" + bytes([c]) + b"\xee" for c in marker)
    return code + b"\xfa\xf4\xeb\xfd"    # cli; hlt; jmp to the hlt


def _ops(devices, ops):
    return [PortOp("read", d.port, 4, d.reads) for d in devices if d.reads] + \
           [parse_op(o) for o in ops]


def firmware(devices=(), ops=(), marker=MARKER):
    """A 64 KiB BIOS image for `-bios`: BARs, then reads, then ops, then the marker."""
    code = bytearray()
    for d in devices:
        code += _out(CONFIG_ADDRESS, _config_address(d.slot, 0x10 + 4 * d.bar), 4)
        code += _out(CONFIG_DATA, d.port, 4)
        code += _out(CONFIG_ADDRESS, _config_address(d.slot, 0x04), 4)
        code += _out(CONFIG_DATA, 1, 2)     # command register: I/O space on
    for op in _ops(devices, ops):
        code += _loop(op)
    code += _finish(marker)
    # The image maps at F000:0000; the reset vector, its last 16 bytes, runs
    # at F000:FFF0 with CS based at 0xffff0000, hence a far jump.
    entry = BIOS_SIZE - 16 - len(code)
    image = bytearray(b"\xff" * BIOS_SIZE)
    image[entry:entry + len(code)] = code
    image[BIOS_SIZE - 16:BIOS_SIZE - 11] = b"\xea" + struct.pack("<HH", entry, 0xF000)
    return bytes(image)


def firmware_events(devices=(), ops=(), marker=MARKER):
    """{(direction, port): (events, bytes)} of a run of firmware(same arguments)."""
    events = {}

    def add(direction, port, n, size):
        e, b = events.get((direction, port), (0, 0))
        events[direction, port] = (e + n, b + n * size)

    for _ in devices:
        add("write", CONFIG_ADDRESS, 2, 4)
        add("write", CONFIG_DATA, 1, 4)
        add("write", CONFIG_DATA, 1, 2)
    for op in _ops(devices, ops):
        add(op.direction, op.port, op.reps, op.size)
    add("write", SERIAL, len(marker), 1)
    return events


def boot_sector(marker=MARKER):
    """A disk's first sector that SeaBIOS boots: the marker, then halt. `cli`
    first, or SeaBIOS's timer interrupt flushes its own serial console output
    into the middle of the marker."""
    return (b"\xfa" + _finish(marker)).ljust(510, b"\0") + b"\x55\xaa"


MULTIBOOT_LOAD = 0x100000    # where QEMU's multiboot loader puts the image
MULTIBOOT_MAGIC, MULTIBOOT_ADDRESSES = 0x1BADB002, 1 << 16   # flag: the header says where


@dataclass(frozen=True)
class MmioOp:
    """REPS accesses of SIZE bytes at `gpa`, or (bar set) at offset `gpa`
    into the e1000's MMIO BAR (at PCI slot `bar`)."""
    direction: str
    gpa: int
    size: int = 4
    reps: int = 1
    bar: int = None


def _mmio_loop(op):
    """mov ecx, reps; again: mov (e)ax|al, [address] (or the reverse); loop again.
    Writes write 0."""
    modrm = b"\x86" + struct.pack("<I", op.gpa) if op.bar is not None else \
        b"\x05" + struct.pack("<I", op.gpa)          # [esi + offset], or [offset]
    opcode = (0x8A if op.direction == "read" else 0x88) + (op.size > 1)
    body = (b"\x66" if op.size == 2 else b"") + bytes([opcode]) + modrm
    code = b"\x31\xc0" if op.direction == "write" else b""      # xor eax, eax
    return code + b"\xb9" + struct.pack("<I", op.reps) + body + b"\xe2" + \
        struct.pack("<b", -(len(body) + 2))


def _find_bar(slot):
    """esi = the e1000's BAR 0 (its MMIO registers), memory decoding on."""
    def out(port, value, size):
        wide = b"\x66" if size == 2 else b""
        return (b"\xb8" + struct.pack("<I", value) + b"\x66\xba" + struct.pack("<H", port)
                + wide + b"\xef")
    return (out(CONFIG_ADDRESS, _config_address(slot, 0x10), 4)
            + b"\x66\xba" + struct.pack("<H", CONFIG_DATA) + b"\xed"      # in eax, dx
            + b"\x25" + struct.pack("<I", 0xFFFFFFF0) + b"\x89\xc6"       # and; mov esi, eax
            + out(CONFIG_ADDRESS, _config_address(slot, 0x04), 4)
            + out(CONFIG_DATA, 0x7, 2))                                 # I/O, memory, master


def multiboot_kernel(ops, marker=MARKER):
    """A multiboot image: MMIO ops, then the marker to the serial port, then halt."""
    code = bytearray()
    for slot in sorted({op.bar for op in ops if op.bar is not None}):
        code += _find_bar(slot)
    for op in ops:
        code += _mmio_loop(op)
    code += b"\x66\xba" + struct.pack("<H", SERIAL)
    code += b"".join(b"\xb0" + bytes([c]) + b"\xee" for c in marker)
    code += b"\xfa\xf4\xeb\xfd"                  # cli; hlt; jmp to the hlt
    end = MULTIBOOT_LOAD + 32 + len(code)
    header = struct.pack("<III", MULTIBOOT_MAGIC, MULTIBOOT_ADDRESSES,
                         -(MULTIBOOT_MAGIC + MULTIBOOT_ADDRESSES) & 0xFFFFFFFF)
    header += struct.pack("<IIIII", MULTIBOOT_LOAD, MULTIBOOT_LOAD, end, end, MULTIBOOT_LOAD + 32)
    return header + bytes(code)


def _monitor_args(monitor, path):
    if monitor == "qmp":
        return ["-qmp", f"unix:{path},server=on,wait=off"]
    if monitor == "hmp":
        return ["-monitor", f"unix:{path},server=on,wait=off"]
    if monitor in ("chardev-qmp", "chardev-hmp"):
        mode = ",mode=control" if monitor == "chardev-qmp" else ""
        return ["-chardev", f"socket,id=mon0,path={path},server=on,wait=off",
                "-mon", f"chardev=mon0{mode}"]
    return ["-monitor", "stdio"]    # stdin and stdout: the harness's socketpair


def _recv_until(sock, ends, what):
    """Bytes from `sock` until ends(bytes so far) is true."""
    sock.settimeout(TIMEOUT)
    data = b""
    while not ends(data):
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            raise AssertionError(f"monitor: no {what} within {TIMEOUT} s; got {data[-300:]!r}")
        if not chunk:
            raise AssertionError(f"monitor closed before {what}; got {data[-300:]!r}")
        data += chunk
    return data


def _qmp_line(sock, buf):
    """The next QMP message that is not an event; returns (message, rest)."""
    while True:
        if b"\n" not in buf:
            buf += _recv_until(sock, lambda d: b"\n" in d, "QMP reply")
        line, _, buf = buf.partition(b"\n")
        message = json.loads(line)
        if "event" not in message:
            return message, buf


def _qmp(sock, commands):
    """Greeting, capabilities, then each (command, arguments); their returns."""
    greeting, buf = _qmp_line(sock, b"")
    assert "QMP" in greeting, greeting
    results = []
    for execute, arguments in [("qmp_capabilities", {})] + commands:
        sock.sendall(json.dumps({"execute": execute, "arguments": arguments}).encode() + b"\n")
        reply, buf = _qmp_line(sock, buf)
        assert "return" in reply, f"QMP {execute}: {reply}"
        results.append(reply["return"])
    return results[1:]


def _hmp(sock, commands, banner):
    """Each command line's output, as QEMU sends it (\\r\\n line ends), less
    its echo and the prompt."""
    prompt = lambda d: d.endswith(HMP_PROMPT)
    if banner:
        _recv_until(sock, prompt, "HMP banner")
    outputs = []
    for line in commands:
        sock.sendall(line.encode() + b"\n")
        # The echo (readline redraws it with escape codes) ends at the first
        # line end; the output runs from there to the next prompt.
        data = _recv_until(sock, prompt, f"HMP prompt after {line!r}")
        outputs.append(data.partition(b"\r\n")[2][:-len(HMP_PROMPT)].decode())
    return outputs


def user_ids(user):
    """(uid, gid) of a user given by name (its primary group) or as (uid, gid)."""
    if isinstance(user, str):
        pw = pwd.getpwnam(user)
        return pw.pw_uid, pw.pw_gid
    return tuple(user)


def as_user(user):
    """The command prefix that runs a program as `user` (no other groups),
    able to open /dev/kvm (root's, mode 600) through an ambient
    CAP_DAC_OVERRIDE: no test needs the device's permissions changed."""
    uid, gid = user_ids(user)
    return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
            "--inh-caps=+dac_override", "--ambient-caps=+dac_override"]


class QemuVM:
    """qemu-system-x86_64 on KVM, paused, booting firmware(devices, ops, marker).

    monitor: one of MONITORS. `qmp` and `hmp` are -qmp/-monitor on a unix
    socket, `chardev-*` the same through -chardev socket and -mon, `none` no
    socket at all (the harness talks to a -monitor on stdio). `extra`: more
    QEMU arguments, paths relative to the VM's folder `dir`; `parent`: where
    that folder is made (the temp dir by default); `user`: who QEMU runs as
    (a name, or (uid, gid)).
    """

    def __init__(self, name, monitor="qmp", devices=(virtio_net(0xC000, 1000),), ops=(),
                 marker=MARKER, extra=(), user=None, parent=None):
        args = ["-bios", "bios.bin", *extra]
        for d in devices:
            args += ["-device", d.arg()]
        self._launch(name, monitor, marker, {"bios.bin": firmware(devices, ops, marker)}, args,
                     user, parent)

    def _launch(self, name, monitor, marker, files, args, user=None, parent=None):
        """Start QEMU in a new temp dir (in `parent`) holding `files`, with
        `args` (paths relative to that dir) besides the common ones; return
        once its monitor answers, which it does only after QEMU has built the
        machine. `user`: QEMU runs as that user, its dir and files that user's."""
        if monitor not in MONITORS:
            raise ValueError(f"monitor {monitor!r}: one of {', '.join(MONITORS)}")
        self.name = name
        self.monitor = monitor
        self.marker = marker
        self.proc = self._stdio = None
        self.dir = tempfile.mkdtemp(prefix="qemuvm-", dir=parent)   # 0700
        self.serial = os.path.join(self.dir, "serial.txt")
        self.log = os.path.join(self.dir, "qemu.log")
        self.monitor_path = None if monitor == "none" else os.path.join(self.dir, "monitor.sock")
        cmd = [QEMU, "-nodefaults", "-nographic", "-machine", "pc,accel=kvm", "-m", "16", "-S",
               "-name", f"guest={name},debug-threads=on", "-serial", f"file:{self.serial}",
               *_monitor_args(monitor, self.monitor_path), *args]
        if user:
            cmd = [*as_user(user), *cmd]
        try:
            for file, data in files.items():
                with open(os.path.join(self.dir, file), "wb") as f:
                    f.write(data)
            if user:
                for path in (self.dir, *(os.path.join(self.dir, f) for f in files)):
                    os.chown(path, *user_ids(user))
            theirs = None
            if monitor == "none":
                self._stdio, theirs = socket.socketpair()
            # QEMU holds its own copies; ours close once it has started.
            with open(self.log, "wb") as log, theirs or open(os.devnull, "rb") as stdin:
                self.proc = subprocess.Popen(cmd, cwd=self.dir, stdin=stdin,
                                             stdout=theirs or log, stderr=log)
            self.pid = self.proc.pid
            self._talk(["info status"], stdio_banner=True)
        except BaseException:
            self.stop()
            raise

    def _wait_for(self, what, probe, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        while not probe():
            if self.proc.poll() is not None:
                raise AssertionError(f"QEMU {self.name} exited ({self.proc.returncode}) "
                                     f"before {what}: {self.log_text()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"QEMU {self.name}: no {what} within {timeout} s; "
                                     f"serial {self.serial_text()!r}; log: {self.log_text()}")
            time.sleep(0.02)

    def _connect(self):
        """A fresh monitor connection, tried until QEMU listens."""
        connected = []

        def attempt():
            sock = socket.socket(socket.AF_UNIX)
            if sock.connect_ex(self.monitor_path) == 0:
                connected.append(sock)
                return True
            sock.close()
            return False

        self._wait_for("monitor connection", attempt)
        return connected[0]

    def _talk(self, commands, stdio_banner=False):
        """Run HMP command lines through this VM's monitor, then disconnect;
        their outputs as QEMU sends them. On stdio there is one conversation
        for the VM's life: its banner comes before the first command only."""
        sock = self._stdio or self._connect()
        try:
            if self.monitor.endswith("qmp"):
                return _qmp(sock, [("human-monitor-command", {"command-line": c})
                                   for c in commands])
            return _hmp(sock, commands, banner=sock is not self._stdio or stdio_banner)
        except (AssertionError, OSError) as e:
            raise AssertionError(f"QEMU {self.name} monitor: {e}; log: {self.log_text()}") \
                from None
        finally:
            if sock is not self._stdio:
                sock.close()

    def human(self, command):
        """One HMP command line's output, e.g. human("info mtree -f -o")."""
        return self._talk([command])[0]

    def start(self):
        """Resume the guest (`cont`) and disconnect from the monitor at once."""
        self._talk(["cont"])

    def wait_done(self, timeout=TIMEOUT):
        """Until the guest has written its marker to the serial port."""
        self._wait_for("marker on the serial port", lambda: self.marker in self.serial_bytes(),
                       timeout)

    def serial_bytes(self):
        try:
            with open(self.serial, "rb") as f:
                return f.read()
        except FileNotFoundError:
            return b""

    def serial_text(self):
        return self.serial_bytes().decode(errors="replace")

    def log_text(self):
        try:
            with open(self.log, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def stop(self):
        """End QEMU (SIGTERM, then SIGKILL if it lingers) and remove its files."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._stdio:
            self._stdio.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


class SeabiosVM(QemuVM):
    """The same VM booting Debian's SeaBIOS (QEMU's default BIOS) instead:
    a legacy virtio-blk disk0 (its boot sector writes the marker), virtio-net
    net0 and e1000 nic1, at slots 2, 3 and 4, their BARs placed by SeaBIOS."""

    def __init__(self, name, monitor="qmp", marker=MARKER, modern=False):
        """modern: virtio-blk and virtio-net as QEMU makes them by default
        (transitional: legacy I/O BAR and modern MMIO BAR with notify
        regions), and 64 MiB."""
        disk = boot_sector(marker).ljust(1 << 20, b"\0")
        legacy = "" if modern else ",disable-modern=on"
        self._launch(name, monitor, marker, {"disk.img": disk}, [
            "-drive", "file=disk.img,format=raw,if=none,id=drive0",
            "-device", f"virtio-blk-pci,id=disk0,addr=0x2,drive=drive0{legacy},bootindex=0",
            "-device", f"virtio-net-pci,romfile=,id=net0,addr=0x3{legacy}",
            "-device", e1000(0).arg(), *(["-m", "64"] if modern else [])])


class MultibootVM(QemuVM):
    """The VM with an e1000 nic1 (PCI slot 4, placed by SeaBIOS), booting
    multiboot_kernel(ops) through SeaBIOS."""

    def __init__(self, name, ops, monitor="qmp", marker=MARKER):
        self._launch(name, monitor, marker, {"kernel.bin": multiboot_kernel(ops, marker)},
                     ["-kernel", "kernel.bin", "-device", e1000(0).arg()])


def write_fixtures():
    with QemuVM("fixture", devices=FIXTURE_DEVICES) as vm:
        vm.start()
        vm.wait_done()
        (FIXTURES / "mtree-firmware.txt").write_bytes(vm.human("info mtree -f -o").encode())
    with SeabiosVM("fixture") as vm:
        vm.start()
        vm.wait_done()
        (FIXTURES / "mtree-seabios.txt").write_bytes(vm.human("info mtree -f -o").encode())
        (FIXTURES / "mtree-noowner.txt").write_bytes(vm.human("info mtree -f").encode())
    with SeabiosVM("fixture", modern=True) as vm:
        vm.start()
        vm.wait_done()
        (FIXTURES / "mtree-modern.txt").write_bytes(vm.human("info mtree -f -o").encode())


if __name__ == "__main__":
    write_fixtures()
