"""A tiny real-mode KVM guest that does scripted port I/O and MMIO (tests and demo).

USAGE: python3 tests/tools/guest.py [--irqchip] [--thread-name NAME] [-name NAME]
                                [-qmp SPEC] [-monitor SPEC] [-chardev SPEC] [-mon SPEC]
                                [--wait] [--hold] [--abrupt] [--forever]
                                [--delay ADDR:US]
                                OP [OP ...] [+ OP ...]

A port OP is DIR:PORT[-LAST][:SIZE[:REPS[:STRCOUNT]]]: DIR is r or w, SIZE 1,
2 or 4 (default 1), REPS how often the instruction runs (default 1); with
-LAST the instruction sweeps every port from PORT to LAST once. With STRCOUNT
the instruction is `rep ins`/`rep outs` of STRCOUNT elements instead of a
plain in/out: `rep ins` makes one kvm_pio event of count STRCOUNT, `rep outs`
makes STRCOUNT events of count 1.

An MMIO OP is mr:GPA[:SIZE[:REPS]] (read) or mw:GPA[:SIZE[:REPS]] (write)
of a guest-physical address below 4 GiB, outside the guest's 64 KiB of RAM
and naturally aligned: no memory slot is there, so KVM emulates the access
and, unless an in-kernel device claims the address (the LAPIC at 0xfee00000
with --irqchip), it exits to this process as KVM_EXIT_MMIO, which answers
reads with ANSWER bytes. ew:GPA[:SIZE[:REPS]] writes to an address backed by
a zero-length ioeventfd (a virtio notify): the kernel takes the write and
signals the eventfd, nothing exits. The code stays in real mode; FS is
loaded as a flat 4 GiB segment ("big real mode") to reach any 32-bit GPA.

A `+` starts the ops of another vCPU:
each vCPU runs in its own thread, named by --thread-name with {i} replaced
by the vCPU's index (QEMU's threads are `CPU {i}/KVM`). `-name`, `-qmp`,
`-monitor`, `-chardev` and `-mon` are ignored, but show in the process's
command line as QEMU's do: piobpf finds a monitor there (a test's fake one,
or one that is not this process's own and must not be asked).

Pure Python over the /dev/kvm ioctls: no compiler and no disk image. Ports
that the kernel does not emulate exit to this process, which answers them,
so each such instruction fires kvm:kvm_pio exactly once. Each MMIO write
fires kvm:kvm_mmio once (WRITE); each MMIO read answered here fires it
twice (READ_UNSATISFIED on the way out, READ when KVM_RUN completes it). With --irqchip the
in-kernel PIC and PIT handle ports 0x20/0x21/0xa0/0xa1/0x40-0x43 at full
speed without leaving the kernel.
"""

import argparse
import ctypes
import fcntl
import mmap
import os
import struct
import sys
import threading
import time
from dataclasses import dataclass

# ioctl numbers from <linux/kvm.h> (x86-64).
KVM_GET_API_VERSION = 0xAE00
KVM_CREATE_VM = 0xAE01
KVM_GET_VCPU_MMAP_SIZE = 0xAE04
KVM_CREATE_VCPU = 0xAE41
KVM_SET_USER_MEMORY_REGION = 0x4020AE46
KVM_SET_TSS_ADDR = 0xAE47
KVM_CREATE_IRQCHIP = 0xAE60
KVM_CREATE_PIT2 = 0x4040AE77
KVM_RUN = 0xAE80
KVM_SET_REGS = 0x4090AE82
KVM_GET_SREGS = 0x8138AE83
KVM_SET_SREGS = 0x4138AE84
KVM_IOEVENTFD = 0x4040AE79

KVM_EXIT_IO = 2
KVM_EXIT_HLT = 5
KVM_EXIT_MMIO = 6
KVM_EXIT_INTR = 10
KVM_EXIT_IO_IN = 0

