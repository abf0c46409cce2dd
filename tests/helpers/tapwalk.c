/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * tapwalk: drive a tap fd through one fd path with real syscalls, step by step,
 * printing one JSON line per step ({"pid": P, "step": "...", ...}) so a test
 * knows exactly which events and which final table the tracer must produce.
 *
 *   tapwalk dup3        A        dup3(O_CLOEXEC) and dup3(0)
 *   tapwalk dupfd       A        fcntl F_DUPFD_CLOEXEC and F_DUPFD, dup
 *   tapwalk ioctl       A        ioctl FIOCLEX / FIONCLEX (also on a pipe)
 *   tapwalk setfd       A        fcntl F_SETFD on and off
 *   tapwalk close_range A        close_range plain, CLOSE_RANGE_CLOEXEC, to ~0U
 *   tapwalk dup2        A B C    dup2 over a tracked fd, dup3 over one, dup2
 *                                over the last fd of C (C goes), dup2 of a pipe
 *                                over the last fd of B (B goes)
 *   tapwalk files       A B      clone(CLONE_FILES): the child dups, closes and
 *                                opens a tap in the shared table, then exits
 *   tapwalk pasta       A        a process with no tap clones a CLONE_VM|CLONE_FILES|
 *                                CLONE_VFORK child that makes tap A and exits (pasta)
 *   tapwalk files_exec  A B      clone(CLONE_FILES|CLONE_VFORK): the child dup3s
 *                                O_CLOEXEC into the shared table and execs (which
 *                                gives it its own table); once it runs, the parent
 *                                closes and dups in its table only, and B goes
 *   tapwalk files_exec_race A B  the same, but the parent also dups 16 times (then
 *                                closes those) as soon as the vfork releases it,
 *                                while the child may still be in execve
 *   tapwalk exec        A B      fork + exec with mixed close-on-exec bits; the
 *                                exec'ed image is `tapwalk hold`
 *   tapwalk scm         A B      SCM_RIGHTS [tap, pipe, tap] over a socketpair,
 *                                recvmsg(MSG_CMSG_CLOEXEC)
 *   tapwalk mmsg        A B      sendmmsg of two messages ([tap, pipe], [tap]),
 *                                recvmmsg(MSG_CMSG_CLOEXEC)
 *   tapwalk scm_trunc   A B C    [A, B, C] received into room for two fds:
 *                                MSG_CTRUNC, the kernel closes C (it goes)
 *   tapwalk scm_2cmsg   A B      one sendmsg with two SCM_RIGHTS cmsgs [A], [B]
 *   tapwalk queue       A        IFF_MULTI_QUEUE, two queues, TUNSETQUEUE
 *                                detach/attach
 *   tapwalk probe       A        TUNGETIFF on a tap, a pipe (ENOTTY), a closed
 *                                fd (EBADF)
 *   tapwalk persist     A B      TUNSETPERSIST on, close, attach again, off,
 *                                close: A goes; B is held throughout
 *   tapwalk getfd       A        pidfd_open + pidfd_getfd of the parent's tap fd,
 *                                then close(pidfd)
 *   tapwalk blink       A        make A, dup and close, exit at once (no hold)
 *   tapwalk hold [SYNC [READY]]  (write a byte to READY, read one from SYNC,)
 *                                print the tun fds held, wait for stdin
 *
 * Every scenario but blink ends with exactly one {"step": "hold", "fds": [...]} line
 * (from whichever process holds the taps) and then waits for a line on
 * stdin, so the test can compare the tracer's table with /proc meanwhile.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_tun.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif
#ifndef SYS_pidfd_getfd
#define SYS_pidfd_getfd 438
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC 4
#endif

static void die(const char *what)
{
	fprintf(stderr, "tapwalk[%d]: %s: %s\n", getpid(), what, strerror(errno));
	exit(1);
}

