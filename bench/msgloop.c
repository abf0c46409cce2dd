/* Overhead workload: N round trips of one byte over an AF_UNIX datagram
 * socketpair, sendmsg then recvmsg: every sendmsg and recvmsg on the machine
 * reaches taptrace's SCM_RIGHTS hooks, which must leave at once for a process
 * that holds no tun fd. `msgloop N fd`: each message also carries one fd
 * (/dev/null, SCM_RIGHTS) and the received copy is closed, so the receive of
 * an fd that is not a tun/tap fd is measured too. Prints ns per round trip. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 1000000;
	int pass_fd = argc > 2 && strcmp(argv[2], "fd") == 0;
	int sv[2], null = open("/dev/null", O_RDONLY | O_CLOEXEC);
	char out = 'x', in, sctl[CMSG_SPACE(sizeof(int))], rctl[CMSG_SPACE(sizeof(int))];
	struct iovec siov = {&out, 1}, riov = {&in, 1};
	struct msghdr sm = {.msg_iov = &siov, .msg_iovlen = 1};
	struct msghdr rm = {.msg_iov = &riov, .msg_iovlen = 1};
	struct timespec a, b;
	if (null < 0 || socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv))
		return 1;
	if (pass_fd) {
		memset(sctl, 0, sizeof(sctl));
		sm.msg_control = sctl;
		sm.msg_controllen = sizeof(sctl);
		struct cmsghdr *c = CMSG_FIRSTHDR(&sm);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int));
		memcpy(CMSG_DATA(c), &null, sizeof(int));
	}
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (long i = 0; i < n; i++) {
		if (sendmsg(sv[0], &sm, 0) != 1)
			return 1;
		if (pass_fd) {
			rm.msg_control = rctl;
			rm.msg_controllen = sizeof(rctl);
		}
		if (recvmsg(sv[1], &rm, MSG_CMSG_CLOEXEC) != 1)
			return 1;
		if (pass_fd) {
			struct cmsghdr *c = CMSG_FIRSTHDR(&rm);
			int fd;
			if (!c || c->cmsg_type != SCM_RIGHTS)
				return 1;
			memcpy(&fd, CMSG_DATA(c), sizeof(int));
			close(fd);
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &b);
	printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
	return 0;
}
