"""The Debian package: built from a clean clone by scripts/build-deb.sh,
checked by lintian, installed with apt, used, its service run as systemd
would run it, and purged, leaving no file behind.

One test, in order: each step needs the one before.
"""

import json
import os
import subprocess
import tempfile
from pathlib import Path

from helpers import REPO, HeldGuest, needs_tracing
from test_unit import Service, by_pid_port, scrape
from unitrun import Unit

PLAIN = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
APT = dict(PLAIN, DEBIAN_FRONTEND="noninteractive")
# What dpkg and apt write for any package (their own databases, logs and
# caches), and what other tests on this machine may change meanwhile.
WHERE = ["/etc", "/usr", "/opt", "/srv", "/var/lib", "/var/cache/debconf"]
SKIP = ("/var/lib/dpkg", "/var/lib/apt", "/var/lib/libvirt", "/etc/libvirt")
# Other tests add and remove users meanwhile (the package adds none).
USERS = {f"/etc/{db}{end}" for db in ("passwd", "group", "shadow", "gshadow", "subuid", "subgid")
         for end in ("", "-")}


def run(cmd, env=PLAIN, **kw):
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, **kw)
    assert out.returncode == 0, f"{cmd}: {out.stdout}{out.stderr}"
    return out


def snapshot():
    """{path: (type and mode, size, mtime)} of every file under WHERE but SKIP
    (a directory's size and mtime change as entries come and go)."""
    files = {}
    for top in WHERE:
        for root, dirs, names in os.walk(top):
            dirs[:] = [d for d in dirs if os.path.join(root, d) not in SKIP]
            for path in {root, *(os.path.join(root, n) for n in names)} - USERS:
                st = os.lstat(path)
                files[path] = (st.st_mode,) if os.path.isdir(path) and \
                    not os.path.islink(path) else (st.st_mode, st.st_size, st.st_mtime_ns)
    return files


def installed():
    out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", "piobpf"], capture_output=True,
                         text=True)
    return "installed" in out.stdout.split()


@needs_tracing
def test_package_builds_installs_counts_serves_and_purges_clean():
    assert not installed(), "piobpf is installed: apt-get purge piobpf first"
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / "clone"
        run(["git", "clone", "-q", str(REPO), str(clone)])
        run(["git", "-C", str(clone), "checkout", "-q", "--detach",
             run(["git", "-C", str(REPO), "rev-parse", "HEAD"]).stdout.strip()])
        built = run([str(clone / "scripts/build-deb.sh"), f"{tmp}/dist"])
        deb = built.stdout.strip()
        assert Path(deb).name == "piobpf_0.1.0_all.deb" and Path(deb).parent == Path(tmp, "dist")
        # The script shows lintian's findings (and fails on an E: line).
        assert "E: " not in built.stderr and "W: " not in built.stderr, built.stderr

        before = snapshot()
        try:
            run(["apt-get", "install", "-y", "-q", deb], env=APT)
            check_installed()
        finally:
            run(["apt-get", "purge", "-y", "-q", "piobpf"], env=APT)
    assert not installed()
    assert not list(Path("/var/lib/dpkg/info").glob("piobpf.*"))
    after = snapshot()
    assert {p: v for p, v in after.items() if before.get(p) != v} == {}
    assert {p: v for p, v in before.items() if after.get(p) != v} == {}


def check_installed():
    for path in ("/usr/sbin/piobpf", "/usr/share/man/man8/piobpf.8.gz",
                 "/usr/share/doc/piobpf/piobpf_example.txt.gz",
                 "/usr/share/doc/piobpf/exporter.md.gz",
                 "/lib/systemd/system/piobpf-exporter.service", "/etc/default/piobpf-exporter",
                 "/usr/share/piobpf/grafana-dashboard.json", "/usr/share/piobpf/piobpf-rules.yml"):
        assert os.path.isfile(path), path
    assert not os.path.exists("/usr/bin/piobpf")

    # The installed command, from anywhere, counts a guest exactly.
    guest = HeldGuest("r:0x3fd:1:1234", "w:0x80:2:56")
    traced = subprocess.Popen(["/usr/sbin/piobpf", "-d", "5", "-p", str(guest.pid),
                               "--format", "json"], env=PLAIN, cwd="/", text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    line = traced.stderr.readline()
    assert line.startswith("Tracing kvm:kvm_pio"), line + traced.stderr.read()
    guest.start()
    guest.wait_done()
    out, err = traced.communicate(timeout=60)
    guest.end()
    assert traced.returncode == 0, err
    rows = {(r["direction"], r["port"]): (r["events"], r["bytes"])
            for r in json.loads(out)["rows"]}
    assert rows == {("read", 0x3fd): (1234, 1234), ("write", 0x80): (56, 112)}

    unit = "/lib/systemd/system/piobpf-exporter.service"
    out = run(["systemd-analyze", "verify", unit])
    assert (out.stdout, out.stderr) == ("", "")

    # The installed unit with the installed defaults (127.0.0.1:9435, by VM),
    # run as systemd would: it serves a guest's exact counts.
    service = Service(Unit(unit))
    try:
        assert service.first.startswith("Serving kvm:kvm_pio"), service.stop()
        guest = HeldGuest("w:0x3f8:1:77")
        guest.start()
        guest.wait_done()
        got = by_pid_port(scrape("http://127.0.0.1:9435/metrics"))
        guest.end()
        assert got[(str(guest.pid), "0x3f8")] == (77, "serial")
    finally:
        rc, err = service.stop()
    assert rc == 0, err
