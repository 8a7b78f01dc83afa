// piobpf: count kvm:kvm_pio events per (direction, port) in the kernel,
// optionally per VMM process (PIOBPF_KEY_TGID) and vCPU thread (PIOBPF_KEY_TID).
//
// Compiled by BCC. The front end (piobpf/kernel.py) passes every parameter
// as a -D flag with a numeric value, so nothing it is given can become C
// code, and each constant has one source, there; PIDs to trace go into the
// pids map after load. kernel.py reads the layout of the structs below back
// from the loaded program and refuses one it does not know.
//
// Counts are cumulative and never cleared while they can grow: user space
// reads snapshots and subtracts, so an event that lands while a read is
// under way is counted in this interval or the next, never lost and never
// twice. By VM or vCPU, the counts of a VM whose process has exited are
// final; user space moves them out of the map (kernel.py: evict).

#if !defined(PIOBPF_PORT_KEYS) || !defined(PIOBPF_MAX_ENTRIES) || !defined(PIOBPF_MAX_PIDS) \
    || !defined(DROPPED_SLOTS)
#error "compile through piobpf/kernel.py, which defines the parameters"
#endif
// PIOBPF_PORT_KEYS: 2 directions x 65536 ports; PIOBPF_MAX_ENTRIES: keys
// by VM or vCPU; PIOBPF_MAX_PIDS: processes -p can name.

struct pio_key {
    u32 dirport;    // direction << 16 | port
    u32 vm;         // the VM's id in vms (by VM or vCPU), else 0
    u32 tid;        // 0 unless PIOBPF_KEY_TID
};

struct pio_counts {
    u64 events;
    u64 bytes;
#ifdef PIOBPF_KEY_TID
    char comm[16];  // the thread's name (QEMU: "CPU 3/KVM"), even after it exits
#endif
};

// What could not be counted, reported, not hidden: events whose key could
// not be counted (map full); with PIOBPF_LATENCY also exit windows too long
// to be emulation, ones the time maps had no room for, and exits already
// under way when tracing began. The slots' indices (DROPPED_*) come from kernel.py's DROPPED.
BPF_ARRAY(dropped, u64, DROPPED_SLOTS);
#ifdef PIOBPF_FILTER_PIDS
BPF_HASH(pids, u32, u8, PIOBPF_MAX_PIDS);
#endif

static __always_inline void count_dropped(u32 idx)
{
    u64 *d = dropped.lookup(&idx);
    if (d)
        __sync_fetch_and_add(d, 1);
}

#ifndef PIOBPF_KEY_TGID
// By port the key space is small and fixed: an array indexed by the key,
// which the verifier turns into pointer arithmetic (no hashing, half the
// cost of a hash lookup here) and which can never be full.
BPF_ARRAY(counts, struct pio_counts, PIOBPF_PORT_KEYS);
#else
#if !defined(PIOBPF_MAX_VMS) || !defined(PIOBPF_RECENT) || !defined(PIOBPF_TASK_GROUP_LEADER) \
    || !defined(PIOBPF_TASK_START_BOOTTIME) || !defined(PIOBPF_TASK_SIGNAL) \
    || !defined(PIOBPF_SIGNAL_LIVE) || !defined(PIOBPF_TASK_MM) || !defined(PIOBPF_TASK_COMM) \
    || !defined(PIOBPF_MM_ARG_START) || !defined(PIOBPF_MM_ARG_END) || !defined(PIOBPF_ARGS) \
    || !defined(PIOBPF_RING_PAGES)
#error "compile through piobpf/kernel.py, which defines the parameters"
#endif
// PIOBPF_MAX_VMS: VMM processes at once; PIOBPF_RECENT: a CPU's remembered
// keys; PIOBPF_TASK_*, PIOBPF_SIGNAL_LIVE and PIOBPF_MM_*: byte offsets of
// those fields of task_struct, signal_struct and mm_struct, from the running
// kernel's BTF (its headers may be another version's); PIOBPF_ARGS: bytes of
// a VM's command line rung to user space; PIOBPF_RING_PAGES: the ring's size.

