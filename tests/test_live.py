"""--live through a real terminal: tmux runs piobpf in a pane, send-keys
types, capture-pane reads the screen, against real guests."""

import os
import re
import shlex
import shutil
import signal
import subprocess
import time

from types import SimpleNamespace

import pytest

from helpers import (ENV, GUEST, MIXED, MIXED_EXPECTED, PY, HeldGuest, assert_one_line, fixed_naming,
                     needs_tracing, piobpf_cmd, run)
from piobpf.core.keys import Key
from piobpf.core.snapshot import Counts, Snapshot
from piobpf.kernel.counter import CounterConfig
from piobpf.naming import ioports
from piobpf.naming.names import NamingConfig
from piobpf.run.session import RunConfig
from piobpf.sinks import live

DEADLINE = 30       # seconds for anything to show on the screen
WIDTH, HEIGHT = 150, 40
needs_tmux = pytest.mark.skipif(shutil.which("tmux") is None,
                                reason="needs tmux (scripts/setup.sh installs it)")

# The pane runs this: stdout stays the terminal (--live needs one), so the
# final table is read from the pane, kept open after; stderr and the exit
# status go to files.
WRAPPER = """out=$1; shift
trap : INT    # Ctrl-C is for piobpf; the wrapper lives on to record its exit status
"$@" 2>"$out/err"
echo $? >"$out/rc"
exec sleep 600
"""
# A row on the screen: DIR PORT DEVICE EVENTS/s TOTAL %, after VM or vCPU
# columns, before TIME and AVG with --latency.
LIVE_ROW = re.compile(r"(read|write)\s+0x([0-9a-f]{4})\s.*?\s(\d+\.\d)\s+(\d+)\s+\d+\.\d"
                      r"(\s+\S+\s+\S+)?$")
# A row of the final table: DIR PORT DEVICE EVENTS % EVENTS/s BYTES.
TABLE_ROW = re.compile(r"(read|write)\s+0x([0-9a-f]{4})\s.*?\s(\d+)\s+\d+\.\d\s+\S+\s+(\d+)$")
HEADER = re.compile(r"^(\d+\.\d) events/s\s+(\d+) events since", re.M)


def live_rows(screen):
    """[(direction, port, events/s, total, line)] top to bottom."""
    return [(m[1], int(m[2], 16), float(m[3]), int(m[4]), line)
            for line in screen.splitlines() if (m := LIVE_ROW.search(line))]


def table_rows(text):
    return {(m[1], int(m[2], 16)): (int(m[3]), int(m[4]))
            for line in text.splitlines() if (m := TABLE_ROW.search(line))}


class Term:
    """`piobpf --live ARGS` in a pane of a tmux server of its own (-S)."""

    def __init__(self, tmp_path):
        self.dir, self.socket = tmp_path, str(tmp_path / "tmux")

    def start(self, *args):
        (self.dir / "tmux.conf").write_text("set -g status off\n")   # the pane is the window
        (self.dir / "wrap.sh").write_text(WRAPPER)
        cmd = ["exec", "bash", str(self.dir / "wrap.sh"), str(self.dir),
               *piobpf_cmd("--live", *args)]
        self.tmux("-f", str(self.dir / "tmux.conf"), "new-session", "-d", "-s", "live",
                  "-x", str(WIDTH), "-y", str(HEIGHT), " ".join(map(shlex.quote, cmd)))
        # The screen shows once the program is attached.
        self.until(lambda s: HEADER.search(s), "the live screen")
        return self

    def tmux(self, *args):
        return subprocess.run(["tmux", "-S", self.socket, *args], env=ENV, capture_output=True,
                              text=True, check=True, timeout=10).stdout

    def keys(self, *keys):
        self.tmux("send-keys", "-t", "live", *keys)

    def type(self, text):
        self.tmux("send-keys", "-t", "live", "-l", text)

    def resize(self, width, height):
        self.tmux("resize-window", "-t", "live", "-x", str(width), "-y", str(height))

    def screen(self):
        return self.tmux("capture-pane", "-p", "-t", "live")

    def until(self, check, what):
        """check(screen) once it is true (polled), else fail showing the screen."""
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            screen = self.screen()
            if (self.dir / "rc").exists():
                pytest.fail(f"piobpf ended waiting for {what}:\n{screen}"
                            + (self.dir / "err").read_text())
            found = check(screen)
            if found:
                return found
            time.sleep(0.1)
        pytest.fail(f"no {what} on the screen within {DEADLINE} s:\n{screen}")

    def piobpf_pid(self):
        wrapper = self.tmux("display", "-p", "-t", "live", "#{pane_pid}").strip()
        return int(open(f"/proc/{wrapper}/task/{wrapper}/children").read().split()[0])

    def end(self):
        """(exit status, what the terminal shows after, stderr) once piobpf has
        exited and the terminal is as before: main screen, cursor shown, keypad off."""
        end = time.monotonic() + DEADLINE
        while time.monotonic() < end:
            # The scrollback too: a table may be longer than the pane.
            shown = self.tmux("capture-pane", "-p", "-S", "-", "-t", "live").strip("\n")
            modes = self.tmux("display", "-p", "-t", "live",
                              "#{alternate_on} #{cursor_flag} #{keypad_flag}").split()
            if (self.dir / "rc").exists() and re.search(r"^\d+ events in ", shown, re.M) \
                    and modes == ["0", "1", "0"]:
                return int((self.dir / "rc").read_text()), shown, (self.dir / "err").read_text()
            time.sleep(0.1)
        pytest.fail(f"no final table and restored terminal within {DEADLINE} s:\n{shown}\n"
                    f"alternate_on, cursor_flag, keypad_flag: {modes}")

    def close(self):
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True)