static void say(const char *step, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static void say(const char *step, const char *fmt, ...)
{
	va_list ap;
	printf("{\"pid\": %d, \"step\": \"%s\"", getpid(), step);
	if (fmt && *fmt) {
		printf(", ");
		va_start(ap, fmt);
		vprintf(fmt, ap);
		va_end(ap);
	}
	printf("}\n");
	fflush(stdout);
}

static int cloexec_of(int fd)
{
	int f = fcntl(fd, F_GETFD);
	if (f < 0)
		die("F_GETFD");
	return !!(f & FD_CLOEXEC);
}

/* open + TUNSETIFF; prints {"step": "tap", "fd", "ifname", "cloexec"}. */
static int tap(const char *name, int flags, int cloexec)
{
	struct ifreq ifr;
	int fd = open("/dev/net/tun", O_RDWR | (cloexec ? O_CLOEXEC : 0));
	if (fd < 0)
		die("open /dev/net/tun");
	memset(&ifr, 0, sizeof(ifr));
	strncpy(ifr.ifr_name, name, IFNAMSIZ - 1);
	ifr.ifr_flags = flags;
	if (ioctl(fd, TUNSETIFF, &ifr) < 0)
		die("TUNSETIFF");
	say("tap", "\"fd\": %d, \"ifname\": \"%s\", \"cloexec\": %s", fd, ifr.ifr_name,
	    cloexec ? "true" : "false");
	return fd;
}

#define PLAIN (IFF_TAP | IFF_NO_PI)

/* The tun fds this process holds, as a JSON list, from /proc/self/fd. */
static void held_fds(char *out, size_t len)
{
	DIR *d = opendir("/proc/self/fd");
	size_t n = 0;
	int first = 1;
	struct dirent *de;
	if (!d)
		die("opendir /proc/self/fd");
	int fds[256], nfds = 0;
	while ((de = readdir(d)) != NULL && nfds < 256) {
		char path[300], target[64];
		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/fd/%s", de->d_name);
		ssize_t r = readlink(path, target, sizeof(target) - 1);
		if (r < 0)
			continue;
		target[r] = 0;
		if (!strcmp(target, "/dev/net/tun"))
			fds[nfds++] = atoi(de->d_name);
	}
	closedir(d);
	/* sort: small n */
	for (int i = 0; i < nfds; i++)
		for (int j = i + 1; j < nfds; j++)
			if (fds[j] < fds[i]) {
				int t = fds[i];
				fds[i] = fds[j];
				fds[j] = t;
			}
	n += snprintf(out + n, len - n, "[");
	for (int i = 0; i < nfds && n < len; i++) {
		n += snprintf(out + n, len - n, "%s%d", first ? "" : ", ", fds[i]);
		first = 0;
	}
	if (n < len)
		snprintf(out + n, len - n, "]");
}

static void hold(void)
{
	char fds[1024], buf[64];
	held_fds(fds, sizeof(fds));
	say("hold", "\"fds\": %s", fds);
	if (read(0, buf, sizeof(buf)) < 0)
		die("read stdin");
}

/* ---- the dup family -------------------------------------------------------- */

static int walk_dup3(char **av)
{
	int t = tap(av[0], PLAIN, 0);
	if (dup3(t, 20, O_CLOEXEC) != 20)
		die("dup3 O_CLOEXEC");
	say("dup3", "\"fd\": %d, \"newfd\": 20, \"cloexec\": %s", t, cloexec_of(20) ? "true" : "false");
	if (dup3(t, 21, 0) != 21)
		die("dup3");
	say("dup3", "\"fd\": %d, \"newfd\": 21, \"cloexec\": %s", t, cloexec_of(21) ? "true" : "false");
	hold();
	return 0;
}

static int walk_dupfd(char **av)
{
	int t = tap(av[0], PLAIN, 1);
	int c = fcntl(t, F_DUPFD_CLOEXEC, 30);
	if (c < 30)
		die("F_DUPFD_CLOEXEC");
	say("F_DUPFD_CLOEXEC", "\"fd\": %d, \"newfd\": %d, \"cloexec\": %s", t, c,
	    cloexec_of(c) ? "true" : "false");
	int p = fcntl(t, F_DUPFD, 35);
	if (p < 35)
		die("F_DUPFD");
	say("F_DUPFD", "\"fd\": %d, \"newfd\": %d, \"cloexec\": %s", t, p,
	    cloexec_of(p) ? "true" : "false");
	int d = dup(c);
	if (d < 0)
		die("dup");
	say("dup", "\"fd\": %d, \"newfd\": %d, \"cloexec\": %s", c, d,
	    cloexec_of(d) ? "true" : "false");
	hold();
	return 0;
}

static int walk_ioctl(char **av)
{
	int pp[2];
	if (pipe(pp) < 0)
		die("pipe");
	int t = tap(av[0], PLAIN, 0);
	int d = dup(t);
	if (d < 0)
		die("dup");
	if (ioctl(t, FIOCLEX) < 0)
		die("FIOCLEX");
	say("FIOCLEX", "\"fd\": %d", t);
	if (ioctl(d, FIOCLEX) < 0 || ioctl(d, FIONCLEX) < 0)
		die("FIOCLEX/FIONCLEX");
	say("FIONCLEX", "\"fd\": %d", d);
	if (ioctl(pp[0], FIOCLEX) < 0) /* not a tap: no event */
		die("FIOCLEX pipe");
	say("FIOCLEX-pipe", "\"fd\": %d", pp[0]);
	hold();
	return 0;
}

static int walk_setfd(char **av)
{
	int t = tap(av[0], PLAIN, 1);
	if (fcntl(t, F_SETFD, 0) < 0)
		die("F_SETFD 0");
	say("F_SETFD", "\"fd\": %d, \"cloexec\": false", t);
	int d = dup(t);
	if (d < 0 || fcntl(d, F_SETFD, FD_CLOEXEC) < 0)
		die("F_SETFD 1");
	say("F_SETFD", "\"fd\": %d, \"cloexec\": true", d);
	hold();
	return 0;
}

static int walk_close_range(char **av)
{
	int t = tap(av[0], PLAIN, 1);
	for (int fd = 40; fd <= 45; fd++)
		if (dup2(t, fd) != fd)
			die("dup2");
	say("dups", "\"fd\": %d, \"newfds\": [40, 41, 42, 43, 44, 45]", t);
	if (syscall(SYS_close_range, 40, 41, 0) < 0)
		die("close_range");
	say("close_range", "\"first\": 40, \"last\": 41, \"flags\": 0");
	if (syscall(SYS_close_range, 42, 43, CLOSE_RANGE_CLOEXEC) < 0)
		die("close_range CLOEXEC");
	say("close_range", "\"first\": 42, \"last\": 43, \"flags\": %d", CLOSE_RANGE_CLOEXEC);
	if (syscall(SYS_close_range, 45, ~0U, 0) < 0)
		die("close_range ~0U");
	say("close_range", "\"first\": 45, \"last\": %u, \"flags\": 0", ~0U);
	hold();
	return 0;
}

static int walk_dup2(char **av)
{
	int ta = tap(av[0], PLAIN, 1);
	int tb = tap(av[1], PLAIN, 1);
	int tc = tap(av[2], PLAIN, 1);
	if (dup2(ta, 20) != 20)
		die("dup2 a 20");
	say("dup2", "\"fd\": %d, \"newfd\": 20, \"replaced\": null", ta);
	if (dup2(tb, 20) != 20) /* silently closes the dup of A at 20 */
		die("dup2 b 20");
	say("dup2", "\"fd\": %d, \"newfd\": 20, \"replaced\": \"%s\"", tb, av[0]);
	if (dup3(ta, tb, O_CLOEXEC) != tb) /* B stays alive through fd 20 */
		die("dup3 a b");
	say("dup3", "\"fd\": %d, \"newfd\": %d, \"replaced\": \"%s\"", ta, tb, av[1]);
	if (dup2(ta, tc) != tc) /* the last fd of C: C goes */
		die("dup2 a c");
	say("dup2", "\"fd\": %d, \"newfd\": %d, \"replaced\": \"%s\"", ta, tc, av[2]);
	int p[2];
	if (pipe2(p, O_CLOEXEC) < 0)
		die("pipe2");
	if (dup2(p[0], 20) != 20) /* a non-tap over B's last fd: B goes */
		die("dup2 pipe 20");
	say("dup2", "\"fd\": %d, \"newfd\": 20, \"replaced\": \"%s\"", p[0], av[1]);
	hold();
	return 0;
}

/* ---- clone(CLONE_FILES) ------------------------------------------------------ */

struct files_arg {
	int fd;
	const char *name;
};

static int files_child(void *p)
{
	struct files_arg *a = p;
	int d = dup(a->fd);
	if (d < 0)
		die("dup in clone child");
	say("child-dup", "\"fd\": %d, \"newfd\": %d", a->fd, d);
	if (close(a->fd) < 0)
		die("close in clone child");
	say("child-close", "\"fd\": %d", a->fd);
	int b = tap(a->name, PLAIN, 1);
	say("child-tap", "\"fd\": %d", b);
	return 0;
}

/* A table-sharing clone child c made its changes and exits: say so, then hold. */
static int child_exited_then_hold(pid_t c)
{
	if (c < 0)
		die("clone");
	int st;
	if (waitpid(c, &st, 0) < 0)
		die("waitpid");
	if (!WIFEXITED(st) || WEXITSTATUS(st))
		return 1;
	say("child-exited", "\"child\": %d", c);
	hold();
	return 0;
}

static int walk_files(char **av)
{
	static char stack[256 * 1024];
	struct files_arg a = { tap(av[0], PLAIN, 1), av[1] };
	pid_t c = clone(files_child, stack + sizeof(stack), CLONE_FILES | SIGCHLD, &a);
	return child_exited_then_hold(c);
}

/*
 * pasta's way (passt's tap.c): a process that holds no tap yet clones a
 * CLONE_VM|CLONE_FILES|CLONE_VFORK child, which opens and attaches the tap and
 * exits; the fd stays in the parent's (the one shared) table.
 */
static int pasta_child(void *p)
{
	tap((const char *)p, PLAIN, 1);
	return 0;
}

static int walk_pasta(char **av)
{
	static char stack[256 * 1024];
	pid_t c = clone(pasta_child, stack + sizeof(stack),
			CLONE_VM | CLONE_FILES | CLONE_VFORK | SIGCHLD, av[0]);
	return child_exited_then_hold(c);
}

/* ---- clone(CLONE_FILES) + exec ------------------------------------------------ */

struct files_exec_arg {
	int keep, sync, ready, race;
};

/* Pin to the nth CPU we may run on (the test skips with fewer than two). */
static void pin(int nth)
{
	cpu_set_t set, one;
	if (sched_getaffinity(0, sizeof(set), &set) < 0)
		die("sched_getaffinity");
	for (int cpu = 0; cpu < CPU_SETSIZE; cpu++) {
		if (!CPU_ISSET(cpu, &set) || nth-- > 0)
			continue;
		CPU_ZERO(&one);
		CPU_SET(cpu, &one);
		if (sched_setaffinity(0, sizeof(one), &one) < 0)
			die("sched_setaffinity");
		return;
	}
	errno = EINVAL;
	die("pin: not enough CPUs");
}

static int files_exec_child(void *p)
{
	struct files_exec_arg *a = p;
	char sync[16], ready[16];
	if (dup3(a->keep, 30, O_CLOEXEC) != 30) /* into the table the parent uses too */
		die("dup3 in clone child");
	say("child-dup3", "\"fd\": %d, \"newfd\": 30, \"cloexec\": true", a->keep);
	snprintf(sync, sizeof(sync), "%d", a->sync);
	snprintf(ready, sizeof(ready), "%d", a->ready);
	if (a->race)
		pin(0);
	execl("/proc/self/exe", "tapwalk", "hold", sync, ready, (char *)NULL);
	die("exec");
	return 1;
}

/*
 * race=0: the parent waits until the exec'ed child runs (its exec is over and
 * traced) before it touches its table. race=1: it dups at once, as soon as the
 * vfork lets it go - the kernel gave the child its own table before that, but
 * the child may still be inside execve.
 */
static int files_exec(char **av, int race)
{
	static char stack[256 * 1024];
	int keep = tap(av[0], PLAIN, 0);
	int gone = tap(av[1], PLAIN, 1);
	int sync[2], ready[2];
	if (pipe(sync) < 0 || fcntl(sync[1], F_SETFD, FD_CLOEXEC) < 0 || pipe(ready) < 0 ||
	    fcntl(ready[0], F_SETFD, FD_CLOEXEC) < 0)
		die("pipe");
	struct files_exec_arg a = { keep, sync[0], ready[1], race };
	if (race) {
		/* run the moment the vfork lets go, on another CPU than the child's
		 * (still in execve); reset to SCHED_OTHER in the child */
		struct sched_param sp = { .sched_priority = 1 };
		pin(1);
		if (sched_setscheduler(0, SCHED_FIFO | SCHED_RESET_ON_FORK, &sp) < 0)
			fprintf(stderr, "tapwalk: no SCHED_FIFO (%s): the race is less certain\n",
				strerror(errno));
	}
	/* CLONE_VFORK: we go on once the child has exec'ed, i.e. has its own table */
	pid_t c = clone(files_exec_child, stack + sizeof(stack),
			CLONE_FILES | CLONE_VFORK | SIGCHLD, &a);
	if (c < 0)
		die("clone");
	int dups[16], n = 0;
	if (race)
		for (n = 0; n < 16; n++)
			if ((dups[n] = dup(keep)) < 0)
				die("dup");
	char b;
	if (read(ready[0], &b, 1) != 1)
		die("read ready");
	say("cloned", "\"child\": %d, \"kept\": [%d], \"closed\": [%d, 30]", c, keep, gone);
	if (close(30) < 0) /* ours only now */
		die("close 30");
	int d = dup(keep);
	if (d < 0)
		die("dup");
	for (int i = 0; i < n; i++)
		close(dups[i]);
	if (close(gone) < 0) /* the last B: the child's exec closed its copy */
		die("close gone");
	say("parent", "\"closed\": [30, %d], \"dup\": %d, \"gone\": \"%s\"", gone, d, av[1]);
	if (write(sync[1], "x", 1) != 1) /* now the child holds */
		die("write sync");
	int st;
	waitpid(c, &st, 0);
	return 0;
}

static int walk_files_exec(char **av) { return files_exec(av, 0); }
static int walk_files_exec_race(char **av) { return files_exec(av, 1); }

/* ---- fork + exec ---------------------------------------------------------- */

static int walk_exec(char **av)
{
	int keep = tap(av[0], PLAIN, 0);
	int gone = tap(av[1], PLAIN, 1);
	if (dup3(keep, 30, O_CLOEXEC) != 30) /* a close-on-exec copy of A */
		die("dup3");
	if (dup2(keep, 31) != 31) /* a plain copy of A */
		die("dup2");
	int sync[2];
	if (pipe2(sync, O_CLOEXEC) < 0)
		die("pipe2");
	pid_t c = fork();
	if (c < 0)
		die("fork");
	if (c == 0) {
		char b;
		if (read(sync[0], &b, 1) != 1)
			die("read sync");
		execl("/proc/self/exe", "tapwalk", "hold", (char *)NULL);
		die("exec");
	}
	close(keep);
	close(gone);
	close(30);
	close(31);
	say("forked", "\"child\": %d, \"kept\": [%d, 31], \"closed\": [%d, 30]", c, keep, gone);
	if (write(sync[1], "x", 1) != 1) /* now the child's exec closes the last B */
		die("write sync");
	int st;
	waitpid(c, &st, 0);
	return 0;
}

/* ---- SCM_RIGHTS ------------------------------------------------------------ */

static void build_msg(struct msghdr *m, struct iovec *iov, char *data, void *ctl, size_t ctllen,
		      const int *fds, int n)
{
	memset(m, 0, sizeof(*m));
	iov->iov_base = data;
	iov->iov_len = 1;
	m->msg_iov = iov;
	m->msg_iovlen = 1;
	m->msg_control = ctl;
	m->msg_controllen = ctllen;
	if (n) {
		struct cmsghdr *cm = CMSG_FIRSTHDR(m);
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(n * sizeof(int));
		memcpy(CMSG_DATA(cm), fds, n * sizeof(int));
		m->msg_controllen = CMSG_SPACE(n * sizeof(int));
	}
}

static int got_fds(struct msghdr *m, int *out)
{
	struct cmsghdr *cm = CMSG_FIRSTHDR(m);
	if (!cm || cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
		return 0;
	int n = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
	memcpy(out, CMSG_DATA(cm), n * sizeof(int));
	return n;
}

static void json_ints(char *out, size_t len, const int *v, int n)
{
	size_t k = snprintf(out, len, "[");
	for (int i = 0; i < n && k < len; i++)
		k += snprintf(out + k, len - k, "%s%d", i ? ", " : "", v[i]);
	if (k < len)
		snprintf(out + k, len - k, "]");
}

static int walk_scm(char **av, int mmsg)
{
	int sv[2], p[2], sync[2];
	if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv) < 0 || pipe2(p, O_CLOEXEC) < 0 ||
	    pipe2(sync, O_CLOEXEC) < 0)
		die("socketpair/pipe");
	pid_t c = fork(); /* before the taps exist: the receiver never inherits them */
	if (c < 0)
		die("fork");
	if (c == 0) {
		close(sv[0]);
		char d1[8], d2[8];
		union { char buf[CMSG_SPACE(4 * sizeof(int))]; struct cmsghdr align; } u1, u2;
		struct iovec i1 = { d1, sizeof(d1) }, i2 = { d2, sizeof(d2) };
		struct msghdr m1 = { .msg_iov = &i1, .msg_iovlen = 1,
				     .msg_control = u1.buf, .msg_controllen = sizeof(u1.buf) };
		struct msghdr m2 = { .msg_iov = &i2, .msg_iovlen = 1,
				     .msg_control = u2.buf, .msg_controllen = sizeof(u2.buf) };
		int fds[8] = { 0 }, n = 0;
		char js[128];
		if (mmsg) {
			struct mmsghdr mm[2] = { { .msg_hdr = m1 }, { .msg_hdr = m2 } };
			if (recvmmsg(sv[1], mm, 2, MSG_CMSG_CLOEXEC, NULL) != 2)
				die("recvmmsg");
			n = got_fds(&mm[0].msg_hdr, fds);
			n += got_fds(&mm[1].msg_hdr, fds + n);
		} else {
			if (recvmsg(sv[1], &m1, MSG_CMSG_CLOEXEC) < 0)
				die("recvmsg");
			n = got_fds(&m1, fds);
		}
		json_ints(js, sizeof(js), fds, n);
		say("received", "\"sock\": %d, \"fds\": %s, \"cloexec\": [%d, %d, %d]", sv[1], js,
		    n > 0 ? cloexec_of(fds[0]) : -1, n > 1 ? cloexec_of(fds[1]) : -1,
		    n > 2 ? cloexec_of(fds[2]) : -1);
		char x; /* hold only once the sender has closed its copies */
		if (read(sync[0], &x, 1) != 1)
			die("read sync");
		hold();
		return 0;
	}
	close(sv[1]);
	int a = tap(av[0], PLAIN, 1);
	int b = tap(av[1], PLAIN, 1);
	char data[2] = { 'x', 'y' };
	if (mmsg) {
		int f1[2] = { a, p[0] }, f2[1] = { b };
		union { char buf[CMSG_SPACE(2 * sizeof(int))]; struct cmsghdr align; } u1, u2;
		struct iovec i1, i2;
		struct mmsghdr mm[2];
		memset(mm, 0, sizeof(mm));
		memset(&u1, 0, sizeof(u1));
		memset(&u2, 0, sizeof(u2));
		build_msg(&mm[0].msg_hdr, &i1, data, u1.buf, sizeof(u1.buf), f1, 2);
		build_msg(&mm[1].msg_hdr, &i2, data + 1, u2.buf, sizeof(u2.buf), f2, 1);
		if (sendmmsg(sv[0], mm, 2, 0) != 2)
			die("sendmmsg");
	} else {
		int fds[3] = { a, p[0], b };
		union { char buf[CMSG_SPACE(3 * sizeof(int))]; struct cmsghdr align; } u;
		struct iovec iov;
		struct msghdr m;
		memset(&u, 0, sizeof(u));
		build_msg(&m, &iov, data, u.buf, sizeof(u.buf), fds, 3);
		if (sendmsg(sv[0], &m, 0) < 0)
			die("sendmsg");
	}
	say("sent", "\"child\": %d, \"sock\": %d, \"fds\": [%d, %d, %d]", c, sv[0], a, p[0], b);
	close(a); /* the message in flight, then the receiver, keep both taps */
	close(b);
	say("closed", "\"fds\": [%d, %d]", a, b);
	if (write(sync[1], "x", 1) != 1)
		die("write sync");
	int st;
	waitpid(c, &st, 0);
	return 0;
}

