/* fuzzactor: one actor of a tests/fuzz program, doing real fd syscalls on command.
 *
 * tests/fuzz/fuzz.py (the coordinator) listens on a unix socket; every actor (a
 * process, a thread, a clone(CLONE_FILES) child, a vfork child, an exec'd image)
 * connects to it, says "hello ID PID TID" and then runs one command line at a
 * time ("dup 5", "send 3 2 4 7", ...) answering "ok [values]" or "err ERRNO".
 * The coordinator sends the next command only after the answer, so between steps
 * every actor is blocked in read(): a quiet checkpoint is just a pause.
 *
 * Actor control sockets live at CTL_BASE + id, far above the fds a program uses
 * (3..99), close-on-exec (an exec'ing actor keeps its own across the exec).
 * No library call here allocates an fd behind the program's back: the fd numbers
 * the kernel hands out depend only on the program's own steps.
 *
 *   fuzzactor --sock NAME --id N [--fd CTLFD]   (NAME: abstract unix socket name)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#define CTL_BASE 900
#define CTL_MAX 100
#define MAXFDS 64
#define STACK_SIZE (256 * 1024)

#ifndef CLOSE_RANGE_UNSHARE
#define CLOSE_RANGE_UNSHARE (1U << 1)
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif
#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif

static const char *g_sock;     /* read-only after start: safe in CLONE_VM children */
static char g_self[4096];

struct actor {
	int id;
	int ctl;
};

static void die(const char *what)
{
	fprintf(stderr, "fuzzactor[%d]: %s: %s\n", getpid(), what, strerror(errno));
	_exit(111);
}

