"""Test support: drive the real kernel's tun driver and read its truth.

Nothing here imports tracer: `truth()` reads /proc/PID/fdinfo itself and the ioctl
numbers are written out, so that tests check the tracer (its snapshot code as well
as its live table) against the kernel, not against itself.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import re
import secrets
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

# Scripts that tests write and run import tapkit by path: let them find tracer too.
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

# The kernel's ABI, written out from include/uapi/linux/if_tun.h and vhost.h (x86-64)
# rather than imported from tracer: the tests check the tracer's copy against the kernel.
# How much slower than this machine the kernel under test runs: a guest under QEMU
# TCG (tests/guest/guestvm.py sets it) takes several times longer for everything.
# Only for bounds that hold work a test does not measure (a hook's return, a rate).
SLOWDOWN = float(os.environ.get("TAPTRACE_TEST_SLOWDOWN") or 1)

TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
TUNSETLINK = 0x400454CD
TUNSETGROUP = 0x400454CE
TUNGETFEATURES = 0x800454CF
TUNSETOFFLOAD = 0x400454D0
TUNGETIFF = 0x800454D2
TUNSETVNETHDRSZ = 0x400454D8
TUNSETQUEUE = 0x400454D9
TUNSETIFINDEX = 0x400454DA
TUNSETSTEERINGEBPF = 0x800454E0
TUNSETFILTEREBPF = 0x800454E1
TUNSETCARRIER = 0x400454E2
TUNGETDEVNETNS = 0x000054E3    # _IO('T', 227): an fd of the tap's own namespace (5.2+)
VHOST_SET_OWNER = 0x0000AF01
VHOST_NET_SET_BACKEND = 0x4008AF30

IFF_TUN = 0x0001
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_ATTACH_QUEUE = 0x0200
IFF_DETACH_QUEUE = 0x0400
IFF_PERSIST = 0x0800
IFF_NO_PI = 0x1000
IFF_ONE_QUEUE = 0x2000
IFF_VNET_HDR = 0x4000

O_CLOEXEC = 0o2000000
SYS_CLONE = 56                 # x86-64
CLONE_FILES = 0x00000400
SIGCHLD = 17
SYS_PIDFD_GETFD = 438          # the same number on every arch (5.6+)
MACVTAP_NODE = re.compile(r"/dev/tap[0-9]+")


def _ifreq(name: str, flags: int) -> bytes:
    return struct.pack("16sH22x", name.encode("utf-8", "surrogateescape"), flags)


def _name(res: bytes) -> str:
    return res[:16].split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def open_tun(cloexec: bool = True) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | (os.O_CLOEXEC if cloexec else 0))
    os.set_inheritable(fd, not cloexec)
    return fd


def set_iff(fd: int, name: str, flags: int = IFF_TAP | IFF_NO_PI) -> str:
    """TUNSETIFF; returns the name the kernel wrote back (tt%d -> tt0)."""
    return _name(fcntl.ioctl(fd, TUNSETIFF, _ifreq(name, flags)))


def create_tap(name: str, flags: int = IFF_TAP | IFF_NO_PI, cloexec: bool = True):
    fd = open_tun(cloexec)
    try:
        return fd, set_iff(fd, name, flags)
    except OSError:
        os.close(fd)
        raise


def set_queue(fd: int, attach: bool) -> None:
    fcntl.ioctl(fd, TUNSETQUEUE, _ifreq("", IFF_ATTACH_QUEUE if attach else IFF_DETACH_QUEUE))


def set_persist(fd: int, on: bool) -> None:
    fcntl.ioctl(fd, TUNSETPERSIST, int(on))


def get_iff(fd: int) -> str:
    return _name(fcntl.ioctl(fd, TUNGETIFF, bytes(40)))


def fdinfo_iff(pid: int, fd: int) -> str | None:
    """The kernel's "iff:" for that fd, exact; None: no iff line, empty, or no such fd."""
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}", "rb") as f:
            for line in f.read().split(b"\n"):
                if line.startswith(b"iff:\t"):
                    return line[5:].decode("utf-8", "surrogateescape") or None
    except OSError:
        pass
    return None


def truth(pids) -> set[tuple[int, int, str]]:
    """{(pid, fd, ifname)} of attached tun/tap fds, from the kernel.

    A /dev/net/tun fd is named by its fdinfo "iff:" line. A macvtap fd (/dev/tapN)
    has no such line: a copy of it is taken with pidfd_getfd and asked TUNGETIFF.
    """
    out = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for n in fds:
            try:
                link = os.readlink(f"/proc/{pid}/fd/{n}")
            except OSError:
                continue
            if link == "/dev/net/tun":
                name = fdinfo_iff(pid, int(n))
            elif MACVTAP_NODE.fullmatch(link):
                name = macvtap_iff(pid, int(n))
            else:
                continue
            if name:
                out.add((pid, int(n), name))
    return out


def pidfd_getfd(pid: int, fd: int) -> int:
    """A copy of another process's fd (root, or ptrace rights over it), close-on-exec."""
    libc = ctypes.CDLL(None, use_errno=True)
    pidfd = os.pidfd_open(pid)
    try:
        new = libc.syscall(SYS_PIDFD_GETFD, pidfd, fd, 0)
        if new < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return new
    finally:
        os.close(pidfd)


