"""Before loading: can this process trace kvm:kvm_pio here, and how?

Each check fails with a TraceError of one line that says what to do.
"""

import os
import platform

from ..core.errors import TraceError, warn

TRACEFS_CANDIDATES = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
RAW_ARGS = ["rw", "port", "size", "count"]     # TP_PROTO order the raw probe reads
MMIO_RAW_ARGS = ["type", "len", "gpa"]          # and the raw kvm_mmio probe's (--mmio)
ATTACH_MODES = ("auto", "raw", "classic")
CAP_SYS_ADMIN, CAP_PERFMON, CAP_BPF = 21, 38, 39


def check_privileges():
    """Loading BPF and attaching to tracepoints needs CAP_BPF+CAP_PERFMON or CAP_SYS_ADMIN."""
    with open("/proc/self/status") as f:
        caps = next(int(line.split()[1], 16) for line in f if line.startswith("CapEff:"))
    has = lambda cap: bool(caps >> cap & 1)
    if not (has(CAP_SYS_ADMIN) or (has(CAP_BPF) and has(CAP_PERFMON))):
        raise TraceError("needs root (CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN) to load "
                         "BPF programs: run it with sudo")


def find_tracefs():
    """The mounted tracefs; mounts it (like `mount -t tracefs`) when it is not."""
    for path in TRACEFS_CANDIDATES:
        if os.path.isdir(os.path.join(path, "events")):
            return path
        if os.path.ismount(path) and not os.access(path, os.R_OK | os.X_OK):
            raise TraceError(f"cannot read tracefs ({path}): needs root or CAP_DAC_READ_SEARCH")
    rc = os.system("mount -t tracefs nodev /sys/kernel/tracing >/dev/null 2>&1")
    if rc == 0 and os.path.isdir("/sys/kernel/tracing/events"):
        warn("mounted tracefs on /sys/kernel/tracing (it was not mounted); it stays mounted")
        return "/sys/kernel/tracing"
    raise TraceError("tracefs is not mounted and cannot be mounted "
                     "(mount -t tracefs nodev /sys/kernel/tracing failed)")


def kvm_pio_fields(tracefs, event="kvm_pio"):
    """The kvm:kvm_pio (or another kvm `event`) record's field names, in
    order, without common_*."""
    path = os.path.join(tracefs, "events", "kvm", event, "format")
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        raise TraceError(f"tracepoint kvm:{event} not found: is the kvm module loaded? "
                         "(modprobe kvm_intel or kvm_amd)") from None
    except OSError as e:
        raise TraceError(f"cannot read {path}: {e.strerror}") from None
    names = []
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("field:"):
            decl = line[len("field:"):].split(";")[0]
            name = decl.split()[-1].split("[")[0]
            if not name.startswith("common_"):
                names.append(name)
    return names


def choose_attach(mode, fields, raw_supported):
    """raw when its argument layout matches the format (checked, not assumed)."""
    raw_ok = raw_supported and fields[:len(RAW_ARGS)] == RAW_ARGS
    if mode == "raw" and not raw_ok:
        raise TraceError("raw tracepoint kvm_pio unusable here (kernel support or argument "
                         f"layout {fields} differs): use --attach classic")
    if mode == "auto":
        return "raw" if raw_ok else "classic"
    return mode


def check_headers():
    """BCC compiles C against kernel headers; say what to install when absent."""
    # BCC also takes headers from the environment, or from the kernel itself
    # (CONFIG_IKHEADERS).
    if os.environ.get("BCC_KERNEL_SOURCE") or os.path.exists("/sys/kernel/kheaders.tar.xz"):
        return
    release = platform.release()
    if not os.path.exists(f"/lib/modules/{release}/build"):
        raise TraceError(f"kernel headers for {release} not found at /lib/modules/{release}/build:"
                         f" install linux-headers-{release} (or run scripts/setup.sh, which"
                         " falls back to the distribution's generic headers)")


def import_bcc():
    try:
        import bcc
    except ImportError:
        raise TraceError("BCC's Python bindings are missing: apt-get install python3-bpfcc "
                         "(Fedora: dnf install python3-bcc); the PyPI package 'bcc' is "
                         "unrelated") from None
    return bcc


def attach_mode(requested, mmio=False):
    """Check everything tracing (with --mmio: kvm_mmio too) needs; returns
    (bcc, "raw" or "classic")."""
    check_privileges()
    tracefs = find_tracefs()
    fields = kvm_pio_fields(tracefs)
    bcc = import_bcc()
    check_headers()
    mode = choose_attach(requested, fields, bcc.BPF.support_raw_tracepoint())
    if mmio:
        kvm_pio_fields(tracefs, "kvm_fast_mmio")
        found = kvm_pio_fields(tracefs, "kvm_mmio")
        if mode == "raw" and found[:len(MMIO_RAW_ARGS)] != MMIO_RAW_ARGS:
            raise TraceError(f"raw tracepoint kvm_mmio unusable here (argument layout {found} "
                             "differs): use --attach classic")
    return bcc, mode
