"""`python3 -m piobpf`, and the `piobpf` command's entry point."""

import signal
import sys


def run():
    # Ctrl-C while the modules load is held until they have loaded (a tenth of a
    # second): a KeyboardInterrupt raised inside the import machinery can be
    # printed as "Exception ignored" and lost. Nothing is counted yet: one line.
    held = []
    signal.signal(signal.SIGINT, lambda *_: held.append(True))
    from .cli.main import main
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if held:
        print("piobpf: interrupted", file=sys.stderr)
        return 130
    status = main()
    if status == 130:
        # CPython kills itself with SIGINT at exit when a KeyboardInterrupt went
        # through exec()'d source (dataclasses build methods so), even one caught
        # since; an empty exec() clears that, so the exit status stays 130.
        exec("")
    return status


if __name__ == "__main__":
    sys.exit(run())