// A VM is a process, not a pid: a pid recycled for a new process is a new
// VM, with a new id and keys of its own.
struct vm {
    u32 tgid;
    u32 exited;     // set when its last thread exits: its counts are final
    u64 start;      // the process's start, ns after boot (as /proc/PID/stat's, in ticks)
};

// Keys by VM or vCPU live in a hash, but the counts in an array: each key
// gets a slot of counts when first seen, and each CPU remembers the slots
// of its recent keys, so most events find their counts by array index, as
// by port, without hashing.
struct recent {
    u64 thread;     // pid_tgid of the event, the tid part 0 unless PIOBPF_KEY_TID
    u32 dirport;
    u32 slot;
    u32 epoch;      // valid while epoch[0] is this
};

BPF_ARRAY(counts, struct pio_counts, PIOBPF_MAX_ENTRIES);   // indexed by slot
BPF_HASH(slots, struct pio_key, u32, PIOBPF_MAX_ENTRIES);   // key -> slot
BPF_STACK(spare, u32, PIOBPF_MAX_ENTRIES);                  // free slots, from user space
BPF_HASH(live, u32, u32, PIOBPF_MAX_VMS);                   // tgid -> VM id, while it runs
BPF_HASH(vms, u32, struct vm, PIOBPF_MAX_VMS);              // VM id -> process, until evicted
// Bumped (by 2: odd, never 0) when a VM exits: every CPU's recent slots are
// then stale, so none outlives the process it was for (its pid may be
// recycled next). 0 until user space has filled spare and sets 1: nothing
// is counted before.
BPF_ARRAY(epoch, u32, 1);
BPF_PERCPU_ARRAY(recent, struct recent, PIOBPF_RECENT);
// A VM came or went: wakes user space, which then reads vms. A VM that goes
// rings its tgid; one that comes, what names it (struct arrival), read in its
// own thread on its first count, while the process surely lives: by the time
// user space reads /proc the process may be exiting, its command line empty.
// A full ring loses no VM: it is full of rings not yet drained, so user space
// wakes and reads vms; a VM whose arrival found no room is named from /proc.
BPF_RINGBUF_OUTPUT(doorbell, PIOBPF_RING_PAGES);
struct arrival {
    u32 tgid;
    u32 args_len;   // bytes of the argument area, 0 when unreadable; args holds the first
    u64 start;      // as struct vm's
    char comm[16];  // the process's name (its leader's)
    char args[PIOBPF_ARGS];     // as /proc/PID/cmdline: NUL-separated arguments
};
BPF_PERCPU_ARRAY(arrivals, struct arrival, 1);  // built here: too big for the stack

static __always_inline u64 read_u64(u64 addr)
{
    u64 value = 0;
    bpf_probe_read_kernel(&value, sizeof(value), (void *)addr);
    return value;
}

// True when the current task is the last of its process to exit: then no
// thread of it can count any more.
static __always_inline bool group_dead(void)
{
    u64 signal = read_u64(bpf_get_current_task() + PIOBPF_TASK_SIGNAL);
    int live_threads = 1;
    bpf_probe_read_kernel(&live_threads, sizeof(live_threads),
                          (void *)(signal + PIOBPF_SIGNAL_LIVE));
    return live_threads == 0;
}

// A process exits. A raw tracepoint: it runs in the exiting task, and it
// cannot hide the event from a perf session. Attached with the counting
// program, which counts nothing until user space starts it (epoch), so no
// exit of a counted process goes unseen.
static __always_inline void vm_exit(void)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u32 *vm = live.lookup(&tgid);
#ifdef PIOBPF_FILTER_PIDS
    if (!vm && !pids.lookup(&tgid))
        return;
#else
    if (!vm)
        return;
#endif
    if (!group_dead())
        return;
#ifdef PIOBPF_FILTER_PIDS
    pids.delete(&tgid);     // -p named this process, not whatever gets its pid next
#endif
    if (!vm)
        return;
    u32 id = *vm, zero = 0;
    live.delete(&tgid);     // the next process with this pid is a new VM
    u32 *e = epoch.lookup(&zero);
    if (e)
        __sync_fetch_and_add(e, 2);
    // Then, and only then, user space may take its keys' slots back.
    struct vm *v = vms.lookup(&id);
    if (v)
        v->exited = 1;
    doorbell.ringbuf_output(&tgid, sizeof(tgid), 0);
    return;
}

