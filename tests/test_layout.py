"""The map's layout is read back from the loaded program, never assumed (pure)."""

import ctypes
import os
import struct

import pytest

from piobpf.core.errors import TraceError
from piobpf.kernel.btf import LATENCY_FIELDS, kernel_offsets
from piobpf.kernel.program import KEY_FIELDS, LEAF_FIELDS, VM_FIELDS, layout


class Key(ctypes.Structure):
    _fields_ = [("dirport", ctypes.c_uint), ("vm", ctypes.c_uint), ("tid", ctypes.c_uint)]


class Vm(ctypes.Structure):
    _fields_ = [("tgid", ctypes.c_uint), ("exited", ctypes.c_uint), ("start", ctypes.c_ulong)]


class Leaf(ctypes.Structure):
    _fields_ = [("events", ctypes.c_ulong), ("bytes", ctypes.c_ulong),
                ("comm", ctypes.c_char * 16)]


class Padded(ctypes.Structure):
    _fields_ = [("events", ctypes.c_ulong), ("bytes", ctypes.c_ulong), ("flag", ctypes.c_ubyte)]


def test_formats_of_the_program_structs():
    assert layout(Key, KEY_FIELDS["vcpu"]) == "@III"
    assert layout(Leaf, LEAF_FIELDS["vcpu"]) == "@LL16s"
    assert layout(ctypes.c_int, KEY_FIELDS["port"]) == "@i"    # the array's index
    assert layout(Vm, VM_FIELDS) == "@IIL"
    leaf = Leaf(5, 7, b"CPU 0/KVM")
    assert struct.unpack(layout(Leaf, LEAF_FIELDS["vcpu"]), bytes(leaf)) == (
        5, 7, b"CPU 0/KVM" + bytes(7))


def test_trailing_padding_is_kept_in_the_record_size():
    fmt = layout(Padded, ("events", "bytes", "flag"))
    assert struct.calcsize(fmt) == ctypes.sizeof(Padded) == 24


@pytest.mark.parametrize("ctype,names", [
    (Key, KEY_FIELDS["port"]), (Leaf, LEAF_FIELDS["vm"]), (Padded, LEAF_FIELDS["vm"])])
def test_a_changed_struct_is_refused(ctype, names):
    with pytest.raises(TraceError, match="layout"):
        layout(ctype, names)


@pytest.mark.skipif(not os.path.exists("/sys/kernel/btf/vmlinux"), reason="needs the kernel's BTF")
def test_kernel_struct_offsets_come_from_btf():
    offsets = kernel_offsets()
    assert set(offsets) == {"PIOBPF_TASK_GROUP_LEADER", "PIOBPF_TASK_START_BOOTTIME",
                            "PIOBPF_TASK_SIGNAL", "PIOBPF_SIGNAL_LIVE", "PIOBPF_TASK_MM",
                            "PIOBPF_TASK_COMM", "PIOBPF_MM_ARG_START", "PIOBPF_MM_ARG_END"}
    assert all(o % 4 == 0 for o in offsets.values()) and 0 < offsets["PIOBPF_SIGNAL_LIVE"] < 64
    # Declared together (unsigned long arg_start, arg_end), inside an
    # anonymous struct of mm_struct: found through it.
    assert offsets["PIOBPF_MM_ARG_END"] == offsets["PIOBPF_MM_ARG_START"] + 8 > 8
    with pytest.raises(TraceError, match="task_struct.no_such_field"):
        kernel_offsets({"X": ("task_struct", "no_such_field")})


@pytest.mark.skipif(not os.path.exists("/sys/kernel/btf/vmlinux"), reason="needs the kernel's BTF")
def test_latency_finds_the_loaded_vcpu_through_btf_offsets():
    offsets = kernel_offsets(LATENCY_FIELDS, "--latency")
    assert set(offsets) == set(LATENCY_FIELDS)
    assert offsets["PIOBPF_TASK_PREEMPT_NOTIFIERS"] > 0 and offsets["PIOBPF_VCPU_RUN"] > 0
    # A kernel without the member (no CONFIG_PREEMPT_NOTIFIERS): one line naming the option.
    with pytest.raises(TraceError, match=r"kvm_vcpu.no_notifier, which --latency reads"):
        kernel_offsets({"X": ("kvm_vcpu", "no_notifier")}, "--latency")
