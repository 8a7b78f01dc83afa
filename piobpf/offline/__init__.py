"""Saved results in place of the kernel: `perf script` text and piobpf's own
JSON read into Snapshots (--from-perf), and two results compared
(--compare). Imports core only."""