// Ring user space that a VM came, with its process's name and command line.
static __always_inline void ring_arrival(struct vm *new, u64 leader)
{
    u32 zero = 0;
    struct arrival *a = arrivals.lookup(&zero);
    if (!a)
        return;
    a->tgid = new->tgid;
    a->start = new->start;
    bpf_probe_read_kernel(&a->comm, sizeof(a->comm), (void *)(leader + PIOBPF_TASK_COMM));
    u64 mm = read_u64(bpf_get_current_task() + PIOBPF_TASK_MM);
    u64 from = read_u64(mm + PIOBPF_MM_ARG_START), to = read_u64(mm + PIOBPF_MM_ARG_END);
    u32 len = to > from && to - from < 0x7fffffff ? to - from : 0;
    u64 copy = len;
    // The verifier wants the bound checked on the very register passed on,
    // which clang would not do: the empty asm makes it forget what it knows.
    asm volatile("" : "+r"(copy));
    if (copy > PIOBPF_ARGS)
        copy = PIOBPF_ARGS;
    // A page not in memory cannot be read here: then /proc names it.
    if (copy && bpf_probe_read_user(a->args, copy, (void *)from))
        len = copy = 0;
    a->args_len = len;
    doorbell.ringbuf_output(a, offsetof(struct arrival, args) + copy, 0);  // not all of args
}

// The id of this process's VM; a new one on its first event.
static __always_inline u32 *vm_of(u32 tgid)
{
    u32 *vm = live.lookup(&tgid);
    if (vm)
        return vm;
    u64 leader = read_u64(bpf_get_current_task() + PIOBPF_TASK_GROUP_LEADER);
    struct vm new = {.tgid = tgid, .start = read_u64(leader + PIOBPF_TASK_START_BOOTTIME)};
    // A random id that no VM in vms holds (BCC's compiler cannot return a
    // counter's old value from an atomic add). Inserting it claims it.
    u32 id = bpf_get_prandom_u32();
    if (vms.insert(&id, &new)) {
        id = bpf_get_prandom_u32();
        if (vms.insert(&id, &new))
            return 0;
    }
    if (live.insert(&tgid, &id) == 0)
        ring_arrival(&new, leader);
    else
        vms.delete(&id);    // another CPU's event of this process came first
    return live.lookup(&tgid);
}

// The key of this event for every map keyed like counts: (direction, port),
// the VM and, by vCPU, the thread. False when it is not counted (filtered
// out, or no room for a new VM: then counted as dropped).
static __always_inline bool pio_key(struct pio_key *key, u32 dirport, u64 id)
{
    u32 tgid = id >> 32;
#ifdef PIOBPF_FILTER_PIDS
    if (!pids.lookup(&tgid))
        return false;
#endif
    u32 *vm = vm_of(tgid);
    if (!vm) {
        count_dropped(DROPPED_EVENTS);
        return false;
    }
    key->dirport = dirport;
    key->vm = *vm;
#ifdef PIOBPF_KEY_TID
    key->tid = (u32)id;
#endif
    return true;
}

// The slot of counts that `key` has, or a spare one it takes now.
static __always_inline u32 *slot_of(struct pio_key *key)
{
    u32 *slot = slots.lookup(key);
    if (slot)
        return slot;
    u32 fresh;
    if (spare.pop(&fresh))
        return 0;           // every slot taken: the map is full
#ifdef PIOBPF_KEY_TID
    struct pio_counts *c = counts.lookup(&fresh);
    if (c)
        bpf_get_current_comm(&c->comm, sizeof(c->comm));
#endif
    if (slots.insert(key, &fresh))
        spare.push(&fresh, 0);  // another CPU gave the key a slot first
    return slots.lookup(key);
}
#endif

