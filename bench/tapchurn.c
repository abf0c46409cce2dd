/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * tapchurn: make tap events as fast as asked (or as the machine allows).
 *
 *   tapchurn moves SECONDS RATE HOLD
 *       Each iteration moves a tap fd: dup, SCM_RIGHTS to itself over a
 *       socketpair, close both copies (four tap events). Every 16th also forks a
 *       child that exits at once (fork + exit closing an inherited tap fd), every
 *       64th creates a tap (open, TUNSETIFF "ttc%d", dup) and closes it again
 *       (close, close: the tap goes). Creating and deleting a netdev takes
 *       milliseconds (RCU grace periods), so taps are the rarer event.
 *       RATE iterations per second, 0 = flat out. Then HOLD taps are made and
 *       kept until stdin closes, so a tracer's table can be checked.
 *       Prints {"iterations": N, "events": E, "seconds": S, "taps": [names held]}
 *       where E counts the tap events the iterations made.
 *   tapchurn procs N
 *       N short-lived processes, each creating one tap and exiting with it.
 *       Prints {"processes": N, "seconds": S}.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec + t.tv_nsec / 1e9;
}

static int make_tap(char *name)
{
	struct ifreq ifr;
	int fd = open("/dev/net/tun", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		perror("tapchurn: /dev/net/tun");
		exit(1);
	}
	memset(&ifr, 0, sizeof(ifr));
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
	strcpy(ifr.ifr_name, "ttc%d");
	if (ioctl(fd, TUNSETIFF, &ifr)) {
		perror("tapchurn: TUNSETIFF");
		exit(1);
	}
	if (name)
		memcpy(name, ifr.ifr_name, IFNAMSIZ);
	return fd;
}

static void send_fd(int sock, int fd)
{
	char buf[CMSG_SPACE(sizeof(int))] = {0}, byte = 'x';
	struct iovec iov = {&byte, 1};
	struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1,
			   .msg_control = buf, .msg_controllen = sizeof(buf)};
	struct cmsghdr *c = CMSG_FIRSTHDR(&m);
	c->cmsg_level = SOL_SOCKET;
	c->cmsg_type = SCM_RIGHTS;
	c->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(c), &fd, sizeof(int));
	if (sendmsg(sock, &m, 0) != 1) {
		perror("tapchurn: sendmsg");
		exit(1);
	}
}

static int recv_fd(int sock)
{
	char buf[CMSG_SPACE(sizeof(int))], byte;
	struct iovec iov = {&byte, 1};
	struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1,
			   .msg_control = buf, .msg_controllen = sizeof(buf)};
	int fd;
	if (recvmsg(sock, &m, MSG_CMSG_CLOEXEC) != 1 || !CMSG_FIRSTHDR(&m)) {
		perror("tapchurn: recvmsg");
		exit(1);
	}
	memcpy(&fd, CMSG_DATA(CMSG_FIRSTHDR(&m)), sizeof(int));
	return fd;
}

static void reap(pid_t pid)
{
	int st;
	if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st)) {
		fprintf(stderr, "tapchurn: child %d failed\n", pid);
		exit(1);
	}
}

static int moves(double seconds, double rate, int hold)
{
	int sv[2];
	long n = 0, events = 2;
	if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv))
		return 1;
	int base = make_tap(NULL);
	double start = now(), end = start + seconds;
	while (now() < end) {
		if (rate > 0) {
			double due = start + n / rate;
			while (now() < due)
				usleep(20);
		}
		int b = dup(base);
		send_fd(sv[0], b);
		int c = recv_fd(sv[1]);
		close(b);
		close(c);
		events += 5;            /* dup, scm_send, scm_recv, close, close */
		if (n % 16 == 0) {
			pid_t pid = fork();
			if (pid < 0)
				return 1;
			if (pid == 0)
				_exit(0);
			reap(pid);
			events += 2;    /* fork, exit */
		}
		if (n % 64 == 0) {
			int t = make_tap(NULL), u = dup(t);
			close(t);
			close(u);
			events += 6;    /* open, tunsetiff, dup, close, close, tap_gone */
		}
		n++;
	}
	double took = now() - start;
	printf("{\"iterations\": %ld, \"events\": %ld, \"seconds\": %.3f, \"taps\": [",
	       n, events, took);
	for (int i = 0; i < hold; i++) {
		char name[IFNAMSIZ];
		int fd = make_tap(name);
		if (i % 2)
			dup(fd);
		printf("%s\"%s\"", i ? ", " : "", name);
	}
	printf("]}\n");
	fflush(stdout);
	if (hold) {
		char c;
		while (read(0, &c, 1) > 0)
			;
	}
	return 0;
}

static int procs(long n)
{
	double start = now();
	for (long i = 0; i < n; i++) {
		pid_t pid = fork();
		if (pid < 0)
			return 1;
		if (pid == 0) {
			make_tap(NULL);
			_exit(0);
		}
		reap(pid);
	}
	printf("{\"processes\": %ld, \"seconds\": %.3f}\n", n, now() - start);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 5 && !strcmp(argv[1], "moves"))
		return moves(atof(argv[2]), atof(argv[3]), atoi(argv[4]));
	if (argc == 3 && !strcmp(argv[1], "procs"))
		return procs(atol(argv[2]));
	fprintf(stderr, "usage: tapchurn moves SECONDS RATE HOLD | tapchurn procs N\n");
	return 2;
}
