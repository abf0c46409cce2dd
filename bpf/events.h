/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * taptrace: the one record shared by the BPF side and the Python side.
 *
 * tracer/events.py decodes exactly this layout; tests/unit/test_layout.py
 * compiles this header with the host compiler and checks every offset.
 * Plain C types only, so the header builds both under bcc and under gcc.
 */
#ifndef TAPTRACE_EVENTS_H
#define TAPTRACE_EVENTS_H

#define TT_COMM_LEN 16
#define TT_NAME_LEN 16
#define TT_MAX_FDS 16

enum tt_event_type {
	TT_EV_OPEN = 1,        /* open/openat/openat2 of /dev/net/tun, /dev/tapN or
	                          /dev/vhost-net: ret=fd, arg=open flags, name=path */
	TT_EV_TUN_IOCTL = 2,   /* a tun ioctl returned: fd, arg=cmd, ret,
	                          name=ifr_name after the call,
	                          arg2=ifr_flags (SETIFF/SETQUEUE/GETIFF) or the int
	                          argument (SETPERSIST/SETOWNER/SETGROUP) */
	TT_EV_DUP = 3,         /* fd=old fd, ret=new fd, arg=enum tt_dup_how,
	                          arg2=requested new fd (dup2/dup3/F_DUPFD) */
	TT_EV_CLOSE = 4,       /* close(fd) returned, not EBADF */
	TT_EV_CLOSE_RANGE = 5, /* fd=first, arg=last, arg2=flags, ret */
	TT_EV_SETFD = 6,       /* fd, arg=enum tt_setfd_how, arg2=1 if cloexec now */
	TT_EV_FORK = 7,        /* arg=clone flags, arg2=child pid (a new tgid; with
	                          CLONE_THREAD, the new thread's id) */
	TT_EV_EXEC = 8,        /* exec succeeded; arg2=old pid */
	TT_EV_EXIT = 9,        /* the whole thread group is dead; or, arg =
	                          TT_EXIT_THREAD, one thread (tid) of it is */
	TT_EV_SCM_SEND = 10,   /* fd=socket, fds[nfds] being sent with SCM_RIGHTS;
	                          arg2: tracepoint backend, the struct sock * of
	                          the unix socket whose queue the message goes to
	                          (the sender's peer; 0: not known); kernel
	                          backend, the message's id */
	TT_EV_SCM_RECV = 11,   /* fd=socket, fds[nfds] received, arg=recv flags;
	                          arg2: tracepoint backend, the receiving unix
	                          socket's struct sock * (0: not known); kernel
	                          backend, the message's id */
	TT_EV_UNSHARE = 12,    /* unshare(CLONE_FILES): arg=flags; or'ed with
	                          TT_UNSHARE_AT_EXEC: an exec began (kernels
	                          without sched_prepare_exec), or
	                          TT_UNSHARE_EXEC: its point of no return */
	TT_EV_PIDFD_GETFD = 13, /* fd=pidfd, arg=target fd, ret=new fd */
	TT_EV_PIDFD_OPEN = 14,  /* ret=fd=the new pidfd, arg=the pid it refers to */
	TT_EV_VHOST_BACKEND = 15 /* VHOST_NET_SET_BACKEND returned: fd=the vhost fd,
	                            ret, arg=vring index (0 rx, 1 tx), arg2=the
	                            backend fd as a u32 (0xffffffff = -1: detach),
	                            from the caller's struct vhost_vring_file */
};

/* TT_EV_EXIT's arg: a thread, not the process */
#define TT_EXIT_THREAD 1

/* not a clone flag: "the table as it is now is the one this exec will own" */
#define TT_UNSHARE_AT_EXEC (1ULL << 40)
/* or'ed with CLONE_FILES: the exec's own unshare at its point of no return (an
 * unshare all the same; user space knows it for what it says about threads: by
 * then the others are gone, so it tells nothing of a thread's table before) */
#define TT_UNSHARE_EXEC (1ULL << 41)