// The index of this event's counts in counts, and in every array keyed like
// it: by port the (direction, port) itself, by VM or vCPU the slot of its
// key. False when the event is not counted.
static __always_inline bool pio_slot(u32 *slot, u32 rw, u32 port)
{
    u32 dirport = (rw ? 0x10000 : 0) | (port & 0xffff);
#ifndef PIOBPF_KEY_TGID
#ifdef PIOBPF_FILTER_PIDS
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    if (!pids.lookup(&tgid))
        return false;
#endif
    *slot = dirport;
    return true;
#else
    u64 id = bpf_get_current_pid_tgid();
#ifdef PIOBPF_KEY_TID
    u64 thread = id;
#else
    u64 thread = id >> 32 << 32;
#endif
    u32 way = (dirport ^ (u32)id) % PIOBPF_RECENT, zero = 0;
    struct recent *r = recent.lookup(&way);
    u32 *e = epoch.lookup(&zero);
    if (!r || !e)
        return false;
    u32 now = *e;
    if (!now)
        return false;   // not started (so entries of epoch 0 match nothing)
    if (r->thread == thread && r->dirport == dirport && r->epoch == now) {
        *slot = r->slot;
        return true;
    }
    struct pio_key key = {};
    if (!pio_key(&key, dirport, id))
        return false;
    u32 *s = slot_of(&key);
    if (!s) {
        count_dropped(DROPPED_EVENTS);
        return false;
    }
    *slot = r->slot = *s;
    r->thread = thread;
    r->dirport = dirport;
    r->epoch = now;
    return true;
#endif
}

#ifdef PIOBPF_LATENCY
// How long each port I/O exit keeps its vCPU out of the guest, from KVM's
// own tracepoints only (no syscall tracepoint: that would slow every
// syscall of every process on the host).
//
// Exits to the VMM in user space: kvm_fpu fires with load=0 as KVM_RUN
// ends and with load=1 as the next one starts, in the vCPU's thread. At the
// end the vCPU is still loaded, so the kernel's own kvm_run (vcpu->run, found
// from the task's preempt notifier) says what the exit is: its reason and,
// for KVM_EXIT_IO, the direction and port. kvm_userspace_exit, after KVM_RUN
// has returned, confirms that the exit went to user space (same reason,
// errno 0); a put and load inside one KVM_RUN (kvm_xstate_reset on INIT) has
// none, and opens no window. The window is the VMM's emulation, its locks and
// its scheduling, and it holds for a VM whenever it started.
// Exits handled in the kernel: from kvm_exit to kvm_entry around a kvm_pio,
// where those tracepoints fire (hardware VMX/SVM; not under every nested
// hypervisor).
#include <uapi/linux/kvm.h>
#if !defined(PIOBPF_HIST_SLOTS) || !defined(PIOBPF_MAX_WINDOW_NS) \
    || !defined(PIOBPF_TIME_ENTRIES) || !defined(PIOBPF_MAX_THREADS) \
    || !defined(PIOBPF_TASK_PREEMPT_NOTIFIERS) || !defined(PIOBPF_VCPU_PREEMPT_NOTIFIER) \
    || !defined(PIOBPF_NOTIFIER_LINK) || !defined(PIOBPF_VCPU_RUN)
#error "compile through piobpf/kernel.py, which defines the latency parameters"
#endif
// PIOBPF_TASK_PREEMPT_NOTIFIERS, PIOBPF_VCPU_*, PIOBPF_NOTIFIER_LINK: byte
// offsets of task_struct.preempt_notifiers, kvm_vcpu.preempt_notifier,
// kvm_vcpu.run and preempt_notifier.link, from the running kernel's BTF.

struct pio_time {
    u64 windows;                    // exits timed
    u64 time_ns;                    // their total
    u64 max_ns;                     // the longest
    u64 hist[PIOBPF_HIST_SLOTS];    // log2, as BCC's: slot i counts [2^(i-1), 2^i) ns
};
// Keyed as counts is indexed: by port the (direction, port), by VM or vCPU
// the key's slot (pio_slot).
BPF_HASH(times, u32, struct pio_time, PIOBPF_TIME_ENTRIES);

// Where a thread's exit to user space stands.
enum { WINDOW_NONE, WINDOW_LEAVING, WINDOW_OUT };

