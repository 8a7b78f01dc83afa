"""Read a saved result: piobpf JSON (one object or JSON Lines) or `perf script` text."""

import json
import re
import reprlib
from collections import defaultdict
from dataclasses import dataclass

from ..core.keys import Gpa, IO, Key, MMIO
from ..core.snapshot import Counts, Snapshot
from . import perfscript


@dataclass
class Loaded:
    kind: str              # "json" or "perf"
    snapshot: Snapshot
    names: dict            # port or Gpa -> device, as the JSON recorded it
    malformed: int = 0
    first_malformed: str = ""


_SPACE = re.compile(r"[ \t\n\r]*")
_U64 = 2**64 - 1        # the kernel's counters are u64


def _json_objects(text):
    """The JSON values in `text`, one after another (JSON Lines when written with
    -i); decoding in place keeps an error's line number that of the whole text."""
    decoder, objects, pos = json.JSONDecoder(), [], _SPACE.match(text).end()
    while pos < len(text):
        obj, pos = decoder.raw_decode(text, pos)
        objects.append(obj)
        pos = _SPACE.match(text, pos).end()
    return objects


def _number(obj, field, top=_U64):
    """An int 0..top: not a bool (`true` is not 1 event), not a float (1e400)."""
    value = obj[field]
    if type(value) is not int or not 0 <= value <= top:
        raise ValueError(f"{field} {reprlib.repr(value)} is not an integer 0..{top:#x}")
    return value


def _address(row):
    """A row's port, or its Gpa when "space" is "mmio" (no "space": a port,
    as results written before MMIO was traced)."""
    space = row.get("space", IO)
    if space == IO:
        return _number(row, "port", 0xffff)
    if space == MMIO:
        return Gpa(_number(row, "gpa"))
    raise ValueError(f"bad space {reprlib.repr(space)}")


def from_json(text):
    """Sum piobpf JSON objects (several when written with -i); ValueError if not ours."""
    try:
        counts, names, dropped = defaultdict(Counts), {}, 0
        for obj in _json_objects(text):
            dropped += _number(obj, "dropped_events")
            if not isinstance(obj["rows"], list):
                raise ValueError("rows is not a list")
            for r in obj["rows"]:
                if r["direction"] not in ("read", "write"):
                    raise ValueError(f"bad direction {reprlib.repr(r['direction'])}")
                if not isinstance(r.get("device"), (str, type(None))):
                    raise ValueError(f"bad device {reprlib.repr(r['device'])}")
                key = Key(r["direction"], _address(r))
                counts[key] += Counts(_number(r, "events"), _number(r, "bytes"))
                if r.get("device"):
                    names[key[1]] = r["device"]
    # RecursionError: arrays nested thousands deep.
    except (ValueError, KeyError, TypeError, RecursionError) as e:
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
