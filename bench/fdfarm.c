/* SPDX-License-Identifier: GPL-2.0-or-later */
/*
 * fdfarm PROCS FDS TAPS: a busy host for the snapshot benchmark. PROCS children
 * each hold FDS open fds (dups of /dev/null); the first TAPS of them also create
 * and hold one tap ("ttf%d"). Prints "ready" once all are in place and keeps them
 * until stdin closes; the children die with it (PR_SET_PDEATHSIG).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: fdfarm PROCS FDS TAPS\n");
		return 2;
	}
	int procs = atoi(argv[1]), fds = atoi(argv[2]), taps = atoi(argv[3]);
	int ready[2];
	if (pipe(ready))
		return 1;
	pid_t parent = getpid();
	for (int i = 0; i < procs; i++) {
		pid_t pid = fork();
		if (pid < 0) {
			perror("fdfarm: fork");
			return 1;
		}
		if (pid)
			continue;
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(0);
		close(ready[0]);
		int held = 0;
		if (i < taps) {
			struct ifreq ifr;
			int fd = open("/dev/net/tun", O_RDWR);
			memset(&ifr, 0, sizeof(ifr));
			ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
			strcpy(ifr.ifr_name, "ttf%d");
			if (fd < 0 || ioctl(fd, TUNSETIFF, &ifr)) {
				perror("fdfarm: tap");
				_exit(1);
			}
			held++;
		}
		int null = open("/dev/null", O_RDONLY);
		for (held++; held < fds; held++)
			if (dup(null) < 0) {
				perror("fdfarm: dup");
				_exit(1);
			}
		if (write(ready[1], "r", 1) != 1)
			_exit(1);
		close(ready[1]);
		pause();
		_exit(0);
	}
	close(ready[1]);
	char c;
	for (int i = 0; i < procs; i++)
		if (read(ready[0], &c, 1) != 1) {
			fprintf(stderr, "fdfarm: a child failed\n");
			return 1;
		}
	printf("ready\n");
	fflush(stdout);
	while (read(0, &c, 1) > 0)
		;
	/* the children get SIGKILL as we exit (PR_SET_PDEATHSIG) */
	return 0;
}
