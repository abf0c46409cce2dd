/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * taptrace: what both BPF backends share (bcc): the output buffer, the interest
 * set, the counters, the syscall's saved user registers, and filling in and
 * submitting one struct tt_event. Included once by each backend's .bpf.c.
 */
#ifndef TAPTRACE_COMMON_H
#define TAPTRACE_COMMON_H

#include "events.h"

#ifndef TT_INTEREST_MAX
#define TT_INTEREST_MAX 65536
#endif
#ifndef TT_RING_PAGES
#define TT_RING_PAGES 256
#endif

/* x86-64 struct pt_regs (uapi asm/ptrace.h) offsets of the syscall args. */
#define PT_R10 56
#define PT_R8 72
#define PT_DX 96
#define PT_SI 104
#define PT_DI 112
#define PT_ORIG_AX 120

#define NR_CLONE 56
#define NR_FORK 57
#define NR_VFORK 58
#define NR_CLONE3 435

#define CLONE_VM 0x100ULL
#define CLONE_FILES 0x400ULL
#define CLONE_VFORK 0x4000ULL
#define CLONE_THREAD 0x10000ULL
#define SIGCHLD_ 17ULL

#define O_CLOEXEC_ 02000000ULL
#define EBADF_ 9
#define ENOTTY_ 25
#define F_DUPFD_ 0
#define F_SETFD_ 2
#define F_DUPFD_CLOEXEC_ 1030
#define FD_CLOEXEC_ 1
#define FIONCLEX_ 0x5450
#define FIOCLEX_ 0x5451

#define TUNSETIFF_ 0x400454caU
#define TUNSETPERSIST_ 0x400454cbU
#define TUNSETOWNER_ 0x400454ccU
#define TUNSETGROUP_ 0x400454ceU
#define TUNGETIFF_ 0x800454d2U
#define TUNSETQUEUE_ 0x400454d9U
/* _IOW(VHOST_VIRTIO 0xAF, 0x30, struct vhost_vring_file) */
#define VHOST_NET_SET_BACKEND_ 0x4008af30U

#define AF_UNIX_ 1
#define SOL_SOCKET_ 1
#define SCM_RIGHTS_ 1
#define MAX_CMSGS 4
#define MAX_MMSGS 4

#ifdef TT_RINGBUF
BPF_RINGBUF_OUTPUT(events, TT_RING_PAGES);
#else
BPF_PERF_OUTPUT(events);
#endif

BPF_HASH(interest, u32, u32, TT_INTEREST_MAX);  /* tgid -> 1 */

BPF_ARRAY(counters, u64, TT_C_NR);

static __always_inline void count(u32 idx)
{
	u64 *v = counters.lookup(&idx);
	if (v)
		__sync_fetch_and_add(v, 1);
}

static __always_inline int interesting(u32 tgid)
{
	return interest.lookup(&tgid) != 0;
}

/*
 * taptrace itself (its pid, set at start): its own copies of tun fds, taken to ask
 * their namespace while /proc is read, are not traced - with a small buffer their
 * records alone could overflow it during every resync's scan, and so forever.
 */
#ifndef TT_SELF_TGID
#define TT_SELF_TGID 0
#endif
static __always_inline int is_self(u32 tgid)
{
	return tgid == TT_SELF_TGID;
}

static __always_inline void mark_interesting(u32 tgid)
{
	if (is_self(tgid))
		return;
	u32 one = 1;
	if (interest.update(&tgid, &one))
		count(TT_C_INTEREST_FULL);
}

#define STR_(x) #x
#define STR(x) STR_(x)

/*
 * A direct load of the member at constant offset `off` through a pointer the
 * verifier knows by its BTF type - what bpf_task_pt_regs() returns, or a traced
 * function's argument in an fentry/fexit program (typed by the function's own
 * BTF prototype, whatever this file declares): the verifier checks the access
 * against the running kernel's struct, and no probe-read helper is called. In
 * asm, so bcc does not turn it into a probe read. Only through such pointers:
 * anything read with kword() is a plain number to the verifier.
 */
#define btf_load64(p, off) ({						\
	u64 v_;								\
	asm volatile("%0 = *(u64 *)(%1 + " STR(off) ")" : "=r"(v_) : "r"(p)); \
	v_; })
#define btf_load32(p, off) ({						\
	u32 v_;								\
	asm volatile("%0 = *(u32 *)(%1 + " STR(off) ")" : "=r"(v_) : "r"(p)); \
	v_; })

/*
 * The syscall's saved user register at pt_regs offset `off` (a PT_* constant):
 * one direct load through bpf_task_pt_regs() instead of a helper call. (Measured
 * on the FIONREAD loop: exit ioctl probe 1.55 -> 1.42, the cost of an empty probe.)
 */
#define sysarg(off) ({							\
	void *regs_ = (void *)bpf_task_pt_regs(bpf_get_current_task_btf());	\
	btf_load64(regs_, off); })

/* a kernel word (0 where it cannot be read) */
static __always_inline u64 kword(const void *p)
{
	u64 v = 0;
	bpf_probe_read_kernel(&v, sizeof(v), p);
	return v;
}

/*
 * A zeroed record with the common header filled in. Records live on the BPF
 * stack, not in per-CPU scratch: syscall tracepoints are faultable on recent
 * kernels, so a program may be preempted and its CPU reused mid-record.
 */
