/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * fdmoves: walk a tap fd through the syscalls Python does not expose well,
 * printing one JSON line per step so a test knows what the tracer must say.
 *
 *   fdmoves dup     NAME1 NAME2   dup3(O_CLOEXEC), F_DUPFD_CLOEXEC, FIONCLEX/FIOCLEX,
 *                                 F_SETFD, dup2 over a tracked fd, close_range
 *   fdmoves files   NAME          clone(CLONE_FILES): the child dups and closes in
 *                                 the shared table
 *   fdmoves exec    NAME1 NAME2   fork + exec with one close-on-exec tap, one not
 *   fdmoves scm     NAME1 NAME2   SCM_RIGHTS of [tap, pipe, tap], MSG_CMSG_CLOEXEC
 *   fdmoves mmsg    NAME1 NAME2   the same with sendmmsg/recvmmsg
 *   fdmoves queue   NAME          multi-queue tap, TUNSETQUEUE detach
 *   fdmoves probe   NAME          TUNGETIFF on a pipe, a closed fd, an unattached fd;
 *                                 TUNSETPERSIST on and off
 *
 * Every scenario ends with {"step":"hold",...} and waits for a line on stdin,
 * so the test can compare the live table with /proc while the fds are held.
 */
#define _GNU_SOURCE
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

#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC 4
#endif

static void die(const char *what)
{
	fprintf(stderr, "fdmoves: %s: %s\n", what, strerror(errno));
	exit(1);
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	printf("{\"pid\": %d, ", getpid());
	vprintf(fmt, ap);
	printf("}\n");
	fflush(stdout);
	va_end(ap);
}

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
	say("\"step\": \"tap\", \"fd\": %d, \"ifname\": \"%s\"", fd, ifr.ifr_name);
	return fd;
}

static void hold(void)
{
	char buf[16];
	say("\"step\": \"hold\"");
	if (read(0, buf, sizeof(buf)) < 0)
		die("read stdin");
}

static int walk_dup(char **av)
{
	int t = tap(av[0], IFF_TAP | IFF_NO_PI, 1);
	int u = tap(av[1], IFF_TAP | IFF_NO_PI, 1);
	if (dup3(t, 20, O_CLOEXEC) != 20)
		die("dup3");
	say("\"step\": \"dup3\", \"fd\": %d, \"newfd\": 20", t);
	int c = fcntl(t, F_DUPFD_CLOEXEC, 30);
	if (c < 0)
		die("F_DUPFD_CLOEXEC");
	say("\"step\": \"F_DUPFD_CLOEXEC\", \"fd\": %d, \"newfd\": %d", t, c);
	if (ioctl(c, FIONCLEX) < 0 || ioctl(20, FIOCLEX) < 0)
		die("FIONCLEX/FIOCLEX");
	if (fcntl(c, F_SETFD, FD_CLOEXEC) < 0 || fcntl(c, F_SETFD, 0) < 0)
		die("F_SETFD");
	say("\"step\": \"cloexec\", \"fd\": %d", c);
	if (dup2(u, 20) != 20) /* replaces the dup of t held at 20 */
		die("dup2");
	say("\"step\": \"dup2\", \"fd\": %d, \"newfd\": 20", u);
	if (dup2(t, 41) != 41 || dup2(t, 42) != 42)
		die("dup2 41/42");
	if (syscall(SYS_close_range, 40, 50, CLOSE_RANGE_CLOEXEC) < 0)
		die("close_range cloexec");
	if (syscall(SYS_close_range, 41, 41, 0) < 0)
		die("close_range");
	say("\"step\": \"close_range\", \"closed\": 41, \"cloexec\": 42");
	hold();
	return 0;
}

static int child_fn(void *arg)
{
	int t = *(int *)arg;
	int d = dup(t);
	if (d < 0)
		die("dup in clone child");
	say("\"step\": \"child-dup\", \"fd\": %d, \"newfd\": %d", t, d);
	close(t);
	say("\"step\": \"child-close\", \"fd\": %d", t);
	return 0;
}

static int walk_files(char **av)
{
	static char stack[64 * 1024];
	int t = tap(av[0], IFF_TAP | IFF_NO_PI, 1);
	pid_t c = clone(child_fn, stack + sizeof(stack), CLONE_FILES | SIGCHLD, &t);
	if (c < 0)
		die("clone");
	if (waitpid(c, NULL, 0) < 0)
		die("waitpid");
	say("\"step\": \"child-exited\", \"child\": %d", c);
	hold();
	return 0;
}

static int walk_exec(char **av, const char *self)
{
	int keep = tap(av[0], IFF_TAP | IFF_NO_PI, 0);
	int gone = tap(av[1], IFF_TAP | IFF_NO_PI, 1);
	pid_t c = fork();
	if (c < 0)
		die("fork");
	if (c == 0) {
		execl(self, self, "held", (char *)NULL);
		die("exec");
	}
	close(keep);
	close(gone);
	say("\"step\": \"forked\", \"child\": %d, \"kept\": %d, \"closed\": %d", c, keep, gone);
	int st;
	waitpid(c, &st, 0);
	return 0;
}