/*
 * Two odd but legal SCM_RIGHTS shapes:
 *   trunc - [A, B, C] in one cmsg, received into room for 2 fds: the kernel
 *           delivers A and B, sets MSG_CTRUNC and closes C (the last C: it goes)
 *   2cmsg - one sendmsg with two SCM_RIGHTS cmsgs, [A] then [B]: the receiver
 *           gets one cmsg with both
 */
static int walk_scm_odd(char **av, int trunc)
{
	int sv[2], sync[2];
	if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv) < 0 || pipe2(sync, O_CLOEXEC) < 0)
		die("socketpair/pipe");
	pid_t c = fork();
	if (c < 0)
		die("fork");
	if (c == 0) {
		close(sv[0]);
		char d[8];
		union { char buf[CMSG_SPACE(4 * sizeof(int))]; struct cmsghdr align; } u;
		struct iovec iov = { d, sizeof(d) };
		struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = u.buf,
				    .msg_controllen = trunc ? CMSG_SPACE(sizeof(int)) : sizeof(u.buf) };
		int fds[4], n;
		char js[64];
		if (recvmsg(sv[1], &m, MSG_CMSG_CLOEXEC) < 0)
			die("recvmsg");
		n = got_fds(&m, fds);
		json_ints(js, sizeof(js), fds, n);
		say("received", "\"sock\": %d, \"fds\": %s, \"ctrunc\": %s", sv[1], js,
		    (m.msg_flags & MSG_CTRUNC) ? "true" : "false");
		char x;
		if (read(sync[0], &x, 1) != 1)
			die("read sync");
		hold();
		return 0;
	}
	close(sv[1]);
	int a = tap(av[0], PLAIN, 1);
	int b = tap(av[1], PLAIN, 1);
	int t3 = trunc ? tap(av[2], PLAIN, 1) : -1;
	char data[1] = { 'x' };
	union { char buf[2 * CMSG_SPACE(3 * sizeof(int))]; struct cmsghdr align; } u;
	struct iovec iov = { data, 1 };
	struct msghdr m;
	memset(&u, 0, sizeof(u));
	if (trunc) {
		int fds[3] = { a, b, t3 };
		build_msg(&m, &iov, data, u.buf, sizeof(u.buf), fds, 3);
	} else {
		build_msg(&m, &iov, data, u.buf, sizeof(u.buf), &a, 1);
		struct cmsghdr *cm = (struct cmsghdr *)(u.buf + CMSG_SPACE(sizeof(int)));
		cm->cmsg_level = SOL_SOCKET;
		cm->cmsg_type = SCM_RIGHTS;
		cm->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(cm), &b, sizeof(int));
		m.msg_controllen = 2 * CMSG_SPACE(sizeof(int));
	}
	if (sendmsg(sv[0], &m, 0) < 0)
		die("sendmsg");
	int sent[3] = { a, b, t3 };
	char js[64];
	json_ints(js, sizeof(js), sent, trunc ? 3 : 2);
	say("sent", "\"child\": %d, \"sock\": %d, \"fds\": %s", c, sv[0], js);
	close(a);
	close(b);
	if (trunc)
		close(t3);
	say("closed", "\"fds\": %s", js);
	if (write(sync[1], "x", 1) != 1)
		die("write sync");
	int st;
	waitpid(c, &st, 0);
	return 0;
}

