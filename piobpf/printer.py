"""The printing sink: each report in the chosen format, to stdout or -o FILE."""

import contextlib
import sys
import time

from . import formats
from .errors import CliError, warn
from .report import make_report


def open_output(path):
    """A text stream for -o FILE, else stdout; CliError when unwritable."""
    if not path:
        return contextlib.nullcontext(sys.stdout)
    try:
        return open(path, "w")
    except OSError as e:
        raise CliError(f"cannot write {path}: {e.strerror}")


class Printer:
    """Writes each report in the chosen format; knows what is printed once."""

    def __init__(self, out, fmt, top, naming, by="port"):
        self.out, self.fmt, self.top, self.naming, self.by = out, fmt, top, naming, by
        self.started = time.monotonic()
        self.count = 0

    def emit(self, snapshot, duration, interval=False):
        report = make_report(snapshot, duration, self.naming, self.top, self.by)
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
