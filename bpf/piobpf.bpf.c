// piobpf: count kvm:kvm_pio events per (direction, port) in the kernel.
//
// Compiled by BCC. The front end passes parameters only as -D flags with
// numeric values, so nothing it is given can become C code.
//
// Counts are cumulative and never cleared: user space reads snapshots and
// subtracts, so an event that lands while a read is under way is counted in
// this interval or the next, never lost and never twice.

#ifndef PIOBPF_MAX_ENTRIES
#define PIOBPF_MAX_ENTRIES 131072   // 2 directions x 65536 ports: never full
#endif

struct pio_counts {
    u64 events;
    u64 bytes;
};

// A preallocated hash: inserts below max_entries cannot fail for memory.
BPF_HASH(counts, u32, struct pio_counts, PIOBPF_MAX_ENTRIES);
// Events whose key could not be inserted (map full): reported, not hidden.
BPF_ARRAY(dropped, u64, 1);

static __always_inline void count_pio(u32 rw, u32 port, u32 size, u32 count)
{
    u32 key = (rw ? 0x10000 : 0) | (port & 0xffff);
    struct pio_counts *c = counts.lookup(&key);

    if (!c) {
        struct pio_counts zero = {};
        // BPF_NOEXIST: when another CPU inserted the key first, keep its counts.
        counts.insert(&key, &zero);
        c = counts.lookup(&key);
        if (!c) {
            u32 idx = 0;
            u64 *d = dropped.lookup(&idx);
            if (d)
                __sync_fetch_and_add(d, 1);
            return;
        }
    }
    __sync_fetch_and_add(&c->events, 1);
    __sync_fetch_and_add(&c->bytes, (u64)size * count);
}

#ifdef PIOBPF_CLASSIC
TRACEPOINT_PROBE(kvm, kvm_pio)
{
    count_pio(args->rw, args->port, args->size, args->count);
    // Return 1: a classic tracepoint program returning 0 hides the event from
    // every perf session recording it at the same time.
    return 1;
}
#else
// The raw tracepoint skips building the trace record. Its arguments are
// TP_PROTO(rw, port, size, count, data); the front end checks that layout
// against the tracepoint's format before choosing this path.
RAW_TRACEPOINT_PROBE(kvm_pio)
{
    count_pio(ctx->args[0], ctx->args[1], ctx->args[2], ctx->args[3]);
    return 0;
}
#endif
