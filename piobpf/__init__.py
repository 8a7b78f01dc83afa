"""piobpf: count KVM guest port I/O per (direction, port) in the kernel with BPF."""

__version__ = "0.1.0"
