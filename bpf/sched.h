/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * taptrace: the process-lifetime probes both backends share (sched tracepoints:
 * they cost fork, exec and exit only, never a plain syscall). Needs common.h.
 */
#ifndef TAPTRACE_SCHED_H
#define TAPTRACE_SCHED_H

/* Runs in the parent, inside its fork/vfork/clone/clone3 syscall. */
TRACEPOINT_PROBE(sched, sched_process_fork)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	int known = interesting(tgid);
	u64 nr = sysarg(PT_ORIG_AX), flags;
	if (nr == NR_CLONE) {
		flags = sysarg(PT_DI);
	} else if (nr == NR_CLONE3) {
		flags = 0; /* struct clone_args: u64 flags at offset 0 */
		bpf_probe_read_user(&flags, sizeof(flags), (void *)sysarg(PT_DI));
	} else if (nr == NR_FORK) {
		flags = SIGCHLD_;
	} else if (nr == NR_VFORK) {
		flags = CLONE_VM | CLONE_VFORK | SIGCHLD_;
	} else {
		return 0; /* io_uring workers and other kernel-made threads */
	}
	if (flags & CLONE_THREAD) {
		/* a thread of a tracked process: it shares the creating thread's fd
		 * table until it unshares its own (unshare, close_range), and a table
		 * is released when its last thread goes */
		if (!known)
			return 0;
		struct tt_event ev_, *e = &ev_;
		init_event(e, TT_EV_FORK);
		e->arg = flags;
		e->arg2 = args->child_pid; /* the new thread's id */
		submit(args, e);
		return 0;
	}
	/*
	 * A table shared by clone(CLONE_FILES) is followed from the clone on, whoever
	 * makes it: one sharer may make a tap there and exit, another keep it (pasta's
	 * vfork-style helper does). Such clones of processes (not threads) are rare;
	 * any other fork of a process that holds no tracked fd leaves here.
	 */
	if (!known) {
		if (!(flags & CLONE_FILES))
			return 0;
		mark_interesting(tgid);
	}
	u32 child = args->child_pid;
	mark_interesting(child);
	struct tt_event ev_, *e = &ev_;
	init_event(e, TT_EV_FORK);
	e->arg = flags;
	e->arg2 = child;
	submit(args, e);
	return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exec)
{
	u32 tgid = bpf_get_current_pid_tgid() >> 32;
	if (!interesting(tgid))
		return 0;
	struct tt_event ev_, *e = &ev_;
	init_event(e, TT_EV_EXEC);
	e->arg2 = args->old_pid;
	submit(args, e);
	return 0;
}

/* A thread (not the whole process) of a tracked process exits: it no longer uses
 * its fd table (a table of its own goes with it). */
static __always_inline int thread_exit(void *ctx, u32 tgid)
{
	if (!interesting(tgid))
		return 0;
	struct tt_event ev_, *e = &ev_;
	init_event(e, TT_EV_EXIT);
	e->arg = TT_EXIT_THREAD;
	submit(ctx, e);
	return 0;
}

TRACEPOINT_PROBE(sched, sched_process_exit)
{
	u64 id = bpf_get_current_pid_tgid();
	u32 tgid = id >> 32;
#ifdef TT_HAVE_GROUP_DEAD
	if (!args->group_dead)
		return thread_exit(args, tgid);
#elif defined(TT_SIGNAL_LIVE_OFF)
	/* do_exit() counts the thread out of signal->live before this tracepoint: 0
	 * when it is the group's last (the leader may have left first, with
	 * pthread_exit, and the group's last thread need not be the leader) */
	int live = 1;
	const char *sig = (const char *)kword((const char *)bpf_get_current_task() +
					       TT_TASK_SIGNAL_OFF);
	bpf_probe_read_kernel(&live, sizeof(live), sig + TT_SIGNAL_LIVE_OFF);
	if (live)
		return thread_exit(args, tgid);
#else
	if ((u32)id != tgid) /* a leader that leaves first ends the process here */
		return thread_exit(args, tgid);
#endif
	if (!interesting(tgid))
		return 0;
	interest.delete(&tgid);
	struct tt_event ev_, *e = &ev_;
	init_event(e, TT_EV_EXIT);
	submit(args, e);
	return 0;
}

#endif /* TAPTRACE_SCHED_H */
