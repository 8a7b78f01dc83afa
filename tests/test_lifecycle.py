"""Every VM named and counted right however VMs come and go: short-lived VMs,
VMs gone before they are looked at, recycled pids, a kernel map smaller than
all the keys a run sees (exited VMs leave it), and the exporter's retention.

Real guest processes on the real tracepoint. Churn runs can not filter with
-p (their pids are not known in advance): guests of others on the host show
up (conftest's neighbour VM always does), and are left out of every
assertion by pid but the map's size; where they crowd the map, this test's
VMs lose only what is counted dropped.
"""

import json
import shutil
import signal
import subprocess
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor

import pytest

from helpers import ENV, GUEST, PY, HeldGuest, Traced, needs_tracing
from piobpf.core.keys import Proc
from piobpf.naming import devices
from test_names import fake_proc
from tools import guest
from tools.memory import rss_kb
from test_prometheus import (Exporter, get, prometheus, running, targets,  # noqa: F401
                             wait_for)

# Room for others' VMs on the host (conftest's neighbour has a few dozen keys,
# another suite's churn as many again) beside this test's, but not for the
# churn's 600 keys: they fit only if exited VMs leave the map.
MAP_SIZE = "512"
HOLD = 0.1          # seconds a churn guest lives after its last exit
WORKERS = 6         # churn guests alive at once
RETENTION = 3       # seconds the churn's exporter serves an exited VM


class Drained(Traced):
    """A Traced whose output is read as it comes: -i runs print more than a
    pipe holds, and a blocked write would hold up the run."""

    def __init__(self, *args):
        super().__init__(*args)
        self.lines = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout))
        self._reader.start()

    def stop(self, sig=signal.SIGINT):
        self.proc.send_signal(sig)
        self._reader.join(timeout=60)
        err = self.proc.stderr.read()
        return self.proc.wait(timeout=60), "".join(self.lines), err


def guest_ops(i):
    """Guest i's port I/O, and what it makes {(direction, port): (events, bytes)}."""
    reads, writes = 20 + i, 1 + i % 7
    return ([f"r:0x3fd:1:{reads}", f"w:0x3f8:2:{writes}"],
            {("read", 0x3fd): (reads, reads), ("write", 0x3f8): (writes, 2 * writes)})


def life(i, prefix):
    """Guest i of a churn, start to reaped: (pid, name, expected, exit time)."""
    ops, expected = guest_ops(i)
    name = f"{prefix}-{i}"
    proc = subprocess.Popen([*GUEST, "-name", f"guest={name}", "--hold", *ops],
                            env=ENV, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    line = proc.stdout.readline()
    time.sleep(HOLD)
    proc.stdin.close()
    assert proc.wait(timeout=60) == 0 and line.startswith("done"), line
    return proc.pid, name, expected, time.time()


def churn(count, prefix):
    """`count` short-lived guests, WORKERS at a time; their lives as `life` says."""
    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(lambda i: life(i, prefix), range(count)))


def groups(rows):
    """{(pid, vm): {(direction, port): (events, bytes)}} of JSON rows."""
    found = {}
    for r in rows:
        found.setdefault((r["pid"], r["vm"]), {})[r["direction"], r["port"]] = (r["events"],
                                                                                r["bytes"])
    return found


def metrics(url):
    """{(name, labels as sorted tuple): value} of an exporter's page."""
    found = {}
    for line in get(url).splitlines():
        if line and not line.startswith("#"):
            head, value = line.rsplit(" ", 1)
            name, _, labels = head.partition("{")
            pairs = tuple(sorted(tuple(p.split("=", 1)) for p in labels.rstrip("}").split(",")
                                 if p)) if labels else ()
            found[name, tuple((k, v.strip('"')) for k, v in pairs)] = float(value)
    return found


