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

#if !defined(PIOBPF_PORT_KEYS) || !defined(PIOBPF_MAX_ENTRIES) || !defined(PIOBPF_MAX_PIDS) \
    || !defined(DROPPED_SLOTS)
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
// What could not be counted, reported, not hidden: events whose key could
// not be inserted (map full); with PIOBPF_LATENCY also exit windows too long
// to be emulation, ones without their port, and ones the time map had no room for.
// The slots' indices (DROPPED_*) come from kernel.py's DROPPED.
BPF_ARRAY(dropped, u64, DROPPED_SLOTS);
#ifdef PIOBPF_FILTER_PIDS
BPF_HASH(pids, u32, u8, PIOBPF_MAX_PIDS);
#endif

#ifdef PIOBPF_KEY_TGID
typedef struct pio_key pio_key_t;
#else
typedef u32 pio_key_t;      // by port: the array's index, dirport
#endif

// The key of an event of the calling thread: the one place keys are made,
// for the count map and the time map alike.
static __always_inline pio_key_t key_of(u32 dirport, u64 id)
{
#ifdef PIOBPF_KEY_TGID
    pio_key_t key = {.dirport = dirport, .tgid = id >> 32};
#ifdef PIOBPF_KEY_TID
    key.tid = (u32)id;
#endif
    return key;
#else
    return dirport;
#endif
}

static __always_inline void count_dropped(u32 idx)
{
    u64 *d = dropped.lookup(&idx);
    if (d)
        __sync_fetch_and_add(d, 1);
}

#ifdef PIOBPF_LATENCY
// How long each port I/O exit keeps its vCPU out of the guest.
//
// Exits to the VMM in user space: from kvm_userspace_exit (KVM_EXIT_IO,
// errno 0: KVM_RUN returns to the VMM) until the same thread enters the
// ioctl KVM_RUN again: the VMM's emulation, its locks and its scheduling.
// The window's port is read then from the vCPU's own kvm_run page, which
// still describes the exit just served (exit_reason, io.direction, io.port):
// user space gives the page's address per (process, vCPU fd) in `runs`, and
// learns of fds it has not resolved yet from `unresolved`.
// Exits handled in the kernel: from kvm_exit to kvm_entry around a kvm_pio,
// where those tracepoints fire (hardware VMX/SVM; not under every nested
// hypervisor).
#include <uapi/linux/kvm.h>
#if !defined(PIOBPF_HIST_SLOTS) || !defined(PIOBPF_MAX_WINDOW_NS) \
    || !defined(PIOBPF_TIME_ENTRIES) || !defined(PIOBPF_MAX_THREADS)
#error "compile through piobpf/kernel.py, which defines the latency parameters"
#endif

struct pio_time {
    u64 windows;                    // exits timed
    u64 time_ns;                    // their total
    u64 max_ns;                     // the longest
    u64 hist[PIOBPF_HIST_SLOTS];    // log2, as BCC's: slot i counts [2^(i-1), 2^i) ns
};
BPF_HASH(times, pio_key_t, struct pio_time, PIOBPF_TIME_ENTRIES);

// Per vCPU thread: the exit under way. Bounded, and emptied when a thread
// exits, so a vCPU killed in the middle of an exit leaves nothing behind.
struct pio_pending {
    u64 user_ts;            // left KVM_RUN for user space (0: not out)
    u64 exit_ts;            // kvm_exit (0: none seen)
    pio_key_t kernel_key;   // the port I/O between kvm_exit and kvm_entry
    u8 has_kernel;
};
BPF_HASH(pending, u32, struct pio_pending, PIOBPF_MAX_THREADS);

struct run_key {
    u32 tgid;
    u32 fd;         // the vCPU's fd, as the VMM passes it to ioctl(KVM_RUN)
};
BPF_HASH(runs, struct run_key, u64, PIOBPF_MAX_THREADS);    // -> kvm_run's user address
BPF_HASH(unresolved, struct run_key, u8, PIOBPF_MAX_THREADS);

// The thread's entry, made on its first exit (a thread of a traced VMM only).
static __always_inline struct pio_pending *pending_of(u64 id)
{
    u32 tid = id;
    struct pio_pending *p = pending.lookup(&tid);
    if (p)
        return p;
#ifdef PIOBPF_FILTER_PIDS
    u32 tgid = id >> 32;
    if (!pids.lookup(&tgid))
        return 0;
#endif
    struct pio_pending zero = {};
    pending.insert(&tid, &zero);
    p = pending.lookup(&tid);
    if (!p)                 // more vCPU threads than the map holds
        count_dropped(DROPPED_NO_ROOM);
    return p;
}

static __always_inline void time_window(pio_key_t *key, u64 ns)
{
    if (ns > PIOBPF_MAX_WINDOW_NS) {    // a stopped VM, not emulation
        count_dropped(DROPPED_TOO_LONG);
        return;
    }
    struct pio_time *t = times.lookup(key);
    if (!t) {
        struct pio_time zero = {};
        times.insert(key, &zero);
        t = times.lookup(key);
        if (!t) {
            count_dropped(DROPPED_NO_ROOM);
            return;
        }
    }
    u32 slot = bpf_log2l(ns);
    if (slot >= PIOBPF_HIST_SLOTS)
        slot = PIOBPF_HIST_SLOTS - 1;
    __sync_fetch_and_add(&t->windows, 1);
    __sync_fetch_and_add(&t->time_ns, ns);
    __sync_fetch_and_add(&t->hist[slot], 1);
    if (ns > t->max_ns)     // a race with another CPU may keep the lower of two
        t->max_ns = ns;
}

