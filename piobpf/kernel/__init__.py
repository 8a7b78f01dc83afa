"""The kernel layer: checks that tracing can start, compiles the BPF C of
bpf/ with BCC, attaches it, reads its maps into Snapshots and moves the
counts of exited VMs out of them. The only place that imports bcc or reads
kernel structures (BTF); bcc only in a short-lived child (loader.py), so
that the process that counts never maps it. Imports core only."""
