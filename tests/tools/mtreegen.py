"""Made-up monitor answers for the tests and the bench."""


def one_port_ranges(n, first=0):
    """An answer of n one-port ranges from port `first`, each its own device, in
    the format of the fixtures (\\r\\n, owner with an id)."""
    lines = ["FlatView #0", ' AS "I/O", root: io', " Root memory region: io"]
    lines += [f"  {p:016x}-{p:016x} (prio 0, i/o): dev{p:x} owner:{{dev id=d{p:x}}}"
              for p in range(first, first + n)]
    return "\r\n".join(lines) + "\r\n"