// Whether kvm_exit fires here at all: until it does, count_pio skips the
// per-thread lookup below (an array slot is read at the cost of a load).
BPF_ARRAY(kvm_exit_fires, u8, 1);

// From count_pio: the port of an exit the kernel may handle in place.
static __always_inline void time_pio(pio_key_t *key, u64 id)
{
    u32 zero = 0;
    u8 *fires = kvm_exit_fires.lookup(&zero);
    if (!fires || !*fires)
        return;
    u32 tid = id;
    struct pio_pending *p = pending.lookup(&tid);
    if (p && p->exit_ts) {
        p->kernel_key = *key;
        p->has_kernel = 1;
    }
}

RAW_TRACEPOINT_PROBE(kvm_userspace_exit)
{
    u64 id = bpf_get_current_pid_tgid();
    // Restarts (errno -EINTR) and other exits are no port's cost.
    if ((u32)ctx->args[0] != KVM_EXIT_IO || (int)ctx->args[1] != 0)
        return 0;
    struct pio_pending *p = pending_of(id);
    if (p) {
        p->user_ts = bpf_ktime_get_ns();
        p->exit_ts = 0;     // this window is timed from user space's side
    }
    return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_ioctl)
{
    if (args->cmd != KVM_RUN)
        return 0;
    u64 id = bpf_get_current_pid_tgid();
    u32 tid = id;
    struct pio_pending *p = pending.lookup(&tid);
    if (!p || !p->user_ts)
        return 0;
    u64 ns = bpf_ktime_get_ns() - p->user_ts;
    p->user_ts = 0;
    struct run_key rk = {.tgid = id >> 32, .fd = args->fd};
    u64 *run = runs.lookup(&rk);
    if (!run) {             // a vCPU user space has not looked up yet
        u8 one = 1;
        unresolved.update(&rk, &one);
        count_dropped(DROPPED_UNRESOLVED);
        return 0;
    }
    // Two fields of kvm_run (the whole is too big for the BPF stack).
    u32 reason = 0;
    __typeof__(((struct kvm_run *)0)->io) io = {};
    if (bpf_probe_read_user(&reason, sizeof(reason),
                            (void *)(*run + offsetof(struct kvm_run, exit_reason)))
        || bpf_probe_read_user(&io, sizeof(io), (void *)(*run + offsetof(struct kvm_run, io)))
        || reason != KVM_EXIT_IO) {
        count_dropped(DROPPED_UNRESOLVED);
        return 0;
    }
    u32 dirport = (io.direction == KVM_EXIT_IO_OUT ? 0x10000 : 0) | io.port;
    pio_key_t key = key_of(dirport, id);
    time_window(&key, ns);
    return 0;
}

RAW_TRACEPOINT_PROBE(kvm_exit)
{
    u32 zero = 0;
    u8 *fires = kvm_exit_fires.lookup(&zero);
    if (fires && !*fires)
        *fires = 1;
    struct pio_pending *p = pending_of(bpf_get_current_pid_tgid());
    if (p) {
        p->exit_ts = bpf_ktime_get_ns();
        p->has_kernel = 0;
    }
    return 0;
}

RAW_TRACEPOINT_PROBE(kvm_entry)
{
    u32 tid = bpf_get_current_pid_tgid();
    struct pio_pending *p = pending.lookup(&tid);
    if (!p)
        return 0;
    if (p->exit_ts && p->has_kernel)
        time_window(&p->kernel_key, bpf_ktime_get_ns() - p->exit_ts);
    p->exit_ts = 0;
    return 0;
}

RAW_TRACEPOINT_PROBE(sched_process_exit)
{
    u32 tid = bpf_get_current_pid_tgid();
    pending.delete(&tid);
    return 0;
}
#endif


static __always_inline void count_pio(u32 rw, u32 port, u32 size, u32 count)
{
    u32 dirport = (rw ? 0x10000 : 0) | (port & 0xffff);
    u64 id = bpf_get_current_pid_tgid();
#ifdef PIOBPF_FILTER_PIDS
    u32 tgid = id >> 32;
    if (!pids.lookup(&tgid))
        return;
#endif
    pio_key_t key = key_of(dirport, id);
    struct pio_counts *c = counts.lookup(&key);
#ifndef PIOBPF_KEY_TGID
    if (!c)         // never: dirport < PIOBPF_PORT_KEYS; the verifier wants the check
        return;
#else
    if (!c) {
        struct pio_counts zero = {};
#ifdef PIOBPF_KEY_TID
        bpf_get_current_comm(&zero.comm, sizeof(zero.comm));
#endif
        // BPF_NOEXIST: when another CPU inserted the key first, keep its counts.
        counts.insert(&key, &zero);
        c = counts.lookup(&key);
        if (!c) {
            count_dropped(DROPPED_EVENTS);
            return;
        }
    }
#endif
    __sync_fetch_and_add(&c->events, 1);
    __sync_fetch_and_add(&c->bytes, (u64)size * count);
#ifdef PIOBPF_LATENCY
    time_pio(&key, id);
#endif
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
