// Keys by VM (PIOBPF_KEY_TGID) and vCPU (PIOBPF_KEY_TID): a VM's id on its
// first count, a slot of counts for each new key, and a VM's end when the
// last thread of its process exits. User space then moves the VM's final
// counts out of the map (piobpf/kernel/counter.py: evict).

// A thread exits (sched_process_exit, in the exiting task). Attached with
// the counting program, which counts nothing until user space starts it
// (epoch), so no exit of a counted process goes unseen.
static __always_inline void vm_exit(void)
{
    u32 tgid = bpf_get_current_pid_tgid() >> 32;
    u32 *vm = running.lookup(&tgid);
    if (!vm && !(PIOBPF_FILTERING && in_pids(tgid)))
        return;
    if (!group_dead())
        return;
    pids.delete(&tgid);     // -p named this process, not whatever gets its pid next
    if (!vm)
        return;
    u32 id = *vm, zero = 0;
    running.delete(&tgid);  // the next process with this pid is a new VM
    u32 *e = epoch.lookup(&zero);
    if (e)
        __sync_fetch_and_add(e, 2);
    // Then, and only then, user space may take its keys' slots back.
    struct vm *v = vms.lookup(&id);
    if (v)
        v->exited = 1;
    doorbell.ringbuf_output(&tgid, sizeof(tgid), 0);
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
    u32 *vm = running.lookup(&tgid);
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
    if (running.insert(&tgid, &id) == 0)
        ring_arrival(&new, leader);
    else
        vms.delete(&id);    // another CPU's event of this process came first
    return running.lookup(&tgid);
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

// The slot of this event's counts (in counts and every array keyed like
// it). False when it is not counted: filtered out, or no room (then
// counted as dropped, unless `timing`: the event was, when it came).
static __always_inline bool pio_slot(u32 *slot, u32 dp, bool timing)
{
    u64 id = bpf_get_current_pid_tgid();
#ifdef PIOBPF_KEY_TID
    u64 thread = id;
#else
    u64 thread = id >> 32 << 32;
#endif
    // A read and a write of one port (a read-modify-write) fall in
    // neighbouring ways, not in one that each would take from the other.
    u32 way = (dp ^ dp >> 16 ^ (u32)id) % PIOBPF_RECENT, zero = 0;
    struct recent *r = recent.lookup(&way);
    u32 *e = epoch.lookup(&zero);
    if (!r || !e)
        return false;
    u32 now = *e;
    if (!now)
        return false;   // not started (so entries of epoch 0 match nothing)
    if (r->thread == thread && r->dirport == dp && r->epoch == now) {
        *slot = r->slot;
        return true;
    }
    u32 tgid = id >> 32;
    if (!TRACED(tgid))
        return false;
    u32 *vm = vm_of(tgid);
    struct pio_key key = {.dirport = dp, .vm = vm ? *vm : 0, .tid = (u32)(thread & 0xffffffff)};
    u32 *s = vm ? slot_of(&key) : 0;
    if (!s) {
        if (!timing)
            count_dropped(PIOBPF_DROPPED_MAP_FULL);
        return false;
    }
    *slot = r->slot = *s;
    r->thread = thread;
    r->dirport = dp;
    r->epoch = now;
    return true;
}
