/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * taptrace syscall-tracepoint backend (bcc).
 *
 * Header-agnostic by design: it reads tracepoint arguments, user memory in
 * uapi layouts (struct ifreq, msghdr, cmsghdr, clone_args) and the saved
 * user registers (struct pt_regs, the x86-64 ptrace ABI layout) - never a
 * kernel-internal struct from headers - so it is safe against mismatched
 * kernel headers. Where the kernel has BTF, a TUN ioctl's record also carries
 * its struct file *, close-on-exec bit and namespace, read with offsets taken
 * from that BTF at start (common.h; without BTF user space asks /proc).
 *
 * Reading the syscall arguments from pt_regs at sys_exit lets every probe
 * that needs both the arguments and the result be a single exit probe, with
 * no per-thread map written on the way in.
 *
 * Every syscall tracepoint costs every call of its syscall on the machine,
 * whatever the program does (measured: about 5% of an open+close pair per
 * hook), so the hooks are as few as the model allows: no open probe (a tun fd
 * is first seen at its first TUN ioctl, see sys_exit_ioctl), ioctl at exit only.
 *
 * Filters, cheapest first:
 *   ioctl   - cmd is not a 'T' (0x54) ioctl nor VHOST_NET_SET_BACKEND: leave
 *             after one pt_regs read and two compares.
 *   fd ops  - the process is not in `interest` (holds no tracked fd).
 *   recvmsg - no SCM_RIGHTS message from a tracked process is unresolved.
 *
 * Compile-time switches (set by tracer/probes.py):
 *   TT_RINGBUF, TT_RING_PAGES     ring buffer (5.8+) or perf buffer
 *   TT_HAVE_GROUP_DEAD            sched_process_exit has group_dead (6.16+)
 *   TT_HAVE_PREPARE_EXEC          sched_prepare_exec exists (6.10+)
 *   TT_INTEREST_MAX               interest-set capacity
 *   TT_TASK_FILES_OFF ... TT_FDT_MAX_FDS_OFF   the fd table's layout (BTF)
 *   TT_F_PRIVATE_OFF, TT_SK_NET_OFF, TT_NET_INUM_OFF   a tun file's namespace (BTF)
 *   TT_SOCKET_FILE_OFF ... TT_UNIX_PEER_OFF   a unix socket and its peer (BTF)
 */
#include "common.h"

/* ---- ioctl ---------------------------------------------------------------- */

static __always_inline int is_tun_cmd(u32 cmd)
{
	return cmd == TUNSETIFF_ || cmd == TUNSETQUEUE_ || cmd == TUNGETIFF_ ||
	       cmd == TUNSETPERSIST_ || cmd == TUNSETOWNER_ || cmd == TUNSETGROUP_;
}

/*
 * Every ioctl on the machine comes here, so the command is checked first (one
 * pt_regs read) and anything but the few tun/tap, close-on-exec and vhost-net
 * commands leaves at once. Exit only: one probe, with the result and the ifreq
 * the kernel filled in (TUNGETIFF, a "tap%d" template).
 *
 * This is also where taptrace first meets a tun/tap fd: there is no open probe
 * (every open on the machine would pay for it), and an fd on /dev/net/tun or
 * /dev/tapN is of no use before a TUN ioctl. The process becomes tracked when
 * the answer shows the fd is a tun/tap fd (anything but ENOTTY and EBADF); user
 * space names the file from /proc (path, close-on-exec) the first time it sees it.
 */
