from piobpf.core.snapshot import Counts, Snapshot

R, W = "read", "write"


def test_delta_is_what_arrived_between_reads():
    a = Snapshot({(R, 0x3fd): Counts(10, 10), (W, 0x20): Counts(1, 1)}, dropped=2)
    b = Snapshot({(R, 0x3fd): Counts(25, 25), (W, 0x20): Counts(1, 1),
                  (R, 0x60): Counts(3, 48)}, dropped=5)
    d = b - a
    assert d.counts == {(R, 0x3fd): Counts(15, 15), (R, 0x60): Counts(3, 48)}
    assert d.dropped == 3 and d.total_events == 18


def test_deltas_add_up_to_the_last_snapshot():
    snaps = [Snapshot()]
    for i in range(1, 6):
        snaps.append(Snapshot({(R, p): Counts(i * p, 2 * i * p) for p in range(1, i + 1)}, i))
    total, dropped = {}, 0
    for earlier, later in zip(snaps, snaps[1:]):
        delta = later - earlier
        dropped += delta.dropped
        for key, c in delta.counts.items():
            total[key] = total.get(key, Counts()) + c
    assert total == snaps[-1].counts and dropped == snaps[-1].dropped


def test_a_sum_of_deltas_is_the_last_snapshot():
    a = Snapshot({(R, 0x3fd): Counts(10, 10)}, dropped=1)
    b = Snapshot({(R, 0x3fd): Counts(25, 25), (R, 0x60): Counts(3, 48)}, dropped=4)
    assert Snapshot() + a + (b - a) == b


def test_total_events():
    assert Snapshot().total_events == 0
    assert Snapshot({(R, 1): Counts(2, 2), (W, 1): Counts(5, 20)}).total_events == 7
