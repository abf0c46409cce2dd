/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * taptrace kernel-function backend (bcc): hooks where the kernel installs,
 * duplicates, passes and closes a file, and the tun/tap/vhost-net ioctls -
 * never a syscall tracepoint, so a syscall that touches no tun/tap file pays
 * nothing (getpid, ioctl(KVM_RUN)) or one short fentry program (an open, a close).
 *
 * Filter first: every vmlinux hook reads the file's f_op and leaves unless it is
 * tun's, tap's or vhost-net's. The f_op offset and those three addresses, and
 * every other kernel layout read here (the fd table's close-on-exec bits, the
 * files of an SCM_RIGHTS message), come from the running kernel's BTF and
 * /proc/kallsyms at start (tracer/backends/kernel.py), passed in as constants:
 * never from headers, which may not match the kernel (6.12 headers on a 6.1
 * kernel compile cleanly and read the wrong field). Function arguments are read
 * as plain words (void *), so no kernel struct is ever declared here.
 *
 * Every record carries the struct file * it is about (tt_event.file): the
 * identity of the open file, so dups, receives and closes are known exactly.
 *
 * Hooks (tracer/backends/kernel.py picks them by what the running kernel has):
 *   fentry fd_install          open, dup, F_DUPFD, SCM_RIGHTS receive, pidfd_getfd,
 *                              io_uring - which one, by the syscall being run
 *   fexit  do_dup2             dup2, dup3 (they bypass fd_install)
 *   fentry TT_CLOSE_FN         close, close_range: pick_file (< 6.8) or
 *                              file_close_fd_locked (6.8+), the file read from
 *                              the fd table slot they are about to empty
 *   fexit  __scm_send          the files of an SCM_RIGHTS message being sent
 *   fentry+fexit scm_detach_fds  a received message begins, ends (groups its fds)
 *   fentry set_close_on_exec   F_SETFD, FIOCLEX, FIONCLEX   (TT_HAVE_SET_CLOEXEC)
 *   fexit  ksys_unshare        unshare(CLONE_FILES)          (TT_HAVE_KSYS_UNSHARE)
 *   fentry __x64_sys_close_range  close_range: the range, CLOEXEC, UNSHARE
 *                              (TT_HAVE_SYS_CLOSE_RANGE)
 *   fentry begin_new_exec      an exec's point of no return: a CLONE_FILES
 *                              sharer's table becomes its own
 *   kprobe+kretprobe __tun_chr_ioctl, tap_ioctl   TUN ioctls (module functions:
 *                              bcc 0.26 cannot fentry a module)
 *   kretprobe vhost_net_ioctl  VHOST_NET_SET_BACKEND
 *   fentry security_file_ioctl  a TUN (vhost-net) ioctl on a file that is not a
 *                              tun/tap (vhost-net) file
 *                              (TT_HAVE_IOCTL_CHECK: every ioctl pays for it)
 *   sched tracepoints          fork, exec, exit (sched.h, shared)
 *
 * The kprobe variant (TT_KPROBES; tracer/backends/kernel.py attaches it where
 * fentry is not available or refused, or when TAPTRACE_KERNEL_HOOKS=kprobe): the
 * same vmlinux functions, the same records, the same bodies (the static inline
 * helpers below), with kprobes for fentry and kretprobes for fexit. A kprobe's
 * arguments are its registers, plain numbers to the verifier: a field behind one
 * is a probe read (kword), not the direct load an fentry argument allows. A
 * kretprobe sees only the return value: the entry arguments it needs are kept
 * per thread in `kargs` by a kprobe at the entry. Programs named *_entry and
 * *_return, attached by name (the close path's function differs by kernel).
 *
 * Compile-time constants (all required unless marked):
 *   TT_F_OP_OFF, TT_TUN_FOPS, TT_TAP_FOPS, TT_VHOST_FOPS
 *   TT_TASK_FILES_OFF, TT_FILES_FDT_OFF, TT_FDT_CLOEXEC_OFF, TT_FDT_FD_OFF,
 *   TT_FDT_MAX_FDS_OFF
 *   TT_SCM_FP_OFF, TT_FPL_COUNT_OFF, TT_FPL_FP_OFF
 *   TT_F_PRIVATE_OFF, TT_SK_NET_OFF, TT_NET_INUM_OFF   (a tun file's namespace)
 *   TT_CLOSE_FN, TT_HAVE_SET_CLOEXEC, TT_HAVE_KSYS_UNSHARE, TT_HAVE_GROUP_DEAD,
 *   TT_HAVE_IOCTL_CHECK, TT_HAVE_SYS_CLOSE_RANGE
 */
#include "common.h"

#define PT_AX 80
#define PT_CX 88
#define NR_DUP 32
#define NR_FCNTL 72
#define NR_IOCTL 16
#define NR_RECVMSG 47
#define NR_RECVMMSG 299
#define NR_DUP3 292
#define NR_PIDFD_GETFD 438
#define MSG_CMSG_CLOEXEC_ 0x40000000ULL
#define MSG_PEEK_ 0x2ULL

/* a kprobe's own register (its struct pt_regs context, the uapi x86-64 layout: a
 * context access the verifier checks, written as the same direct load) */
#define ctxreg(ctx, off) btf_load64(ctx, off)

static __always_inline u32 fop_kind(u64 fop)
{
	if (fop == TT_TUN_FOPS)
		return TT_FK_TUN;
	if (fop == TT_VHOST_FOPS)
		return TT_FK_VHOST;
	if (fop == TT_TAP_FOPS)
		return TT_FK_TAP;
	return TT_FK_NONE;
}

/* enum tt_file_kind of a struct file read from memory (a probe read of f_op) */
static __always_inline u32 file_kind(const void *file)
{
	if (!file)
		return TT_FK_NONE;
	return fop_kind(kword((const char *)file + TT_F_OP_OFF));
}

/*
 * The same of a hooked function's struct file * argument: one direct load, no
 * helper call - the filter every unrelated open, dup and close on the machine runs.
 */
static __always_inline u32 arg_file_kind(const void *file)
{
	if (!file)
		return TT_FK_NONE;
	return fop_kind(btf_load64(file, TT_F_OP_OFF));
}

/* the kind of a hooked function's struct file * argument, however it came */
#ifdef TT_KPROBES
#define arg_kind(file) file_kind(file)
#else
#define arg_kind(file) arg_file_kind(file)
#endif

#ifdef TT_KPROBES
/* a kprobe's argument n of the hooked function (the x86-64 calling convention) */
#define karg0(ctx) ctxreg(ctx, PT_DI)
#define karg1(ctx) ctxreg(ctx, PT_SI)
#define karg2(ctx) ctxreg(ctx, PT_DX)
#define karg3(ctx) ctxreg(ctx, PT_CX)
/* a kretprobe's return value */
#define kret(ctx) ctxreg(ctx, PT_AX)

/*
 * tid -> the entry arguments a kretprobe needs (an fexit program is given them).
 * Tagged with the function, so a return never takes another function's arguments;
 * a return whose entry was not kept (filtered, or the map full) finds none.
 */
enum { TT_KA_DUP2 = 1, TT_KA_SCM_SEND, TT_KA_UNSHARE };
struct tt_kargs {
	u32 fn;
	u32 kind;
	u64 a[3];
};
BPF_TABLE("lru_hash", u32, struct tt_kargs, kargs, 10240);

static __always_inline void keep_args(u32 fn, u32 kind, u64 a0, u64 a1, u64 a2)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct tt_kargs k = { .fn = fn, .kind = kind, .a = { a0, a1, a2 } };
	kargs.update(&tid, &k);
}

/* the arguments kept at fn's entry, taken out of the map (0: none) */
static __always_inline int take_args(u32 fn, struct tt_kargs *out)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct tt_kargs *k = kargs.lookup(&tid);
	if (!k || k->fn != fn)
		return 0;
	*out = *k;
	kargs.delete(&tid);
	return 1;
}
#endif

