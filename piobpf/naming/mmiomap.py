"""Names of guest-physical addresses when a VM's own map is not to be had.

Without a monitor (or before its map is in) a guest's MMIO is named from the
few devices a PC has at fixed addresses: the local APIC and the I/O APIC at
the architecture's defaults, the HPET where QEMU's pc and q35 machines put
it. Anything else is mtree.UNASSIGNED: the host's /proc/iomem describes the host's
hardware, not a guest's BARs.
"""

from .mtree import IoMap

PC_FIXED = "pc-fixed"   # the device_source of these names
TABLE = IoMap([(0xFEC00000, 0xFEC003FF, "ioapic"),
               (0xFED00000, 0xFED003FF, "hpet"),
               (0xFEE00000, 0xFEEFFFFF, "lapic")])


def lookup(gpa):
    """The fixed device at guest-physical address `gpa`, else mtree.UNASSIGNED."""
    return TABLE.lookup(gpa)
