// -p: the VMM processes to trace, filtered in the kernel. User space fills
// pids after load. PIOBPF_FILTERING is 0 without -p: TRACED is then true
// at compile time, and not even the process id is read. A process leaves
// pids when its last thread exits (sched_process_exit): the next process
// given its pid is another one, never traced as it.
BPF_HASH(pids, u32, u8, PIOBPF_MAX_PIDS);

static __always_inline bool in_pids(u32 tgid)
{
    return pids.lookup(&tgid) != 0;
}

#define TRACED(tgid) (!PIOBPF_FILTERING || in_pids(tgid))

#if PIOBPF_FILTERING || defined(PIOBPF_KEY_TGID)
#if !defined(PIOBPF_TASK_SIGNAL) || !defined(PIOBPF_SIGNAL_LIVE)
#error "compile through piobpf/kernel/program.py, which defines the exit parameters"
#endif
// PIOBPF_TASK_SIGNAL, PIOBPF_SIGNAL_LIVE: byte offsets of task_struct.signal
// and signal_struct.live, from the running kernel's BTF.

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
#endif