/* tid -> the receive (scm_detach_fds) its next installs belong to */
struct tt_recv_msg {
	u64 id;       /* when it began: the stamp its records share */
	u64 n;        /* tracked files installed so far */
};
BPF_TABLE("lru_hash", u32, struct tt_recv_msg, recv_msg, 10240);

static __always_inline void set_file(struct tt_event *e, const void *file, u32 kind)
{
	e->file = (u64)file;
	e->fkind = kind;
}

/* ---- fds appearing ---------------------------------------------------------- */

static __always_inline int fd_installed(void *ctx, unsigned int fd, const void *file)
{
	u32 kind = arg_kind(file);
	if (!kind || is_self(bpf_get_current_pid_tgid() >> 32))
		return 0;
	u64 nr = sysarg(PT_ORIG_AX);
	u64 cloexec = fd_cloexec(fd);
	struct tt_event ev_, *e = &ev_;
	if (nr == NR_DUP || nr == NR_FCNTL) {
		init_event(e, TT_EV_DUP);
		e->fd = (int)sysarg(PT_DI);
		e->ret = fd;
		if (nr == NR_DUP) {
			e->arg = TT_DUP;
		} else {
			e->arg = cloexec ? TT_F_DUPFD_CLOEXEC : TT_F_DUPFD;
			e->arg2 = sysarg(PT_DX);
		}
	} else if (nr == NR_RECVMSG || nr == NR_RECVMMSG) {
		init_event(e, TT_EV_SCM_RECV);
		e->fd = (int)sysarg(PT_DI);
		e->nfds = 1;
		e->fds[0] = fd;
		/* recvmsg(fd, msg, flags), recvmmsg(fd, vec, vlen, flags, timeout) */
		u64 rflags = nr == NR_RECVMSG ? sysarg(PT_DX) : sysarg(PT_R10);
		e->arg = (cloexec ? MSG_CMSG_CLOEXEC_ : 0) | (rflags & MSG_PEEK_);
		struct tt_recv_msg *msg = recv_msg.lookup(&e->tid);
		if (msg) {
			e->arg2 = msg->id;
			msg->n++;
		}
	} else if (nr == NR_PIDFD_GETFD) {
		init_event(e, TT_EV_PIDFD_GETFD);
		e->fd = (int)sysarg(PT_DI);
		e->arg = (u32)sysarg(PT_SI);
		e->ret = fd;
	} else {
		/* open, openat, openat2, io_uring: a new file, or (io_uring, seccomp
		 * addfd) one user space already knows by its struct file */
		init_event(e, TT_EV_OPEN);
		e->ret = fd;
		e->arg = cloexec ? O_CLOEXEC_ : 0;
		e->arg2 = nr;
	}
	set_file(e, file, kind);
	mark_interesting(e->tgid);
	submit(ctx, e);
	return 0;
}