static __always_inline void init_event(struct tt_event *e, u32 type)
{
	__builtin_memset(e, 0, sizeof(*e));
	u64 id = bpf_get_current_pid_tgid();
	e->ts = bpf_ktime_get_ns();
	e->type = type;
	e->tgid = id >> 32;
	e->tid = (u32)id;
	e->fd = -1;
	bpf_get_current_comm(&e->comm, sizeof(e->comm));
#ifdef TT_TASK_LEADER_OFF
	/* The fd table the task acts on (task->files), as its identity: /proc can
	 * tell only what two tasks use by the time user space asks (kcmp), and
	 * which of them unshared, or when, it cannot. A thread's record also says
	 * whether that is its leader's table. */
	const char *task = (const char *)bpf_get_current_task();
	u64 mine = kword(task + TT_TASK_FILES_OFF);
	e->table = mine;
	if (e->tgid != e->tid) {
		const char *leader = (const char *)kword(task + TT_TASK_LEADER_OFF);
		u64 its = leader ? kword(leader + TT_TASK_FILES_OFF) : 0;
		if (mine && its) /* (a leader gone first has none) */
			e->fdflags = TT_FD_TABLE_KNOWN | (mine != its ? TT_FD_OWN_TABLE : 0);
	}
#endif
}

/* 0: the record is in the buffer; else it was lost (and counted) */
static __always_inline int submit(void *ctx, struct tt_event *e)
{
#ifdef TT_RINGBUF
	int err = events.ringbuf_output(e, sizeof(*e), 0);
#else
	int err = events.perf_submit(ctx, e, sizeof(*e));
#endif
	if (err)
		count(TT_C_LOST);
	return err;
}

/* ---- kernel layouts: offsets from the running kernel's BTF -------------------
 *
 * Passed in as constants by tracer/backends/layouts.py, never taken from headers
 * (which may not match the kernel). A backend built without them does without.
 * (kword, above, reads through the pointers they lead to.)
 */

#ifdef TT_FDT_FD_OFF
/* the current task's struct fdtable (NULL: none, an exiting task) */
static __always_inline const char *current_fdt(void)
{
	const char *task = (const char *)bpf_get_current_task();
	const char *files = (const char *)kword(task + TT_TASK_FILES_OFF);
	if (!files)
		return 0;
	return (const char *)kword(files + TT_FILES_FDT_OFF);
}

/* fd's close-on-exec bit in the current task's table */
static __always_inline u64 fd_cloexec(u32 fd)
{
	const char *fdt = current_fdt();
	if (!fdt)
		return 0;
	const char *bits = (const char *)kword(fdt + TT_FDT_CLOEXEC_OFF);
	if (!bits)
		return 0;
	u64 word = kword(bits + (fd / 64) * 8);
	return (word >> (fd % 64)) & 1;
}

/* the struct file * in slot fd of a struct fdtable (NULL: none, or past max_fds) */
static __always_inline const void *fdt_file(const char *fdt, u32 fd)
{
	if (!fdt)
		return 0;
	u32 max = 0;
	bpf_probe_read_kernel(&max, sizeof(max), fdt + TT_FDT_MAX_FDS_OFF);
	if (fd >= max)
		return 0;
	const char *slots = (const char *)kword(fdt + TT_FDT_FD_OFF);
	if (!slots)
		return 0;
	return (const void *)kword(slots + (u64)fd * 8);
}

/* the struct file * at fd in the current task's table (NULL: not open) */
static __always_inline const void *fd_file(u32 fd)
{
	return fdt_file(current_fdt(), fd);
}
#endif

#ifdef TT_SK_NET_OFF
/*
 * The inode of the network namespace a tun or tap file was opened in: the one its
 * device is made in (TUNSETIFF) or looked up in, whatever namespace the process
 * has moved to since. private_data is tun's struct tun_file or tap's struct
 * tap_queue, and each begins with its struct sock (the kernel casts sk_alloc's
 * sock to them): sock.__sk_common.skc_net.net->ns.inum. 0: not known.
 */
static __always_inline u32 file_netns(const void *file)
{
	const char *sk = (const char *)kword((const char *)file + TT_F_PRIVATE_OFF);
	if (!sk)
		return 0;
	const char *net = (const char *)kword(sk + TT_SK_NET_OFF);
	if (!net)
		return 0;
	u32 inum = 0;
	bpf_probe_read_kernel(&inum, sizeof(inum), net + TT_NET_INUM_OFF);
	return inum;
}
#endif

/*
 * VHOST_NET_SET_BACKEND: which file backs a vring of a vhost-net fd. Emitted for
 * any process and any outcome (QEMU handing a wrong fd shows up as the error);
 * struct vhost_vring_file { unsigned int index; int fd; } is input only, so the
 * caller's copy still holds what the kernel was asked. Both backends report it
 * at the ioctl's return.
 */
static __always_inline int on_vhost_backend(void *ctx, long ret)
{
	u32 vf[2] = {};
	bpf_probe_read_user(vf, sizeof(vf), (void *)sysarg(PT_DX));
	struct tt_event ev_, *e = &ev_;
	init_event(e, TT_EV_VHOST_BACKEND);
	e->fd = (int)sysarg(PT_DI);
	e->ret = ret;
	e->arg = vf[0];
	e->arg2 = vf[1];
	if (ret == 0)
		mark_interesting(e->tgid);
	submit(ctx, e);
	return 0;
}

#endif /* TAPTRACE_COMMON_H */