@needs_tracing
def test_churn_every_vm_named_and_counted_exactly(running):
    printer = Traced("--format", "json", "--by", "vm", "--map-size", MAP_SIZE)
    intervals = Drained("--format", "json", "--by", "vm", "--map-size", MAP_SIZE, "-i", "0.5")
    exporter = Exporter(running, "--by", "vm", "--map-size", MAP_SIZE, "--retention", "1")
    # Warm up what the exporter allocates once (its first VMs, evictions, scrapes).
    warm = churn(20, "warm")
    time.sleep(2)
    get(exporter.url)
    before = rss_kb(exporter.proc.pid)
    lives = churn(300, "churn")
    time.sleep(2)       # past the retention: the exporter forgets them all
    page = metrics(exporter.url)
    after = rss_kb(exporter.proc.pid)
    outs = [t.stop() for t in (printer, intervals)]
    assert exporter.stop()[0] == 0
    for rc, out, err in outs:
        assert rc == 0, err

    total = json.loads(outs[0][1])
    summed = {}      # the intervals, added up
    for line in outs[1][1].splitlines():
        for key, counts in groups(json.loads(line)["rows"]).items():
            for port, (e, b) in counts.items():
                e0, b0 = summed.setdefault(key, {}).get(port, (0, 0))
                summed[key][port] = (e0 + e, b0 + b)
    mine = {pid for pid, _, _, _ in warm + lives}
    named = {(pid, name) for pid, name, _, _ in warm + lives}
    want = {(pid, name): expected for pid, name, expected, _ in lives}
    crowded = len([r for r in total["rows"] if r["pid"] not in mine]) > int(MAP_SIZE) // 2
    for found, dropped in ((groups(total["rows"]), total["dropped_events"]),
                           (summed, sum(json.loads(l)["dropped_events"]
                                        for l in outs[1][1].splitlines()))):
        # Each process under its own name, nothing unnamed.
        assert {key for key in found if key[0] in mine} <= named
        got = {key: found.get(key, {}) for key in want}
        if not crowded:     # exact
            assert (got, dropped) == (want, 0)
        else:   # others' VMs on the host filled the map: ours lost only what was dropped
            assert all(got[key].get(port, (0, 0)) <= counts for key in want
                       for port, counts in want[key].items())
            lost = sum(e for counts in want.values() for e, _ in counts.values()) - sum(
                e for counts in got.values() for e, _ in counts.values())
            assert 0 <= lost <= dropped
    # The kernel map holds the keys of running VMs only (others' on the
    # host, each a series), and the exporter has forgotten all of these.
    assert page["piobpf_map_entries", ()] <= len([k for k in page if k[0] ==
                                                  "piobpf_pio_events_total"])
    assert not [k for k in page if (int(dict(k[1]).get("pid", 0)), dict(k[1]).get("vm")) in named]
    assert after - before < 4096, (before, after)       # kB


def query(url, promql):
    """The result of a Prometheus instant query."""
    q = urllib.parse.urlencode({"query": promql})
    return json.loads(get(f"{url}/api/v1/query?{q}"))["data"]["result"]


@needs_tracing
def test_prometheus_during_churn(running, prometheus):
    live = [HeldGuest(*guest_ops(i)[0], name=f"live-{i}") for i in (1, 2)]
    running += [g.proc for g in live]
    exporter = Exporter(running, "--by", "vm", "--map-size", MAP_SIZE,
                        "--retention", str(RETENTION))
    url = prometheus(exporter.target)

    def scraped(after):
        wait_for("a scrape", lambda: [r for r in query(url, "timestamp(piobpf_map_entries)")
                                      if float(r["value"][1]) > after])
    scraped(time.time())    # scraping: every second from now on
    for g in live:
        g.start()
    for g in live:
        g.wait_done()
    lives = churn(60, "scraped")
    scraped(time.time() + RETENTION + 1)    # the last one's retention is over
    series = query(url, "piobpf_pio_events_total[10m]")
    # Keyed by pid too: another suite on the host may run VMs of these names.
    now = {(int(r["metric"]["pid"]), r["metric"]["vm"], r["metric"]["port"]): r["value"][1]
           for r in query(url, "piobpf_pio_events_total")}
    for g in live:
        g.end()
    assert exporter.stop()[0] == 0

    def samples(pid, name, port):
        found = [r["values"] for r in series if (
            r["metric"]["pid"], r["metric"]["vm"], r["metric"]["port"]) == (str(pid), name, port)]
        assert len(found) == 1, (name, port, found)
        return [(ts, float(v)) for ts, v in found[0]]

    # No counter of any VM goes backwards within its series.
    for r in series:
        values = [float(v) for _, v in r["values"]]
        assert values == sorted(values), r["metric"]
    for pid, name, expected, exited in lives:
        for (_, port), (events, _) in expected.items():
            got = samples(pid, name, f"{port:#x}")
            assert got[-1][1] == events
            assert got[-1][0] > exited, (name, "ended before its process did")
            assert (pid, name, f"{port:#x}") not in now, (name, "not ended after the retention")
    for i, g in zip((1, 2), live):
        for (_, port), (events, _) in guest_ops(i)[1].items():
            assert float(now[g.pid, f"live-{i}", f"{port:#x}"]) == events


@needs_tracing
def test_vms_started_before_piobpf_are_named_though_gone_at_once():
    # Each does its port I/O as soon as piobpf runs, then exits right away.
    guests = [subprocess.Popen([*GUEST, "-name", f"guest=early-{i}", "--wait",
                                *guest_ops(i)[0]], env=ENV, text=True, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE) for i in (1, 2)]
    for g in guests:
        assert g.stdout.readline() == "ready\n"
    t = Traced("--format", "json", "--by", "vm", "-p", ",".join(str(g.pid) for g in guests))
    for g in guests:
        g.stdin.write("go\n")
        g.stdin.flush()
    for g in guests:
        assert g.wait(timeout=60) == 0
    rc, out, err = t.stop()
    assert rc == 0, err
    assert groups(json.loads(out)["rows"]) == {
        (g.pid, f"early-{i}"): guest_ops(i)[1] for i, g in zip((1, 2), guests)}


