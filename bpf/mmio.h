// --mmio: guest MMIO counted per (direction, gpa), by VM with the VM's id
// (vmkeys.h), by vCPU also the thread: each key a slot of mmio_counts.
//
// kvm:kvm_mmio fires for MMIO that KVM emulates: READ for a read done in
// the kernel, or completed by user space on the next KVM_RUN, which fired
// READ_UNSATISFIED as it left; WRITE once a write. So each access counts
// once as READ or WRITE. kvm:kvm_fast_mmio fires instead for a write taken
// by a zero-length ioeventfd on VMX's EPT-misconfig fast path: a write of
// unknown size (0 bytes).

// The key of this thread's MMIO access; false when it is not counted:
// filtered out, not started, or no room for a new VM (then dropped, unless
// `timing`: the access was, when it came).
static __always_inline bool mmio_key_of(struct mmio_key *key, u64 dg, bool timing)
{
    u64 id = bpf_get_current_pid_tgid();
    u32 zero = 0;
    u32 *e = epoch.lookup(&zero);
    if (!e || !*e || !TRACED(id >> 32))
        return false;   // not started: no VM gets an id, no key a slot, before user space is ready
    key->dirgpa = dg;
#ifdef PIOBPF_KEY_TGID
    u32 *vm = vm_of(id >> 32);
    if (!vm) {
        if (!timing)
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

// The slot of `key`'s counts, or a spare one it takes now; 0 when every
// slot is taken. (As vmkeys.h's slot_of: BCC takes no map as an argument.)
static __always_inline u32 *mmio_slot_of(struct mmio_key *key)
{
    u32 *slot = mmio_slots.lookup(key);
    if (slot)
        return slot;
    u32 fresh;
    if (mmio_spare.pop(&fresh))
        return 0;
#ifdef PIOBPF_KEY_TID
    struct pio_counts *c = mmio_counts.lookup(&fresh);
    if (c)
        bpf_get_current_comm(&c->comm, sizeof(c->comm));
#endif
    if (mmio_slots.insert(key, &fresh))
        mmio_spare.push(&fresh, 0);     // another CPU gave the key a slot first
    return mmio_slots.lookup(key);
}

// The slot of this access's counts: this CPU's recent one, else the key's
// (mmio_key_of). False when it is not counted (then, when for want of
// room, counted as dropped).
static __always_inline bool mmio_slot(u32 *slot, u64 dg)
{
    u64 id = bpf_get_current_pid_tgid();
#if defined(PIOBPF_KEY_TID)
    u64 thread = id;
#elif defined(PIOBPF_KEY_TGID)
    u64 thread = id >> 32 << 32;
#else
    // By address every thread shares a key; with -p the process is
    // remembered too, so that a process filtered out never hits.
    u64 thread = PIOBPF_FILTERING ? id >> 32 << 32 : 0;
#endif
    // A read and a write of one address (a read-modify-write) fall in
    // neighbouring ways, not in one that each would take from the other.
    u32 way = ((u32)(dg >> 2) ^ (u32)(dg >> PIOBPF_MMIO_WRITE_BIT) ^ (u32)(thread >> 32)
               ^ (u32)thread) % PIOBPF_RECENT, zero = 0;
    struct mmio_recent *r = mmio_recent.lookup(&way);
    u32 *e = epoch.lookup(&zero);
    if (!r || !e || !*e)
        return false;   // not started (so entries of epoch 0 match nothing)
    u32 now = *e;
    if (r->thread == thread && r->dirgpa == dg && r->epoch == now) {
        *slot = r->slot;
        return true;
    }
    struct mmio_key key = {};
    if (!mmio_key_of(&key, dg, false))
        return false;
    u32 *s = mmio_slot_of(&key);
    if (!s) {
        count_dropped(PIOBPF_DROPPED_MMIO_MAP_FULL);
        return false;
    }
    *slot = r->slot = *s;
    r->thread = thread;
    r->dirgpa = dg;
    r->epoch = now;
    return true;
}

static __always_inline void count_mmio(u32 write, u64 gpa, u32 len)
{
    u32 slot;
    if (!mmio_slot(&slot, dirgpa(write, gpa)))
        return;
    struct pio_counts *c = mmio_counts.lookup(&slot);
    if (!c)         // never: slots are below the array's size
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
