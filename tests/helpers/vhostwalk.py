"""What QEMU does with a tap and /dev/vhost-net, done with real ioctls.

    python3 vhostwalk.py IFNAME

Prints one JSON object per step ({"step": ..., "pid": ...}), then "hold" and waits
for a line on stdin before closing everything. Needs root, tun and vhost_net.

The order follows QEMU's vhost_net_start_one (hw/net/vhost_net.c) and vhost_dev_start:
VHOST_SET_OWNER, VHOST_SET_MEM_TABLE, per vring VHOST_SET_VRING_NUM/ADDR, then
VHOST_NET_SET_BACKEND {index, tapfd} for vring 0 (rx) and 1 (tx). The kernel
checks the rings before it takes a backend (vhost_vq_access_ok: EFAULT without a
memory table), so the rings live in one anonymous mapping that is also the only
memory region. Then the failures QEMU can meet, then the detach of vhost_net_stop.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import mmap
import os
import struct
import sys

# include/uapi/linux/vhost.h (x86-64): _IO/_IOW(VHOST_VIRTIO = 0xAF, nr, type)
VHOST_SET_OWNER = 0x0000AF01
VHOST_SET_MEM_TABLE = 0x4008AF03          # struct vhost_memory (8 bytes + regions)
VHOST_SET_VRING_NUM = 0x4008AF10          # struct vhost_vring_state {index, num}
VHOST_SET_VRING_ADDR = 0x4028AF11         # struct vhost_vring_addr (40 bytes)
VHOST_NET_SET_BACKEND = 0x4008AF30        # struct vhost_vring_file {index, fd}
TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
RING = 256
MEM = 1 << 16


def say(step: str, **kw) -> None:
    print(json.dumps({"step": step, "pid": os.getpid(), **kw}), flush=True)


def ioctl(fd: int, cmd: int, arg: bytes | bytearray | int = 0) -> int:
    """0, or -errno."""
    try:
        fcntl.ioctl(fd, cmd, arg)
    except OSError as e:
        return -e.errno
    return 0


def set_backend(vhost: int, index: int, fd: int) -> int:
    return ioctl(vhost, VHOST_NET_SET_BACKEND, struct.pack("Ii", index, fd))


def main() -> int:
    name = sys.argv[1]
    tap = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    res = fcntl.ioctl(tap, TUNSETIFF, struct.pack("16sH22x", name.encode(),
                                                  IFF_TAP | IFF_NO_PI | IFF_VNET_HDR))
    say("tap", fd=tap, ifname=res[:16].split(b"\0", 1)[0].decode())
    vhost = os.open("/dev/vhost-net", os.O_RDWR | os.O_CLOEXEC)
    say("vhost", fd=vhost)
    pipe_r, _pipe_w = os.pipe()
    say("pipe", fd=pipe_r)

    # before VHOST_SET_OWNER: EPERM (vhost_dev_check_owner)
    say("no_owner", ret=set_backend(vhost, 0, tap))
    assert ioctl(vhost, VHOST_SET_OWNER) == 0
    mem = mmap.mmap(-1, MEM)
    base = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    # no memory table yet: the rings cannot be checked: EFAULT
    say("no_rings", ret=set_backend(vhost, 0, tap))
    # struct vhost_memory {nregions, padding} + one vhost_memory_region; a mutable
    # buffer: fcntl passes its address (an int argument would be a C int)
    table = bytearray(struct.pack("II", 1, 0) + struct.pack("QQQQ", base, MEM, base, 0))
    assert ioctl(vhost, VHOST_SET_MEM_TABLE, table) == 0
    for i in (0, 1):
        ring = base + i * 0x4000
        assert ioctl(vhost, VHOST_SET_VRING_NUM, struct.pack("II", i, RING)) == 0
        addr = struct.pack("IIQQQQ", i, 0, ring, ring + 0x2000, ring + 0x1000, 0)
        assert ioctl(vhost, VHOST_SET_VRING_ADDR, addr) == 0

    say("attach", rx=set_backend(vhost, 0, tap), tx=set_backend(vhost, 1, tap))
    say("errors", enobufs=set_backend(vhost, 2, tap), enotsock=set_backend(vhost, 0, pipe_r),
        bad_fd=set_backend(vhost, 0, 1000), enotty=set_backend(pipe_r, 0, tap))
    say("hold")
    sys.stdin.readline()
    say("detach", rx=set_backend(vhost, 0, -1), tx=set_backend(vhost, 1, -1))
    os.close(vhost)
    os.close(tap)
    say("closed")
    sys.stdin.readline()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except OSError as e:
        say("error", errno=e.errno, error=errno.errorcode.get(e.errno, str(e.errno)),
            message=str(e))
        sys.exit(1)
