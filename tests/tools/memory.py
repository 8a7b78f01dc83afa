"""What a process holds in memory, for the tests and the benchmark: the
resident set of a whole process tree, and whether a library is mapped."""

import os


def tree(pid):
    """pid and every process below it."""
    children = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/children") as f:
                children += f.read().split()
        except FileNotFoundError:   # a thread that ended meanwhile
            pass
    return [pid] + [p for child in children for p in tree(int(child))]


def rss_kb(pid):
    """VmRSS of a process, kB."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def tree_rss_kb(pid):
    """VmRSS summed over a process and every process below it, kB."""
    return sum(rss_kb(p) for p in tree(pid))


def maps_library(pid, name):
    """Whether a shared library whose file name holds `name` is mapped in the process."""
    with open(f"/proc/{pid}/maps") as f:
        return any(name in os.path.basename(line.split()[-1]) for line in f
                   if len(line.split()) > 5)
