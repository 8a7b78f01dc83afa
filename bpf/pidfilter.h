// -p: the VMM processes to trace, filtered in the kernel. User space fills
// pids after load. PIOBPF_FILTERING is 0 without -p: TRACED is then true
// at compile time, and not even the process id is read.
BPF_HASH(pids, u32, u8, PIOBPF_MAX_PIDS);

static __always_inline bool in_pids(u32 tgid)
{
    return pids.lookup(&tgid) != 0;
}

#define TRACED(tgid) (!PIOBPF_FILTERING || in_pids(tgid))
