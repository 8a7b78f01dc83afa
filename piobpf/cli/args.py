"""piobpf's command line: options, their checks, and which go together."""

import argparse
import ipaddress
import sys

from .. import __version__
from ..core.errors import CliError
from ..core.keys import MODES
from ..kernel.counter import CounterConfig
from ..kernel.preflight import ATTACH_MODES
from ..kernel.program import DEFAULT_MAX_ENTRIES, DEFAULT_MMIO_ENTRIES, MAX_PIDS
from ..naming import ioports, vms
from ..naming.names import DEVICE_MAPS, NamingConfig
from ..offline import compare
from ..run.session import RunConfig
from ..sinks import formats

DEFAULT_RETENTION = 300.0   # seconds --prometheus serves an exited VM's final counts

EXAMPLES = """examples:
    piobpf                    # trace until Ctrl-C, then print a table
    piobpf -d 30              # trace for 30 seconds
    piobpf -i 1 -n 10         # top 10 ports every second
    piobpf --live --by vm     # which port is hot now, full screen; q prints the table
    piobpf -d 10 --format json -o pio.json
    piobpf -d 30 --format seed   # the output of the perf + awk recipe
    piobpf -d 10 --by vm      # which VM: per VMM process, its top ports
    piobpf -d 10 --by vcpu -p 4242   # the vCPUs of process 4242 only
    piobpf -d 10 --mmio       # guest MMIO too, per (direction, guest-physical address)
    piobpf --device-map host  # name ports from /proc/ioports only, ask no VM
    piobpf --ioports guest-ioports.txt   # ... or from the guest's ioports
    piobpf --prometheus 0.0.0.0:9435 --by vm   # serve /metrics on all interfaces
    piobpf --prometheus 0.0.0.0:9435 --web.config.file web.yml   # ... over TLS, with auth
    perf script | piobpf --from-perf -    # count a perf capture, no root needed
    setpriv --reuid=piobpf --regid=piobpf --clear-groups \\
      --inh-caps=-all,+bpf,+perfmon,+dac_read_search \\
      --ambient-caps=-all,+bpf,+perfmon,+dac_read_search piobpf   # no root: counts
    piobpf --compare pio_stat piobpf.json  # do perf and piobpf agree? (exit 0)
"""



class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise CliError(f"{message} (see --help)", status=2)


def positive(kind):
    """An argparse type: a positive int or float, with a one-line error."""
    def convert(text):
        try:
            value = kind(text)
        except ValueError:
            value = None
        # `not value > 0` also refuses NaN.
        if value is None or not value > 0 or value == float("inf"):
            raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
        return value
    return convert


# The shortest -i the run loop serves: its ticks are a float clock's
# multiples of the interval, and a read of the map takes longer anyway.
MIN_INTERVAL = 0.001


def interval(text):
    """-i SECONDS: positive, and no shorter than MIN_INTERVAL."""
    value = positive(float)(text)
    if value < MIN_INTERVAL:
        raise argparse.ArgumentTypeError(f"must be at least {MIN_INTERVAL:g} s, got {text!r}")
    return value


def pid_list(text):
    """-p PID[,PID...]: numbers of running processes (not threads)."""
    pids = []
    for part in text.split(","):
        if not part.strip().isdigit() or not 0 < int(part) < 2**22:
            raise argparse.ArgumentTypeError(f"not a PID: {part!r}")
        pid = int(part)
        status = vms.read_proc(f"/proc/{pid}/status")
        if status is None:
            raise argparse.ArgumentTypeError(f"no such process: {pid}")
        tgid = int(status.split(b"\nTgid:", 1)[1].split()[0])
        if tgid != pid:
            raise argparse.ArgumentTypeError(f"{pid} is a thread of process {tgid}: give {tgid}")
        pids.append(pid)
    if len(pids) > MAX_PIDS:
        raise argparse.ArgumentTypeError(f"at most {MAX_PIDS} PIDs")
    return sorted(set(pids))


