// --mmio: guest MMIO counted per (direction, gpa), by VM with the VM's id
// (vmkeys.h), by vCPU also the thread, in the bounded hash mmio_counts.
//
// kvm:kvm_mmio fires for MMIO that KVM emulates: READ for a read done in
// the kernel, or completed by user space on the next KVM_RUN, which fired
// READ_UNSATISFIED as it left; WRITE once a write. So each access counts
// once as READ or WRITE. kvm:kvm_fast_mmio fires instead for a write taken
// by a zero-length ioeventfd on VMX's EPT-misconfig fast path: a write of
// unknown size (0 bytes).

// The key of this thread's MMIO access; false when it is not counted:
// filtered out, not started, or no room for a new VM (then dropped).
static __always_inline bool mmio_key_of(struct mmio_key *key, u64 dg)
{
    u64 id = bpf_get_current_pid_tgid();
    if (!TRACED(id >> 32))
        return false;
    key->dirgpa = dg;
#ifdef PIOBPF_KEY_TGID
    u32 zero = 0;
    u32 *e = epoch.lookup(&zero);
    if (!e || !*e)
        return false;   // not started: no VM gets an id before user space is ready
    u32 *vm = vm_of(id >> 32);
    if (!vm) {
        count_dropped(PIOBPF_DROPPED_MMIO_MAP_FULL);
        return false;
    }
    key->vm = *vm;
#ifdef PIOBPF_KEY_TID
    key->tid = id;
#endif
#endif
    return true;
}

// The counts of `key`, made on its first access; 0 when the map is full.
static __always_inline struct pio_counts *mmio_counts_of(struct mmio_key *key)
{
    struct pio_counts *c = mmio_counts.lookup(key);
    if (c)
        return c;
    struct pio_counts zero = {};
#ifdef PIOBPF_KEY_TID
    bpf_get_current_comm(&zero.comm, sizeof(zero.comm));
#endif
    mmio_counts.insert(key, &zero);     // fails when full, or another CPU's came first
    c = mmio_counts.lookup(key);
    if (!c)
        count_dropped(PIOBPF_DROPPED_MMIO_MAP_FULL);
    return c;
}

static __always_inline void count_mmio(u32 write, u64 gpa, u32 len)
{
    struct mmio_key key = {};
    if (!mmio_key_of(&key, dirgpa(write, gpa)))
        return;
    struct pio_counts *c = mmio_counts_of(&key);
    if (!c)
        return;
    __sync_fetch_and_add(&c->events, 1);
    __sync_fetch_and_add(&c->bytes, len);
}

static __always_inline void mmio_event(u32 type, u32 len, u64 gpa)
{
    if (type == PIOBPF_MMIO_READ || type == PIOBPF_MMIO_WRITE)
        count_mmio(type == PIOBPF_MMIO_WRITE, gpa, len);
}

#ifdef PIOBPF_CLASSIC
TRACEPOINT_PROBE(kvm, kvm_mmio)
{
    mmio_event(args->type, args->len, args->gpa);
    return 1;   // as kvm_pio's: 0 would hide the event from perf
}

TRACEPOINT_PROBE(kvm, kvm_fast_mmio)
{
    count_mmio(1, args->gpa, 0);
    return 1;
}
#else
// TP_PROTO(type, len, gpa, val): the front end checks the format's order.
RAW_TRACEPOINT_PROBE(kvm_mmio)
{
    mmio_event(ctx->args[0], ctx->args[1], ctx->args[2]);
    return 0;
}

RAW_TRACEPOINT_PROBE(kvm_fast_mmio)
{
    count_mmio(1, ctx->args[0], 0);
    return 0;
}
#endif