static int walk_scm(char **av, int mmsg)
{
	int sv[2], p[2];
	if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0 || pipe(p) < 0)
		die("socketpair/pipe");
	int a = tap(av[0], IFF_TAP | IFF_NO_PI, 1);
	int b = tap(av[1], IFF_TAP | IFF_NO_PI, 1);
	pid_t c = fork();
	if (c < 0)
		die("fork");
	if (c == 0) {
		close(a);
		close(b);
		close(sv[0]);
		char data[8];
		union { char buf[CMSG_SPACE(3 * sizeof(int))]; struct cmsghdr align; } u;
		struct iovec iov = { data, sizeof(data) };
		struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1,
				    .msg_control = u.buf, .msg_controllen = sizeof(u.buf) };
		if (mmsg) {
			struct mmsghdr mm = { .msg_hdr = m };
			if (recvmmsg(sv[1], &mm, 1, MSG_CMSG_CLOEXEC, NULL) != 1)
				die("recvmmsg");
			m = mm.msg_hdr;
		} else if (recvmsg(sv[1], &m, MSG_CMSG_CLOEXEC) < 0) {
			die("recvmsg");
		}
		int *got = (int *)CMSG_DATA(CMSG_FIRSTHDR(&m));
		say("\"step\": \"received\", \"fds\": [%d, %d, %d]", got[0], got[1], got[2]);
		hold();
		return 0;
	}
	close(sv[1]);
	int fds[3] = { a, p[0], b };
	char data[1] = { 'x' };
	union { char buf[CMSG_SPACE(sizeof(fds))]; struct cmsghdr align; } u;
	memset(&u, 0, sizeof(u));
	struct iovec iov = { data, 1 };
	struct msghdr m = { .msg_iov = &iov, .msg_iovlen = 1,
			    .msg_control = u.buf, .msg_controllen = sizeof(u.buf) };
	struct cmsghdr *cm = CMSG_FIRSTHDR(&m);
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(fds));
	memcpy(CMSG_DATA(cm), fds, sizeof(fds));
	if (mmsg) {
		struct mmsghdr mm = { .msg_hdr = m };
		if (sendmmsg(sv[0], &mm, 1, 0) != 1)
			die("sendmmsg");
	} else if (sendmsg(sv[0], &m, 0) < 0) {
		die("sendmsg");
	}
	say("\"step\": \"sent\", \"child\": %d, \"fds\": [%d, %d, %d]", c, a, p[0], b);
	close(a); /* the receiver's copies keep both taps alive */
	close(b);
	int st;
	waitpid(c, &st, 0);
	return 0;
}

static int walk_queue(char **av)
{
	int f = IFF_TAP | IFF_NO_PI | IFF_MULTI_QUEUE;
	int q1 = tap(av[0], f, 1);
	int q2 = tap(av[0], f, 1);
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	ifr.ifr_flags = IFF_DETACH_QUEUE;
	if (ioctl(q2, TUNSETQUEUE, &ifr) < 0)
		die("TUNSETQUEUE detach");
	say("\"step\": \"detached\", \"fd\": %d, \"other\": %d", q2, q1);
	hold();
	return 0;
}

static int walk_probe(char **av)
{
	int p[2];
	struct ifreq ifr;
	if (pipe(p) < 0)
		die("pipe");
	int t = tap(av[0], IFF_TAP | IFF_NO_PI, 1);
	int bare = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
	errno = 0;
	int r1 = ioctl(p[0], TUNGETIFF, &ifr);
	int e1 = errno;
	int r2 = ioctl(99, TUNGETIFF, &ifr);
	int e2 = errno;
	int r3 = ioctl(bare, TUNGETIFF, &ifr);
	int e3 = errno;
	say("\"step\": \"probes\", \"pipe\": %d, \"pipe_errno\": %d, \"closed_errno\": %d, "
	    "\"bare\": %d, \"bare_errno\": %d, \"rets\": [%d, %d, %d]",
	    p[0], e1, e2, bare, e3, r1, r2, r3);
	if (ioctl(t, TUNSETPERSIST, 1) < 0 || ioctl(t, TUNSETPERSIST, 0) < 0)
		die("TUNSETPERSIST");
	say("\"step\": \"persist\", \"fd\": %d", t);
	hold();
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "held")) {
		hold();
		return 0;
	}
	if (argc < 3) {
		fprintf(stderr, "usage: fdmoves dup|files|exec|scm|mmsg|queue|probe NAME [NAME2]\n");
		return 2;
	}
	char *cmd = argv[1];
	if (!strcmp(cmd, "dup") && argc == 4)
		return walk_dup(argv + 2);
	if (!strcmp(cmd, "files"))
		return walk_files(argv + 2);
	if (!strcmp(cmd, "exec") && argc == 4)
		return walk_exec(argv + 2, "/proc/self/exe");
	if (!strcmp(cmd, "scm") && argc == 4)
		return walk_scm(argv + 2, 0);
	if (!strcmp(cmd, "mmsg") && argc == 4)
		return walk_scm(argv + 2, 1);
	if (!strcmp(cmd, "queue"))
		return walk_queue(argv + 2);
	if (!strcmp(cmd, "probe"))
		return walk_probe(argv + 2);
	fprintf(stderr, "fdmoves: unknown scenario %s\n", cmd);
	return 2;
}
