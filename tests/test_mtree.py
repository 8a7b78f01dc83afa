"""QEMU's `info mtree -f -o` text to port names (pure, no root)."""

from pathlib import Path

import pytest

from piobpf.naming import mtree
from tools.mtreegen import one_port_ranges

FIXTURES = Path(__file__).parent / "fixtures"
# Real text, byte for byte (\r\n): Debian's QEMU 7.2, SeaBIOS booted, virtio-blk disk0 (legacy),
# virtio-net-pci net0, e1000 nic1, as answered through QMP.
SEABIOS = (FIXTURES / "mtree-seabios.txt").read_text()


@pytest.mark.parametrize("port,name", [
    (0x92, "port92"),                   # owner without an id: the region's name
    (0x1f7, "ide"),                     # a parent, no owner
    (0x510, "fwcfg"), (0x514, "fwcfg.dma"),
    (0xc000, "virtio-pci disk0"), (0xc07f, "virtio-pci disk0"),   # the BAR, by device id
    (0xc080, "e1000-io nic1"),
    (0xc0c0, "virtio-pci net0"),
    (0x71, "rtc"),                      # "rtc @0000000000000001": an offset into the region
    (0xcf9, "piix3-reset-control"),     # prio 1 inside pci-conf-idx: the flat view split it
    (0xcf8, "pci-conf-idx"), (0xcfa, "pci-conf-idx"),
    (0x3fd, "serial"),
    (0x402, mtree.UNASSIGNED),          # "io @...": the root region, no device
    (0xffff, mtree.UNASSIGNED), (0x0, "dma-chan"),
])
def test_real_seabios_map(port, name):
    assert mtree.parse(SEABIOS).lookup(port) == name


def test_only_the_io_address_space_counts():
    # The memory view comes first here and has its own 0x... ranges.
    text = ("FlatView #0\n AS \"memory\", root: system\n Root memory region: system\n"
            "  0000000000000000-000000000000ffff (prio 0, ram): pc.ram owner:{obj path=/x} KVM\n"
            "\nFlatView #1\n AS \"I/O\", root: io\n Root memory region: io\n"
            "  0000000000000000-0000000000000fff (prio 0, i/o): io @0 parent:{obj path=/m}\n"
            "  0000000000001000-000000000000101f (prio 1, i/o): virtio-pci owner:{dev id=d}\n"
            "\nFlatView #2\n AS \"PIIX3\", root: bus master container\n"
            "  0000000000001000-000000000000ffff (prio 0, i/o): other\n")
    m = mtree.parse(text)
    assert m.lookup(0x10) == mtree.UNASSIGNED
    assert m.lookup(0x1010) == "virtio-pci d"
    assert m.lookup(0x2000) == mtree.UNASSIGNED


def io(*lines):
    return "FlatView #0\n AS \"I/O\", root: io\n Root memory region: io\n" + "".join(
        f"  {line}\n" for line in lines)


def test_nested_and_overlapping_regions_highest_priority_then_smallest():
    m = mtree.parse(io(
        "0000000000000000-000000000000ffff (prio 0, i/o): io",
        "0000000000000100-00000000000001ff (prio 0, i/o): bus",
        "0000000000000180-000000000000018f (prio 0, i/o): dev owner:{dev id=d1}",
        "0000000000000188-00000000000001a0 (prio 2, i/o): hi",
        "0000000000000100-000000000000010f (prio -1, i/o): low"))
    assert [m.lookup(p) for p in (0x50, 0x100, 0x110, 0x180, 0x188, 0x1a0, 0x1a1, 0x200)] == [
        mtree.UNASSIGNED, "bus", "bus", "dev d1", "hi", "hi", "bus", mtree.UNASSIGNED]