/* ---- multi-queue ------------------------------------------------------------ */

static void setqueue(int fd, int flags, const char *what)
{
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	ifr.ifr_flags = flags;
	if (ioctl(fd, TUNSETQUEUE, &ifr) < 0)
		die(what);
	say(what, "\"fd\": %d", fd);
}

static int walk_queue(char **av)
{
	int f = PLAIN | IFF_MULTI_QUEUE;
	int q1 = tap(av[0], f, 1);
	int q2 = tap(av[0], f, 1);
	setqueue(q2, IFF_DETACH_QUEUE, "detach");
	setqueue(q2, IFF_ATTACH_QUEUE, "attach");
	setqueue(q1, IFF_DETACH_QUEUE, "detach");
	hold();
	return 0;
}

/* ---- failed and successful TUNGETIFF ---------------------------------------- */

static int walk_probe(char **av)
{
	int p[2];
	struct ifreq ifr;
	if (pipe(p) < 0)
		die("pipe");
	int t = tap(av[0], PLAIN, 1);
	memset(&ifr, 0, sizeof(ifr));
	if (ioctl(t, TUNGETIFF, &ifr) < 0)
		die("TUNGETIFF");
	say("getiff", "\"fd\": %d, \"ret\": 0, \"errno\": 0, \"ifname\": \"%s\"", t, ifr.ifr_name);
	errno = 0;
	int r = ioctl(p[0], TUNGETIFF, &ifr);
	say("getiff", "\"fd\": %d, \"ret\": %d, \"errno\": %d", p[0], r, errno);
	int closed = dup(p[1]);
	close(closed);
	errno = 0;
	r = ioctl(closed, TUNGETIFF, &ifr);
	say("getiff", "\"fd\": %d, \"ret\": %d, \"errno\": %d", closed, r, errno);
	hold();
	return 0;
}