TRACEPOINT_PROBE(syscalls, sys_exit_ioctl)
{
	u32 cmd = (u32)sysarg(PT_SI);
	if ((cmd & 0xff00) != 0x5400) {
		if (cmd == VHOST_NET_SET_BACKEND_)
			return on_vhost_backend(args, args->ret);
		return 0;
	}
	long ret = args->ret;
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (cmd == FIOCLEX_ || cmd == FIONCLEX_) {
		if (ret != 0 || !interesting(tgid))
			return 0;
		struct tt_event ev_, *e = &ev_;
		init_event(e, TT_EV_SETFD);
		e->fd = (int)sysarg(PT_DI);
		e->arg = cmd == FIOCLEX_ ? TT_FIOCLEX : TT_FIONCLEX;
		e->arg2 = cmd == FIOCLEX_;
		submit(args, e);
		return 0;
	}
	if (!is_tun_cmd(cmd) || is_self(tgid))
		return 0;
	u64 uarg = sysarg(PT_DX);
	struct tt_event ev_, *e = &ev_;
	init_event(e, TT_EV_TUN_IOCTL);
	e->fd = (int)sysarg(PT_DI);
	e->arg = cmd;
	e->ret = ret;
	if (cmd == TUNSETPERSIST_ || cmd == TUNSETOWNER_ || cmd == TUNSETGROUP_) {
		e->arg2 = uarg; /* passed by value */
	} else {
		/* struct ifreq: ifr_name[16] at 0, ifr_flags (u16) at 16 */
		u16 fl = 0;
		bpf_probe_read_user(e->name, sizeof(e->name), (void *)uarg);
		bpf_probe_read_user(&fl, sizeof(fl), (char *)uarg + 16);
		e->arg2 = fl;
	}
	if (ret != -ENOTTY_ && ret != -EBADF_)
		mark_interesting(tgid);
#ifdef TT_FDT_FD_OFF
	/* the file itself, read from the fd table (layout from BTF): its identity,
	 * its close-on-exec bit and namespace as they are now, not when user space
	 * gets to look in /proc (the fd may be closed or reused by then) */
	if (ret != -EBADF_) {
		const void *file = fd_file((u32)e->fd);
		e->file = (u64)file;
		if (file && fd_cloexec((u32)e->fd))
			e->fdflags |= TT_FD_CLOEXEC;
#ifdef TT_SK_NET_OFF
		if (file && ret != -ENOTTY_)
			e->netns = file_netns(file);
#endif
	}
#endif
	submit(args, e);
	return 0;
}

/* ---- fd table operations of tracked processes ----------------------------- */

/*
 * At exit, so closes of fds that were not open (EBADF) are dropped first: a forked
 * child that closes every possible fd number (libvirt's virCommand does, up to the
 * fd limit) would otherwise flood the ring with thousands of useless records.
 */
TRACEPOINT_PROBE(syscalls, sys_exit_close)
{
	if (args->ret == -EBADF_ || !interesting(bpf_get_current_pid_tgid() >> 32))
		return 0;
	struct tt_event ev_, *e = &ev_;
	init_event(e, TT_EV_CLOSE);
	e->fd = (int)sysarg(PT_DI);
	submit(args, e);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_close_range)
{
	if (args->ret < 0 || !interesting(bpf_get_current_pid_tgid() >> 32))
		return 0;
	struct tt_event ev_, *e = &ev_;
	init_event(e, TT_EV_CLOSE_RANGE);
	e->fd = (int)sysarg(PT_DI);
	e->arg = (u32)sysarg(PT_SI);
	e->arg2 = (u32)sysarg(PT_DX);
	e->ret = args->ret;
	submit(args, e);
	return 0;
}

static __always_inline int on_dup_exit(void *ctx, long ret, u32 how, u64 want)
{
	if (ret < 0 || !interesting(bpf_get_current_pid_tgid() >> 32))
		return 0;
	struct tt_event ev_, *e = &ev_;
	init_event(e, TT_EV_DUP);
	e->fd = (int)sysarg(PT_DI);
	e->ret = ret;
	e->arg = how;
	e->arg2 = want;
	submit(ctx, e);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_dup)
{
	return on_dup_exit(args, args->ret, TT_DUP, 0);
}