def listen_address(text):
    """--prometheus [ADDR:]PORT: an IP address (127.0.0.1 when left out) and a port.

    All interfaces only when asked for by name (0.0.0.0, [::]): ":9435" is refused,
    not read as all interfaces the way some exporters do."""
    host, colon, port = text.rpartition(":")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"not a port (1-65535): {port!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise argparse.ArgumentTypeError("an IPv6 address goes in brackets: [ADDR]:PORT")
    elif not colon:
        host = "127.0.0.1"
    elif not host:
        raise argparse.ArgumentTypeError(f"give the address too (0.0.0.0:{port} for all "
                                         f"interfaces), or only the port for 127.0.0.1")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not an IP address: {host!r} (e.g. 9435, 127.0.0.1:9435, 0.0.0.0:9435, [::]:9435)")
    return host, int(port)


def parse_args(argv):
    p = Parser(prog="piobpf", epilog=EXAMPLES,
               formatter_class=argparse.RawDescriptionHelpFormatter,
               description="Count KVM guest port I/O (kvm:kvm_pio) per direction and port "
                           "in the kernel, and name each port's device from the VM's own "
                           "device model (QEMU's monitor), else from /proc/ioports.")
    p.add_argument("-d", "--duration", type=positive(float), metavar="SECONDS",
                   help="trace this long (default: until Ctrl-C)")
    p.add_argument("-i", "--interval", type=interval, metavar="SECONDS",
                   help="print the counts of every interval of this length "
                        "(--live: refresh every SECONDS, default 1)")
    p.add_argument("-n", "--top", type=positive(int), metavar="TOP",
                   help="show only the TOP busiest rows (per VM or vCPU with --by)")
    p.add_argument("--latency", action="store_true",
                   help="also time each exit: how long it keeps its vCPU out of the guest, "
                        "from the end of KVM_RUN to the next (KVM's kvm_fpu tracepoint); "
                        "TIME, AVG, MAX and a histogram per row")
    p.add_argument("--sort", choices=("time", "events"),
                   help="order of rows (default: time with --latency, else events)")
    p.add_argument("--format", choices=formats.FORMATS, default="table",
                   help="output format (default: table)")
    p.add_argument("-o", "--output", metavar="FILE", help="write results to FILE")
    p.add_argument("--device-map", choices=DEVICE_MAPS, default="auto",
                   help="auto (default): name each VM's ports from its QEMU monitor's "
                        "map where it has one (only a monitor that is the VM's own: a "
                        "socket of the VMM's uid served by the VMM, a libvirt domain "
                        "whose pid file names it); host: only from --ioports or "
                        "/proc/ioports")
    p.add_argument("--ioports", metavar="FILE", default=ioports.PROC_IOPORTS,
                   help="name ports without a VM map from this ioports file "
                        "(default: /proc/ioports)")
    p.add_argument("--attach", choices=ATTACH_MODES, default="auto",
                   help="raw or classic tracepoint (default: raw when its layout checks out)")
    p.add_argument("--by", choices=tuple(MODES), default="port",
                   help="count per port (default), also per VM (VMM process) or per vCPU thread")
    p.add_argument("-p", "--pid", type=pid_list, metavar="PID[,PID...]",
                   help="trace only these VMM processes (filtered in the kernel)")
    p.add_argument("--map-size", type=positive(int), default=DEFAULT_MAX_ENTRIES, metavar="N",
                   help=f"with --by vm|vcpu: keys of the kernel's count map (default "
                        f"{DEFAULT_MAX_ENTRIES}); events of keys that do not fit are "
                        "counted as dropped")
    p.add_argument("--mmio", action="store_true",
                   help="also count guest MMIO (kvm:kvm_mmio, kvm:kvm_fast_mmio) per "
                        "direction and guest-physical address, in any mode")
    p.add_argument("--mmio-map-size", type=positive(int), default=DEFAULT_MMIO_ENTRIES,
                   metavar="N",
                   help=f"with --mmio: keys of the kernel's MMIO map (default "
                        f"{DEFAULT_MMIO_ENTRIES}); events of keys that do not fit are "
                        "counted as dropped")
    p.add_argument("--prometheus", type=listen_address, metavar="[ADDR:]PORT",
                   help="serve the cumulative counters at http://ADDR:PORT/metrics until "
                        "stopped (ADDR default 127.0.0.1; 0.0.0.0 or [::] for all interfaces)")
    p.add_argument("--live", action="store_true",
                   help="a full-screen view refreshed in place, busiest ports first (keys: "
                        "q quit, s sort, p pause, r reset, g filter); the whole run's "
                        "table is printed at the end")
    p.add_argument("--web.config.file", dest="web_config_file", metavar="FILE",
                   help="with --prometheus: TLS, client certificates and basic auth, from "
                        "a YAML file in the Prometheus exporter-toolkit's format (as "
                        "node_exporter's); read once at start")
    p.add_argument("--retention", type=positive(float), metavar="SECONDS",
                   help=f"with --prometheus: serve an exited VM's final counts this long, "
                        f"then end its series (default {DEFAULT_RETENTION:g})")
    p.add_argument("--version", action="version", version=f"piobpf {__version__}")
    offline = p.add_mutually_exclusive_group()
    offline.add_argument("--from-perf", metavar="FILE",
                         help="count kvm_pio events in `perf script` text (- for stdin) "
                              "instead of tracing")
    offline.add_argument("--compare", nargs=2, metavar=("A", "B"),
                         help="compare two results (perf script text or piobpf JSON); "
                              "exit 0 if equal, 1 if not, 2 on error")
    args = p.parse_args(argv)
    if args.sort == "time" and not args.latency:
        p.error("--sort time needs --latency")
    args.sort = args.sort or ("time" if args.latency else "events")
    if args.live:
        if args.format != "table" or args.output or args.prometheus or args.from_perf \
                or args.compare:
            p.error("--live draws on the terminal: --format, -o, --prometheus, --from-perf "
                    "and --compare do not go with it")
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            p.error("--live needs a terminal on stdin and stdout")
        args.interval = args.interval or 1.0
    if args.prometheus and (args.duration or args.interval or args.top or args.output
                            or args.format != "table" or args.from_perf or args.compare):
        p.error("--prometheus serves counters until stopped: -d, -i, -n, --format, -o, "
                "--from-perf and --compare do not go with it")
    if (args.from_perf or args.compare) and (
            args.duration or args.interval or args.attach != "auto" or args.pid
            or args.by != "port" or args.map_size != DEFAULT_MAX_ENTRIES
            or args.device_map != "auto" or args.latency or args.mmio
            or args.mmio_map_size != DEFAULT_MMIO_ENTRIES):
        p.error("-d, -i, -p, --by, --map-size, --attach, --device-map, --latency and --mmio "
                "are for tracing, not for --from-perf or --compare (which read MMIO "
                "events and rows as they find them)")
    if args.retention and not args.prometheus:
        p.error("--retention is for --prometheus: a printed run shows an exited VM's "
                "counts to its end")
    args.retention = args.retention or DEFAULT_RETENTION
    if args.web_config_file and not args.prometheus:
        p.error("--web.config.file is for --prometheus")
    if args.map_size > 1 << 24:
        p.error(f"--map-size: at most {1 << 24}")
    if args.mmio_map_size > 1 << 24:
        p.error(f"--mmio-map-size: at most {1 << 24}")
    if args.mmio_map_size != DEFAULT_MMIO_ENTRIES and not args.mmio:
        p.error("--mmio-map-size is for --mmio")
    if args.by == "port" and args.map_size != DEFAULT_MAX_ENTRIES:
        p.error("--map-size is for --by vm|vcpu: by port the map holds every key")
    if args.compare and args.format not in compare.RENDER:
        p.error(f"--compare prints {', '.join(compare.RENDER)}, not {args.format}")
    if args.compare and args.compare.count("-") > 1:
        p.error("only one of A and B can be - (stdin)")
    return args


def naming_config(args):
    return NamingConfig(args.by, args.device_map, args.ioports, tuple(args.pid or ()), args.mmio)


def run_config(args):
    """The typed configuration of a tracing run, built once from the command line."""
    counter = CounterConfig(args.by, tuple(args.pid or ()), args.latency, args.attach,
                            args.map_size, args.mmio, args.mmio_map_size)
    return RunConfig(counter, naming_config(args), args.duration, args.interval)