// Per vCPU thread: the exit under way. Bounded, and emptied when a thread
// exits, so a vCPU killed in the middle of an exit leaves nothing behind.
struct pio_pending {
    u64 user_ts;            // KVM_RUN ended (kvm_fpu 0) with an exit of `reason`
    u64 key;                // that exit's key: for KVM_EXIT_IO direction << 16 | port
    u32 reason;             // its KVM_EXIT_*
    u32 state;              // WINDOW_*
    u64 exit_ts;            // kvm_exit (0: none seen)
    u32 kernel_slot;        // the port I/O between kvm_exit and kvm_entry
    u32 has_kernel;
};
BPF_HASH(pending, u32, struct pio_pending, PIOBPF_MAX_THREADS);

static __always_inline bool traced_process(u64 id)
{
#ifdef PIOBPF_FILTER_PIDS
    u32 tgid = id >> 32;
    return pids.lookup(&tgid) != 0;
#else
    return true;
#endif
}

// The thread's entry, made on its first exit (a thread of a traced VMM only).
static __always_inline struct pio_pending *pending_of(u64 id)
{
    u32 tid = id;
    struct pio_pending *p = pending.lookup(&tid);
    if (p || !traced_process(id))
        return p;
    struct pio_pending zero = {};
    pending.insert(&tid, &zero);
    p = pending.lookup(&tid);
    if (!p)                 // more vCPU threads than the map holds
        count_dropped(DROPPED_NO_ROOM);
    return p;
}

// The head of the kernel's kvm_run of the vCPU this thread has loaded: its
// exit reason and the exit's details (the io and mmio members of the union).
// As it lies in kvm_run from exit_reason on, so that one read gets both.
struct run_head {
    u32 exit_reason;
    u8 between[offsetof(struct kvm_run, io) - offsetof(struct kvm_run, exit_reason) - 4];
    __typeof__(((struct kvm_run *)0)->io) io;
} __attribute__((packed));
_Static_assert(offsetof(struct run_head, io)
               == offsetof(struct kvm_run, io) - offsetof(struct kvm_run, exit_reason),
               "run_head mirrors kvm_run");

static __always_inline int loaded_run(struct run_head *head)
{
    // vcpu_load put &vcpu->preempt_notifier on current->preempt_notifiers
    // (KVM is the only user of preempt notifiers on x86).
    u64 link = 0, run = 0;
    u64 task = bpf_get_current_task();
    if (bpf_probe_read_kernel(&link, sizeof(link), (void *)(task + PIOBPF_TASK_PREEMPT_NOTIFIERS))
        || !link)
        return -1;
    u64 vcpu = link - PIOBPF_NOTIFIER_LINK - PIOBPF_VCPU_PREEMPT_NOTIFIER;
    if (bpf_probe_read_kernel(&run, sizeof(run), (void *)(vcpu + PIOBPF_VCPU_RUN)) || !run)
        return -1;
    return bpf_probe_read_kernel(head, sizeof(*head),
                                 (void *)(run + offsetof(struct kvm_run, exit_reason)));
}

static __always_inline void time_window(u32 slot, u64 ns)
{
    if (ns > PIOBPF_MAX_WINDOW_NS) {    // a stopped VM, not emulation
        count_dropped(DROPPED_TOO_LONG);
        return;
    }
    struct pio_time *t = times.lookup(&slot);
    if (!t) {
        struct pio_time zero = {};
        times.insert(&slot, &zero);
        t = times.lookup(&slot);
        if (!t) {
            count_dropped(DROPPED_NO_ROOM);
            return;
        }
    }
    u32 bucket = bpf_log2l(ns);
    if (bucket >= PIOBPF_HIST_SLOTS)
        bucket = PIOBPF_HIST_SLOTS - 1;
    __sync_fetch_and_add(&t->windows, 1);
    __sync_fetch_and_add(&t->time_ns, ns);
    __sync_fetch_and_add(&t->hist[bucket], 1);
    if (ns > t->max_ns)     // a race with another CPU may keep the lower of two
        t->max_ns = ns;
}

// Whether kvm_exit fires here at all: until it does, count_pio skips the
// per-thread lookup below (an array slot is read at the cost of a load).
BPF_ARRAY(kvm_exit_fires, u8, 1);

