"""Byte offsets of the running kernel's own struct fields, from its BTF.

The BPF program reads a few kernel structures (a task's start time and
command line, a vCPU's kvm_run); the headers BCC compiles against may be
another version's, so their offsets come from /sys/kernel/btf/vmlinux, read
with libbpf (which BCC itself links), and reach the C as -D flags.
"""

import ctypes

from ..core.errors import TraceError

# What the program reads with -p: whether a process's last thread exits.
EXIT_FIELDS = {"PIOBPF_TASK_SIGNAL": ("task_struct", "signal"),
               "PIOBPF_SIGNAL_LIVE": ("signal_struct", "live")}
# By VM or vCPU: that too, and a process's start, name and command line.
KERNEL_FIELDS = {**EXIT_FIELDS,
                 "PIOBPF_TASK_GROUP_LEADER": ("task_struct", "group_leader"),
                 "PIOBPF_TASK_START_BOOTTIME": ("task_struct", "start_boottime"),
                 "PIOBPF_TASK_MM": ("task_struct", "mm"),
                 "PIOBPF_TASK_COMM": ("task_struct", "comm"),
                 "PIOBPF_MM_ARG_START": ("mm_struct", "arg_start"),
                 "PIOBPF_MM_ARG_END": ("mm_struct", "arg_end")}
# What --latency reads to find, from the current task, the kvm_run of the
# vCPU it has loaded: the task's preempt notifiers, which vcpu_load put the
# vCPU's own on (CONFIG_PREEMPT_NOTIFIERS, which KVM selects).
LATENCY_FIELDS = {"PIOBPF_TASK_PREEMPT_NOTIFIERS": ("task_struct", "preempt_notifiers"),
                  "PIOBPF_VCPU_PREEMPT_NOTIFIER": ("kvm_vcpu", "preempt_notifier"),
                  "PIOBPF_NOTIFIER_LINK": ("preempt_notifier", "link"),
                  "PIOBPF_VCPU_RUN": ("kvm_vcpu", "run")}


class BtfType(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("info", ctypes.c_uint32),
                ("size", ctypes.c_uint32)]


class BtfMember(ctypes.Structure):
    _fields_ = [("name_off", ctypes.c_uint32), ("type", ctypes.c_uint32),
                ("offset", ctypes.c_uint32)]


BTF_KIND_STRUCT, BTF_KIND_UNION = 4, 5


def kernel_offsets(fields=KERNEL_FIELDS, option="--by vm|vcpu"):
    """{flag: byte offset} of each (struct, field) in the running kernel, read
    from its BTF with libbpf (which BCC itself links); a TraceError naming
    `option`, which reads them, when one is missing."""
    try:
        libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
    except OSError:
        raise TraceError(f"{option} needs libbpf.so.1 (apt-get install libbpf1)") from None
    libbpf.btf__load_vmlinux_btf.restype = ctypes.c_void_p
    libbpf.btf__find_by_name_kind.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint32]
    libbpf.btf__type_by_id.restype = ctypes.POINTER(BtfType)
    libbpf.btf__type_by_id.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    libbpf.btf__name_by_offset.restype = ctypes.c_char_p
    libbpf.btf__name_by_offset.argtypes = [ctypes.c_void_p, ctypes.c_uint32]
    libbpf.btf__free.argtypes = [ctypes.c_void_p]
    btf = libbpf.btf__load_vmlinux_btf()
    if not btf:
        raise TraceError(f"{option} needs the kernel's BTF (/sys/kernel/btf/vmlinux, "
                         "CONFIG_DEBUG_INFO_BTF), to read the kernel's own structures")

    def members(type_id, base=0):
        """(name, byte offset) of a struct's fields, those of anonymous members inlined."""
        t = libbpf.btf__type_by_id(btf, type_id).contents
        kind_flag = t.info >> 31
        kinds = ctypes.POINTER(BtfMember)
        array = ctypes.cast(ctypes.addressof(t) + ctypes.sizeof(BtfType), kinds)
        for m in array[:t.info & 0xFFFF]:
            at = base + (m.offset & 0xFFFFFF if kind_flag else m.offset) // 8
            name = libbpf.btf__name_by_offset(btf, m.name_off)
            inner = libbpf.btf__type_by_id(btf, m.type).contents.info >> 24 & 0x1F
            if not name and inner in (BTF_KIND_STRUCT, BTF_KIND_UNION):
                yield from members(m.type, at)
            elif name:
                yield name.decode(), at

    try:
        found, layouts = {}, {}
        for flag, (struct_name, field) in fields.items():
            if struct_name not in layouts:
                type_id = libbpf.btf__find_by_name_kind(btf, struct_name.encode(),
                                                        BTF_KIND_STRUCT)
                layouts[struct_name] = dict(members(type_id)) if type_id > 0 else {}
            if field not in layouts[struct_name]:
                raise TraceError(f"the kernel's BTF has no {struct_name}.{field}, which "
                                 f"{option} reads: not supported on this kernel")
            found[flag] = layouts[struct_name][field]
        return found
    finally:
        libbpf.btf__free(btf)
