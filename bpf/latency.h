// How long each port I/O (with --mmio, MMIO) exit keeps its vCPU out of the guest, from KVM's
// own tracepoints only (no syscall tracepoint: that would slow every
// syscall of every process on the host).
//
// Exits to the VMM in user space: kvm_fpu fires with load=0 as KVM_RUN
// ends and with load=1 as the next one starts, in the vCPU's thread. At the
// end the vCPU is still loaded, so the kernel's own kvm_run (vcpu->run, found
// from the task's preempt notifier) says what the exit is: its reason and,
// for KVM_EXIT_IO, the direction and port, for KVM_EXIT_MMIO (--mmio) the
// direction and guest-physical address. kvm_userspace_exit, after KVM_RUN
// has returned, confirms that the exit went to user space (same reason,
// errno 0); a put and load inside one KVM_RUN (kvm_xstate_reset on INIT) has
// none, and opens no window. The window is the VMM's emulation, its locks and
// its scheduling, and it holds for a VM whenever it started.
// Exits handled in the kernel: from kvm_exit to kvm_entry around a kvm_pio,
// where those tracepoints fire (hardware VMX/SVM; not under every nested
// hypervisor); MMIO handled in the kernel is not timed.
#include <uapi/linux/kvm.h>

#ifdef PIOBPF_MMIO
#define TIMED_EXIT(reason) ((reason) == KVM_EXIT_IO || (reason) == KVM_EXIT_MMIO)
#else
#define TIMED_EXIT(reason) ((reason) == KVM_EXIT_IO)
#endif

static __always_inline void count_untimed(u32 reason)
{
    u64 *n = untimed.lookup(&reason);
    if (n)
        __sync_fetch_and_add(n, 1);
}

// The thread's entry, made on its first exit (a thread of a traced VMM only).
static __always_inline struct pio_pending *pending_of(u64 id)
{
    u32 tid = id;
    struct pio_pending *p = pending.lookup(&tid);
    if (p || !TRACED(id >> 32))
        return p;
    struct pio_pending zero = {};
    pending.insert(&tid, &zero);
    p = pending.lookup(&tid);
    if (!p)                 // more vCPU threads than the map holds
        count_untimed(PIOBPF_UNTIMED_NO_ROOM);
    return p;
}

// The head of the kernel's kvm_run of the vCPU this thread has loaded: its
// exit reason and the exit's details (the io and mmio members of the union).
// As it lies in kvm_run from exit_reason on, so that one read gets both.
struct run_head {
    u32 exit_reason;
    u8 between[offsetof(struct kvm_run, io) - offsetof(struct kvm_run, exit_reason) - 4];
    union {
        __typeof__(((struct kvm_run *)0)->io) io;
        __typeof__(((struct kvm_run *)0)->mmio) mmio;
    };
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

static __always_inline bool too_long(u64 ns)
{
    if (ns <= PIOBPF_MAX_WINDOW_NS)
        return false;
    count_untimed(PIOBPF_UNTIMED_TOO_LONG);     // a stopped VM, not emulation
    return true;
}

// A window of `ns` into the times `t` of its key (0: no room for them).
static __always_inline void add_window(struct pio_time *t, u64 ns)
{
    if (!t) {
        count_untimed(PIOBPF_UNTIMED_NO_ROOM);
        return;
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

// (BCC allows no map call in a macro, nor a map as an argument: each time
// map has its own "look up, else make" below.)
static __always_inline void time_window(u32 slot, u64 ns)
{
    if (too_long(ns))
        return;
    struct pio_time *t = times.lookup(&slot);
    if (!t) {
        struct pio_time zero = {};
        times.insert(&slot, &zero);
        t = times.lookup(&slot);
    }
    add_window(t, ns);
}

#ifdef PIOBPF_MMIO
// An MMIO exit's window, keyed as its counts (mmio.h).
static __always_inline void time_mmio(u64 dg, u64 ns)
{
    struct mmio_key key = {};
    if (too_long(ns) || !mmio_key_of(&key, dg, true))
        return;
    struct pio_time *t = mmio_times.lookup(&key);
    if (!t) {
        struct pio_time zero = {};
        mmio_times.insert(&key, &zero);
        t = mmio_times.lookup(&key);
    }
    add_window(t, ns);
}

static __always_inline u64 exit_key(struct run_head *head)
{
    if (head->exit_reason == KVM_EXIT_MMIO)
        return dirgpa(head->mmio.is_write, head->mmio.phys_addr);
    return dirport(head->io.direction == KVM_EXIT_IO_OUT, head->io.port);
}
#else
static __always_inline void time_mmio(u64 dg, u64 ns) {}

static __always_inline u64 exit_key(struct run_head *head)
{
    return dirport(head->io.direction == KVM_EXIT_IO_OUT, head->io.port);
}
#endif

// From count_pio: the port of an exit the kernel may handle in place.
static __always_inline void time_pio(u32 slot)
{
    u32 zero = 0;
    u8 *fires = kvm_exit_fires.lookup(&zero);
    if (!fires || !*fires)
        return;
    u32 tid = bpf_get_current_pid_tgid();
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
    if (loaded_run(&head) || !TIMED_EXIT(head.exit_reason)) {
        p->state = WINDOW_NONE;
        return;
    }
    p->reason = head.exit_reason;
    p->key = exit_key(&head);
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
        // timed exit, that exit was under way when tracing began: untimed,
        // and said so. (A thread's entry, made here, makes this once.)
        if (!TRACED(id >> 32))
            return;
        struct run_head head = {};
        if (!loaded_run(&head) && TIMED_EXIT(head.exit_reason))
            count_untimed(PIOBPF_UNTIMED_OPEN_AT_START);
        pending_of(id);
        return;
    }
    if (p->state == WINDOW_OUT) {
        u64 ns = bpf_ktime_get_ns() - p->user_ts;
        u32 slot;
        if (p->reason == KVM_EXIT_MMIO)
            time_mmio(p->key, ns);
        else if (pio_slot(&slot, p->key, true))
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