#ifdef TT_KPROBES
int fd_install_entry(void *ctx)
{
	return fd_installed(ctx, (u32)karg0(ctx), (const void *)karg1(ctx));
}
#else
KFUNC_PROBE(fd_install, unsigned int fd, void *file)
{
	return fd_installed(ctx, fd, file);
}
#endif

/*
 * A message's files are one send or one receive, but one record each: the last
 * record of a message is a marker (same type and stamp, no file) so user space
 * knows the message is complete (it may read the first before the next is made).
 */
static __always_inline void end_of_message(void *ctx, u32 type, int sock, u64 id)
{
	struct tt_event ev_, *e = &ev_;
	init_event(e, type);
	e->fd = sock;
	e->arg2 = id;
	submit(ctx, e);
}

static __always_inline int recv_begins(void)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct tt_recv_msg m = { .id = bpf_ktime_get_ns(), .n = 0 };
	recv_msg.update(&tid, &m);
	return 0;
}

static __always_inline int recv_ends(void *ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct tt_recv_msg *m = recv_msg.lookup(&tid);
	if (!m || !m->n)
		return 0;
	u64 id = m->id;
	m->n = 0;
	end_of_message(ctx, TT_EV_SCM_RECV, (int)sysarg(PT_DI), id);
	return 0;
}

#ifdef TT_KPROBES
int scm_detach_entry(void *ctx)
{
	return recv_begins();
}

int scm_detach_return(void *ctx)
{
	return recv_ends(ctx);
}
#else
KFUNC_PROBE(scm_detach_fds, void *msg, void *scm)
{
	return recv_begins();
}

KRETFUNC_PROBE(scm_detach_fds, void *msg, void *scm)
{
	return recv_ends(ctx);
}
#endif

/* dup2/dup3: `file` is the source; what `fd` held is closed by the kernel.
 * Whether it matters: a tracked source, or an untracked one over a tracked fd (the
 * holder is in the interest set). */
static __always_inline int dup2_matters(u32 kind)
{
	return kind || interesting(bpf_get_current_pid_tgid() >> 32);
}

