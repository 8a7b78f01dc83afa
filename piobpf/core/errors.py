"""The one way piobpf reports trouble: a line on stderr, never a traceback."""

import sys


class CliError(Exception):
    """Bad input or a failed run: one line on stderr, exit 1 (2 for usage)."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


class TraceError(Exception):
    """A reason tracing cannot start or go on, fit for one line on stderr."""


def warn(message):
    print(f"piobpf: {message}", file=sys.stderr)