TRACEPOINT_PROBE(syscalls, sys_exit_dup2)
{
	return on_dup_exit(args, args->ret, TT_DUP2, args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_exit_dup3)
{
	if (args->ret < 0)
		return 0;
	u32 how = (sysarg(PT_DX) & O_CLOEXEC_) ? TT_DUP3 | TT_DUP_CLOEXEC : TT_DUP3;
	return on_dup_exit(args, args->ret, how, args->ret);
}

TRACEPOINT_PROBE(syscalls, sys_exit_fcntl)
{
	long ret = args->ret;
	if (ret < 0 || !interesting(bpf_get_current_pid_tgid() >> 32))
		return 0;
	u32 cmd = (u32)sysarg(PT_SI);
	if (cmd == F_DUPFD_)
		return on_dup_exit(args, ret, TT_F_DUPFD, sysarg(PT_DX));
	if (cmd == F_DUPFD_CLOEXEC_)
		return on_dup_exit(args, ret, TT_F_DUPFD_CLOEXEC, sysarg(PT_DX));
	if (cmd != F_SETFD_)
		return 0;
	struct tt_event ev_, *e = &ev_;
	init_event(e, TT_EV_SETFD);
	e->fd = (int)sysarg(PT_DI);
	e->arg = TT_F_SETFD;
	e->arg2 = (sysarg(PT_DX) & FD_CLOEXEC_) != 0;
	submit(args, e);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_unshare)
{
	if (args->ret < 0 || !interesting(bpf_get_current_pid_tgid() >> 32))
		return 0;
	u64 flags = sysarg(PT_DI);
	if (!(flags & CLONE_FILES))
		return 0;
	struct tt_event ev_, *e = &ev_;
	init_event(e, TT_EV_UNSHARE);
	e->arg = flags;
	submit(args, e);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_pidfd_getfd)
{
	if (args->ret < 0 || is_self(bpf_get_current_pid_tgid() >> 32))
		return 0;
	/* Rare; user space decides whether the source fd is a tracked one. */
	struct tt_event ev_, *e = &ev_;
	init_event(e, TT_EV_PIDFD_GETFD);
	e->fd = (int)sysarg(PT_DI);
	e->arg = (u32)sysarg(PT_SI);
	e->ret = args->ret;
	mark_interesting(e->tgid);
	submit(args, e);
	return 0;
}

/* Which process a pidfd names, so a later pidfd_getfd can say where its fd came from
 * (the pidfd is often closed before user space could look it up in /proc). */
TRACEPOINT_PROBE(syscalls, sys_exit_pidfd_open)
{
	if (args->ret < 0 || is_self(bpf_get_current_pid_tgid() >> 32))
		return 0;
	struct tt_event ev_, *e = &ev_;
	init_event(e, TT_EV_PIDFD_OPEN);
	e->fd = (int)args->ret;
	e->ret = args->ret;
	e->arg = (u32)sysarg(PT_DI);
	submit(args, e);
	return 0;
}

/* ---- SCM_RIGHTS ----------------------------------------------------------- */

/*
 * Every fd of every SCM_RIGHTS list in a message (struct msghdr, x86-64 uapi:
 * msg_control at 32, msg_controllen at 40), in order - a sender may put several
 * lists in one message and the receiver gets them all - in one record: the
 * first MAX_CMSGS lists, up to TT_MAX_FDS fds. A message with more is reported
 * TT_FD_TRUNCATED and user space reads the table from /proc instead, so no fd
 * hides behind the bounds. (Measured: a bounded-loop walk of every list, 96
 * steps, exceeds the verifier's 1M-instruction budget on 6.18; bcc 0.26 leaves a
 * bpf_loop callback's address unrelocated, so the verifier refuses it.)
 */
static __always_inline int scm_submit(void *ctx, struct tt_event *e, const char *msg)
{
	u64 ctl = 0, ctllen = 0;
	bpf_probe_read_user(&ctl, sizeof(ctl), msg + 32);
	bpf_probe_read_user(&ctllen, sizeof(ctllen), msg + 40);
	if (!ctl || ctllen < 16)
		return 0;
	int buf[3 * TT_MAX_FDS] = {};
	u64 off = 0;
	u32 got = 0, cut = 0;
	for (int i = 0; i < MAX_CMSGS; i++) {
		struct { u64 len; int level; int type; } h = {};
		if (off + 16 > ctllen)
			break;
		if (bpf_probe_read_user(&h, sizeof(h), (char *)ctl + off) || h.len < 16)
			break;
		if (h.level == SOL_SOCKET_ && h.type == SCM_RIGHTS_) {
			u32 n = (h.len - 16) / 4;
			if (n > TT_MAX_FDS - got) {
				n = TT_MAX_FDS - got;
				cut = 1;
			}
			u32 size = n * 4, at = got;
			/* keep clang from folding the masks: they are the verifier's bounds */
			asm volatile("" : "+r"(size), "+r"(at));
			at &= TT_MAX_FDS - 1;
			size &= 8 * TT_MAX_FDS - 1;
			if (size && !bpf_probe_read_user(&buf[at], size, (char *)ctl + off + 16))
				got += n;
		}
		off += (h.len + 7) & ~7ULL;
		if (i == MAX_CMSGS - 1 && off + 16 <= ctllen)
			cut = 1;
	}
	if (!got && !cut)
		return 0;
	__builtin_memcpy(e->fds, buf, sizeof(e->fds));
	e->nfds = got;
	e->fdflags |= cut ? TT_FD_TRUNCATED : 0;
	if (submit(ctx, e))
		return -1;
	return got + cut;
}

/*
 * Which queue a message is on, so that user space matches a receive only to a send
 * on that queue, not to one of the same shape on another socket: the struct sock of
 * the receiving unix socket, and of the sending socket's peer (its connected socket:
 * socketpair, connect, accept; where SOCK_DGRAM and SOCK_SEQPACKET sends go, and the
 * stream a SOCK_STREAM send is read from). 0: not known - no layouts, not a unix
 * socket, or an unconnected datagram socket sending to an address.
 */
#ifdef TT_UNIX_PEER_OFF
static __always_inline u64 unix_sock_at(int fd)
{
	const char *file = (const char *)fd_file(fd);
	if (!file)
		return 0;
	const char *socket = (const char *)kword(file + TT_F_PRIVATE_OFF);
	/* a socket's file and struct socket point at each other; any other file's
	 * private_data is something else */
	if (!socket || (const char *)kword(socket + TT_SOCKET_FILE_OFF) != file)
		return 0;
	const char *sk = (const char *)kword(socket + TT_SOCKET_SK_OFF);
	u16 family = 0;
	if (!sk || bpf_probe_read_kernel(&family, sizeof(family), sk + TT_SK_FAMILY_OFF) ||
	    family != AF_UNIX_)
		return 0;
	return (u64)sk;
}

/*
 * A queue's socket beyond its address, which the kernel gives a new socket once
 * the old one is freed (with a message nobody received): its inode number
 * (sk->sk_socket's, SOCK_INODE). 0: not known.
 */
static __always_inline u32 sock_ino(u64 sk)
{
#ifdef TT_SK_SOCKET_OFF
	const char *socket = sk ? (const char *)kword((const char *)sk + TT_SK_SOCKET_OFF) : 0;
	return socket ? (u32)kword(socket + TT_SOCKET_INODE_OFF + TT_INODE_INO_OFF) : 0;
#else
	return 0;
#endif
}

static __always_inline u64 recv_queue(int fd)
{
	return unix_sock_at(fd);
}

static __always_inline u64 send_queue(int fd)
{
	const char *sk = (const char *)unix_sock_at(fd);
	return sk ? kword(sk + TT_UNIX_PEER_OFF) : 0;
}
#else
static __always_inline u32 sock_ino(u64 sk) { return 0; }
static __always_inline u64 recv_queue(int fd) { return 0; }
static __always_inline u64 send_queue(int fd) { return 0; }
#endif

static __always_inline void on_recv(void *ctx, int sock, u64 queue, u32 qino,
				   const char *msg, u64 flags, long ret)
{
	struct tt_event ev_, *e = &ev_;
	init_event(e, TT_EV_SCM_RECV);
	e->fd = sock;
	e->arg = flags;
	e->ret = ret;
	e->arg2 = queue;
	e->netns = qino;
	if (scm_submit(ctx, e, msg) > 0)
		mark_interesting(e->tgid);
}

/*
 * A send record the buffer refused: user space resyncs from /proc, which cannot
 * show a message in flight, so its receive must still be recorded (it is taken
 * from /proc then, as a receive of an unknown send). It is waited for as long as
 * user space keeps a send it did read (events.py SCM_PENDING_NS, passed in as
 * TT_SCM_PENDING_NS).
 */
static __always_inline void scm_send_lost(void)
{
	u32 idx = TT_C_SCM_LOST_UNTIL;
	u64 *until = counters.lookup(&idx);
	if (until)
		*until = bpf_ktime_get_ns() + TT_SCM_PENDING_NS;
}

/*
 * Sends are reported on the way in, so receives are parsed before the message is
 * queued: a receiver blocked in recvmsg can return before the sender's sendmsg
 * does. A send that then fails just finds no receiver. Each send record in the
 * buffer is counted: until user space has read it and seen its files received
 * (TT_C_SCM_SETTLED), every recvmsg exit is parsed - however late the receive,
 * and however long user space takes to read (stopped, or busy). A send record
 * lost on the way arms receives by time instead (scm_send_lost).
 */
static __always_inline void on_send(void *ctx, int sock, u64 queue, u32 qino,
				   const char *msg, u64 flags)
{
	struct tt_event ev_, *e = &ev_;
	init_event(e, TT_EV_SCM_SEND);
	e->fd = sock;
	e->arg = flags;
	e->arg2 = queue;
	e->netns = qino;
	int n = scm_submit(ctx, e, msg);
	if (n > 0)
		count(TT_C_SCM_SENDS);
	else if (n < 0)
		scm_send_lost();
}

TRACEPOINT_PROBE(syscalls, sys_enter_sendmsg)
{
	if (!interesting(bpf_get_current_pid_tgid() >> 32))
		return 0;
	u64 queue = send_queue((int)args->fd);
	on_send(args, (int)args->fd, queue, sock_ino(queue), (const char *)args->msg,
		args->flags);
	return 0;
}

/* messages past the first MAX_MMSGS of a sendmmsg/recvmmsg: not read; user space
 * reads /proc instead (a record with no fds, TT_FD_TRUNCATED) */
static __always_inline void mmsg_truncated(void *ctx, u32 type, int sock)
{
	struct tt_event ev_, *e = &ev_;
	init_event(e, type);
	e->fd = sock;
	e->fdflags |= TT_FD_TRUNCATED;
	int err = submit(ctx, e);
	if (type != TT_EV_SCM_SEND)
		return;
	if (!err)
		count(TT_C_SCM_SENDS);
	else
		scm_send_lost();
}

/* struct mmsghdr is a msghdr (56 bytes) + unsigned int msg_len, 64 in all. */
#define MMSG_(n, i, stmt) if ((n) > (i)) { const u64 i_ = (i); stmt; }
#define EACH_MMSG(n, stmt) do { MMSG_(n, 0, stmt) MMSG_(n, 1, stmt) MMSG_(n, 2, stmt) \
				MMSG_(n, 3, stmt) } while (0)