static __always_inline int dup2_done(void *ctx, const void *file, u32 kind, unsigned int fd,
				     unsigned int flags)
{
	struct tt_event ev_, *e = &ev_;
	init_event(e, TT_EV_DUP);
	e->fd = (int)sysarg(PT_DI);
	e->ret = fd;
	if (sysarg(PT_ORIG_AX) == NR_DUP3)
		e->arg = (flags & O_CLOEXEC_) ? TT_DUP3 | TT_DUP_CLOEXEC : TT_DUP3;
	else
		e->arg = TT_DUP2;
	e->arg2 = fd;
	if (kind)
		set_file(e, file, kind);
	submit(ctx, e);
	return 0;
}

#ifdef TT_KPROBES
/* do_dup2(files, file, fd, flags): the filter at the entry, the record at the return */
int do_dup2_entry(void *ctx)
{
	const void *file = (const void *)karg1(ctx);
	u32 kind = arg_kind(file);
	if (dup2_matters(kind))
		keep_args(TT_KA_DUP2, kind, (u64)file, karg2(ctx), karg3(ctx));
	return 0;
}

/* success returns the new fd: that it is the one kept says the entry was this call's */
int do_dup2_return(void *ctx)
{
	struct tt_kargs k;
	if (!take_args(TT_KA_DUP2, &k))
		return 0;
	int ret = (int)kret(ctx);
	if (ret < 0 || (u32)ret != (u32)k.a[1])
		return 0;
	return dup2_done(ctx, (const void *)k.a[0], k.kind, (u32)k.a[1], (u32)k.a[2]);
}
#else
KRETFUNC_PROBE(do_dup2, void *files, void *file, unsigned int fd, unsigned int flags, int ret)
{
	if (ret < 0)
		return 0;
	u32 kind = arg_kind(file);
	if (!dup2_matters(kind))
		return 0;
	return dup2_done(ctx, file, kind, fd, flags);
}
#endif

/* ---- fds going away ------------------------------------------------------- */

/*
 * fentry, not fexit (an fexit trampoline also calls the function: about twice the
 * cost on every close on the machine): the function runs with files->file_lock
 * held and takes whatever the slot holds, so the slot read here is the file it
 * will return (NULL, or fd past max_fds: nothing to close). Every close on the
 * machine runs this: files->fdt, fdt->max_fds and fdt->fd are direct loads
 * (`files` is a BTF pointer, and so the fdt read through it); the slot and the
 * file's f_op, behind a plain pointer, are the two helper calls left.
 */
static __always_inline int closing(void *ctx, unsigned int fd, const void *file)
{
	u32 kind = file_kind(file);
	if (!kind || is_self(bpf_get_current_pid_tgid() >> 32))
		return 0;
	struct tt_event ev_, *e = &ev_;
	init_event(e, TT_EV_CLOSE);
	e->fd = fd;
	set_file(e, file, kind);
	submit(ctx, e);
	return 0;
}

#ifdef TT_KPROBES
/* TT_CLOSE_FN(files, fd): `files` a plain number here, so four probe reads */
int close_entry(void *ctx)
{
	const char *files = (const char *)karg0(ctx);
	u32 fd = (u32)karg1(ctx);
	const char *fdt = files ? (const char *)kword(files + TT_FILES_FDT_OFF) : 0;
	return closing(ctx, fd, fdt_file(fdt, fd));
}
#else
#define KFUNC_(fn, ...) KFUNC_PROBE(fn, __VA_ARGS__)
KFUNC_(TT_CLOSE_FN, void *files, unsigned int fd)
{
	const char *fdt = (const char *)btf_load64(files, TT_FILES_FDT_OFF);
	if (!fdt || fd >= btf_load32(fdt, TT_FDT_MAX_FDS_OFF))
		return 0;
	const char *slots = (const char *)btf_load64(fdt, TT_FDT_FD_OFF);
	const void *file = slots ? (const void *)kword(slots + (u64)fd * 8) : 0;
	return closing(ctx, fd, file);
}
#endif

/* ---- SCM_RIGHTS sends ----------------------------------------------------- */

/*
 * One record per tracked file of the message, in order, all stamped with the
 * same ts (user space makes them one send). The files, not the sender's fd
 * numbers: user space knows which of the sender's fds holds each.
 */
