"""piobpf command line: trace kvm:kvm_pio and print counts per (direction, port).

USAGE: piobpf [-d SECONDS] [-i SECONDS] [-n TOP] [--format table|json|csv|seed] [-o FILE]
       piobpf --prometheus [ADDR:]PORT [...]  serve the counters to Prometheus until stopped
       piobpf --from-perf FILE|- [...]     count a `perf script` capture instead
       piobpf --compare A B [...]          compare two results, exit 0 equal, 1 not, 2 error
"""

import argparse
import contextlib
import io
import ipaddress
import os
import select
import signal
import sys
import time

from . import __version__, compare, formats, ioports, names, perfscript, results
from .report import make_report
from .snapshot import Snapshot

EXAMPLES = """examples:
    piobpf                    # trace until Ctrl-C, then print a table
    piobpf -d 30              # trace for 30 seconds
    piobpf -i 1 -n 10         # top 10 ports every second
    piobpf -d 10 --format json -o pio.json
    piobpf -d 30 --format seed   # the output of the perf + awk recipe
    piobpf -d 10 --by vm      # which VM: per VMM process, its top ports
    piobpf -d 10 --by vcpu -p 4242   # the vCPUs of process 4242 only
    piobpf --ioports guest-ioports.txt   # name ports by the guest's map
    piobpf --prometheus 0.0.0.0:9435 --by vm   # serve /metrics on all interfaces
    perf script | piobpf --from-perf -    # count a perf capture, no root needed
    piobpf --compare pio_stat piobpf.json  # do perf and piobpf agree? (exit 0)
"""


