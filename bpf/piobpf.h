// piobpf's shared header: the parameters the front end passes, and the
// structs of the maps. piobpf/kernel/program.py passes every parameter as a
// -D flag with a numeric value (each has its one source there), and reads
// the structs' layouts back from the loaded program (layout()), refusing
// one it does not know.

#if !defined(PIOBPF_PORT_KEYS) || !defined(PIOBPF_MAX_ENTRIES) || !defined(PIOBPF_MAX_PIDS) \
    || !defined(PIOBPF_FILTERING) || !defined(PIOBPF_UNTIMED_SLOTS) \
    || !defined(PIOBPF_DROPPED_SLOTS) || !defined(PIOBPF_DROPPED_MAP_FULL)
#error "compile through piobpf/kernel/program.py, which defines the parameters"
#endif
// PIOBPF_PORT_KEYS: 2 directions x 65536 ports; PIOBPF_MAX_ENTRIES: keys
// by VM or vCPU; PIOBPF_MAX_PIDS: processes -p can name; PIOBPF_FILTERING:
// 1 with -p; PIOBPF_UNTIMED_SLOTS: reasons an exit goes untimed (latency);
// PIOBPF_DROPPED_SLOTS: reasons an event goes uncounted, PIOBPF_DROPPED_*
// their slots of the dropped array.

// A count's key. By port only dirport is used: it indexes the counts array.
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

static __always_inline u32 dirport(u32 rw, u32 port)
{
    return (rw ? 0x10000 : 0) | (port & 0xffff);
}

#ifdef PIOBPF_MMIO
#if !defined(PIOBPF_MMIO_ENTRIES) || !defined(PIOBPF_MMIO_READ) || !defined(PIOBPF_MMIO_WRITE) \
    || !defined(PIOBPF_MMIO_WRITE_BIT) || !defined(PIOBPF_DROPPED_MMIO_MAP_FULL) \
    || !defined(PIOBPF_RECENT)
#error "compile through piobpf/kernel/program.py, which defines the MMIO parameters"
#endif
// PIOBPF_MMIO_ENTRIES: MMIO keys (--mmio-map-size); PIOBPF_MMIO_READ and
// _WRITE: kvm_mmio's types counted (its unsatisfied-read is the first half
// of a read that user space completes); PIOBPF_MMIO_WRITE_BIT: the bit of
// a key's dirgpa that says write (guest-physical addresses are narrower);
// PIOBPF_RECENT: a CPU's remembered keys, as by VM.

// An MMIO count's key: as struct pio_key, with a guest-physical address.
struct mmio_key {
    u64 dirgpa;     // direction << PIOBPF_MMIO_WRITE_BIT | gpa
    u32 vm;
    u32 tid;
};

// A CPU's memory of the slot of a recent MMIO key.
struct mmio_recent {
    u64 thread;     // as struct recent's; by address the process only with -p, else 0
    u64 dirgpa;
    u32 slot;
    u32 epoch;      // valid while epoch[0] is this
};

static __always_inline u64 dirgpa(u32 write, u64 gpa)
{
    u64 bit = 1ULL << PIOBPF_MMIO_WRITE_BIT;
    return (write ? bit : 0) | (gpa & (bit - 1));
}
#endif

#ifdef PIOBPF_KEY_TGID
#if !defined(PIOBPF_MAX_VMS) || !defined(PIOBPF_RECENT) || !defined(PIOBPF_TASK_GROUP_LEADER) \
    || !defined(PIOBPF_TASK_START_BOOTTIME) || !defined(PIOBPF_TASK_SIGNAL) \
    || !defined(PIOBPF_SIGNAL_LIVE) || !defined(PIOBPF_TASK_MM) || !defined(PIOBPF_TASK_COMM) \
    || !defined(PIOBPF_MM_ARG_START) || !defined(PIOBPF_MM_ARG_END) || !defined(PIOBPF_ARGS) \
    || !defined(PIOBPF_RING_PAGES)
#error "compile through piobpf/kernel/program.py, which defines the VM parameters"
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

// A CPU's memory of the slot of a recent key.
struct recent {
    u64 thread;     // pid_tgid of the event, the tid part 0 unless PIOBPF_KEY_TID
    u32 dirport;
    u32 slot;
    u32 epoch;      // valid while epoch[0] is this
};

// What names a new VM, rung to user space on its first count.
struct arrival {
    u32 tgid;
    u32 args_len;   // bytes of the argument area, 0 when unreadable; args holds the first
    u64 start;      // as struct vm's
    char comm[16];  // the process's name (its leader's)
    char args[PIOBPF_ARGS];     // as /proc/PID/cmdline: NUL-separated arguments
};
#endif

#ifdef PIOBPF_LATENCY
#if !defined(PIOBPF_HIST_SLOTS) || !defined(PIOBPF_MAX_WINDOW_NS) \
    || !defined(PIOBPF_TIME_ENTRIES) || !defined(PIOBPF_MAX_THREADS) \
    || !defined(PIOBPF_TASK_PREEMPT_NOTIFIERS) || !defined(PIOBPF_VCPU_PREEMPT_NOTIFIER) \
    || !defined(PIOBPF_NOTIFIER_LINK) || !defined(PIOBPF_VCPU_RUN) \
    || !defined(PIOBPF_UNTIMED_TOO_LONG) || !defined(PIOBPF_UNTIMED_NO_ROOM) \
    || !defined(PIOBPF_UNTIMED_OPEN_AT_START)
#error "compile through piobpf/kernel/program.py, which defines the latency parameters"
#endif
// PIOBPF_TASK_PREEMPT_NOTIFIERS, PIOBPF_VCPU_*, PIOBPF_NOTIFIER_LINK: byte
// offsets of task_struct.preempt_notifiers, kvm_vcpu.preempt_notifier,
// kvm_vcpu.run and preempt_notifier.link, from the running kernel's BTF.
// PIOBPF_UNTIMED_*: the slots of the untimed array, one a reason.

struct pio_time {
    u64 windows;                    // exits timed
    u64 time_ns;                    // their total
    u64 max_ns;                     // the longest
    u64 hist[PIOBPF_HIST_SLOTS];    // log2, as BCC's: slot i counts [2^(i-1), 2^i) ns
};

// Where a thread's exit to user space stands.
enum { WINDOW_NONE, WINDOW_LEAVING, WINDOW_OUT };

// Per vCPU thread: the exit under way.
struct pio_pending {
    u64 user_ts;            // KVM_RUN ended (kvm_fpu 0) with an exit of `reason`
    u64 key;                // that exit's key: for KVM_EXIT_IO direction << 16 | port,
                            // for KVM_EXIT_MMIO (--mmio) dirgpa
    u32 reason;             // its KVM_EXIT_*
    u32 state;              // WINDOW_*
    u64 exit_ts;            // kvm_exit (0: none seen)
    u32 kernel_slot;        // the port I/O between kvm_exit and kvm_entry
    u32 has_kernel;
};
#endif