static void say(int ctl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void say(int ctl, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(buf, sizeof(buf) - 1, fmt, ap);
	va_end(ap);
	if (n < 0 || n > (int)sizeof(buf) - 2)
		n = (int)sizeof(buf) - 2;
	buf[n++] = '\n';
	for (int off = 0; off < n;) {
		ssize_t w = write(ctl, buf + off, n - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			_exit(112);      /* the coordinator is gone */
		off += w;
	}
}

/* Connect a new control socket and move it to CTL_BASE + id. */
static int ctl_connect(int id)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	size_t len = strlen(g_sock);
	sa.sun_path[0] = '\0';
	memcpy(sa.sun_path + 1, g_sock, len);
	int s = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		die("socket");
	if (connect(s, (struct sockaddr *)&sa, offsetof(struct sockaddr_un, sun_path) + 1 + len))
		die("connect");
	int want = CTL_BASE + id;
	if (s != want) {
		if (dup3(s, want, O_CLOEXEC) < 0)
			die("dup3 ctl");
		close(s);
	}
	return want;
}

static void hello(struct actor *a)
{
	say(a->ctl, "hello %d %d %ld", a->id, getpid(), (long)syscall(SYS_gettid));
}

static int read_line(int ctl, char *buf, size_t size)
{
	size_t n = 0;
	while (n + 1 < size) {
		ssize_t r = read(ctl, buf + n, 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return -1;
		if (buf[n] == '\n')
			break;
		n++;
	}
	buf[n] = '\0';
	return (int)n;
}

static void run(struct actor *a) __attribute__((noreturn));

static void *thread_main(void *arg)
{
	struct actor a = {.id = (int)(long)arg};
	a.ctl = ctl_connect(a.id);
	hello(&a);
	run(&a);
}

/* argv of a new actor image; ctl >= 0: it goes on with that control socket. */
static char *const *exec_argv(int id, int ctl, char *ids, char *fds)
{
	static char *argv[8];
	snprintf(ids, 16, "%d", id);
	snprintf(fds, 16, "%d", ctl);
	char *list[] = {"fuzzactor", "--sock", (char *)g_sock, "--id", ids,
			ctl >= 0 ? "--fd" : NULL, fds, NULL};
	memcpy(argv, list, sizeof(list));
	return argv;
}

/* clone(CLONE_VM|CLONE_VFORK[|CLONE_FILES]) children: an actor on its own stack
 * (pasta's way: a child sharing the table does the work and exits), or an exec. */
struct vchild {
	int id;
	int exec;
};

static int vfork_child(void *arg)
{
	struct vchild *v = arg;
	if (v->exec) {
		char ids[16], fds[16];
		execv(g_self, exec_argv(v->id, -1, ids, fds));
		_exit(113);
	}
	struct actor a = {.id = v->id};
	a.ctl = ctl_connect(a.id);
	hello(&a);
	run(&a);
}

/* Split `n` fds into `parts` non-empty groups as evenly as possible. */
static int group_size(int n, int parts, int k)
{
	return n / parts + (k < n % parts ? 1 : 0);
}

static size_t put_rights(char *ctlbuf, size_t cap, const int *fds, int n, int ncmsg)
{
	struct msghdr m = {.msg_control = ctlbuf, .msg_controllen = cap};
	size_t used = 0;
	struct cmsghdr *c = CMSG_FIRSTHDR(&m);
	int at = 0;
	for (int k = 0; k < ncmsg && c; k++) {
		int g = group_size(n, ncmsg, k);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(g * sizeof(int));
		memcpy(CMSG_DATA(c), fds + at, g * sizeof(int));
		at += g;
		used += CMSG_SPACE(g * sizeof(int));
		c = CMSG_NXTHDR(&m, c);
	}
	return used;
}

/* The fds a received message installed, appended to out (after the reply prefix). */
static int collect(struct msghdr *m, char *out, size_t cap, size_t len)
{
	int count = 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(m); c; c = CMSG_NXTHDR(m, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		int n = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		int *fds = (int *)CMSG_DATA(c);
		for (int i = 0; i < n; i++) {
			len += snprintf(out + len, cap > len ? cap - len : 0, " %d", fds[i]);
			count++;
		}
	}
	return count;
}

#define OK0() say(a->ctl, "ok")
/* (r evaluated once: it is the syscall) */
#define RET(r) do { long r_ = (long)(r); if (r_ < 0) say(a->ctl, "err %d", errno); \
		    else say(a->ctl, "ok %ld", r_); } while (0)

static void run(struct actor *a)
{
	char line[1024];
	for (;;) {
		if (read_line(a->ctl, line, sizeof(line)) < 0)
			_exit(0);                 /* coordinator closed us: just leave */
		char *argv[80];
		int argc = 0;
		for (char *t = strtok(line, " "); t && argc < 79; t = strtok(NULL, " "))
			argv[argc++] = t;
		argv[argc] = NULL;
		if (argc == 0)
			continue;
		const char *op = argv[0];
		long v[80] = {0};
		for (int i = 1; i < argc; i++)
			v[i] = strtol(argv[i], NULL, 0);
		errno = 0;

		if (!strcmp(op, "create")) {            /* create NAME IFFFLAGS CLOEXEC */
			int fd = open("/dev/net/tun", O_RDWR | (v[3] ? O_CLOEXEC : 0));
			if (fd < 0) {
				say(a->ctl, "err %d", errno);
				continue;
			}
			struct ifreq ifr;
			memset(&ifr, 0, sizeof(ifr));
			strncpy(ifr.ifr_name, argv[1], IFNAMSIZ - 1);
			ifr.ifr_flags = (short)v[2];
			if (ioctl(fd, TUNSETIFF, &ifr) < 0)
				say(a->ctl, "ok %d - %d", fd, errno);   /* open, unattached */
			else
				say(a->ctl, "ok %d %s", fd, ifr.ifr_name);
		} else if (!strcmp(op, "setiff")) {     /* setiff FD NAME IFFFLAGS */
			struct ifreq ifr;
			memset(&ifr, 0, sizeof(ifr));
			strncpy(ifr.ifr_name, argv[2], IFNAMSIZ - 1);
			ifr.ifr_flags = (short)v[3];
			if (ioctl((int)v[1], TUNSETIFF, &ifr) < 0)
				say(a->ctl, "err %d", errno);
			else
				say(a->ctl, "ok %s", ifr.ifr_name);
		} else if (!strcmp(op, "queue")) {      /* queue FD ATTACH */
			struct ifreq ifr;
			memset(&ifr, 0, sizeof(ifr));
			ifr.ifr_flags = v[2] ? IFF_ATTACH_QUEUE : IFF_DETACH_QUEUE;
			RET(ioctl((int)v[1], TUNSETQUEUE, &ifr));
		} else if (!strcmp(op, "persist")) {    /* persist FD ON */
			RET(ioctl((int)v[1], TUNSETPERSIST, (unsigned long)v[2]));
		} else if (!strcmp(op, "getiff")) {
			struct ifreq ifr;
			memset(&ifr, 0, sizeof(ifr));
			if (ioctl((int)v[1], TUNGETIFF, &ifr) < 0)
				say(a->ctl, "err %d", errno);
			else
				say(a->ctl, "ok %s", ifr.ifr_name);
		} else if (!strcmp(op, "dup")) {
			RET(dup((int)v[1]));
		} else if (!strcmp(op, "dup2")) {
			RET(dup2((int)v[1], (int)v[2]));
		} else if (!strcmp(op, "dup3")) {
			RET(dup3((int)v[1], (int)v[2], v[3] ? O_CLOEXEC : 0));
		} else if (!strcmp(op, "dupfd")) {       /* dupfd FD MIN CLOEXEC */
			RET(fcntl((int)v[1], v[3] ? F_DUPFD_CLOEXEC : F_DUPFD, (int)v[2]));
		} else if (!strcmp(op, "clex")) {        /* clex FD ON: FIOCLEX / FIONCLEX */
			RET(ioctl((int)v[1], v[2] ? FIOCLEX : FIONCLEX));
		} else if (!strcmp(op, "setfd")) {       /* setfd FD ON: fcntl(F_SETFD) */
			RET(fcntl((int)v[1], F_SETFD, v[2] ? FD_CLOEXEC : 0));
		} else if (!strcmp(op, "close")) {
			RET(close((int)v[1]));
		} else if (!strcmp(op, "crange")) {      /* crange LO HI FLAGS */
			RET(syscall(SYS_close_range, (unsigned)v[1], (unsigned)v[2], (unsigned)v[3]));
		} else if (!strcmp(op, "unshare")) {
			RET(unshare(CLONE_FILES));
		} else if (!strcmp(op, "sockpair")) {    /* sockpair SEQPACKET? */
			int sv[2];
			if (socketpair(AF_UNIX, v[1] ? SOCK_SEQPACKET : SOCK_DGRAM, 0, sv) < 0)
				say(a->ctl, "err %d", errno);
			else
				say(a->ctl, "ok %d %d", sv[0], sv[1]);
		} else if (!strcmp(op, "send") || !strcmp(op, "smm")) {
			/* send SOCK NCMSG FD...: one message, the fds split into NCMSG cmsgs.
			 * smm SOCK NMSG FD...: sendmmsg of NMSG messages, the fds split. */
			int s = (int)v[1], parts = (int)v[2], n = argc - 3;
			int fds[MAXFDS];
			if (n > MAXFDS)
				n = MAXFDS;
			for (int i = 0; i < n; i++)
				fds[i] = (int)v[3 + i];
			if (parts < 1)
				parts = 1;
			if (parts > n && n > 0)
				parts = n;
			char data = 'x';
			if (!strcmp(op, "send")) {
				static __thread char cbuf[4096];
				struct iovec iov = {.iov_base = &data, .iov_len = 1};
				struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
				if (n > 0) {
					memset(cbuf, 0, sizeof(cbuf));
					m.msg_control = cbuf;
					m.msg_controllen = put_rights(cbuf, sizeof(cbuf), fds, n, parts);
				}
				RET(sendmsg(s, &m, MSG_DONTWAIT));
			} else {
				static __thread char cbufs[16][1024];
				struct mmsghdr mm[16];
				struct iovec iov[16];
				if (parts > 16)
					parts = 16;
				memset(mm, 0, sizeof(mm));
				int at = 0;
				for (int k = 0; k < parts; k++) {
					int g = n ? group_size(n, parts, k) : 0;
					iov[k].iov_base = &data;
					iov[k].iov_len = 1;
					mm[k].msg_hdr.msg_iov = &iov[k];
					mm[k].msg_hdr.msg_iovlen = 1;
					if (g > 0) {
						memset(cbufs[k], 0, sizeof(cbufs[k]));
						mm[k].msg_hdr.msg_control = cbufs[k];
						mm[k].msg_hdr.msg_controllen =
						    put_rights(cbufs[k], sizeof(cbufs[k]), fds + at, g, 1);
					}
					at += g;
				}
				RET(sendmmsg(s, mm, parts, MSG_DONTWAIT));
			}
		} else if (!strcmp(op, "recv")) {        /* recv SOCK CLOEXEC PEEK */
			static __thread char cbuf[8192];
			char data[16];
			char out[1024] = "";  /* strlen'd below even when no fd came */
			int flags = MSG_DONTWAIT | (v[2] ? MSG_CMSG_CLOEXEC : 0);
			size_t len = 0;
			int total = 0;
			for (int pass = v[3] ? 0 : 1; pass < 2; pass++) {
				struct iovec iov = {.iov_base = data, .iov_len = sizeof(data)};
				struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf,
						   .msg_controllen = sizeof(cbuf)};
				ssize_t r = recvmsg((int)v[1], &m, flags | (pass == 0 ? MSG_PEEK : 0));
				if (r < 0) {
					total = -1;
					break;
				}
				if (pass == 0)
					len += snprintf(out + len, sizeof(out) - len, " peek");
				total += collect(&m, out, sizeof(out), len);
				len = strlen(out);
			}
			if (total < 0)
				say(a->ctl, "err %d", errno);
			else
				say(a->ctl, "ok%s", len ? out : "");
		} else if (!strcmp(op, "rmm")) {         /* rmm SOCK VLEN CLOEXEC */
			static __thread char cbufs[16][2048];
			char data[16][16];
			struct mmsghdr mm[16];
			struct iovec iov[16];
			int vlen = (int)v[2];
			if (vlen < 1)
				vlen = 1;
			if (vlen > 16)
				vlen = 16;
			memset(mm, 0, sizeof(mm));
			for (int k = 0; k < vlen; k++) {
				iov[k].iov_base = data[k];
				iov[k].iov_len = sizeof(data[k]);
				mm[k].msg_hdr.msg_iov = &iov[k];
				mm[k].msg_hdr.msg_iovlen = 1;
				mm[k].msg_hdr.msg_control = cbufs[k];
				mm[k].msg_hdr.msg_controllen = sizeof(cbufs[k]);
			}
			int r = recvmmsg((int)v[1], mm, vlen, MSG_DONTWAIT | (v[3] ? MSG_CMSG_CLOEXEC : 0),
					 NULL);
			if (r < 0) {
				say(a->ctl, "err %d", errno);
			} else {
				char out[2048];
				size_t len = snprintf(out, sizeof(out), "ok %d", r);
				for (int k = 0; k < r; k++) {
					collect(&mm[k].msg_hdr, out, sizeof(out), len);
					len = strlen(out);
				}
				say(a->ctl, "%s", out);
			}
		} else if (!strcmp(op, "getfd")) {       /* getfd PID FD (pidfd_getfd) */
			int pidfd = (int)syscall(SYS_pidfd_open, (pid_t)v[1], 0);
			if (pidfd < 0) {
				say(a->ctl, "err %d", errno);
				continue;
			}
			long r = syscall(SYS_pidfd_getfd, pidfd, (int)v[2], 0);
			int e = errno;
			close(pidfd);
			errno = e;
			RET(r);
		} else if (!strcmp(op, "burst")) {       /* burst FD N: N dup+close pairs */
			long n = v[2], done = 0;
			for (long i = 0; i < n; i++) {
				int d = (i & 1) ? fcntl((int)v[1], F_DUPFD_CLOEXEC, 50) : dup((int)v[1]);
				if (d < 0)
					break;
				close(d);
				done++;
			}
			say(a->ctl, "ok %ld", done);
		} else if (!strcmp(op, "fork")) {        /* fork NEWID */
			pid_t p = fork();
			if (p == 0) {
				/* our own table: drop the other actors' control sockets */
				syscall(SYS_close_range, CTL_BASE, CTL_BASE + CTL_MAX - 1, 0);
				struct actor c = {.id = (int)v[1]};
				c.ctl = ctl_connect(c.id);
				hello(&c);
				run(&c);
			}
			RET(p);
		} else if (!strcmp(op, "cfiles")) {      /* cfiles NEWID: clone(CLONE_FILES) */
			long p = syscall(SYS_clone, CLONE_FILES | SIGCHLD, 0, 0, 0, 0);
			if (p == 0) {
				struct actor c = {.id = (int)v[1]};
				c.ctl = ctl_connect(c.id);
				hello(&c);
				run(&c);
			}
			RET(p);
		} else if (!strcmp(op, "vfiles") || !strcmp(op, "vexec")) {
			/* vfiles NEWID: clone(CLONE_VM|CLONE_VFORK|CLONE_FILES), the child an
			 * actor until it exits or execs (we answer only then);
			 * vexec NEWID: vfork + exec of a new actor image. */
			static struct vchild vc;      /* the parent is suspended meanwhile */
			vc.id = (int)v[1];
			vc.exec = !strcmp(op, "vexec");
			char *stack = malloc(STACK_SIZE);
			if (!stack) {
				say(a->ctl, "err %d", ENOMEM);
				continue;
			}
			int flags = CLONE_VM | CLONE_VFORK | SIGCHLD | (vc.exec ? 0 : CLONE_FILES);
			int p = clone(vfork_child, stack + STACK_SIZE, flags, &vc);
			int e = errno;
			free(stack);
			errno = e;
			RET(p);
		} else if (!strcmp(op, "thread")) {      /* thread NEWID */
			pthread_t t;
			pthread_attr_t at;
			pthread_attr_init(&at);
			pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
			int r = pthread_create(&t, &at, thread_main, (void *)v[1]);
			pthread_attr_destroy(&at);
			if (r)
				say(a->ctl, "err %d", r);
			else
				OK0();
		} else if (!strcmp(op, "exec")) {
			char ids[16], fds[16];
			fcntl(a->ctl, F_SETFD, 0);
			execv(g_self, exec_argv(a->id, a->ctl, ids, fds));
			int e = errno;
			fcntl(a->ctl, F_SETFD, FD_CLOEXEC);
			say(a->ctl, "err %d", e);
		} else if (!strcmp(op, "exit")) {
			OK0();
			if (syscall(SYS_gettid) != getpid())
				syscall(SYS_exit, 0);     /* this thread only */
			_exit(0);                         /* the whole process */
		} else if (!strcmp(op, "kill")) {
			RET(kill((pid_t)v[1], SIGKILL));
		} else {
			say(a->ctl, "err %d", EINVAL);
		}
	}
}

