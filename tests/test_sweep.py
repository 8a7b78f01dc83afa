"""Every port in both directions: 131072 keys, counted exactly, nothing dropped."""

import json

import pytest

from helpers import HeldGuest, around, needs_tracing

pytestmark = needs_tracing


@pytest.mark.parametrize("attach", ["raw", "classic"])
def test_all_65536_ports_both_directions(attach):
    rc, out, err = around(HeldGuest("r:0-0xffff", "w:0-0xffff:2"), "--format", "json",
                          "--attach", attach)
    assert rc == 0, err
    result = json.loads(out)
    assert result["dropped_events"] == 0
    assert result["total_events"] == 131072
    got = {(r["direction"], r["port"]): (r["events"], r["bytes"]) for r in result["rows"]}
    assert got == {**{("read", p): (1, 1) for p in range(65536)},
                   **{("write", p): (1, 2) for p in range(65536)}}