static __always_inline int scm_sent(void *ctx, const void *scm)
{
	const char *fpl = (const char *)kword((const char *)scm + TT_SCM_FP_OFF);
	if (!fpl)
		return 0;
	short count = 0;
	bpf_probe_read_kernel(&count, sizeof(count), fpl + TT_FPL_COUNT_OFF);
	u64 ts = bpf_ktime_get_ns();
	int sockfd = (int)sysarg(PT_DI);
	u32 sent = 0;
	/* a bounded loop (not unrolled: sixteen records' stack), walked by the verifier */
#pragma clang loop unroll(disable)
	for (int i = 0; i < TT_MAX_FDS; i++) {
		if (i >= count)
			break;
		const void *file = (const void *)kword(fpl + TT_FPL_FP_OFF + i * 8);
		u32 kind = file_kind(file);
		if (!kind)
			continue;
		struct tt_event ev_, *e = &ev_;
		init_event(e, TT_EV_SCM_SEND);
		e->ts = ts;
		e->fd = sockfd;
		e->arg2 = ts;
		set_file(e, file, kind);
		submit(ctx, e);
		sent++;
	}
	if (sent)
		end_of_message(ctx, TT_EV_SCM_SEND, sockfd, ts);
	return 0;
}

#ifdef TT_KPROBES
/* __scm_send(sock, msg, scm): only a message with control data gets here */
int scm_send_entry(void *ctx)
{
	keep_args(TT_KA_SCM_SEND, 0, karg2(ctx), 0, 0);
	return 0;
}

int scm_send_return(void *ctx)
{
	struct tt_kargs k;
	if (!take_args(TT_KA_SCM_SEND, &k) || (int)kret(ctx))
		return 0;
	return scm_sent(ctx, (const void *)k.a[0]);
}
#else
KRETFUNC_PROBE(__scm_send, void *sock, void *msg, void *scm, int ret)
{
	if (ret)
		return 0;
	return scm_sent(ctx, scm);
}
#endif

/* ---- close-on-exec and unshare of tracked processes ------------------------ */

#ifdef TT_HAVE_SET_CLOEXEC
static __always_inline int cloexec_set(void *ctx, unsigned int fd, int flag)
{
	if (!interesting(bpf_get_current_pid_tgid() >> 32))
		return 0;
	u64 nr = sysarg(PT_ORIG_AX);
	struct tt_event ev_, *e = &ev_;
	init_event(e, TT_EV_SETFD);
	e->fd = fd;
	if (nr == NR_IOCTL)
		e->arg = flag ? TT_FIOCLEX : TT_FIONCLEX;
	else
		e->arg = TT_F_SETFD;
	e->arg2 = flag != 0;
	submit(ctx, e);
	return 0;
}

#ifdef TT_KPROBES
int cloexec_entry(void *ctx)
{
	return cloexec_set(ctx, (u32)karg0(ctx), (int)karg1(ctx));
}
#else
KFUNC_PROBE(set_close_on_exec, unsigned int fd, int flag)
{
	return cloexec_set(ctx, fd, flag);
}
#endif
#endif

#ifdef TT_HAVE_KSYS_UNSHARE
static __always_inline int unshared(void *ctx, u64 flags, int ret)
{
	if (ret || !(flags & CLONE_FILES) || !interesting(bpf_get_current_pid_tgid() >> 32))
		return 0;
	struct tt_event ev_, *e = &ev_;
	init_event(e, TT_EV_UNSHARE);
	e->arg = flags;
	submit(ctx, e);
	return 0;
}

#ifdef TT_KPROBES
/* ksys_unshare(flags): kept for every call (rare), so none is ever stale */
int unshare_entry(void *ctx)
{
	keep_args(TT_KA_UNSHARE, 0, karg0(ctx), 0, 0);
	return 0;
}

int unshare_return(void *ctx)
{
	struct tt_kargs k;
	if (!take_args(TT_KA_UNSHARE, &k))
		return 0;
	return unshared(ctx, k.a[0], (int)kret(ctx));
}
#else
KRETFUNC_PROBE(ksys_unshare, unsigned long flags, int ret)
{
	return unshared(ctx, flags, ret);
}
#endif
#endif