_Static_assert(MAX_MMSGS == 4, "EACH_MMSG writes out MAX_MMSGS messages");
TRACEPOINT_PROBE(syscalls, sys_enter_sendmmsg)
{
	if (!interesting(bpf_get_current_pid_tgid() >> 32))
		return 0;
	const char *vec = (const char *)args->mmsg;
	u32 vlen = args->vlen;
	/*
	 * Written out, not a loop: clang turns `for (i < MAX_MMSGS && i < vlen)` into a
	 * down-counter the verifier keeps imprecise, and 6.1's verifier then finds the
	 * same state at the back-edge and rejects the program as an infinite loop
	 * (measured in a Debian 6.1 guest; #pragma unroll is refused for this shape).
	 */
	u64 queue = send_queue((int)args->fd);           /* once: one socket */
	u32 qino = sock_ino(queue);
	EACH_MMSG(vlen, on_send(args, (int)args->fd, queue, qino, vec + i_ * 64, args->flags));
	if (vlen > MAX_MMSGS)
		mmsg_truncated(args, TT_EV_SCM_SEND, (int)args->fd);
	return 0;
}

/* While a tracked process's SCM_RIGHTS message may still be unreceived. */
static __always_inline int scm_armed(void)
{
	u32 sent_idx = TT_C_SCM_SENDS, settled_idx = TT_C_SCM_SETTLED;
	u32 lost_idx = TT_C_SCM_LOST_UNTIL;
	u64 *sent = counters.lookup(&sent_idx), *settled = counters.lookup(&settled_idx);
	if (sent && settled && *sent != *settled)
		return 1;
	u64 *until = counters.lookup(&lost_idx);
	return until && *until && bpf_ktime_get_ns() < *until;
}

