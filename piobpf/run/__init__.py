"""The run: a tracing session's start, clock and end, shared by every front
end: loads the kernel layer, names what it counts, and hands snapshots to a
sink at -i ticks, on a ring from the kernel and at the end. Imports every
layer below it."""