def spawn_with_pid(pid, *args):
    """A guest process that gets `pid`, free now: the kernel's next pid set
    just below it in the initial pid namespace, whose pids BPF sees (in a
    child namespace it would see other pids). Another process of the host
    may take it first: then None."""
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(pid - 1))
    proc = subprocess.Popen([*GUEST, *args], env=ENV, stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL)
    if proc.pid == pid:
        return proc
    proc.kill()
    proc.wait()
    return None


@needs_tracing
@pytest.mark.parametrize("by", ["port", "vm"])
def test_p_never_traces_the_next_process_given_its_pid(by):
    # -p names a process: once its last thread has exited, a process given
    # its pid is another one, and is not counted (its port I/O and MMIO).
    for _ in range(20):
        old = HeldGuest("mr:0xfebc0000:4:30", "r:0x3fd:1:5")
        t = Traced("--mmio", "--format", "json", "--by", by, "-p", str(old.pid))
        old.start()
        old.wait_done()
        old.end()
        new = spawn_with_pid(old.pid, "mr:0xfebc0000:4:300", "r:0x3fd:1:50")
        if new:
            assert new.wait(timeout=60) == 0
            break
        t.stop()
    rc, out, err = t.stop()
    assert rc == 0, err
    assert new, "other processes took every pid this test freed"
    rows = json.loads(out)["rows"]
    assert {(r["space"], r["direction"], r.get("gpa", r.get("port"))): r["events"]
            for r in rows} == {("mmio", "read", 0xfebc0000): 30, ("io", "read", 0x3fd): 5,
                               ("mmio", "write", guest.DONE_GPA): 1}
    assert {r.get("pid", old.pid) for r in rows} == {old.pid}


@needs_tracing
def test_a_recycled_pid_is_another_vm():
    t = Traced("--format", "json", "--by", "vm")
    try:
        for _ in range(20):
            pid = life(1, "old")[0]
            new = spawn_with_pid(pid, "-name", "guest=new-1", *guest_ops(2)[0])
            if new:
                assert new.wait(timeout=60) == 0
                break
    finally:
        rc, out, err = t.stop()
    assert rc == 0, err
    assert new, "other processes took every pid this test freed"
    found = groups(json.loads(out)["rows"])
    assert (found[pid, "old-1"], found[pid, "new-1"]) == (guest_ops(1)[1], guest_ops(2)[1])


def test_device_maps_are_per_process(tmp_path):
    qmp = ["qemu-system-x86_64", "-qmp", f"unix:{tmp_path}/none.sock,server=on"]
    (tmp_path / "proc").mkdir()
    procfs = tmp_path / "proc"
    old = fake_proc(procfs, 10, qmp, "qemu-system-x86", start=100, vm_fd=True)
    maps = devices.VmmMaps(proc=str(procfs), timeout=0.1)
    assert set(maps.vms) == {old}
    new = fake_proc(procfs, 10, qmp + ["-name", "new"], "qemu-system-x86", start=300)
    maps.see(new)       # the kernel says a new process counts with pid 10
    assert set(maps.vms) == {old, new} and maps.vms[old] is not maps.vms[new]
    maps.forget([old])
    assert set(maps.vms) == {new}
    shutil.rmtree(procfs / "10")
    assert maps.scan() == [new]     # gone from /proc
    assert Proc(10, 300) in maps.vms     # kept until forgotten, to name its counted ports



def brief(i, prefix):
    """Guest i, run to its end and gone at once after its port I/O (no
    clean-up): it exits while piobpf may still be answering the kernel's
    ring. (pid, name, expected)."""
    ops, expected = guest_ops(i)
    name = f"{prefix}-{i}"
    proc = subprocess.Popen([*GUEST, "-name", f"guest={name}", "--abrupt",
                             *ops], env=ENV, text=True, stdout=subprocess.PIPE)
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 0 and out.startswith("done"), out
    return proc.pid, name, expected


def brief_lives(count, prefix, gap=0.0):
    """`count` brief guests one after another, `gap` seconds apart."""
    lives = []
    for i in range(count):
        lives.append(brief(i, prefix))
        time.sleep(gap)
    return lives


