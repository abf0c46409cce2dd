"""The built-in demo: a libvirt-style tap handoff done with real syscalls.

Run as `python -m tracer.demo` (as root). What it does, like libvirtd and QEMU:
  1. "libvirtd" opens /dev/net/tun and creates a tap from the template ttdemo%d;
  2. forks; the child clears close-on-exec on the tap fd and execs "qemu"
     (a Python stand-in) with `fd=N`, while a second tap fd it holds stays
     close-on-exec and is closed by the exec;
  3. "qemu" probes its fd with TUNGETIFF (as QEMU does for -netdev tap,fd=N),
     and probes a pipe by mistake: TUNGETIFF fails with ENOTTY;
  4. "libvirtd" closes its copy, then hot-plugs a second tap over a unix socket
     with SCM_RIGHTS; "qemu" receives it;
  5. the driver (`taptrace demo`) shows the table while "qemu" holds both taps,
     then closes its stdin: "qemu" exits and both taps go away.
"""

from __future__ import annotations

import ctypes
import fcntl
import os
import socket
import struct
import sys
import time

TUNSETIFF = 0x400454CA
TUNGETIFF = 0x800454D2
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000


def set_comm(name: str) -> None:
    """Name this process like the real actor it plays (prctl PR_SET_NAME)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(15, name.encode()[:15], 0, 0, 0)
    except OSError:
        pass


def create_tap(template: str) -> tuple[int, str]:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    ifr = struct.pack("16sH22x", template.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
    res = fcntl.ioctl(fd, TUNSETIFF, ifr)
    return fd, res[:16].split(b"\0", 1)[0].decode()


def tungetiff(fd: int) -> str:
    res = fcntl.ioctl(fd, TUNGETIFF, bytes(40))
    return res[:16].split(b"\0", 1)[0].decode()


QEMU = r"""
import fcntl, os, socket, sys
sys.path.insert(0, {root!r})
from tracer.demo import set_comm, tungetiff
set_comm("qemu-system-x86")
fd, sock_fd, pipe_fd = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
print(f"qemu: fd={{fd}} is", tungetiff(fd), flush=True)
try:
    tungetiff(pipe_fd)
except OSError as e:
    print(f"qemu: Unable to query TUNGETIFF on FD {{pipe_fd}}: {{e.strerror}}", flush=True)
sock = socket.socket(fileno=sock_fd)
msg, fds, _, _ = socket.recv_fds(sock, 16, 4)
print(f"qemu: hot-plugged fd {{fds[0]}} is", tungetiff(fds[0]), flush=True)
sys.stdin.read()           # run until the demo driver closes our stdin
"""


def main() -> int:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    set_comm("libvirtd")
    tap_fd, name = create_tap("ttdemo%d")
    spare_fd, _ = create_tap("ttdemo%d")        # stays close-on-exec: exec closes it
    print(f"libvirtd: created {name} on fd {tap_fd}", flush=True)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    rpipe, _wpipe = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.set_inheritable(tap_fd, True)         # fcntl(F_SETFD, 0) as libvirt does
        os.set_inheritable(theirs.fileno(), True)
        os.set_inheritable(rpipe, True)
        os.execv(sys.executable, [sys.executable, "-c", QEMU.format(root=root),
                                  str(tap_fd), str(theirs.fileno()), str(rpipe)])
    os.close(tap_fd)
    os.close(spare_fd)
    theirs.close()
    time.sleep(0.5)
    hot_fd, hot_name = create_tap("ttdemo%d")
    print(f"libvirtd: hot-plug {hot_name}: sending fd {hot_fd} over SCM_RIGHTS", flush=True)
    socket.send_fds(ours, [b"getfd"], [hot_fd])
    os.close(hot_fd)
    time.sleep(0.3)
    print("holding", flush=True)  # the driver shows the table now, then closes stdin
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
