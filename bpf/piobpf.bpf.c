// piobpf: count kvm:kvm_pio events per (direction, port) in the kernel,
// optionally per VMM process (PIOBPF_KEY_TGID) and vCPU thread (PIOBPF_KEY_TID).
//
// Compiled by BCC. The front end (piobpf/kernel.py) passes every parameter
// as a -D flag with a numeric value, so nothing it is given can become C
// code, and each constant has one source, there; PIDs to trace go into the
// pids map after load. kernel.py reads the layout of the structs below back
// from the loaded program and refuses one it does not know.
//
// Counts are cumulative and never cleared: user space reads snapshots and
// subtracts, so an event that lands while a read is under way is counted in
// this interval or the next, never lost and never twice.

#if !defined(PIOBPF_PORT_KEYS) || !defined(PIOBPF_MAX_ENTRIES) || !defined(PIOBPF_MAX_PIDS)
#error "compile through piobpf/kernel.py, which defines the parameters"
#endif
// PIOBPF_PORT_KEYS: 2 directions x 65536 ports; PIOBPF_MAX_ENTRIES: keys of
// the hash (by VM or vCPU); PIOBPF_MAX_PIDS: processes -p can name.

struct pio_key {
    u32 dirport;    // direction << 16 | port
    u32 tgid;       // 0 unless PIOBPF_KEY_TGID
    u32 tid;        // 0 unless PIOBPF_KEY_TID
};

struct pio_counts {
    u64 events;
    u64 bytes;
#ifdef PIOBPF_KEY_TID
    char comm[16];  // the thread's name (QEMU: "CPU 3/KVM"), even after it exits
#endif
};

#ifndef PIOBPF_KEY_TGID
// By port the key space is small and fixed: an array indexed by the key,
// which the verifier turns into pointer arithmetic (no hashing, half the
// cost of a hash lookup here) and which can never be full.
BPF_ARRAY(counts, struct pio_counts, PIOBPF_PORT_KEYS);
#else
// A preallocated hash: inserts below max_entries cannot fail for memory.
BPF_HASH(counts, struct pio_key, struct pio_counts, PIOBPF_MAX_ENTRIES);
#endif
// Events whose key could not be inserted (map full): reported, not hidden.
BPF_ARRAY(dropped, u64, 1);
#ifdef PIOBPF_FILTER_PIDS
BPF_HASH(pids, u32, u8, PIOBPF_MAX_PIDS);
#endif

static __always_inline void count_pio(u32 rw, u32 port, u32 size, u32 count)
{
    u32 dirport = (rw ? 0x10000 : 0) | (port & 0xffff);
#if defined(PIOBPF_KEY_TGID) || defined(PIOBPF_FILTER_PIDS)
    u64 id = bpf_get_current_pid_tgid();
    u32 tgid = id >> 32;
#endif
#ifdef PIOBPF_FILTER_PIDS
    if (!pids.lookup(&tgid))
        return;
#endif
#ifndef PIOBPF_KEY_TGID
    struct pio_counts *c = counts.lookup(&dirport);
    if (!c)         // never: dirport < PIOBPF_PORT_KEYS; the verifier wants the check
        return;
#else
    struct pio_key key = {.dirport = dirport, .tgid = tgid};
#ifdef PIOBPF_KEY_TID
    key.tid = (u32)id;
#endif
    struct pio_counts *c = counts.lookup(&key);

    if (!c) {
        struct pio_counts zero = {};
#ifdef PIOBPF_KEY_TID
        bpf_get_current_comm(&zero.comm, sizeof(zero.comm));
#endif
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
#endif
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
