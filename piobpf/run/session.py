"""A tracing run's start, clock and end, shared by every front end.

start() loads the counter and the run's naming; Session.run() keeps time:
-d, the -i ticks, a look every second for names and progress, and SIGINT,
SIGTERM to stop; VMs coming and going (the kernel rings at once) are named
and moved out of the kernel map. A sink (printer, exporter, live screen)
gets the snapshots.
"""

import os
import select
import signal
import sys
import time
from dataclasses import dataclass
from typing import Optional

from ..core.errors import warn
from ..core.keys import MODES, describe
from ..core.snapshot import Snapshot
from ..kernel.counter import CounterConfig, PioCounter
from ..naming import names, vms
from ..naming.names import NamingConfig

SECOND = 1.0


class Stopper:
    """SIGINT, SIGTERM and SIGHUP (a closed ssh session) end the run, which
    still reports what it counted; `wait` returns early when one arrives."""

    def __init__(self):
        self.stopped = False
        self._r, w = os.pipe()
        os.set_blocking(w, False)
        signal.set_wakeup_fd(w)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, self._stop)

    def _stop(self, signum, frame):
        self.stop()

    def stop(self):
        self.stopped = True

    def wait(self, seconds, fds=()):
        """Sleep up to `seconds` (inf: until a signal), or until one of `fds`
        (a terminal's keys, the kernel's rings) is readable; returns those that are."""
        if self.stopped or seconds <= 0:
            return []
        timeout = None if seconds == float("inf") else seconds
        ready = select.select([self._r, *fds], [], [], timeout)[0]
        if self._r in ready:
            os.read(self._r, 64)
        return [fd for fd in ready if fd != self._r]


