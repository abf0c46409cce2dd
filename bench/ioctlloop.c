/* Overhead workload: N non-tun ioctls (FIONREAD on a pipe): every ioctl on the
 * machine reaches taptrace's ioctl hook, which must leave it at once. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 1000000;
	int p[2], avail;
	struct timespec a, b;
	if (pipe(p))
		return 1;
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (long i = 0; i < n; i++)
		if (ioctl(p[0], FIONREAD, &avail))
			return 1;
	clock_gettime(CLOCK_MONOTONIC, &b);
	printf("%.1f\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
	return 0;
}