#ifdef TT_HAVE_SYS_CLOSE_RANGE
#define CLOSE_RANGE_UNSHARE_ 2ULL
#define CLOSE_RANGE_CLOEXEC_ 4ULL
/*
 * close_range(first, last, flags): the closes of its range reach the close path
 * one by one; what they do not show is that they are one close_range (how the
 * table reports them), CLOSE_RANGE_CLOEXEC (close-on-exec set on the range,
 * nothing closed) and CLOSE_RANGE_UNSHARE (the table unshared before the closes).
 * At entry, so the model unshares before the closes that follow; calls the kernel
 * refuses (bad flags, first > last) are left out. The model closes the range
 * itself (with UNSHARE a range reaching the table's end is left out of the copy,
 * not closed fd by fd): the closes that do come find nothing left.
 */
static __always_inline int close_range_called(void *ctx)
{
	u64 flags = sysarg(PT_DX);
	u32 first = (u32)sysarg(PT_DI), last = (u32)sysarg(PT_SI);
	if ((flags & ~(CLOSE_RANGE_UNSHARE_ | CLOSE_RANGE_CLOEXEC_)) || first > last ||
	    !interesting(bpf_get_current_pid_tgid() >> 32))
		return 0;
	struct tt_event ev_, *e = &ev_;
	init_event(e, TT_EV_CLOSE_RANGE);
	e->fd = (int)first;
	e->arg = last;
	e->arg2 = flags;
	submit(ctx, e);
	return 0;
}

#ifdef TT_KPROBES
int close_range_entry(void *ctx)
{
	return close_range_called(ctx);
}
#else
KFUNC_PROBE(__x64_sys_close_range, void *regs)
{
	return close_range_called(ctx);
}
#endif
#endif

/*
 * An exec's point of no return, before it unshares a CLONE_FILES table and
 * releases a vfork parent: from here on the table is this process's own (what
 * sched_prepare_exec says on 6.10+, here on every kernel).
 */
static __always_inline int exec_begins(void *ctx)
{
	if (!interesting(bpf_get_current_pid_tgid() >> 32))
		return 0;
	struct tt_event ev_, *e = &ev_;
	init_event(e, TT_EV_UNSHARE);
	e->arg = CLONE_FILES | TT_UNSHARE_EXEC;
	submit(ctx, e);
	return 0;
}

#ifdef TT_KPROBES
int exec_entry(void *ctx)
{
	return exec_begins(ctx);
}
#else
KFUNC_PROBE(begin_new_exec, void *bprm)
{
	return exec_begins(ctx);
}
#endif

/* ---- tun/tap ioctls (kprobes: module functions) --------------------------- */

static __always_inline int is_tun_cmd(u32 cmd)
{
	return cmd == TUNSETIFF_ || cmd == TUNSETQUEUE_ || cmd == TUNGETIFF_ ||
	       cmd == TUNSETPERSIST_ || cmd == TUNSETOWNER_ || cmd == TUNSETGROUP_;
}

struct tt_ioctl_call {
	u64 file;
	u64 arg;
	u32 cmd;
	u32 kind;
};
BPF_HASH(ioctl_calls, u32, struct tt_ioctl_call, 10240);   /* tid -> call in progress */

/* __tun_chr_ioctl(file, cmd, arg, ifreq_len) and tap_ioctl(file, cmd, arg) */
/* A TUN ioctl, or VHOST_NET_SET_BACKEND given the tun/tap fd by mistake (the
 * driver's own answer, EBADFD or EINVAL, is read at the return) */
static __always_inline int ioctl_entry(void *ctx, u32 kind)
{
	u32 cmd = (u32)ctxreg(ctx, PT_SI);
	if ((!is_tun_cmd(cmd) && cmd != VHOST_NET_SET_BACKEND_) ||
	    is_self(bpf_get_current_pid_tgid() >> 32))
		return 0;
	struct tt_ioctl_call c = {};
	c.file = ctxreg(ctx, PT_DI);
	c.arg = ctxreg(ctx, PT_DX);
	c.cmd = cmd;
	c.kind = kind;
	u32 tid = (u32)bpf_get_current_pid_tgid();
	ioctl_calls.update(&tid, &c);
	return 0;
}

int tun_ioctl_entry(void *ctx)
{
	return ioctl_entry(ctx, TT_FK_TUN);
}

int tap_ioctl_entry(void *ctx)
{
	return ioctl_entry(ctx, TT_FK_TAP);
}

