// Every map of the program. Counts are cumulative and never cleared while
// they can grow: user space reads snapshots and subtracts, so an event that
// lands while a read is under way is counted in this interval or the next,
// never lost and never twice.

// Events not counted because their key found no room (a full map): counted
// here, reported, never hidden; a slot a reason (PIOBPF_DROPPED_*).
BPF_ARRAY(dropped, u64, PIOBPF_DROPPED_SLOTS);

#if defined(PIOBPF_KEY_TGID) || defined(PIOBPF_MMIO)
// 0 until user space has filled the spare slots and sets 1: nothing is
// counted before. Bumped (by 2: odd, never 0) when a VM exits, or with -p a
// traced process: every CPU's recent slots are then stale, so none outlives
// the process it was for (its pid may be recycled next).
BPF_ARRAY(epoch, u32, 1);
#endif

#ifndef PIOBPF_KEY_TGID
// By port the key space is small and fixed: an array indexed by the key,
// which the verifier turns into pointer arithmetic (no hashing, half the
// cost of a hash lookup here) and which can never be full.
BPF_ARRAY(counts, struct pio_counts, PIOBPF_PORT_KEYS);
#else
// Keys by VM or vCPU live in a hash, but the counts in an array: each key
// gets a slot of counts when first seen, and each CPU remembers the slots
// of its recent keys, so most events find their counts by array index, as
// by port, without hashing.
BPF_ARRAY(counts, struct pio_counts, PIOBPF_MAX_ENTRIES);   // indexed by slot
BPF_HASH(slots, struct pio_key, u32, PIOBPF_MAX_ENTRIES);   // key -> slot
BPF_STACK(spare, u32, PIOBPF_MAX_ENTRIES);                  // free slots, from user space
BPF_HASH(running, u32, u32, PIOBPF_MAX_VMS);                // tgid -> VM id, while it runs
BPF_HASH(vms, u32, struct vm, PIOBPF_MAX_VMS);              // VM id -> process, until evicted
BPF_PERCPU_ARRAY(recent, struct recent, PIOBPF_RECENT);
// A VM came or went: wakes user space, which then reads vms. A VM that goes
// rings its tgid; one that comes, what names it (struct arrival), read in its
// own thread on its first count, while the process surely lives: by the time
// user space reads /proc the process may be exiting, its command line empty.
// A full ring loses no VM: it is full of rings not yet drained, so user space
// wakes and reads vms; a VM whose arrival found no room is named from /proc.
BPF_RINGBUF_OUTPUT(doorbell, PIOBPF_RING_PAGES);
BPF_PERCPU_ARRAY(arrivals, struct arrival, 1);  // built here: too big for the stack
#endif

#ifdef PIOBPF_LATENCY
// Exits counted but not timed, by reason (PIOBPF_UNTIMED_*): windows too
// long to be emulation, no room in the time maps, exits already under way
// when tracing began.
BPF_ARRAY(untimed, u64, PIOBPF_UNTIMED_SLOTS);
// Keyed as counts is indexed: by port the (direction, port), by VM or vCPU
// the key's slot (pio_slot).
BPF_HASH(times, u32, struct pio_time, PIOBPF_TIME_ENTRIES);
// The exit under way of each vCPU thread: bounded, and emptied when a thread
// exits, so a vCPU killed in the middle of an exit leaves nothing behind.
BPF_HASH(pending, u32, struct pio_pending, PIOBPF_MAX_THREADS);
// Whether kvm_exit fires here at all: until it does, count_pio skips the
// per-thread lookup (an array slot is read at the cost of a load).
BPF_ARRAY(kvm_exit_fires, u8, 1);
#endif

#ifdef PIOBPF_MMIO
// MMIO addresses are a sparse 64-bit space: a bounded hash gives each key
// (--mmio-map-size of them) a slot of counts, and each CPU remembers the
// slots of its recent keys, as by VM: most events count by array index,
// without hashing (which cost 30 ns an event more here, 2026-12-06).
BPF_ARRAY(mmio_counts, struct pio_counts, PIOBPF_MMIO_ENTRIES);    // indexed by slot
BPF_HASH(mmio_slots, struct mmio_key, u32, PIOBPF_MMIO_ENTRIES);   // key -> slot
BPF_STACK(mmio_spare, u32, PIOBPF_MMIO_ENTRIES);                   // free slots, from user space
BPF_PERCPU_ARRAY(mmio_recent, struct mmio_recent, PIOBPF_RECENT);
#ifdef PIOBPF_LATENCY
BPF_HASH(mmio_times, struct mmio_key, struct pio_time, PIOBPF_MMIO_ENTRIES);
#endif
#endif

static __always_inline void count_dropped(u32 reason)
{
    u64 *d = dropped.lookup(&reason);
    if (d)
        __sync_fetch_and_add(d, 1);
}
