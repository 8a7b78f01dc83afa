"""--live: a full-screen view of the busiest ports, refreshed in place every
-i seconds (kvm_stat's way), then the whole run's table on stdout.

Counting is a plain Session's: the view adds up the same interval deltas
that -i prints, so quitting prints exactly what `piobpf -d N` would.
"""

import contextlib
import curses
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

from tabulate import tabulate

from ..core.keys import MMIO, MODES, READ, describe
from ..core.snapshot import Snapshot
from ..rows.report import make_report
from . import formats

SORTS = ("rate", "total", "time")    # time with --latency only
KEYS = "q quit  s sort  p pause  r reset  g filter"
PROMPT = "filter (port, VM or device; Enter applies, empty clears): "
ENTER = (10, 13, curses.KEY_ENTER)
ERASE = (8, 127, curses.KEY_BACKSPACE)
ESCAPE = 27


@dataclass(frozen=True)
class Frame:
    """What the screen shows; kept while paused."""
    clock: str
    rows: list      # (report.Row counted since the baseline, its events/s now, DEVICE cell)
    rate: float     # events/s in the last interval
    total: int      # events since the baseline
    since: str      # the baseline's clock
    dropped: int    # in the whole run
    footnote: str


def key(row):
    return row.direction, row.port, row.pid, row.tid


def matches(row, text):
    """The filter: the port or gpa in hex (3fd, 0x3fd), or part of the VM's or device's name."""
    try:
        if int(text, 16) == int(row.port):   # a Gpa equals no plain int
            return True
    except ValueError:
        pass
    return text.lower() in f"{row.vm or ''}\n{row.device or ''}".lower()