@pytest.fixture
def term(tmp_path):
    t = Term(tmp_path)
    yield t.start
    t.close()


@pytest.fixture
def web1():
    """A guest writing 0x80 a hundred times per read of 0x3fd, until killed."""
    proc = subprocess.Popen([*GUEST, "--forever", "-name",
                             "guest=web1,debug-threads=on", "w:0x80:1:100", "r:0x3fd:1:1"],
                            env=ENV, stdout=subprocess.DEVNULL)
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("args,word", [
    (["--format", "json"], "--format"), (["-o", "out"], "-o"),
    (["--prometheus", "9435"], "--prometheus"), (["--from-perf", "-"], "--from-perf"),
    (["--compare", "a", "b"], "--compare"),
])
def test_refuses_what_does_not_go_with_it(args, word):
    assert_one_line(run(piobpf_cmd("--live", *args)), 2, "--live", word)


def test_refuses_a_stdout_that_is_not_a_terminal():
    assert_one_line(run(piobpf_cmd("--live")), 2, "--live", "terminal")


def test_rows_count_since_the_baseline_and_mark_devices_as_the_table_does():
    class Maps:    # web1's QEMU tells its map; db2 has no monitor
        def map_of(self, pid, memory=False):
            return ioports.IoPorts([ioports.Range(0x3f8, 0x3ff, "serial", 0)]) if pid == 10 else None

    names = {10: "web1", 11: "db2"}
    naming = fixed_naming({0x3fd: "serial"}, "vm", lambda k: {"pid": k[2], "vm": names[k[2]]},
                          maps=Maps())
    view = live.View(SimpleNamespace(config=RunConfig(CounterConfig(by="vm"), NamingConfig()),
                                     naming=naming))
    first = Snapshot({Key("read", 0x3fd, 10): Counts(50, 50), Key("read", 0x3fd, 11): Counts(30, 30)})
    view.paused = True                          # no screen here: intervals only count
    view.interval(first, 1.0)
    view.base = view.whole                      # what `r` does
    view.interval(Snapshot({Key("read", 0x3fd, 11): Counts(4, 4)}), 2.0)
    frame = view.capture()
    assert [(r.vm, r.events, rate, device) for r, rate, device in frame.rows] == [
        ("db2", 4, 2.0, "serial")]      # one source: no marks
    assert frame.total == 4 and frame.rate == 2.0
    assert frame.footnote == "DEVICE from the host's /proc/ioports"
    assert view.whole.total_events == 84        # the final table's: the whole run
    view.base = Snapshot()
    frame = view.capture()
    assert [(r.vm, r.events, d) for r, _, d in frame.rows] == [("web1", 50, "serial"),
                                                              ("db2", 34, "serial*")]
    assert frame.footnote == ("DEVICE from the VM's own device model (QEMU monitor); "
                              "* the host's /proc/ioports")


@needs_tracing
@needs_tmux
def test_busiest_now_on_top_sort_by_total_and_ctrl_c(term, web1):
    burst = HeldGuest("r:0x3fb:1:30000", name="db2")
    t = term("-p", f"{web1.pid},{burst.pid}", "--by", "vm", "-i", "0.5")
    burst.start()
    burst.wait_done()

    # An interval after the burst: 0x3fb idle with all its events, web1 busy.
    def settled(screen):
        rows = {(d, p): (rate, total) for d, p, rate, total, _ in live_rows(screen)}
        busy = all(rows.get(k, (0,))[0] > 0 for k in [("write", 0x80), ("read", 0x3fd)])
        return rows.get(("read", 0x3fb)) == (0.0, 30000) and busy and live_rows(screen)
    rows = t.until(settled, "a settled interval")
    assert [(d, p) for d, p, *_ in rows] == [("write", 0x80), ("read", 0x3fd), ("read", 0x3fb)]
    rates = [rate for _, _, rate, _, _ in rows]
    assert 50 < rates[0] / rates[1] < 200      # the guest's loop: 100 writes a read
    assert f"web1 [{web1.pid}]" in rows[0][4] and f"db2 [{burst.pid}]" in rows[2][4]

    t.keys("s")
    by_total = t.until(lambda s: "sort: total" in s and live_rows(s), "sort by total")
    totals = [total for _, _, _, total, _ in by_total]
    assert totals == sorted(totals, reverse=True)
    ports = [p for _, p, *_ in by_total]
    assert ports.index(0x3fb) < ports.index(0x3fd)   # more events in all, none now

    t.keys("C-c")
    rc, shown, err = t.end()
    assert rc == 0, err
    assert err.startswith("Tracing kvm:kvm_pio of PID") and "Traceback" not in err
    final = table_rows(shown)
    assert final[("read", 0x3fb)] == (30000, 30000)
    assert {("write", 0x80), ("read", 0x3fd)} < set(final)
    burst.end()


