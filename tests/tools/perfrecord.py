"""Start `perf record -e kvm:kvm_pio -a` (or other events) and return once
it records.

For the tests and the benchmark, which run perf beside piobpf on one
workload. perf starts disabled (-D -1) with a control FIFO; its ack of
"enable" says the events are on, so nothing the caller does next is missed.
"""

import errno
import os
import select
import signal
import subprocess
import time


def start(data, timeout=60.0, events=("kvm:kvm_pio",)):
    """perf record of `events` writing to `data` (its folder holds the
    FIFOs), recording."""
    folder = os.path.dirname(os.path.abspath(data))
    ctl, ack = os.path.join(folder, "ctl"), os.path.join(folder, "ack")
    os.mkfifo(ctl)
    os.mkfifo(ack)
    proc = subprocess.Popen(["perf", "record", "-q", "-D", "-1", "--control",
                             f"fifo:{ctl},{ack}", *(a for e in events for a in ("-e", e)),
                             "-a", "-o", data],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    try:
        # Non-blocking opens and a deadline: a perf that dies at start-up is an
        # error here, not a hang on a FIFO nobody will open.
        ack_fd = os.open(ack, os.O_RDONLY | os.O_NONBLOCK)
        try:
            while True:
                try:
                    ctl_fd = os.open(ctl, os.O_WRONLY | os.O_NONBLOCK)
                    break
                except OSError as e:
                    if e.errno != errno.ENXIO:
                        raise
                _check(proc, deadline)
                time.sleep(0.02)
            os.write(ctl_fd, b"enable\n")
            os.close(ctl_fd)
            reply = b""
            while b"ack" not in reply:
                _check(proc, deadline)
                if select.select([ack_fd], [], [], 0.1)[0]:
                    reply += os.read(ack_fd, 64)
        finally:
            os.close(ack_fd)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    return proc


def _check(proc, deadline):
    if proc.poll() is not None:
        raise RuntimeError(f"perf record exited: {proc.stderr.read().strip()}")
    if time.monotonic() > deadline:
        raise RuntimeError("perf record did not start recording in time")


def stop(proc, timeout=300):
    """End the recording; perf writes out its data file."""
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=timeout)
