"""Read a saved result: piobpf JSON (one object or JSON Lines) or `perf script` text."""

import json
from collections import defaultdict
from dataclasses import dataclass

from . import perfscript
from .snapshot import Counts, Snapshot


@dataclass
class Loaded:
    kind: str              # "json" or "perf"
    snapshot: Snapshot
    names: dict            # port -> device, as the JSON recorded it
    malformed: int = 0
    first_malformed: str = ""


def _json_objects(text):
    try:
        return [json.loads(text)]
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]


def from_json(text):
    """Sum piobpf JSON objects (several when written with -i); ValueError if not ours."""
    try:
        objects = _json_objects(text)
        counts, names, dropped = defaultdict(Counts), {}, 0
        for obj in objects:
            dropped += int(obj["dropped_events"])
            for r in obj["rows"]:
                if r["direction"] not in ("read", "write"):
                    raise ValueError(f"bad direction {r['direction']!r}")
                key = (r["direction"], int(r["port"]))
                counts[key] += Counts(int(r["events"]), int(r["bytes"]))
                if r.get("device"):
                    names[key[1]] = r["device"]
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"not a piobpf JSON result ({e})") from None
    return Loaded("json", Snapshot(dict(counts), dropped), names)


def load(stream):
    """A result from an open text stream, its kind detected from the first character."""
    head = stream.read(1)
    while head.isspace():
        head = stream.read(1)
    if head == "{":
        return from_json(head + stream.read())
    lines = _prepend(head, stream)
    p = perfscript.parse(lines)
    return Loaded("perf", p.snapshot, {}, p.malformed, p.first_malformed)


def _prepend(head, stream):
    """The stream's lines with `head` put back in front of the first."""
    first = head + stream.readline()
    if first:
        yield first
    yield from stream