TRACEPOINT_PROBE(syscalls, sys_exit_recvmsg)
{
	if (args->ret < 0 || !scm_armed())
		return 0;
	int sock = (int)sysarg(PT_DI);
	u64 queue = recv_queue(sock);
	on_recv(args, sock, queue, sock_ino(queue), (const char *)sysarg(PT_SI), sysarg(PT_DX),
		args->ret);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_exit_recvmmsg)
{
	long ret = args->ret;
	if (ret <= 0 || !scm_armed())
		return 0;
	int sock = (int)sysarg(PT_DI);
	const char *vec = (const char *)sysarg(PT_SI);
	u64 flags = sysarg(PT_R10);
	u64 queue = recv_queue(sock);
	u32 qino = sock_ino(queue);
	EACH_MMSG(ret, on_recv(args, sock, queue, qino, vec + i_ * 64, flags, ret)); /* as in sendmmsg */
	if (ret > MAX_MMSGS)
		mmsg_truncated(args, TT_EV_SCM_RECV, sock);
	return 0;
}

/* ---- process lifetime (fork, exec, exit: sched.h) ---------------------- */

#include "sched.h"

#ifdef TT_HAVE_PREPARE_EXEC
/*
 * An exec's point of no return (6.10+), before it unshares a CLONE_FILES table
 * (unshare_files) and releases a vfork parent (exec_mmap): from here on what the
 * table holds is this process's own, whatever a sharer does next. Without it the
 * unshare is modelled at sched_process_exec, after a released parent may already
 * have changed the shared table.
 */