@pytest.mark.parametrize("line,name", [
    ("0000000000000060-0000000000000060 (prio 0, i/o): i8042-data owner:{dev path=/m/d[14]}",
     "i8042-data"),
    ("0000000000000060-0000000000000060 (prio 0, i/o): i8042-data owner:{ id=kbd}",
     "i8042-data kbd"),                 # older QEMU: no "dev" before id=
    ("0000000000000060-0000000000000060 (prio 0, i/o): vga ioports remapped owner:{dev id=v}",
     "vga ioports remapped v"),         # names with spaces
    ("0000000000000060-0000000000000060 (prio 0, i/o): cirrus-io owner:{dev id=cirrus-io}",
     "cirrus-io"),                      # an id that repeats the name says it once
    ("0000000000000060-0000000000000060 (prio 0, i/o): x owner:{dev id=a} parent:{obj path=/p}",
     "x a"),
    ("0000000000000060-0000000000000060 (prio 0, i/o): y orphan", "y"),
    ("0000000000000060-0000000000000060 (prio 0, i/o): z", "z"),      # without -o
    ("0000000000000060-0000000000000060 (prio 0, nv-i/o): w @0000000000000004", "w"),
])
def test_owner_forms(line, name):
    assert mtree.parse(io(line)).lookup(0x60) == name


@pytest.mark.parametrize("text", ["", "unknown command: 'info mtree'\r\n",
                                  "FlatView #0\n AS \"memory\", root: system\n",
                                  io("garbage")])
def test_no_io_space_is_an_error(text):
    with pytest.raises(ValueError):
        mtree.parse(text)


def test_plain_newlines_too():
    assert mtree.parse(SEABIOS.replace("\r\n", "\n")).lookup(0xc0c0) == "virtio-pci net0"


def test_without_owners():
    # `info mtree -f` without -o: regions only, no ids to add.
    m = mtree.parse((FIXTURES / "mtree-noowner.txt").read_text())
    assert (m.lookup(0xc000), m.lookup(0x92)) == ("virtio-pci", "port92")


def test_firmware_vm_bars_where_its_firmware_put_them():
    m = mtree.parse((FIXTURES / "mtree-firmware.txt").read_text())
    assert (m.lookup(0xc000), m.lookup(0xd03f), m.lookup(0xd040)) == (
        "virtio-pci net0", "e1000-io nic1", mtree.UNASSIGNED)


def test_a_map_of_every_port_in_its_own_range():
    # 65,536 ranges: the bound, and every port of the space.
    m = mtree.parse(one_port_ranges(mtree.MAX_RANGES))
    assert len(m) == 65536
    for port in (0, 1, 0x92, 0xcf8, 0xc000, 0xfffe, 0xffff):
        assert m.lookup(port) == f"dev{port:x} d{port:x}"


def test_a_map_over_the_bound_is_refused():
    # One more range than the bound (past the port space: the parser reads
    # 64-bit addresses as QEMU prints them).
    with pytest.raises(ValueError, match="more than 65536 ranges"):
        mtree.parse(one_port_ranges(mtree.MAX_RANGES + 1))


def test_overlaps_resolved_by_priority_then_size_then_order():
    # resolve() gets overlapping ranges only from a non-flat view; the rule:
    # highest prio, then the smallest range, then the first given.
    got = mtree.resolve([(0, 99, 0, "big"), (10, 19, 0, "small"), (15, 30, 1, "high"),
                         (50, 59, 0, "first"), (50, 59, 0, "second"), (200, 210, 0, "lone")])
    assert got == [(0, 9, "big"), (10, 14, "small"), (15, 30, "high"), (31, 49, "big"),
                   (50, 59, "first"), (60, 99, "big"), (200, 210, "lone")]


@pytest.mark.parametrize("rest,name", [
    ("io @0000000000000010 parent:{obj path=/m}", mtree.UNASSIGNED),
    ("virtio-pci owner:{dev id=d} parent:{obj path=/m}", "virtio-pci d"),
    ("a owner:{dev id=x} junk owner:{dev id=y}", "a owner:{dev id=x} junk y"),   # the last groups own it
    ("a" + " owner:{}" * 100000 + " x", "a" + " owner:{}" * 100000 + " x"),     # no tail: all name
    ("rtc @0000000000000001 orphan", "rtc"),
])
def test_region_and_owner_from_the_end_of_a_line(rest, name):
    # The tail (" @offset", owner/parent groups, " orphan") is read from the
    # end; a line of many groups and no tail (hostile) is all name.
    text = 'FlatView #0\n AS "I/O", root: io\n  0000000000000010-000000000000001f (prio 0, i/o): ' + rest
    assert mtree.parse(text).lookup(0x10) == name