/* ---- TUNSETPERSIST ---------------------------------------------------------- */

static int walk_persist(char **av)
{
	int keep = tap(av[1], PLAIN, 1);
	int t = tap(av[0], PLAIN, 1);
	if (ioctl(t, TUNSETPERSIST, 1) < 0)
		die("TUNSETPERSIST 1");
	say("persist", "\"fd\": %d, \"on\": true", t);
	close(t); /* A stays: persistent */
	say("closed", "\"fd\": %d", t);
	int t2 = tap(av[0], PLAIN, 1); /* attaches to the existing A */
	if (ioctl(t2, TUNSETPERSIST, 0) < 0)
		die("TUNSETPERSIST 0");
	say("persist", "\"fd\": %d, \"on\": false", t2);
	close(t2); /* the last file of a non-persistent A: it goes */
	say("closed", "\"fd\": %d, \"gone\": \"%s\"", t2, av[0]);
	(void)keep;
	hold();
	return 0;
}

/* ---- pidfd_getfd ------------------------------------------------------------ */

static int walk_getfd(char **av)
{
	int sync[2];
	pid_t parent = getpid();
	if (pipe2(sync, O_CLOEXEC) < 0)
		die("pipe2");
	pid_t c = fork(); /* before the tap exists: the child never inherits it */
	if (c < 0)
		die("fork");
	if (c == 0) {
		int fd;
		if (read(sync[0], &fd, sizeof(fd)) != sizeof(fd))
			die("read sync");
		int pidfd = syscall(SYS_pidfd_open, parent, 0);
		if (pidfd < 0)
			die("pidfd_open");
		int n = syscall(SYS_pidfd_getfd, pidfd, fd, 0);
		if (n < 0)
			die("pidfd_getfd");
		close(pidfd); /* as callers do, right away */
		say("getfd", "\"from_pid\": %d, \"from_fd\": %d, \"newfd\": %d, \"pidfd\": %d, "
		    "\"cloexec\": %s", parent, fd, n, pidfd, cloexec_of(n) ? "true" : "false");
		hold();
		return 0;
	}
	int t = tap(av[0], PLAIN, 1);
	if (write(sync[1], &t, sizeof(t)) != sizeof(t))
		die("write sync");
	int st;
	waitpid(c, &st, 0);
	return 0;
}

