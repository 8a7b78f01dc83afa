"""The printing sink: each report in the chosen format, to stdout or -o FILE."""

import contextlib
import sys
import time

from ..core.errors import CliError, warn
from ..rows.report import make_report
from . import formats


@contextlib.contextmanager
def open_output(path):
    """A text stream for -o FILE, else stdout; CliError when unwritable."""
    if not path:
        yield sys.stdout
        return
    try:
        stream = open(path, "w")
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror}")
    try:
        yield stream
    finally:
        try:
            stream.close()
        except OSError:
            pass    # what failed to flush failed at a write before, which said so


class Printer:
    """Writes each report in the chosen format; knows what is printed once.

    When a write fails (a full disk, a gone terminal) the run is not lost:
    one line says so, that report and the rest go to stdout (to stderr when
    stdout was the one failing), `on_failure` is called to end the run, and
    `failed` makes the exit status non-zero."""

    def __init__(self, out, fmt, top, naming, by="port", on_failure=None, sort="events",
                 latency=False, mmio=False):
        self.out, self.fmt, self.top, self.naming, self.by = out, fmt, top, naming, by
        self.sort, self.latency, self.mmio = sort, latency, mmio
        self.on_failure = on_failure
        self.started = time.monotonic()
        self.count = 0
        self.failed = False

    def emit(self, snapshot, duration, interval=False):
        report = make_report(snapshot, duration, self.naming, self.top, self.by, self.sort,
                             self.latency, self.mmio)
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
        self._write(text)
        if report.drops and report.dropped_events:
            warn(f"{formats.dropped_text(report)}: see --map-size and --mmio-map-size")
        elif report.dropped_events:
            warn(f"{report.dropped_events} events dropped: the kernel map was full")

    def _write(self, text):
        try:
            self.out.write(text)
            self.out.flush()
            return
        except BrokenPipeError:
            raise       # `| head`: the reader wanted no more (cli says so)
        except OSError as e:
            if self.failed:
                return  # the rescue stream failed too: the exit status says it
            name = getattr(self.out, "name", "output")
            rescue = sys.stderr if self.out is sys.stdout else sys.stdout
            self.failed, self.out = True, rescue
            where = "stderr" if rescue is sys.stderr else "stdout"
            warn(f"cannot write {name if isinstance(name, str) else 'output'}: "
                 f"{e.strerror or e}; stopping, results on {where}")
        if self.on_failure:
            self.on_failure()
        self._write(text)