// From count_pio: the port of an exit the kernel may handle in place.
static __always_inline void time_pio(u32 slot, u64 id)
{
    u32 zero = 0;
    u8 *fires = kvm_exit_fires.lookup(&zero);
    if (!fires || !*fires)
        return;
    u32 tid = id;
    struct pio_pending *p = pending.lookup(&tid);
    if (p && p->exit_ts) {
        p->kernel_slot = slot;
        p->has_kernel = 1;
    }
}

// KVM_RUN ends: note the exit it returns, if it is one a window times.
static __always_inline void run_ends(u64 id)
{
    struct pio_pending *p = pending_of(id);
    if (!p)
        return;
    struct run_head head = {};
    if (loaded_run(&head) || head.exit_reason != KVM_EXIT_IO) {
        p->state = WINDOW_NONE;
        return;
    }
    p->reason = head.exit_reason;
    p->key = (head.io.direction == KVM_EXIT_IO_OUT ? 0x10000 : 0) | head.io.port;
    p->user_ts = bpf_ktime_get_ns();
    p->state = WINDOW_LEAVING;
}

// KVM_RUN starts: the window of the exit to user space before, if any, closes.
static __always_inline void run_starts(u64 id)
{
    u32 tid = id;
    struct pio_pending *p = pending.lookup(&tid);
    if (!p) {
        // The thread's first KVM_RUN since attach. If its kvm_run holds a
        // port exit, that exit was under way when tracing began: untimed,
        // and said so. (A thread's entry, made here, makes this once.)
        if (!traced_process(id))
            return;
        struct run_head head = {};
        if (!loaded_run(&head) && head.exit_reason == KVM_EXIT_IO)
            count_dropped(DROPPED_OPEN_AT_START);
        pending_of(id);
        return;
    }
    if (p->state == WINDOW_OUT) {
        u64 ns = bpf_ktime_get_ns() - p->user_ts;
        u32 slot;
        if (pio_slot(&slot, p->key >> 16, p->key & 0xffff))
            time_window(slot, ns);
    }
    p->state = WINDOW_NONE;
}

RAW_TRACEPOINT_PROBE(kvm_fpu)
{
    u64 id = bpf_get_current_pid_tgid();
    if (ctx->args[0])
        run_starts(id);
    else
        run_ends(id);
    return 0;
}

RAW_TRACEPOINT_PROBE(kvm_userspace_exit)
{
    u32 tid = bpf_get_current_pid_tgid();
    struct pio_pending *p = pending.lookup(&tid);
    if (!p || p->state != WINDOW_LEAVING)
        return 0;
    // The exit noted as KVM_RUN ended did go to user space.
    bool out = (u32)ctx->args[0] == p->reason && (int)ctx->args[1] == 0;
    p->state = out ? WINDOW_OUT : WINDOW_NONE;
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
        time_window(p->kernel_slot, bpf_ktime_get_ns() - p->exit_ts);
    p->exit_ts = 0;
    return 0;
}

static __always_inline void thread_exit(void)
{
    u32 tid = bpf_get_current_pid_tgid();
    pending.delete(&tid);
}
#endif

static __always_inline void count_pio(u32 rw, u32 port, u32 size, u32 count)
{
    u32 slot;
    if (!pio_slot(&slot, rw, port))
        return;
    struct pio_counts *c = counts.lookup(&slot);
    if (!c)         // never: the index is below the array's size; the verifier wants the check
        return;
    __sync_fetch_and_add(&c->events, 1);
    __sync_fetch_and_add(&c->bytes, (u64)size * count);
#ifdef PIOBPF_LATENCY
    time_pio(slot, bpf_get_current_pid_tgid());
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

#if defined(PIOBPF_KEY_TGID) || defined(PIOBPF_LATENCY)
// A thread exits: its exit window, if one is open, ends with it; the last
// thread of a counted VMM ends the VM.
RAW_TRACEPOINT_PROBE(sched_process_exit)
{
#ifdef PIOBPF_LATENCY
    thread_exit();
#endif
#ifdef PIOBPF_KEY_TGID
    vm_exit();
#endif
    return 0;
}
#endif
