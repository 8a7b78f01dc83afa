import pytest

from piobpf.naming import ioports

SAMPLE = """\
0000-0cf7 : PCI Bus 0000:00
  0000-001f : dma1
  0020-0021 : pic1
  0040-0043 : timer0
  0060-0060 : keyboard
  0070-0071 : rtc0
    0070-0071 : rtc_cmos
  03f8-03ff : serial
0cf8-0cff : PCI conf1
0d00-ffff : PCI Bus 0000:00
  c000-c03f : 0000:00:03.0
    c000-c03f : virtio-pci-legacy
"""


@pytest.mark.parametrize("port,name", [
    (0x3fd, "serial"), (0x3f8, "serial"), (0x3ff, "serial"),
    (0x70, "rtc_cmos"), (0x71, "rtc_cmos"),      # the deepest of three levels
    (0x20, "pic1"), (0x61, "PCI Bus 0000:00"), (0xcf8, "PCI conf1"),
    (0xc010, "virtio-pci-legacy"), (0xd00, "PCI Bus 0000:00"),
])
def test_deepest_range_wins(port, name):
    assert ioports.parse(SAMPLE).lookup(port) == name


def test_unowned_port_is_none():
    assert ioports.parse("0020-0021 : pic1\n").lookup(0x3fd) is None


def test_all_zeros_is_detected_and_names_nothing():
    zeros = "".join(line.split(" : ")[0][:len(line) - len(line.lstrip())] + "0000-0000 : "
                    + line.split(" : ")[1] + "\n" for line in SAMPLE.splitlines())
    table = ioports.parse(zeros)
    assert table.all_zero and table.lookup(0) is None and table.lookup(0x3fd) is None
    assert not ioports.parse(SAMPLE).all_zero


def test_malformed_lines_are_counted_not_fatal():
    table = ioports.parse("garbage\n03f8-03ff : serial\n03f8 serial\nzzzz-0001 : x\n\n")
    assert table.malformed == 3
    assert table.lookup(0x3fd) == "serial"


def test_empty_names_nothing():
    table = ioports.parse("")
    assert not table.all_zero and table.lookup(0x3fd) is None