MEM_SIZE = 0x10000
CODE_ADDR = 0x1000
CODE_STRIDE = 0x1000  # each vCPU's code in its own 4 KiB, below the buffer
MAX_VCPUS = 7
BUF_ADDR = 0x8000     # rep ins/outs buffer, up to the end of the 64 KiB segment
STR_MAX_BYTES = 1024  # a rep-ins exit's data must fit in the kvm_run page
DONE_SEGMENT = 0x2000  # linear 0x20000, outside guest memory
DONE_GPA = DONE_SEGMENT << 4
TSS_ADDR = 0x7FFFD000  # KVM_SET_TSS_ADDR: 3 pages of KVM's own memory slot
TSS_END = TSS_ADDR + 3 * 0x1000
FS_OFFSET = 3 * 24     # struct kvm_sregs: cs, ds, es, fs ... of struct kvm_segment
PR_SET_NAME = 15
ANSWER = 0x60          # what every port read returns, as in the seed's capture


@dataclass(frozen=True)
class PortOp:
    direction: str      # "read" or "write", as piobpf reports it
    port: int
    size: int = 1
    reps: int = 1
    strcount: int = 0   # 0: plain in/out; N: rep ins/outs of N elements
    last: int = None    # a sweep: every port from `port` to `last`, once each


@dataclass(frozen=True)
class MmioOp:
    direction: str      # "read" or "write"
    gpa: int
    size: int = 1
    reps: int = 1
    eventfd: bool = False   # ew: a zero-length ioeventfd takes the write in the kernel


MMIO_KINDS = {"mr": ("read", False), "mw": ("write", False), "ew": ("write", True)}


def parse_mmio_op(text):
    """mr|mw|ew:GPA[:SIZE[:REPS]] -> MmioOp; ValueError on bad input."""
    parts = text.split(":")
    if not 2 <= len(parts) <= 4:
        raise ValueError(f"bad op {text!r}: want mr|mw|ew:GPA[:SIZE[:REPS]]")
    gpa, size, reps = [int(p, 0) for p in parts[1:]] + [1, 1][len(parts) - 2:]
    if size not in (1, 2, 4) or reps < 1 or gpa % size:
        raise ValueError(f"bad op {text!r}: size 1/2/4, GPA a multiple of it, reps >= 1")
    # Memory there would take the access without an exit; DONE_GPA ends the run.
    end = gpa + size
    if gpa < MEM_SIZE or end > 1 << 32 or gpa <= DONE_GPA < end or (
            gpa < TSS_END and end > TSS_ADDR):
        raise ValueError(f"bad op {text!r}: GPA {MEM_SIZE:#x}-0xffffffff, not the done marker"
                         f" {DONE_GPA:#x} nor KVM's TSS {TSS_ADDR:#x}-{TSS_END - 1:#x}")
    direction, eventfd = MMIO_KINDS[parts[0]]
    return MmioOp(direction, gpa, size, reps, eventfd)


def parse_op(text):
    """DIR:PORT[-LAST][:SIZE[:REPS[:STRCOUNT]]] -> PortOp, or an MMIO op ->
    MmioOp; ValueError on bad input."""
    parts = text.split(":")
    if parts[0] in MMIO_KINDS:
        return parse_mmio_op(text)
    if not 2 <= len(parts) <= 5 or parts[0] not in ("r", "w"):
        raise ValueError(f"bad op {text!r}: want r|w:PORT[-LAST][:SIZE[:REPS[:STRCOUNT]]]")
    first, _, last = parts[1].partition("-")
    nums = [int(p, 0) for p in [first] + parts[2:]]
    port, size, reps, strcount = nums + [1, 1, 0][len(nums) - 1:]
    last = int(last, 0) if last else None
    if not 0 <= port <= 0xFFFF or size not in (1, 2, 4) or reps < 1 or strcount < 0:
        raise ValueError(f"bad op {text!r}: port 0-0xffff, size 1/2/4, reps >= 1")
    if last is not None and not (port <= last <= 0xFFFF and reps == 1 and not strcount):
        raise ValueError(f"bad op {text!r}: a sweep PORT-LAST runs once, without strings")
    if strcount * size > STR_MAX_BYTES:
        raise ValueError(f"bad op {text!r}: string of {strcount}x{size} bytes is too long")
    return PortOp("read" if parts[0] == "r" else "write", port, size, reps, strcount, last)