def next_tick(tick, step, now):
    """The first tick after `now` on the grid tick + k*step: no drift, no burst."""
    return tick + step * (1 + int((now - tick) // step))


@dataclass(frozen=True)
class RunConfig:
    """A tracing run: what the kernel counts, where names come from, and
    its clock (-d, -i; None: until stopped, no intervals)."""
    counter: CounterConfig
    naming: NamingConfig
    duration: Optional[float] = None
    interval: Optional[float] = None


class Session:
    """A loaded counter and the names of its keys.

    By VM or vCPU, a VM that exits leaves the kernel map (its final counts
    stay in the counter) and is in `gone` until `expire` forgets it."""

    def __init__(self, config):
        self.config = config
        self.stopper = Stopper()
        # VMs named before the program loads: one that does its port I/O
        # and exits in the meantime still has its name.
        known = vms.vmm_processes() if MODES[config.counter.by].per_vm else None
        # Load first: a missing privilege or header is the one line to show.
        self.counter = PioCounter(config.counter)
        try:
            self.naming = names.from_config(config.naming, self.counter.comms, known,
                                           self.counter.cmdlines)
        except BaseException:
            self.counter.close()
            raise
        self.gone = {}      # Proc -> when its VM was seen to exit (monotonic)
        self.failed = False     # the run loop stopped on an unexpected error

    @property
    def capacity(self):
        """Keys the kernel map can hold."""
        return self.counter.capacity

    @property
    def entries(self):
        """Keys in the kernel map at the last read."""
        return self.counter.entries

    @property
    def mmio_entries(self):
        """With --mmio: (keys in the kernel's MMIO map at the last read, keys it can hold)."""
        return self.counter.mmio_entries

    @property
    def doorbells(self):
        """Fds that turn readable when a VM comes or goes: then `sync`."""
        return self.counter.doorbells

    def sync(self):
        """VMs that came and went: the new ones named at once, while they run;
        the exited ones' counts moved out of the kernel map. Returns the new."""
        came, gone = self.counter.sync() if self.doorbells else ([], [])
        self.naming.arrived(came)
        self._left(gone)
        return came

    def _left(self, procs):
        now = time.monotonic()
        for p in procs:
            self.gone.setdefault(p, now)

    def expire(self, before, together=None):
        """Forget the VMs that exited before `before` (monotonic): their
        counts leave the reads, their names go. With `together(proc)` (say,
        the labels a VM's series have), one is kept as long as a VM that
        runs or is kept has the same."""
        old = {p for p, t in self.gone.items() if t < before}
        if together and old:
            kept = {together(p) for p in self.counter.vms | (self.gone.keys() - old)}
            old = {p for p in old if together(p) not in kept}
        for p in old:
            del self.gone[p]
        if old:
            self.counter.forget(old)
            self.naming.forget(old)

    def read(self):
        """The cumulative counts now, their new VMs named."""
        snap = self.counter.read()
        self.naming.learn(snap)
        return snap

    def look(self, snap=None, progress=False):
        """The look of each second: new VMMs and vCPUs, and what names need
        to read, unless `snap` was read at this very tick. Returns the
        snapshot when there is one of all of the map."""
        self._left(self.naming.tick())
        if snap:
            return snap
        if progress or self.naming.watch == "all":
            return self.read()
        if self.naming.watch:
            self.naming.learn(self.counter.read_keys(self.naming.watch))
        return None

    def run(self, interval, final, progress=False, wait=None):
        """Count until -d, Ctrl-C or SIGTERM; the last read comes after detach.

        `interval(delta, seconds)` gets each -i interval, `final(snapshot,
        seconds)` the whole run (or, with -i, the last partial interval).
        Besides, VMs that come and go are handled at once (`sync`), once a
        second names learn of new VMMs, vCPUs and moved BARs (`look`) and
        progress shows. Exited VMs' counts are kept to the end, or with -i
        until the interval that holds their last events is out.
        `wait(seconds, fds)` sleeps between those (default: stopper.wait)
        and returns which of `fds` (the kernel's rings) turned readable; a
        front end that reads keys meanwhile passes its own, which returns
        early once the stopper is stopped."""
        config = self.config
        start = last_t = time.monotonic()
        what = f"for {config.duration:g} s" if config.duration else "until Ctrl-C"
        counted = describe(config.counter.by, config.counter.pids, config.counter.mmio)
        print(f"Tracing {counted} {what}... Ctrl-C to end.", file=sys.stderr, flush=True)
        never = float("inf")
        deadline = start + config.duration if config.duration else never
        report_at = start + config.interval if config.interval else never
        second_at = start + SECOND if progress or self.naming.ticks else never
        last, slow = Snapshot(), False
        wait = wait or self.stopper.wait
        try:
            while not self.stopper.stopped:
                if wait(min(report_at, second_at, deadline) - time.monotonic(), self.doorbells):
                    self.sync()
                now = time.monotonic()
                if self.stopper.stopped or now >= deadline:
                    break
                snap = None
                if now >= report_at:
                    snap = self.read()
                    interval(snap - last, now - last_t)
                    last, last_t = snap, now
                    self.expire(now)    # their final counts are in `last`: no later delta has them
                    report_at = next_tick(report_at, config.interval, now)
                    took = time.monotonic() - now
                    if took > config.interval and not slow:
                        slow = True
                        warn(f"-i {config.interval:g} is shorter than a read of the kernel map "
                             f"takes here ({took:.2f} s): intervals are that long or longer")
                if now >= second_at:
                    second_at = next_tick(second_at, SECOND, now)
                    snap = self.look(snap, progress)
                    if progress:
                        sys.stderr.write(f"\r{now - start:.0f}/{config.duration:g} s, "
                                         f"{snap.total_events} events ")
                        sys.stderr.flush()
        except OSError:             # the output's own failures: the printer's to report
            raise
        except Exception as e:      # a fault of ours: what was counted is still printed
            warn(f"the run stopped on an unexpected error ({type(e).__name__}: {e}); "
                 "what was counted follows")
            self.failed = True
        self.counter.detach()
        snap, end = self.read(), time.monotonic()
        if config.counter.latency:
            # Exits under way at the end: their windows never close.
            snap.untimed["open_at_end"] = self.counter.open_windows()
        if progress:
            sys.stderr.write("\r\033[K")
        final(snap - last, end - last_t)

    def close(self):
        # A line a naming worker queued after the last look is still said.
        self.naming.report()
        self.counter.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