/* ---- a short-lived process ------------------------------------------------- */

static int walk_blink(char **av)
{
	int t = tap(av[0], PLAIN, 1);
	int d = dup(t);
	if (d < 0)
		die("dup");
	say("dup", "\"fd\": %d, \"newfd\": %d", t, d);
	close(d);
	say("exit", "\"fd\": %d", t); /* and exit at once: the exit closes t, A goes */
	return 0;
}

struct walk {
	const char *name;
	int nargs;
	int (*fn)(char **);
};

static int walk_scm1(char **av) { return walk_scm(av, 0); }
static int walk_mmsg(char **av) { return walk_scm(av, 1); }
static int walk_scm_trunc(char **av) { return walk_scm_odd(av, 1); }
static int walk_scm_2cmsg(char **av) { return walk_scm_odd(av, 0); }

static const struct walk walks[] = {
	{ "dup3", 1, walk_dup3 },
	{ "dupfd", 1, walk_dupfd },
	{ "ioctl", 1, walk_ioctl },
	{ "setfd", 1, walk_setfd },
	{ "close_range", 1, walk_close_range },
	{ "dup2", 3, walk_dup2 },
	{ "files", 2, walk_files },
	{ "pasta", 1, walk_pasta },
	{ "files_exec", 2, walk_files_exec },
	{ "files_exec_race", 2, walk_files_exec_race },
	{ "exec", 2, walk_exec },
	{ "scm", 2, walk_scm1 },
	{ "mmsg", 2, walk_mmsg },
	{ "scm_trunc", 3, walk_scm_trunc },
	{ "scm_2cmsg", 2, walk_scm_2cmsg },
	{ "queue", 1, walk_queue },
	{ "probe", 1, walk_probe },
	{ "persist", 2, walk_persist },
	{ "getfd", 1, walk_getfd },
	{ "blink", 1, walk_blink },
};

int main(int argc, char **argv)
{
	if (argc >= 2 && argc <= 4 && !strcmp(argv[1], "hold")) {
		char b;
		if (argc == 4 && write(atoi(argv[3]), "r", 1) != 1) /* running: exec is over */
			die("write hold ready");
		if (argc >= 3 && read(atoi(argv[2]), &b, 1) != 1)
			die("read hold sync");
		hold();
		return 0;
	}
	for (size_t i = 0; argc >= 2 && i < sizeof(walks) / sizeof(walks[0]); i++) {
		if (strcmp(argv[1], walks[i].name))
			continue;
		if (argc != 2 + walks[i].nargs) {
			fprintf(stderr, "tapwalk %s takes %d interface name(s)\n", walks[i].name,
				walks[i].nargs);
			return 2;
		}
		return walks[i].fn(argv + 2);
	}
	fprintf(stderr, "usage: tapwalk hold|dup3|dupfd|ioctl|setfd|close_range|dup2|files|"
			"files|pasta|files_exec|files_exec_race|exec|scm|mmsg|scm_trunc|scm_2cmsg|queue|probe|persist|getfd|blink NAME...\n");
	return 2;
}
