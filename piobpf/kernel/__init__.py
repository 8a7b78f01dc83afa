"""The kernel layer: checks that tracing can start, compiles the BPF C of
bpf/ with BCC, attaches it, reads its maps into Snapshots and moves the
counts of exited VMs out of them. The only place that imports bcc or reads
kernel structures (BTF). Imports core only."""
