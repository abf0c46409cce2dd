#!/bin/bash
# Stage 2 of the taptrace test guest (see guestvm.py): PID 1, from the host's root
# (read-only 9p under a tmpfs overlay). Mount what a Debian system has, load the
# tun/tap family, run /tt-out/cmd with its output on the second serial port, leave
# its exit status in /tt-out/rc, power off. Bash as PID 1 also reaps orphans.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root TERM=dumb LANG=C.UTF-8 TAPTRACE_IN_GUEST=1
# Not the host's pid files and sockets (libvirt's status files would mislead the
# tests) - unless the checkout itself lives under /run. /tmp stays the host's, seen
# through the overlay (a CI clone may live there); what the guest writes stays here.
case "$(cat /tt-out/cwd 2>/dev/null)" in
/run|/run/*) ;;
*) mount -t tmpfs -o mode=0755 tmpfs /run ;;
esac
mkdir -p /dev/pts /dev/shm
mount -t devpts -o ptmxmode=0666 devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
hostname taptrace-guest
ip link set lo up
modprobe -a tun tap macvtap vhost_net veth bridge
stty -F /dev/ttyS1 raw -echo 2>/dev/null
bash /tt-out/cmd </dev/null >/dev/ttyS1 2>&1
echo $? >/tt-out/rc
sync
echo o >/proc/sysrq-trigger
sleep 10