/* At return the kernel has copied the final ifreq back (a "tap%d" template named). */
int tun_ioctl_return(void *ctx)
{
	u32 tid = (u32)bpf_get_current_pid_tgid();
	struct tt_ioctl_call *cp = ioctl_calls.lookup(&tid);
	if (!cp)
		return 0;
	struct tt_ioctl_call c = *cp;
	ioctl_calls.delete(&tid);
	if (c.cmd == VHOST_NET_SET_BACKEND_)
		return on_vhost_backend(ctx, (long)ctxreg(ctx, PT_AX));
	struct tt_event ev_, *e = &ev_;
	init_event(e, TT_EV_TUN_IOCTL);
	e->fd = (int)sysarg(PT_DI);
	e->arg = c.cmd;
	e->ret = (long)ctxreg(ctx, PT_AX);
	if (c.cmd == TUNSETPERSIST_ || c.cmd == TUNSETOWNER_ || c.cmd == TUNSETGROUP_) {
		e->arg2 = c.arg; /* passed by value */
	} else {
		/* struct ifreq: ifr_name[16] at 0, ifr_flags (u16) at 16 */
		u16 fl = 0;
		bpf_probe_read_user(e->name, sizeof(e->name), (void *)c.arg);
		bpf_probe_read_user(&fl, sizeof(fl), (char *)c.arg + 16);
		e->arg2 = fl;
	}
	set_file(e, (void *)c.file, c.kind);
	e->netns = file_netns((void *)c.file);
	if (fd_cloexec(e->fd))
		e->fdflags |= TT_FD_CLOEXEC;
	mark_interesting(e->tgid);
	submit(ctx, e);
	return 0;
}

#ifdef TT_HAVE_IOCTL_CHECK
/*
 * A TUN ioctl on a file that is not tun's or tap's, or VHOST_NET_SET_BACKEND on one
 * that is not vhost-net's (a VMM handed the wrong fd), never reaches the driver
 * hooks. security_file_ioctl(file, cmd, arg) is on every ioctl's path (so every
 * ioctl pays a trampoline: tracer/backends/kernel.py hooks it only when asked),
 * before the file's own ioctl: the command is checked first, then the file's
 * kind. The answer is not seen here, only that the file's driver has no such
 * command: the kernel answers that with ENOTTY (a driver's ENOIOCTLCMD becomes
 * ENOTTY in vfs_ioctl), and that is what the record says. An fd that is not open
 * (EBADF) never gets this far.
 */
static __always_inline int ioctl_checked(void *ctx, const void *file, unsigned int cmd)
{
	int tun = is_tun_cmd(cmd);
	if (!tun && cmd != VHOST_NET_SET_BACKEND_)
		return 0;
	u32 kind = arg_kind(file);
	/* a tun/tap file answers either kind itself: its kprobe reads that answer */
	if (kind == TT_FK_TUN || kind == TT_FK_TAP || (!tun && kind == TT_FK_VHOST) ||
	    is_self(bpf_get_current_pid_tgid() >> 32))
		return 0;
	if (!tun)
		return on_vhost_backend(ctx, -ENOTTY_);
	struct tt_event ev_, *e = &ev_;
	init_event(e, TT_EV_TUN_IOCTL);
	e->fd = (int)sysarg(PT_DI);
	e->arg = cmd;
	e->ret = -ENOTTY_;
	set_file(e, file, kind);
	if (fd_cloexec(e->fd))
		e->fdflags |= TT_FD_CLOEXEC;
	submit(ctx, e);
	return 0;
}

#ifdef TT_KPROBES
int ioctl_check_entry(void *ctx)
{
	return ioctl_checked(ctx, (const void *)karg0(ctx), (u32)karg1(ctx));
}
#else
KFUNC_PROBE(security_file_ioctl, void *file, unsigned int cmd, unsigned long arg)
{
	return ioctl_checked(ctx, file, cmd);
}
#endif
#endif

/* vhost_net_ioctl(file, cmd, arg): VHOST_NET_SET_BACKEND, read at return as the
 * tracepoint backend does (struct vhost_vring_file is input only) */
int vhost_ioctl_return(void *ctx)
{
	if ((u32)sysarg(PT_SI) != VHOST_NET_SET_BACKEND_)
		return 0;
	return on_vhost_backend(ctx, (long)ctxreg(ctx, PT_AX));
}

/* ---- process lifetime: the shared sched tracepoints ------------------------ */

#include "sched.h"
