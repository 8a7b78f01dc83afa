// piobpf: count kvm:kvm_pio events per (direction, port) in the kernel,
// optionally per VMM process (PIOBPF_KEY_TGID) and vCPU thread
// (PIOBPF_KEY_TID), and with PIOBPF_LATENCY time each exit.
//
// Compiled by BCC through piobpf/kernel/program.py, which passes every
// parameter as a -D flag with a numeric value, so nothing it is given can
// become C code. This file is the fast path; each feature is a header:
//   piobpf.h     parameters and the structs user space reads back
//   maps.h       every map
//   pidfilter.h  -p
//   vmkeys.h     keys by VM or vCPU, and a VM's first count and end
//   mmio.h       --mmio: kvm_mmio and kvm_fast_mmio per (direction, gpa)
//   latency.h    --latency's exit windows and their tracepoints

#include "piobpf.h"
#include "maps.h"
#include "pidfilter.h"

#ifdef PIOBPF_KEY_TGID
#include "vmkeys.h"
#else
// By port the key is the index of its counts (never full: `timing` as by VM).
static __always_inline bool pio_slot(u32 *slot, u32 dp, bool timing)
{
    if (!TRACED(bpf_get_current_pid_tgid() >> 32))
        return false;
    *slot = dp;
    return true;
}

// A thread exits: with -p, a traced process's last one takes it out of
// pids, and (--mmio) makes every CPU's recent MMIO slots stale, as a VM's
// end does by VM: one of its would count the next process given its pid.
static __always_inline void vm_exit(void)
{
#if PIOBPF_FILTERING
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!in_pids(tgid) || !group_dead())
        return;
    pids.delete(&tgid);
#ifdef PIOBPF_MMIO
    u32 zero = 0;
    u32 *e = epoch.lookup(&zero);
    if (e)
        __sync_fetch_and_add(e, 2);
#endif
#endif
}
#endif

#ifdef PIOBPF_MMIO
#include "mmio.h"
#endif

#ifdef PIOBPF_LATENCY
#include "latency.h"
#else
static __always_inline void time_pio(u32 slot) {}
static __always_inline void thread_exit(void) {}
#endif

static __always_inline void count_pio(u32 rw, u32 port, u32 size, u32 count)
{
    u32 slot;
    if (!pio_slot(&slot, dirport(rw, port), false))
        return;
    struct pio_counts *c = counts.lookup(&slot);
    if (!c)         // never: the index is below the array's size; the verifier wants the check
        return;
    __sync_fetch_and_add(&c->events, 1);
    __sync_fetch_and_add(&c->bytes, (u64)size * count);
    time_pio(slot);
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

#if defined(PIOBPF_KEY_TGID) || defined(PIOBPF_LATENCY) || PIOBPF_FILTERING
// A thread exits (a raw tracepoint: it runs in the exiting task, and cannot
// hide the event from a perf session): its exit window, if one is open,
// ends with it; the last thread of a counted VMM ends the VM, of a process
// -p names its tracing.
RAW_TRACEPOINT_PROBE(sched_process_exit)
{
    thread_exit();
    vm_exit();
    return 0;
}
#endif