class CliError(Exception):
    """Bad input or a failed run: one line on stderr, exit 1 (2 for usage)."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise CliError(f"{message} (see --help)", status=2)


def number(kind):
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


def pid_list(text):
    """-p PID[,PID...]: numbers of running processes (not threads)."""
    from .kernel import MAX_PIDS
    pids = []
    for part in text.split(","):
        if not part.strip().isdigit() or not 0 < int(part) < 2**22:
            raise argparse.ArgumentTypeError(f"not a PID: {part!r}")
        pid = int(part)
        status = names.read_proc(f"/proc/{pid}/status")
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
    from .kernel import ATTACH_MODES, BY_MODES, DEFAULT_MAX_ENTRIES
    p = Parser(prog="piobpf", epilog=EXAMPLES,
               formatter_class=argparse.RawDescriptionHelpFormatter,
               description="Count KVM guest port I/O (kvm:kvm_pio) per direction and port "
                           "in the kernel, and name each port's device from /proc/ioports.")
    p.add_argument("-d", "--duration", type=number(float), metavar="SECONDS",
                   help="trace this long (default: until Ctrl-C)")
    p.add_argument("-i", "--interval", type=number(float), metavar="SECONDS",
                   help="print the counts of every interval of this length")
    p.add_argument("-n", "--top", type=number(int), metavar="TOP",
                   help="show only the TOP busiest rows (per VM or vCPU with --by)")
    p.add_argument("--format", choices=formats.FORMATS, default="table",
                   help="output format (default: table)")
    p.add_argument("-o", "--output", metavar="FILE", help="write results to FILE")
    p.add_argument("--ioports", metavar="FILE", default=ioports.PROC_IOPORTS,
                   help="name ports from this ioports file (default: /proc/ioports)")
    p.add_argument("--attach", choices=ATTACH_MODES, default="auto",
                   help="raw or classic tracepoint (default: raw when its layout checks out)")
    p.add_argument("--by", choices=BY_MODES, default="port",
                   help="count per port (default), also per VM (VMM process) or per vCPU thread")
    p.add_argument("-p", "--pid", type=pid_list, metavar="PID[,PID...]",
                   help="trace only these VMM processes (filtered in the kernel)")
    p.add_argument("--map-size", type=number(int), default=DEFAULT_MAX_ENTRIES, metavar="N",
                   help=f"with --by vm|vcpu: keys of the kernel's count map (default "
                        f"{DEFAULT_MAX_ENTRIES}); events of keys that do not fit are "
                        "counted as dropped")
    p.add_argument("--prometheus", type=listen_address, metavar="[ADDR:]PORT",
                   help="serve the cumulative counters at http://ADDR:PORT/metrics until "
                        "stopped (ADDR default 127.0.0.1; 0.0.0.0 or [::] for all interfaces)")
    p.add_argument("--version", action="version", version=f"piobpf {__version__}")
    offline = p.add_mutually_exclusive_group()
    offline.add_argument("--from-perf", metavar="FILE",
                         help="count kvm_pio events in `perf script` text (- for stdin) "
                              "instead of tracing")
    offline.add_argument("--compare", nargs=2, metavar=("A", "B"),
                         help="compare two results (perf script text or piobpf JSON); "
                              "exit 0 if equal, 1 if not, 2 on error")
    args = p.parse_args(argv)
    if args.prometheus and (args.duration or args.interval or args.top or args.output
                            or args.format != "table" or args.from_perf or args.compare):
        p.error("--prometheus serves counters until stopped: -d, -i, -n, --format, -o, "
                "--from-perf and --compare do not go with it")
    if (args.from_perf or args.compare) and (
            args.duration or args.interval or args.attach != "auto" or args.pid
            or args.by != "port" or args.map_size != DEFAULT_MAX_ENTRIES):
        p.error("-d, -i, -p, --by, --map-size and --attach are for tracing, "
                "not for --from-perf or --compare")
    if args.map_size > 1 << 24:
        p.error(f"--map-size: at most {1 << 24}")
    if args.by == "port" and args.map_size != DEFAULT_MAX_ENTRIES:
        p.error("--map-size is for --by vm|vcpu: by port the map holds every key")
    if args.compare and args.format not in compare.RENDER:
        p.error(f"--compare prints {', '.join(compare.RENDER)}, not {args.format}")
    if args.compare and args.compare.count("-") > 1:
        p.error("only one of A and B can be - (stdin)")
    return args


def warn(message):
    print(f"piobpf: {message}", file=sys.stderr)


def open_input(path):
    """A text stream for FILE or - (stdin); CliError when unreadable."""
    if path == "-":
        # Thread names need not be UTF-8: never fail on a byte.
        return contextlib.nullcontext(io.TextIOWrapper(sys.stdin.buffer, encoding="utf-8",
                                                       errors="replace"))
    try:
        return open(path, encoding="utf-8", errors="replace")
    except OSError as e:
        raise CliError(f"cannot read {path}: {e.strerror}")


def open_output(path):
    """A text stream for -o FILE, else stdout; CliError when unwritable."""
    if not path:
        return contextlib.nullcontext(sys.stdout)
    try:
        return open(path, "w")
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror}")


def report_malformed(path, count, first):
    """Malformed kvm_pio lines are never dropped silently."""
    if count:
        warn(f"{path}: {count} malformed kvm_pio line(s) not counted; first at line {first}")


def load_ioports(path):
    try:
        table = ioports.load(path)
    except OSError as e:
        if path != ioports.PROC_IOPORTS:
            raise CliError(f"cannot read {path}: {e.strerror}")
        warn(f"cannot read {path} ({e.strerror}): DEVICE left empty")
        return ioports.IoPorts([])
    if table.all_zero:
        warn(f"{path} shows every range as 0000-0000 (reading the real ranges needs root):"
             " DEVICE left empty")
    elif table.malformed:
        warn(f"{path}: skipped {table.malformed} line(s) that are not 'start-end : name'")
    return table


class Printer:
    """Writes each report in the chosen format; knows what is printed once."""

    def __init__(self, out, fmt, top, name_of, by="port", label=None):
        self.out, self.fmt, self.top, self.name_of = out, fmt, top, name_of
        self.by, self.label = by, label
        self.started = time.monotonic()
        self.count = 0

    def emit(self, snapshot, duration, interval=False):
        report = make_report(snapshot, duration, self.name_of, self.top, self.by, self.label)
        if self.fmt == "json":
            text = formats.json_line(report)
        elif self.fmt == "csv":
            elapsed = time.monotonic() - self.started if interval else None
            text = formats.csv_text(report, header=self.count == 0, elapsed=elapsed)
        elif self.fmt == "seed":
            text = ("\n" if self.count else "") + formats.seed(report)
        else:
            stamp = time.strftime("[%H:%M:%S]\n") if interval else ""
            text = ("\n" if self.count else "") + stamp + formats.table(report)
        self.count += 1
        self.out.write(text)
        self.out.flush()
        if report.dropped_events:
            warn(f"{report.dropped_events} events dropped: the kernel map was full")


class Stopper:
    """SIGINT/SIGTERM end the run; `wait` returns early when one arrives."""

    def __init__(self):
        self.stopped = False
        self._r, w = os.pipe()
        os.set_blocking(w, False)
        signal.set_wakeup_fd(w)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._stop)

    def _stop(self, signum, frame):
        self.stopped = True

    def wait(self, seconds):
        """Sleep up to `seconds` (inf: until a signal)."""
        if not self.stopped and seconds > 0:
            timeout = None if seconds == float("inf") else seconds
            if select.select([self._r], [], [], timeout)[0]:
                os.read(self._r, 64)


def traced(args):
    """What is counted, for the start-up line: kvm:kvm_pio of PID 1 per VM and (direction, port)."""
    of = f" of PID {', '.join(map(str, args.pid))}" if args.pid else ""
    per = {"port": "", "vm": "VM and ", "vcpu": "vCPU and "}[args.by]
    return f"kvm:kvm_pio{of} per {per}(direction, port)"


def next_tick(tick, step, now):
    """The first tick after `now` on the grid tick + k*step: no drift, no burst."""
    return tick + step * (1 + int((now - tick) // step))


def trace(counter, args, printer, stopper, labeler=None):
    """Count until -d, Ctrl-C or SIGTERM; the last read comes after detach.

    Besides each -i interval, the map is read every second for progress on a
    terminal and, with a labeler (--by vm|vcpu), to name VMs while they run."""
    start = last_t = time.monotonic()
    what = f"for {args.duration:g} s" if args.duration else "until Ctrl-C"
    print(f"Tracing {traced(args)} {what}... Ctrl-C to end.", file=sys.stderr, flush=True)
    progress = args.duration and not args.interval and sys.stderr.isatty()
    never = float("inf")
    deadline = start + args.duration if args.duration else never
    report_at = start + args.interval if args.interval else never
    second_at = start + 1.0 if progress or labeler else never
    last = Snapshot()
    while not stopper.stopped:
        stopper.wait(min(report_at, second_at, deadline) - time.monotonic())
        now = time.monotonic()
        if stopper.stopped or now >= deadline:
            break
        if now < min(report_at, second_at):
            continue
        snap = counter.read()
        if labeler:
            labeler.learn(snap)
        if now >= report_at:
            printer.emit(snap - last, now - last_t, interval=True)
            last, last_t = snap, now
            report_at = next_tick(report_at, args.interval, now)
        if now >= second_at:
            second_at = next_tick(second_at, 1.0, now)
            if progress:
                sys.stderr.write(f"\r{now - start:.0f}/{args.duration:g} s, "
                                 f"{snap.total_events} events ")
                sys.stderr.flush()
    counter.detach()
    final, end = counter.read(), time.monotonic()
    if progress:
        sys.stderr.write("\r\033[K")
    if args.interval:
        printer.emit(final - last, end - last_t, interval=True)
    else:
        printer.emit(final, end - start)


def run_trace(args):
    from .kernel import PioCounter
    stopper = Stopper()
    # Load first: a missing privilege or header is the one line to show, and
    # an -o FILE is not emptied by a run that cannot start.
    counter = PioCounter(attach=args.attach, max_entries=args.map_size, by=args.by,
                         pids=args.pid or ())
    try:
        with open_output(args.output) as stream:
            name_of = load_ioports(args.ioports).lookup
            labeler = names.labeler(args.by, counter.comms)
            printer = Printer(stream, args.format, args.top, name_of, args.by, labeler)
            trace(counter, args, printer, stopper, labeler)
    finally:
        counter.close()
    return 0


def load_input(path, load):
    """load(stream) of FILE or -; CliError naming the file when it cannot be read
    or does not hold what `load` reads."""
    with open_input(path) as f:
        try:
            return load(f)
        except ValueError as e:
            raise CliError(f"{path}: {e}")
        except OSError as e:
            raise CliError(f"cannot read {path}: {e.strerror}")


def run_from_perf(args):
    parsed = load_input(args.from_perf, perfscript.parse)
    report_malformed(args.from_perf, parsed.malformed, parsed.first_malformed)
    name_of = load_ioports(args.ioports).lookup
    with open_output(args.output) as stream:
        Printer(stream, args.format, args.top, name_of).emit(parsed.snapshot, parsed.duration_s)
    return 0


def run_compare(args):
    loaded = []
    for path in args.compare:
        result = load_input(path, results.load)
        report_malformed(path, result.malformed, result.first_malformed)
        if result.snapshot.dropped:
            warn(f"{path}: {result.snapshot.dropped} events dropped (the kernel map was full):"
                 " the results cannot be equal")
        loaded.append(result)
    a, b = loaded
    table = load_ioports(args.ioports)
    # Names from /proc/ioports first; a JSON result's own names where it has none.
    name_of = lambda port: table.lookup(port) or a.names.get(port) or b.names.get(port)
    comparison = compare.compare(a.snapshot, b.snapshot, name_of)
    with open_output(args.output) as stream:
        stream.write(compare.RENDER[args.format](comparison, *args.compare, top=args.top))
    return 0 if comparison.equal else 1


def main(argv=None):
    from .kernel import TraceError
    failed = 1     # --compare fails with 2, like diff(1): 1 means "they differ"
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        if args.compare:
            failed = 2
            return run_compare(args)
        if args.prometheus:
            from . import exporter   # prometheus_client is needed only here
            return exporter.run(args)
        return run_from_perf(args) if args.from_perf else run_trace(args)
    except CliError as e:
        warn(e)
        return max(e.status, failed)
    except TraceError as e:
        warn(e)
        return failed
    except KeyboardInterrupt:   # Ctrl-C where no results are pending (reading input)
        warn("interrupted")
        return 130
    except BrokenPipeError:
        # Whoever read our output went away (`| head`): say so once, quietly exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        warn("output closed before all results were written (broken pipe)")
        return failed