def mmio_body(op):
    """mov esi, gpa; mov fs:[esi], al|ax|eax (or the reverse): 32-bit addressing
    (67) through the flat FS (64)."""
    opsize = b"\x66" if op.size == 4 else b""
    opcode = (0x8A if op.direction == "read" else 0x88) + (op.size > 1)
    return b"\x66\xbe" + struct.pack("<I", op.gpa) + b"\x64" + opsize + bytes([0x67, opcode, 0x06])


def assemble(ops, forever=False):
    """16-bit real-mode code: each op as a loop over EBP, then the done marker."""
    code = bytearray()
    for op in ops:
        if isinstance(op, MmioOp):
            code += repeat(mmio_body(op), op.reps)
            continue
        opsize = b"\x66" if op.size == 4 else b""
        if op.strcount:
            # rep insX / rep outsX: ES:DI and DS:SI point at the buffer.
            insn = (b"\xbf" if op.direction == "read" else b"\xbe") + struct.pack("<H", BUF_ADDR)
            insn += b"\xb9" + struct.pack("<H", op.strcount) + b"\xfc" + opsize + b"\xf3"
            insn += bytes([(0x6C if op.direction == "read" else 0x6E) + (op.size > 1)])
        else:
            # in/out al|ax|eax, dx
            insn = opsize + bytes([(0xEC if op.direction == "read" else 0xEE) + (op.size > 1)])
        if op.last is not None:
            # mov ebp, n; mov dx, port; again: in/out; inc dx; dec ebp; jnz again
            code += b"\x66\xbd" + struct.pack("<I", op.last - op.port + 1)
            code += b"\xba" + struct.pack("<H", op.port)
            code += insn + b"\x42\x66\x4d" + b"\x75" + struct.pack("<b", -(len(insn) + 5))
            continue
        code += repeat(b"\xba" + struct.pack("<H", op.port) + insn, op.reps)
    if forever:
        code += b"\xe9" + struct.pack("<h", -(len(code) + 3))
    # Done: a write to unmapped memory exits to user space as MMIO, which
    # kvm_pio does not see. (hlt would not return with the in-kernel irqchip.)
    code += b"\xb8" + struct.pack("<H", DONE_SEGMENT) + b"\x8e\xd8\xa2\x00\x00"
    code += b"\xf4"
    return bytes(code)


def repeat(body, reps):
    """body run reps times: mov ebp, reps; body; dec ebp (66 4d); jnz body.
    `loop` would clash with the CX that rep strings use, so the counter lives in EBP."""
    if reps == 1:
        return body
    return (b"\x66\xbd" + struct.pack("<I", reps) + body + b"\x66\x4d"
            + b"\x75" + struct.pack("<b", -(len(body) + 2 + 2)))