class View:
    """The screen, fed by Session.run: interval() adds each delta to the whole
    run and redraws; wait() reads keys and resizes until the next tick."""

    def __init__(self, session, top=None):
        self.session, self.config, self.top, self.scr = session, session.config.counter, top, None
        self.whole = self.base = self.delta = Snapshot()   # base: at start or the last `r`
        self.seconds = self.delta_s = 0.0
        self.base_clock = time.strftime("%H:%M:%S")
        self.sorts = SORTS if self.config.latency else SORTS[:2]
        self.sort, self.paused, self.filter, self.typing = self.sorts[0], False, "", None
        self.resized = False
        self.frame = self.capture()

    def named(self, snapshot):
        """Named rows; the report's duration goes unused (rates are the last interval's)."""
        return make_report(snapshot, 0.0, self.session.naming, by=self.config.by,
                           latency=self.config.latency, mmio=self.config.mmio)

    def capture(self):
        since = self.named(self.whole - self.base)
        now = {key(r): r.events for r in self.named(self.delta).rows}
        per_s = lambda events: events / self.delta_s if self.delta_s else 0.0
        devices, footnote = formats.device_column(since)
        rows = [(r, per_s(now.get(key(r), 0)), d) for r, d in zip(since.rows, devices)]
        return Frame(time.strftime("%H:%M:%S"), rows, per_s(self.delta.total_events),
                     since.total_events, self.base_clock, self.whole.dropped, footnote)

    def interval(self, delta, seconds):
        self.final(delta, seconds)
        self.delta, self.delta_s = delta, seconds
        if not self.paused:
            self.frame = self.capture()
            self.draw()

    def final(self, delta, seconds):
        """The last interval, up to the read after detaching: counted, not shown."""
        self.whole += delta
        self.seconds += seconds

    def wait(self, seconds, fds=()):
        """Session.run's sleep: keys and resizes are served until it ends, or
        until one of `fds` (the kernel's rings) is readable: those are returned."""
        end = time.monotonic() + seconds
        stopper, keyboard = self.session.stopper, sys.stdin.fileno()
        while not stopper.stopped:
            ready = stopper.wait(end - time.monotonic(), [keyboard, *fds])
            if keyboard in ready:
                self.keys()
            if self.resized:
                self.resized = False
                size = os.get_terminal_size(sys.stdout.fileno())
                curses.resizeterm(size.lines, size.columns)
                self.draw()
            rings = [fd for fd in ready if fd != keyboard]
            if rings or time.monotonic() >= end:
                return rings
        return []

    def keys(self):
        char = self.scr.getch()
        if char == -1:      # stdin readable, yet no key: the terminal hung up
            self.session.stopper.stop()
            return
        while char != -1:
            if self.typing is not None:
                self.type(char)
            elif char == ord("q"):
                self.session.stopper.stop()
            elif char == ord("s"):
                self.sort = self.sorts[(self.sorts.index(self.sort) + 1) % len(self.sorts)]
            elif char == ord("p"):
                self.paused = not self.paused
                self.frame = self.capture()
            elif char == ord("r"):
                self.base, self.base_clock = self.whole, time.strftime("%H:%M:%S")
                if not self.paused:
                    self.frame = self.capture()
            elif char in (ord("g"), ord("/")):
                self.typing = ""
            char = self.scr.getch()
        self.draw()

    def type(self, char):
        """A key on the filter's prompt line."""
        if char in ENTER:
            self.filter, self.typing = self.typing.strip(), None
        elif char == ESCAPE:
            self.typing = None
        elif char in ERASE:
            self.typing = self.typing[:-1]
        elif 32 <= char < 127:
            self.typing += chr(char)

    def put(self, y, text, attr=curses.A_NORMAL):
        height, width = self.scr.getmaxyx()
        if 0 <= y < height:
            try:
                self.scr.addnstr(y, 0, text, width, attr)
            except curses.error:
                pass    # only the bottom-right cell: drawn, but the cursor cannot move past it

    def draw(self):
        f, lead = self.frame, list(MODES[self.config.by].columns)

        def order(x):
            r, rate, _ = x
            first = {"rate": (-rate, -r.events), "total": (-r.events, -rate),
                     "time": (-r.time_ns, -rate)}[self.sort]
            return first + (r.direction != READ, r.space == MMIO, r.port, r.pid or 0, r.tid or 0)
        rows = sorted((x for x in f.rows if not self.filter or matches(x[0], self.filter)),
                      key=order)
        state = [f"sort: {self.sort}"] + (["PAUSED"] if self.paused else []) \
            + ([f"filter: {formats.printable(self.filter)}"] if self.filter else [])
        head = [f"piobpf {f.clock}  {describe(self.config.by, self.config.pids, self.config.mmio)}",
                f"{f.rate:.1f} events/s   {f.total} events since {f.since}   "
                f"{f.dropped} dropped   " + "   ".join(state), ""]
        foot = [f.footnote, KEYS if self.typing is None else PROMPT + self.typing]
        height = self.scr.getmaxyx()[0]
        room = max(0, height - len(head) - len(foot) - 2)   # 2: column names and their rule
        timed = ["TIME", "AVG"] if self.config.latency else []
        spaces = self.config.mmio
        lead += ["SPACE"] * spaces
        body = [[formats.vm_label(r), formats.vcpu_label(r)][:len(lead) - spaces]
                + [r.space] * spaces
                + [r.direction, formats.address(r), device, f"{rate:.1f}", r.events,
                   f"{100.0 * r.events / f.total:.1f}" if f.total else "0.0"]
                + ([formats.duration(r.times.time_ns), formats.duration(formats.avg_ns(r.times))]
                   if timed and r.times.windows else ["-"] * len(timed))
                for r, rate, device in rows[:min(room, self.top or room)]]
        table = tabulate(body, lead + ["DIR", "ADDRESS" if spaces else "PORT", "DEVICE",
                                       "EVENTS/s", "TOTAL", "%"] + timed,
                         tablefmt="simple", disable_numparse=True,
                         # tabulate 0.8 fails on alignments for an empty body
                         colalign=(("left",) * (len(lead) + 3) + ("right",) * (3 + len(timed)))
                         * bool(body)).splitlines()
        self.scr.erase()
        for y, line in enumerate(head + table):
            self.put(y, line, curses.A_BOLD if y == len(head) else curses.A_NORMAL)
        for y, line in enumerate(foot, height - len(foot)):
            self.put(y, line, curses.A_REVERSE if line is foot[-1] else curses.A_NORMAL)
        self.scr.refresh()

    def on_resize(self, signum, frame):
        self.resized = True     # served in wait(), not inside a signal handler

    def show(self):
        """Session.run on the screen."""
        with screen() as self.scr:
            self.draw()
            self.session.run(self.interval, self.final, wait=self.wait)


@contextlib.contextmanager
def screen():
    """The whole terminal, keys one at a time (cbreak: Ctrl-C stays SIGINT)
    without waiting; as it was afterwards."""
    scr = curses.initscr()
    try:
        curses.noecho()
        curses.cbreak()
        curses.set_escdelay(25)   # Esc on the prompt answers at once, not after 1 s
        with contextlib.suppress(curses.error):
            curses.curs_set(0)    # terminals that cannot hide the cursor show it
        scr.keypad(True)
        scr.nodelay(True)
        yield scr
    finally:
        with contextlib.suppress(curses.error):   # a hung-up terminal is past restoring
            curses.endwin()


@contextlib.contextmanager
def held_stderr():
    """The start-up line and warnings would scribble over the screen: they go
    to a file while it shows, then to stderr."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            shutil.copyfileobj(held, sys.stderr.buffer)
            sys.stderr.flush()