enum tt_dup_how {
	TT_DUP = 0,
	TT_DUP2 = 1,
	TT_DUP3 = 2,
	TT_F_DUPFD = 3,
	TT_F_DUPFD_CLOEXEC = 4,
	TT_DUP_CLOEXEC = 0x100 /* or'ed in: dup3(O_CLOEXEC) */
};

enum tt_setfd_how {
	TT_F_SETFD = 0,
	TT_FIOCLEX = 1,
	TT_FIONCLEX = 2
};

/* What a struct file is, by its f_op (kernel backend). */
enum tt_file_kind {
	TT_FK_NONE = 0,
	TT_FK_TUN = 1,         /* tun_fops: /dev/net/tun */
	TT_FK_TAP = 2,         /* tap_fops: /dev/tapN (macvtap, ipvtap) */
	TT_FK_VHOST = 3        /* vhost_net_fops: /dev/vhost-net */
};

/* Indexes of the counters array. */
enum tt_counter {
	TT_C_LOST = 0,          /* records the ring/perf buffer refused */
	TT_C_INTEREST_FULL = 1, /* interest-set inserts that failed */
	TT_C_SCM_SENDS = 2,     /* SCM_RIGHTS send records submitted (tracepoint backend) */
	TT_C_SCM_SETTLED = 3,   /* of those, how many user space has read with none of
	                           their files left in flight: recvmsg exits are parsed
	                           while the two differ */
	TT_C_SCM_LOST_UNTIL = 4, /* a send record the buffer refused: until this
	                           CLOCK_MONOTONIC ns (its message's time in flight, as
	                           user space keeps a send it read) every recvmsg exit is
	                           parsed, and a receive of it is taken from /proc */
	TT_C_NR = 5
};

struct tt_event {
	unsigned long long ts;   /* CLOCK_MONOTONIC ns */
	unsigned int type;       /* enum tt_event_type */
	unsigned int tgid;       /* process */
	unsigned int tid;        /* thread */
	int fd;
	long long ret;
	unsigned long long arg;
	unsigned long long arg2;
	char comm[TT_COMM_LEN];
	char name[TT_NAME_LEN];
	unsigned int nfds;
	int fds[TT_MAX_FDS];
	unsigned int fkind;      /* kernel backend: enum tt_file_kind of `file` */
	unsigned long long file; /* the struct file * the record is about (its
	                            identity; 0: not known). Kernel backend: every
	                            record about a file; tracepoint backend: a TUN
	                            ioctl's, where the kernel's BTF gave the fd
	                            table's layout */
	unsigned int netns;      /* TUN ioctl: the inode of the network namespace
	                            the file was opened in, where its device is made
	                            or looked up (0: not known); SCM records
	                            (tracepoint backend): the inode of the socket
	                            whose queue arg2 names (0: not known) */
	unsigned int fdflags;    /* TUN ioctl with `file`: TT_FD_CLOEXEC if the fd's
	                            close-on-exec bit was set at the call; SCM
	                            records: TT_FD_TRUNCATED; any record of a
	                            thread (tid != tgid): TT_FD_TABLE_KNOWN and
	                            TT_FD_OWN_TABLE */
	unsigned long long table; /* the fd table (struct files_struct *) the task
	                            acted on, where the kernel's BTF gave the layout
	                            (0: not known): for a record of a change to a
	                            table the one it left or took may be named (an
	                            unshare, an exec, a close_range with
	                            CLOSE_RANGE_UNSHARE, an exit), so user space
	                            reads it only from the others */
};

#define TT_FD_CLOEXEC 1
/* SCM_SEND/SCM_RECV (tracepoint backend): the message had more fds than the
 * record holds (or a sendmmsg/recvmmsg more messages than were read) */
#define TT_FD_TRUNCATED 4
/* a thread's record, where the kernel's BTF gave the layout: TT_FD_TABLE_KNOWN,
 * and TT_FD_OWN_TABLE if the thread's fd table (task->files) was not its
 * leader's when it acted */
#define TT_FD_TABLE_KNOWN 8
#define TT_FD_OWN_TABLE 16

#endif /* TAPTRACE_EVENTS_H */
