/*
 * leaderexit IFNAME: a process whose leader thread ends with pthread_exit() while
 * another thread goes on holding a tap. The process and its fd table live on (the
 * leader is a zombie, /proc/PID/fd is empty, /proc/PID/task/TID/fd is not) until
 * stdin closes; then the other thread's exit() ends the whole group.
 *
 * Prints one JSON line: {"pid", "tid" (the thread left), "fd"}, once the leader has
 * gone.
 */
#include <fcntl.h>
#include <linux/if.h>
#include <linux/if_tun.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static int tap = -1;

static int leader_gone(pid_t pid)
{
	char path[64], buf[512];
	snprintf(path, sizeof(path), "/proc/%d/task/%d/stat", pid, pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return 1;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	char *p = strrchr(buf, ')');
	return p && (p[2] == 'Z' || p[2] == 'X');
}

static void *holder(void *arg)
{
	(void)arg;
	while (!leader_gone(getpid()))
		usleep(1000);
	printf("{\"pid\": %d, \"tid\": %ld, \"fd\": %d}\n", getpid(), syscall(SYS_gettid), tap);
	fflush(stdout);
	char buf[64];
	while (read(0, buf, sizeof(buf)) > 0)
		;
	exit(0);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: leaderexit IFNAME\n");
		return 2;
	}
	tap = open("/dev/net/tun", O_RDWR);
	struct ifreq ifr;
	memset(&ifr, 0, sizeof(ifr));
	ifr.ifr_flags = IFF_TAP | IFF_NO_PI;
	strncpy(ifr.ifr_name, argv[1], IFNAMSIZ - 1);
	if (tap < 0 || ioctl(tap, TUNSETIFF, &ifr) < 0) {
		perror("leaderexit: tap");
		return 1;
	}
	pthread_t t;
	if (pthread_create(&t, NULL, holder, NULL)) {
		perror("leaderexit: pthread_create");
		return 1;
	}
	pthread_exit(NULL);
}
