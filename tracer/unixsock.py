"""Who talks to whom over unix sockets: the kernel's peer of each connected unix
socket (NETLINK_SOCK_DIAG, UDIAG_SHOW_PEER: what `ss -xp` shows), and the socket
inodes a process holds (/proc/PID/fd). `taptrace watch -- virsh start web1` uses it
to tell that libvirtd, which made `vnet0`, was serving a process of the command:
virsh holds one end of a connection whose other end libvirtd holds.

Only sockets of taptrace's own network namespace are dumped (sock_diag answers for
the namespace of the asking socket)."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Iterable

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
UDIAG_SHOW_PEER = 0x4
UNIX_DIAG_PEER = 2

_NLMSG = struct.Struct("=IHHII")             # struct nlmsghdr
_REQ = struct.Struct("=BBHIIIII")            # struct unix_diag_req
_MSG = struct.Struct("=BBBBIII")             # struct unix_diag_msg
_RTA = struct.Struct("=HH")                  # struct rtattr
DUMP_MAX = 64 << 20                          # bytes read before giving up


def _align(n: int) -> int:
    return (n + 3) & ~3


def peers() -> dict[int, int]:
    """{socket inode: its peer's inode} for every connected unix socket of this
    network namespace ({} when the kernel will not say: no sock_diag, no rights)."""
    out: dict[int, int] = {}
    try:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                          NETLINK_SOCK_DIAG)
    except OSError:
        return out
    with s:
        req = _REQ.pack(socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, UDIAG_SHOW_PEER,
                        0xFFFFFFFF, 0xFFFFFFFF)
        try:
            s.send(_NLMSG.pack(_NLMSG.size + len(req), SOCK_DIAG_BY_FAMILY,
                               NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + req)
            total = 0
            while total < DUMP_MAX:
                data = s.recv(1 << 16)
                if not data:
                    return out
                total += len(data)
                if _parse(data, out):
                    return out
        except OSError:
            return out
    return out


def _parse(data: bytes, out: dict[int, int]) -> bool:
    """Add the peers in one netlink read to `out`; True when the dump is done."""
    off = 0
    while off + _NLMSG.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, off)
        if length < _NLMSG.size or off + length > len(data):
            return True                       # malformed: stop, keep what we have
        if kind in (NLMSG_DONE, NLMSG_ERROR):
            return True
        body = off + _NLMSG.size
        if kind == SOCK_DIAG_BY_FAMILY and length >= _NLMSG.size + _MSG.size:
            ino = _MSG.unpack_from(data, body)[4]
            at = body + _MSG.size
            while at + _RTA.size <= off + length:
                rlen, rtype = _RTA.unpack_from(data, at)
                if rlen < _RTA.size:
                    break
                if rtype == UNIX_DIAG_PEER and rlen >= _RTA.size + 4:
                    out[ino] = struct.unpack_from("=I", data, at + _RTA.size)[0]
                at += _align(rlen)
        off += _align(length)
    return False


def socket_inodes(pid: int) -> set[int]:
    """The inodes of the sockets process `pid` holds (empty: gone or unreadable)."""
    out: set[int] = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return out
    for name in names:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if link.startswith("socket:[") and link.endswith("]"):
            try:
                out.add(int(link[8:-1]))
            except ValueError:
                continue
    return out


def talks_to(server: int, clients: Iterable[int]) -> bool:
    """Is process `server` the peer of a unix socket held by one of `clients`?"""
    mine = socket_inodes(server)
    if not mine:
        return False
    theirs: set[int] = set()
    for pid in clients:
        if pid != server:
            theirs |= socket_inodes(pid)
    if not theirs:
        return False
    peer = peers()
    return any(peer.get(ino) in mine for ino in theirs)