def macvtap_iff(pid: int, fd: int) -> str | None:
    """The macvtap interface behind PID's fd N (TUNGETIFF on a pidfd_getfd copy)."""
    try:
        copy = pidfd_getfd(pid, fd)
    except OSError:
        return None                # gone, or no right to it
    try:
        return get_iff(copy) or None
    except OSError:
        return None
    finally:
        os.close(copy)


def netns_of_fd(pid: int, fd: int) -> int | None:
    """The inode of the network namespace the tap behind PID's fd N lives in, asked of
    the device itself (TUNGETDEVNETNS on a pidfd_getfd copy); None: not a tun fd."""
    try:
        copy = pidfd_getfd(pid, fd)
    except OSError:
        return None
    try:
        ns = fcntl.ioctl(copy, TUNGETDEVNETNS)
    except OSError:
        return None
    finally:
        os.close(copy)
    try:
        return os.fstat(ns).st_ino
    finally:
        os.close(ns)


def netns_inode(path: str) -> int:
    """The inode of a namespace file: /run/netns/NAME, /proc/PID/ns/net."""
    return os.stat(path).st_ino


def own_netns() -> int:
    return netns_inode("/proc/self/ns/net")


def truth_ns(pids) -> set[tuple[int, int, str, int | None]]:
    """truth() with the namespace of each tap: {(pid, fd, ifname, netns inode)}."""
    return {(pid, fd, name, netns_of_fd(pid, fd)) for pid, fd, name in truth(pids)}


def add_netns(prefix: str = "ttn") -> str:
    """A fresh `ip netns` namespace (/run/netns/NAME); delete_netns() removes it."""
    name = unique_name(prefix)
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    return name


def delete_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "del", name], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)


def link_facts(ifname: str, netns: str | None = None) -> dict | None:
    """What iproute2 says of a link, in its namespace (`ip -n NS -d -j link show`):
    {"mac", "pi", "persist", "vnet_hdr", "type"} for a tun/tap; None if absent."""
    cmd = ["ip", *(["-n", netns] if netns else []), "-d", "-j", "link", "show", "dev", ifname]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        return None
    import json
    [link] = json.loads(r.stdout)
    data = (link.get("linkinfo") or {}).get("info_data") or {}
    return {"mac": link.get("address"), "pi": data.get("pi"), "persist": data.get("persist"),
            "vnet_hdr": data.get("vnet_hdr"), "type": data.get("type")}


def cloexec_of(pid: int, fd: int) -> bool:
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("flags:"):
                return bool(int(line.split()[1], 8) & O_CLOEXEC)
    raise LookupError(fd)


def unique_name(prefix: str = "tt") -> str:
    """prefix + 6 random hex digits: short enough for a 15-byte ifname and for suffixes."""
    return f"{prefix}{secrets.token_hex(3)}"[:15]


def delete_link(name: str) -> None:
    subprocess.run(["ip", "link", "del", name], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)


def send_fds(sock: socket.socket, fds: list[int]) -> None:
    socket.send_fds(sock, [b"x"], fds)


def recv_fds(sock: socket.socket, n: int, flags: int = 0) -> list[int]:
    _msg, fds, _flags, _addr = socket.recv_fds(sock, 16, n, flags)
    return fds


def _clone(flags: int) -> int:
    """fork(2) with extra clone flags (raw syscall: os.fork cannot share the fd table)."""
    libc = ctypes.CDLL(None, use_errno=True)
    pid = libc.syscall(SYS_CLONE, ctypes.c_ulong(flags | SIGCHLD), ctypes.c_void_p(0),
                       ctypes.c_void_p(0), ctypes.c_void_p(0), ctypes.c_ulong(0))
    if pid < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return pid


@contextlib.contextmanager
def held_by_child(share_table: bool = False):
    """A child that holds our fds until the block ends; yields its pid.

    By default a forked copy of the fd table; share_table=True: clone(CLONE_FILES),
    one table for both processes, so the child sees every fd we open or close.
    """
    r, w = os.pipe()
    pid = _clone(CLONE_FILES) if share_table else os.fork()
    if pid == 0:
        try:
            if not share_table:
                os.close(w)
            os.read(r, 1)
        finally:
            os._exit(0)
    if not share_table:
        os.close(r)                # (a shared table would lose it for the child too)
    try:
        yield pid
    finally:
        with contextlib.suppress(OSError):
            os.write(w, b"x")
        os.close(w)
        os.waitpid(pid, 0)
        if share_table:
            os.close(r)


def add_macvtap(name: str) -> str:
    """A macvtap NAME on a fresh veth pair (NAMEa/NAMEb); returns its /dev/tapN.

    Opening that node is the attach: no TUNSETIFF. delete_macvtap() removes all three.
    """
    subprocess.run(["ip", "link", "add", f"{name}a", "type", "veth", "peer", "name",
                    f"{name}b"], check=True, capture_output=True)
    try:
        subprocess.run(["ip", "link", "add", "link", f"{name}a", "name", name, "type",
                        "macvtap"], check=True, capture_output=True)
        ifindex = int(Path(f"/sys/class/net/{name}/ifindex").read_text())
    except (subprocess.CalledProcessError, OSError, ValueError):
        delete_link(f"{name}a")
        raise
    node = f"/dev/tap{ifindex}"
    deadline = time.monotonic() + 5
    while not os.path.exists(node) and time.monotonic() < deadline:
        time.sleep(0.02)           # devtmpfs makes the node; udev, if any, may move it
    return node


def delete_macvtap(name: str) -> None:
    delete_link(name)
    delete_link(f"{name}a")        # takes its peer NAMEb with it
