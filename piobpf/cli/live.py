"""--live: the live screen (sinks.live) over a tracing session, then the whole
run's table on stdout."""

import signal
import sys

from ..run.session import Session
from ..sinks.live import View, held_stderr
from ..sinks.printer import Printer
from .args import run_config


def run(args):
    """The live screen until q, -d or a signal; then the whole run's table."""
    with Session(run_config(args)) as session:
        view = View(session, args.top)
        # A Python handler wakes the stopper's select (its wakeup fd) on a
        # resize; set before curses starts, curses keeps off SIGWINCH.
        previous = signal.signal(signal.SIGWINCH, view.on_resize)
        try:
            with held_stderr():
                view.show()
        finally:
            signal.signal(signal.SIGWINCH, previous)
        printer = Printer(sys.stdout, "table", args.top, session.naming, args.by,
                          sort=args.sort, latency=args.latency)
        printer.emit(view.whole, view.seconds)
    return 1 if printer.failed else 0
