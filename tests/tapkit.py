"""Test support: drive the real kernel's tun driver and read its truth.

`truth()` reads /proc/PID/fdinfo itself (not through tracer.procfs) so that it
can check the tracer's snapshot code as well as the live table.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import socket
import struct
import subprocess
import sys
from pathlib import Path

# Scripts that tests write and run import tapkit by path: let them find tracer too.
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from tracer.events import (  # noqa: F401 - the kernel's ABI numbers, re-exported for tests
    IFF_ATTACH_QUEUE,
    IFF_DETACH_QUEUE,
    IFF_MULTI_QUEUE,
    IFF_NO_PI,
    IFF_PERSIST,
    IFF_TAP,
    IFF_TUN,
    IFF_VNET_HDR,
    TUNGETIFF,
    TUNSETGROUP,
    TUNSETIFF,
    TUNSETOWNER,
    TUNSETPERSIST,
    TUNSETQUEUE,
)


def _ifreq(name: str, flags: int) -> bytes:
    return struct.pack("16sH22x", name.encode(), flags)


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
    try:
        with open(f"/proc/{pid}/fdinfo/{fd}", "rb") as f:
            for line in f.read().split(b"\n"):
                if line.startswith(b"iff:"):
                    return line[4:].strip().decode("utf-8", "surrogateescape")
    except OSError:
        pass
    return None


def truth(pids) -> set[tuple[int, int, str]]:
    """{(pid, fd, ifname)} of attached tun fds, straight from /proc fdinfo."""
    out = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for n in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{n}") != "/dev/net/tun":
                    continue
            except OSError:
                continue
            name = fdinfo_iff(pid, int(n))
            if name:
                out.add((pid, int(n), name))
    return out


def cloexec_of(pid: int, fd: int) -> bool:
    with open(f"/proc/{pid}/fdinfo/{fd}") as f:
        for line in f:
            if line.startswith("flags:"):
                return bool(int(line.split()[1], 8) & 0o2000000)
    raise LookupError(fd)


def unique_name(prefix: str = "tt") -> str:
    return f"{prefix}{secrets.token_hex(3)}"[:15]


def delete_link(name: str) -> None:
    subprocess.run(["ip", "link", "del", name], stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL, check=False)


def send_fds(sock: socket.socket, fds: list[int]) -> None:
    socket.send_fds(sock, [b"x"], fds)


def recv_fds(sock: socket.socket, n: int, flags: int = 0) -> list[int]:
    _msg, fds, _flags, _addr = socket.recv_fds(sock, 16, n, flags)
    return fds


@contextlib.contextmanager
def held_by_child():
    """Fork a child that holds copies of all our fds until the block ends; yields its pid."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    os.close(r)
    try:
        yield pid
    finally:
        os.close(w)
        os.waitpid(pid, 0)
