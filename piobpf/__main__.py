"""`python3 -m piobpf`, and the `piobpf` command's entry point."""

import sys


def run():
    # Ctrl-C while the modules load: nothing is counted yet, so one line, no traceback.
    try:
        from .cli.main import main
    except KeyboardInterrupt:
        print("piobpf: interrupted", file=sys.stderr)
        return 130
    return main()


if __name__ == "__main__":
    sys.exit(run())