int main(int argc, char **argv)
{
	int id = -1, ctl = -1;
	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--sock"))
			g_sock = argv[i + 1];
		else if (!strcmp(argv[i], "--id"))
			id = atoi(argv[i + 1]);
		else if (!strcmp(argv[i], "--fd"))
			ctl = atoi(argv[i + 1]);
	}
	if (!g_sock || id < 0 || id >= CTL_MAX) {
		fprintf(stderr, "usage: fuzzactor --sock NAME --id N [--fd CTLFD]\n");
		return 2;
	}
	ssize_t n = readlink("/proc/self/exe", g_self, sizeof(g_self) - 1);
	if (n < 0)
		die("readlink /proc/self/exe");
	g_self[n] = '\0';
	struct rlimit rl;
	if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < 1024) {
		rl.rlim_cur = rl.rlim_max < 1024 ? rl.rlim_max : 1024;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	signal(SIGCHLD, SIG_IGN);       /* children are reaped by the kernel */
	struct actor a = {.id = id};
	if (ctl >= 0) {                 /* exec'd: the same connection goes on */
		a.ctl = ctl;
		fcntl(ctl, F_SETFD, FD_CLOEXEC);
	} else {
		a.ctl = ctl_connect(id);
	}
	hello(&a);
	run(&a);
}