def served(page, lives):
    """{(pid, name): {(direction, port): (events, bytes)}} of `lives`' series on a page."""
    mine = {(str(pid), name) for pid, name, _ in lives}
    found = {}
    for (metric, labels), value in page.items():
        labels = dict(labels)
        if (labels.get("pid"), labels.get("vm")) not in mine:
            continue
        key = (int(labels["pid"]), labels["vm"])
        port = (labels["direction"], int(labels["port"], 16))
        events, nbytes = found.setdefault(key, {}).get(port, (0, 0))
        if metric == "piobpf_pio_events_total":
            events = int(value)
        elif metric == "piobpf_pio_bytes_total":
            nbytes = int(value)
        found[key][port] = (events, nbytes)
    return found


class Scraper:
    """Scrapes back to back in a thread, as many Prometheus servers would:
    checks that no counter of a VM named `prefix`-... goes backwards or
    ends (the test's retention outlasts it; others' VMs may end)."""

    def __init__(self, url, prefixes):
        self.url, self.prefixes, self.pages, self.errors = url, prefixes, 0, []
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop)
        self._thread.start()

    def _loop(self):
        last = {}
        try:
            while not self._stopped.is_set():
                page = {k: v for k, v in metrics(self.url).items() if k[0].startswith(
                    "piobpf_pio_") and dict(k[1])["vm"].startswith(self.prefixes)}
                self.errors += [(k, v, page.get(k)) for k, v in last.items()
                                if page.get(k, -1) < v]
                last, self.pages = page, self.pages + 1
        except Exception as e:      # reported by stop()
            self.errors.append(e)

    def stop(self):
        self._stopped.set()
        self._thread.join(timeout=60)
        assert self.pages > 1 and not self.errors[:10], self.errors[:10]


@needs_tracing
def test_exporter_serves_every_short_lived_vm(running, prometheus):
    # Guests that come and go between two syncs, scraped back to back and
    # every second by a real Prometheus: each VM's final counts stay
    # served, exact, under its own name (on main: 139 of 320 lost).
    exporter = Exporter(running, "--by", "vm", "--retention", "600")
    url = prometheus(exporter.target)
    wait_for("a scrape", lambda: query(url, "piobpf_map_max_entries"))
    scraper = Scraper(exporter.url, ("lone-", "b2b-"))
    lives = brief_lives(20, "lone", gap=0.3) + brief_lives(300, "b2b")
    scraper.stop()
    page = metrics(exporter.url)
    after = time.time()
    wait_for("a scrape after the last guest", lambda: [
        r for r in query(url, "timestamp(piobpf_map_entries)") if float(r["value"][1]) > after],
        lambda: targets(url))
    expected = {(pid, name): want for pid, name, want in lives}
    # Of these VMs only: another suite on the host may run VMs of these names.
    stored = {(r["metric"]["pid"], r["metric"]["vm"], r["metric"]["direction"],
               r["metric"]["port"]): int(r["value"][1])
              for r in query(url, 'piobpf_pio_events_total{vm=~"(lone|b2b)-.*"}')
              if (int(r["metric"]["pid"]), r["metric"]["vm"]) in expected}
    assert exporter.stop()[0] == 0
    assert served(page, lives) == expected
    assert stored == {(str(pid), name, d, f"{port:#x}"): events
                      for (pid, name), want in expected.items()
                      for (d, port), (events, _) in want.items()}


@needs_tracing
def test_short_lived_vms_are_named_by_their_name():
    t = Traced("-d", "600", "--format", "json", "--by", "vm")
    with ThreadPoolExecutor(WORKERS) as pool:     # as many at once as the churn
        lives = list(pool.map(lambda i: brief(i, "short"), range(200)))
    rc, out, err = t.stop()
    assert rc == 0, err
    found = groups(json.loads(out)["rows"])
    mine = {pid for pid, _, _ in lives}
    assert {key: counts for key, counts in found.items() if key[0] in mine} == {
        (pid, name): expected for pid, name, expected in lives}


@needs_tracing
def test_a_new_vm_of_an_exited_ones_pid_and_name_adds_to_its_series(running):
    # Same pid, same name: the same labels. The series is the sum of both,
    # kept past the first one's retention while the second runs.
    exporter = Exporter(running, "--by", "vm", "--retention", "2")
    scraper = Scraper(exporter.url, ("same-",))
    for _ in range(20):
        pid, name, _, _ = life(1, "same")
        new = spawn_with_pid(pid, "-name", f"guest={name}", "--hold", *guest_ops(2)[0])
        if new:
            break
    assert new, "other processes took every pid this test freed"
    running.append(new)
    time.sleep(3)       # the first one's retention is over
    page = metrics(exporter.url)
    new.stdin.close()
    assert new.wait(timeout=60) == 0
    scraper.stop()
    assert exporter.stop()[0] == 0
    both = {port: tuple(a + b for a, b in zip(counts, guest_ops(2)[1][port]))
            for port, counts in guest_ops(1)[1].items()}
    assert served(page, [(pid, name, both)]) == {(pid, name): both}
