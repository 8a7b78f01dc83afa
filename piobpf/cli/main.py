"""piobpf command line: trace kvm:kvm_pio and print counts per (direction, port).

USAGE: piobpf [-d SECONDS] [-i SECONDS] [-n TOP] [--format table|json|csv|seed] [-o FILE]
       piobpf --prometheus [ADDR:]PORT [...]  serve the counters to Prometheus until stopped
       piobpf --from-perf FILE|- [...]     count a `perf script` capture instead
       piobpf --compare A B [...]          compare two results, exit 0 equal, 1 not, 2 error
"""

import contextlib
import io
import os
import sys

from ..core.errors import CliError, TraceError, warn
from ..naming import names
from ..offline import compare, perfscript, results
from ..sinks.printer import Printer, open_output
from . import live
from .args import naming_config, parse_args, run_config


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


def report_malformed(path, count, first):
    """Malformed kvm_pio lines are never dropped silently."""
    if count:
        warn(f"{path}: {count} malformed kvm_pio line(s) not counted; first at line {first}")


def run_trace(args):
    from ..run.session import Session
    with Session(run_config(args)) as session:
        # Opened after loading: an -o FILE is not emptied by a run that cannot start.
        with open_output(args.output) as stream:
            printer = Printer(stream, args.format, args.top, session.naming, args.by,
                              session.stopper.stop, args.sort, args.latency, args.mmio)
            interval = lambda snap, secs: printer.emit(snap, secs, interval=True)
            session.run(interval, interval if args.interval else printer.emit,
                        progress=bool(args.duration and not args.interval
                                      and sys.stderr.isatty()))
    return 1 if printer.failed or session.failed else 0


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
    naming = names.from_config(naming_config(args))
    with open_output(args.output) as stream:
        Printer(stream, args.format, args.top, naming).emit(parsed.snapshot, parsed.duration_s)
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
    devices = names.from_config(naming_config(args)).devices
    # A JSON result's own names first: a trace named ports by its VMs' maps.
    name_of = lambda port: a.names.get(port) or b.names.get(port) or devices(port)[0]
    comparison = compare.compare(a.snapshot, b.snapshot, name_of)
    with open_output(args.output) as stream:
        stream.write(compare.RENDER[args.format](comparison, *args.compare, top=args.top))
        stream.flush()
    return 0 if comparison.equal else 1


def main(argv=None):
    failed = 1     # --compare fails with 2, like diff(1): 1 means "they differ"
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        if args.compare:
            failed = 2
            return run_compare(args)
        if args.prometheus:
            from . import serve   # prometheus_client is needed only here
            return serve.run(args)
        if args.live:
            return live.run(args)
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
    except OSError as e:        # writing a result of --compare or --from-perf
        warn(f"cannot write {e.filename or 'the output'}: {e.strerror or e}")
        return failed