class Vcpu:
    def __init__(self, vm_fd, index, mmap_size, rip):
        self.fd = fcntl.ioctl(vm_fd, KVM_CREATE_VCPU, index)
        self.run = mmap.mmap(self.fd, mmap_size, mmap.MAP_SHARED,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        sregs = bytearray(312)
        fcntl.ioctl(self.fd, KVM_GET_SREGS, sregs)
        struct.pack_into("<QIH", sregs, 0, 0, 0xFFFF, 0)   # cs: base 0, selector 0
        # fs: base 0, limit 4 GiB in pages (g=1): big real mode, as the code
        # never loads FS the hidden limit stays and reaches every 32-bit GPA.
        struct.pack_into("<QI", sregs, FS_OFFSET, 0, 0xFFFFFFFF)
        sregs[FS_OFFSET + 20] = 1
        fcntl.ioctl(self.fd, KVM_SET_SREGS, sregs)
        regs = bytearray(144)
        struct.pack_into("<Q", regs, 16 * 8, rip)
        struct.pack_into("<Q", regs, 17 * 8, 2)            # rflags: reserved bit
        struct.pack_into("<Q", regs, 6 * 8, 0xFFF0)        # rsp
        fcntl.ioctl(self.fd, KVM_SET_REGS, regs)

    def loop(self, delays=None):
        """Run to the done marker; answer every user-space port or MMIO read
        with ANSWER, after sleeping delays[address] seconds where given (a
        slow VMM; ports are below MEM_SIZE, MMIO above, so one dict serves both)."""
        run = self.run
        exits = 0
        while True:
            fcntl.ioctl(self.fd, KVM_RUN, 0)
            reason = struct.unpack_from("<I", run, 8)[0]
            if reason == KVM_EXIT_IO:
                direction, size, port, count, offset = struct.unpack_from("<BBHIQ", run, 32)
                if delays and port in delays:
                    time.sleep(delays[port])
                if direction == KVM_EXIT_IO_IN:
                    run[offset:offset + size * count] = bytes([ANSWER]) * (size * count)
                exits += 1
            elif reason == KVM_EXIT_MMIO:
                # struct kvm_run's mmio: phys_addr, data[8], len, is_write.
                gpa, length, is_write = struct.unpack_from("<Q8xIB", run, 32)
                if gpa == DONE_GPA:
                    return exits
                if delays and gpa in delays:
                    time.sleep(delays[gpa])
                if not is_write:
                    run[40:40 + length] = bytes([ANSWER]) * length
                exits += 1
            elif reason == KVM_EXIT_HLT:
                return exits
            elif reason != KVM_EXIT_INTR:
                raise RuntimeError(f"unexpected KVM exit reason {reason}")


class Guest:
    """One VM; vCPU i runs the assembled ops of programs[i]."""

    def __init__(self, programs, irqchip=False, forever=False):
        if not 1 <= len(programs) <= MAX_VCPUS:
            raise ValueError(f"1 to {MAX_VCPUS} vCPUs")
        self.kvm = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
        if fcntl.ioctl(self.kvm, KVM_GET_API_VERSION, 0) != 12:
            raise RuntimeError("unexpected KVM API version")
        self.vm = fcntl.ioctl(self.kvm, KVM_CREATE_VM, 0)
        fcntl.ioctl(self.vm, KVM_SET_TSS_ADDR, TSS_ADDR)  # unused 3 pages; ioctl() takes a C int
        if irqchip:
            fcntl.ioctl(self.vm, KVM_CREATE_IRQCHIP, 0)
            fcntl.ioctl(self.vm, KVM_CREATE_PIT2, bytes(64))
        self.mem = mmap.mmap(-1, MEM_SIZE, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                             mmap.PROT_READ | mmap.PROT_WRITE)
        addr = ctypes.addressof(ctypes.c_char.from_buffer(self.mem))
        region = struct.pack("<IIQQQ", 0, 0, 0, MEM_SIZE, addr)
        fcntl.ioctl(self.vm, KVM_SET_USER_MEMORY_REGION, region)
        self.eventfds = self.ioeventfds(programs)
        mmap_size = fcntl.ioctl(self.kvm, KVM_GET_VCPU_MMAP_SIZE, 0)
        self.vcpus = []
        for i, ops in enumerate(programs):
            code = assemble(ops, forever)
            if len(code) > CODE_STRIDE:
                raise ValueError(f"vCPU {i}: too many ops")
            at = CODE_ADDR + i * CODE_STRIDE
            self.mem[at:at + len(code)] = code
            self.vcpus.append(Vcpu(self.vm, i, mmap_size, at))


    def ioeventfds(self, programs):
        """A zero-length ioeventfd (any write, any size) per ew GPA, as QEMU
        registers virtio notify addresses; its eventfd, never read, stays open."""
        ops = [op for ops in programs for op in ops if isinstance(op, MmioOp)]
        gpas = {op.gpa for op in ops if op.eventfd}
        if any(op.gpa in gpas for op in ops if not op.eventfd):
            raise ValueError("an ew GPA takes every write there: no mr/mw of it")
        fds = []
        for gpa in sorted(gpas):
            fds.append(os.eventfd(0, os.EFD_CLOEXEC))
            # struct kvm_ioeventfd: datamatch, addr, len 0, fd, flags 0 (MMIO).
            fcntl.ioctl(self.vm, KVM_IOEVENTFD, struct.pack("<QQIiI36x", 0, gpa, 0, fds[-1], 0))
        return fds


def set_thread_name(name):
    """Name the calling thread, as QEMU names its vCPU threads (`CPU 0/KVM`)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)


def parse_delay(text):
    """ADDR:MICROSECONDS -> (port or GPA, seconds)."""
    try:
        addr, us = (int(p, 0) for p in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"bad delay {text!r}: want ADDR:MICROSECONDS")
    return addr, us / 1e6


def split_programs(words):
    """OP ... [+ OP ...] -> one list of PortOps and MmioOps per vCPU."""
    programs = [[]]
    for word in words:
        if word == "+":
            programs.append([])
        else:
            programs[-1].append(parse_op(word))
    if not all(programs):
        raise ValueError("every vCPU needs at least one op")
    return programs


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python3 tests/tools/guest.py",
        description="Run a tiny real-mode KVM guest doing scripted port I/O and MMIO.")
    parser.add_argument("ops", nargs="+", metavar="OP",
                        help="r|w:PORT[-LAST][:SIZE[:REPS[:STRCOUNT]]] or "
                             "mr|mw|ew:GPA[:SIZE[:REPS]], + between vCPUs")
    parser.add_argument("--irqchip", action="store_true",
                        help="in-kernel PIC and PIT (ports 0x20/0x21/0xa0/0xa1/0x40-0x43)")
    parser.add_argument("--thread-name", help="vCPU thread name, {i} the index: 'CPU {i}/KVM'")
    parser.add_argument("-name", help="a VM name in the command line, like QEMU's -name")
    parser.add_argument("-qmp", help="a QMP monitor in the command line (none is served)")
    parser.add_argument("-monitor", help="an HMP monitor in the command line (none is served)")
    parser.add_argument("-chardev", help="a chardev in the command line (none is made)")
    parser.add_argument("-mon", help="a monitor of a chardev in the command line (none is served)")
    parser.add_argument("--wait", action="store_true",
                        help="print 'ready', start the ops after a line on stdin")
    parser.add_argument("--hold", action="store_true",
                        help="after the ops, stay alive until stdin closes")
    parser.add_argument("--forever", action="store_true", help="repeat the ops until killed")
    parser.add_argument("--abrupt", action="store_true",
                        help="after the ops, exit at once, no clean-up: a VMM killed then")
    parser.add_argument("--delay", action="append", type=parse_delay, default=[],
                        metavar="ADDR:MICROSECONDS",
                        help="answer exits on port or GPA ADDR that much later, as a slow VMM would")
    args = parser.parse_args(argv)
    try:
        guest = Guest(split_programs(args.ops), irqchip=args.irqchip, forever=args.forever)
    except (ValueError, OSError, RuntimeError) as e:
        print(f"guest: {e}", file=sys.stderr)
        return 1

    if args.wait:
        print("ready", flush=True)
        sys.stdin.readline()
    exits = [0] * len(guest.vcpus)
    started = time.monotonic()

    def vcpu_thread(i):
        if args.thread_name:
            set_thread_name(args.thread_name.replace("{i}", str(i)))
        exits[i] = guest.vcpus[i].loop(dict(args.delay))

    # Threads of their own, like a VMM's vCPU threads, so they carry names.
    threads = [threading.Thread(target=vcpu_thread, args=(i,)) for i in range(len(exits))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # seconds: how long the vCPUs ran, for throughput figures (scripts/bench.py).
    print(f"done exits={sum(exits)} seconds={time.monotonic() - started:.6f}", flush=True)
    if args.hold:
        sys.stdin.read()
    if args.abrupt:
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