@needs_tracing
@needs_tmux
def test_pause_filter_resize_reset_then_the_exact_table(term):
    guest = HeldGuest(*MIXED)
    t = term("-p", str(guest.pid), "-i", "0.2")
    t.keys("p")
    frozen = t.until(lambda s: "PAUSED" in s and s, "PAUSED")
    guest.start()
    guest.wait_done()
    time.sleep(1)     # intervals pass: counted, not shown
    assert t.screen() == frozen
    t.keys("p")
    expected = {key: events for key, (events, _) in MIXED_EXPECTED.items()}
    rows = t.until(lambda s: {(d, p): total for d, p, _, total, _ in live_rows(s)} == expected
                   and live_rows(s), "the counts made while paused")
    assert rows[0][:2] == ("read", 0x3fd)      # rates are 0 now: the most events first

    t.keys("g")
    t.type("3f8")
    t.keys("Enter")
    t.until(lambda s: [r[:2] for r in live_rows(s)] == [("write", 0x3f8)], "the filtered row")
    t.keys("/", "Enter")      # an empty filter shows all again
    t.until(lambda s: len(live_rows(s)) == len(expected), "all rows")

    t.resize(70, 10)    # header 3, footer 2, column names 2: room for 3 rows
    small = t.until(lambda s: len(s.splitlines()) == 10 and len(live_rows(s)) == 3 and s,
                    "the rows that fit")
    assert max(map(len, small.splitlines())) <= 70 and small.splitlines()[-1].startswith("q quit")
    t.resize(WIDTH, HEIGHT)
    t.until(lambda s: len(live_rows(s)) == len(expected), "all rows again")

    t.keys("r")     # the baseline: nothing counted since
    t.until(lambda s: (m := HEADER.search(s)) and m[2] == "0" and not live_rows(s), "a reset")
    t.keys("q")
    rc, shown, err = t.end()
    assert rc == 0, err
    assert table_rows(shown) == MIXED_EXPECTED      # the whole run, whatever `r` did
    assert shown.splitlines()[0].split() == ["DIR", "PORT", "DEVICE", "EVENTS", "%",
                                             "EVENTS/s", "BYTES"]
    assert f"\n\n{sum(expected.values())} events in " in shown
    guest.end()


@needs_tracing
@needs_tmux
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP])
def test_signals_quit_like_q(term, sig):
    guest = HeldGuest("r:0x60:1:3:16", "+", "w:0x70:1:2:8", thread_name="CPU {i}/KVM")
    t = term("-p", str(guest.pid), "--by", "vcpu")
    guest.start()
    guest.wait_done()
    t.until(lambda s: "vCPU 1" in s and len(live_rows(s)) == 2, "both vCPUs")
    os.kill(t.piobpf_pid(), sig)
    rc, shown, err = t.end()
    assert rc == 0, err
    assert table_rows(shown) == {("read", 0x60): (3, 48), ("write", 0x70): (16, 16)}
    guest.end()


@needs_tracing
@needs_tmux
def test_latency_sorts_by_time_on_screen_and_in_the_table(term):
    # 0x3fb has twenty times the exits, 0x3fd ten times the time (a slow VMM).
    guest = HeldGuest("r:0x3fd:1:1000", "r:0x3fb:1:20000", args=["--delay", "0x3fd:200"])
    t = term("--latency", "-p", str(guest.pid), "-i", "0.5")
    guest.start()
    guest.wait_done()
    t.until(lambda s: {p: total for _, p, _, total, _ in live_rows(s)} == {
        0x3fd: 1000, 0x3fb: 20000}, "both ports counted")
    t.keys("s", "s")
    screen = t.until(lambda s: "sort: time" in s and s, "sort by time")
    assert "TIME" in screen and "AVG" in screen
    assert [p for _, p, *_ in live_rows(screen)] == [0x3fd, 0x3fb]
    t.keys("q")
    rc, shown, err = t.end()
    assert rc == 0, err
    lines = shown.splitlines()
    header = next(l for l in lines if l.startswith("DIR"))
    assert header.split()[-4:] == ["TIME", "TIME%", "AVG", "MAX"]
    rows = [l for l in lines if l.startswith("read")]
    assert [l.split()[1] for l in rows] == ["0x03fd", "0x03fb"]    # by TIME, as -d would
    guest.end()
