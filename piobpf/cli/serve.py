"""--prometheus: serve a tracing session's counters at /metrics until stopped."""

import contextlib
import sys
import threading

from ..core.keys import describe
from ..run.session import Session
from ..sinks.exporter import PioCollector, listen, where
from .args import run_config


def run(args):
    """Serve until SIGINT/SIGTERM/SIGHUP, then stop serving, then detach the program.

    A web config is read before the program loads, so that a bad one costs
    nothing; SIGHUP ends the run as it does any other (a closed ssh session):
    a changed web config takes effect at the next start."""
    host, port = args.prometheus
    web = None
    if args.web_config_file:
        from ..sinks import webconfig   # bcrypt and yaml are needed only here
        web = webconfig.load(args.web_config_file)
    with contextlib.ExitStack() as undo:   # undone in reverse: server, collector, session
        session = undo.enter_context(Session(run_config(args)))
        collector = PioCollector(session, args.retention, args.latency, args.mmio)
        undo.callback(collector.close)
        server = undo.enter_context(listen(host, port, collector, web))
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            url = f"{web.scheme if web else 'http'}://{where(host, port)}/metrics"
            print(f"Serving {describe(args.by, args.pid, args.mmio)} at {url}... Ctrl-C to end.",
                  file=sys.stderr, flush=True)
            ticks = session.naming.ticks or bool(session.doorbells)
            while not session.stopper.stopped:
                # Scrapes may be minutes apart: a VM that comes is named at
                # once (the kernel rings), one that goes is forgotten after
                # the retention, and every second a look finds new VMMs.
                session.stopper.wait(1.0 if ticks else float("inf"), session.doorbells)
                if ticks:
                    collector.look()
        finally:
            server.shutdown()
    return 0