TRACEPOINT_PROBE(sched, sched_prepare_exec)
{
	if (!interesting(bpf_get_current_pid_tgid() >> 32))
		return 0;
	struct tt_event ev_, *e = &ev_;
	init_event(e, TT_EV_UNSHARE);
	e->arg = CLONE_FILES | TT_UNSHARE_EXEC;
	submit(args, e);
	return 0;
}
#else
/*
 * Without sched_prepare_exec (before 6.10): the table as the exec begins is the
 * one the process will own if it succeeds. Exact for a CLONE_VFORK child, whose
 * parent sleeps until after the kernel's unshare_files; a plain CLONE_FILES
 * sharer's changes during the exec are the ones left uncertain. User space drops
 * the copy if anything but the exec comes next. An exec costs nothing else here.
 */
static __always_inline int on_exec_enter(void *ctx)
{
	if (!interesting(bpf_get_current_pid_tgid() >> 32))
		return 0;
	struct tt_event ev_, *e = &ev_;
	init_event(e, TT_EV_UNSHARE);
	e->arg = CLONE_FILES | TT_UNSHARE_AT_EXEC;
	submit(ctx, e);
	return 0;
}

TRACEPOINT_PROBE(syscalls, sys_enter_execve)
{
	return on_exec_enter(args);
}

TRACEPOINT_PROBE(syscalls, sys_enter_execveat)
{
	return on_exec_enter(args);
}
#endif
