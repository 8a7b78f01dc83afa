"""A neighbour VM for the whole session: users run the tests on hosts with
other VMs, so every run has one. A test that assumes it is alone on the host
fails every run, not only when another guest happens to do port I/O."""

import subprocess

import pytest

from helpers import ENV, GUEST, why_not_tracing

# The ports the tests use most, both directions, string I/O and sweeps, on
# two vCPUs named as the tests' guests and QEMU name theirs.
NEIGHBOUR_OPS = [
    ["r:0x3fd", "w:0x3f8", "r:0x3fb", "r:0x3f8-0x3ff", "w:0x2f8-0x2ff:2", "w:0x80:4",
     "r:0x92", "w:0x92", "r:0x1f7", "w:0x1f6"],
    ["r:0x60:1:1:16", "r:0x61:4", "w:0x70:1:1:8", "r:0x71", "w:0x20", "r:0x21", "w:0xcf8:4",
     "r:0xcfc:4", "w:0xcfc", "r:0xc000:4", "r:0xc040:2", "r:0xd000", "w:0x510:2", "r:0x511",
     "w:0x518:4"]]
# Its VMM sleeps this long in each exit: some 380 exits a second per vCPU and
# under 5 % of a CPU (0.23 s of CPU across a 5 s trace and its start-up,
# 2026-12-06), so it does not slow the tests on a 2-CPU host.
PACE_US = 2500


def neighbour_delays(ops):
    """--delay PORT:PACE_US for every port the ops touch."""
    ports = set()
    for op in ops:
        first, _, last = op.split(":")[1].partition("-")
        ports.update(range(int(first, 0), int(last or first, 0) + 1))
    return [arg for port in sorted(ports) for arg in ("--delay", f"{port:#x}:{PACE_US}")]


@pytest.fixture(scope="session", autouse=True)
def neighbour():
    """Another VM, named `neighbour`, doing port I/O on the tests' ports from
    the first test to the last: its process (a test that looks for it takes
    its pid), or None where the host cannot run guests."""
    if why_not_tracing():
        yield None
        return
    ops = NEIGHBOUR_OPS[0] + ["+"] + NEIGHBOUR_OPS[1]
    proc = subprocess.Popen(
        [*GUEST, "--forever", "--wait", "-name", "guest=neighbour",
         "--thread-name", "CPU {i}/KVM", *neighbour_delays(NEIGHBOUR_OPS[0] + NEIGHBOUR_OPS[1]),
         *ops], env=ENV, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert proc.stdout.readline() == "ready\n"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        yield proc
        assert proc.poll() is None, f"the neighbour VM ended during the session: {proc.returncode}"
    finally:
        proc.kill()
        proc.wait()
