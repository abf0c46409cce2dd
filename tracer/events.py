"""Typed records for what the BPF side reports, and the decoder of bpf/events.h.

The model consumes these dataclasses only; they are built either by `decode()`
from a raw `struct tt_event` or directly by tests and replays.
"""

from __future__ import annotations

import dataclasses
import re
import struct
from dataclasses import dataclass

# struct tt_event in bpf/events.h, field by field (tests/unit/test_layout.py checks it).
RECORD = struct.Struct("<QIIIiqQQ16s16sI16iIQIIQ")
RECORD_FIELDS = (
    "ts", "type", "tgid", "tid", "fd", "ret", "arg", "arg2", "comm", "name", "nfds", "fds",
    "fkind", "file", "netns", "fdflags", "table",
)
FD_CLOEXEC_BIT = 1          # tt_event.fdflags: TT_FD_CLOEXEC
FD_TRUNCATED = 4            # tt_event.fdflags: TT_FD_TRUNCATED
FD_TABLE_KNOWN = 8          # tt_event.fdflags: TT_FD_TABLE_KNOWN (a thread's record)
FD_OWN_TABLE = 16           # tt_event.fdflags: TT_FD_OWN_TABLE

EV_OPEN, EV_TUN_IOCTL, EV_DUP, EV_CLOSE, EV_CLOSE_RANGE, EV_SETFD = 1, 2, 3, 4, 5, 6
EV_FORK, EV_EXEC, EV_EXIT, EV_SCM_SEND, EV_SCM_RECV, EV_UNSHARE, EV_PIDFD_GETFD = (
    7, 8, 9, 10, 11, 12, 13,
)
EV_PIDFD_OPEN, EV_VHOST_BACKEND = 14, 15

# enum tt_dup_how / tt_setfd_how / tt_counter
DUP_HOW = {0: "dup", 1: "dup2", 2: "dup3", 3: "F_DUPFD", 4: "F_DUPFD_CLOEXEC"}
DUP_CLOEXEC = 0x100
SETFD_HOW = {0: "F_SETFD", 1: "FIOCLEX", 2: "FIONCLEX"}
# enum tt_file_kind: the path an open of that kind of file is on
FK_NONE, FK_TUN, FK_TAP, FK_VHOST = 0, 1, 2, 3
FILE_KIND = {FK_TUN: "tun", FK_TAP: "tap", FK_VHOST: "vhost"}
C_LOST, C_INTEREST_FULL, C_SCM_SENDS, C_SCM_SETTLED, C_SCM_LOST_UNTIL = 0, 1, 2, 3, 4
# how long a message in flight is waited for: a send user space read stays pending,
# and after a send record was lost the BPF parses every receive (TT_SCM_PENDING_NS)
SCM_PENDING_NS = 60_000_000_000

# ioctl numbers (x86-64) and IFF_* flags: include/uapi/linux/if_tun.h
TUNSETIFF = 0x400454CA
TUNSETPERSIST = 0x400454CB
TUNSETOWNER = 0x400454CC
TUNSETGROUP = 0x400454CE
TUNGETIFF = 0x800454D2
TUNSETQUEUE = 0x400454D9
TUN_IOCTL_NAMES = {
    TUNSETIFF: "TUNSETIFF", TUNSETPERSIST: "TUNSETPERSIST", TUNSETOWNER: "TUNSETOWNER",
    TUNSETGROUP: "TUNSETGROUP", TUNGETIFF: "TUNGETIFF", TUNSETQUEUE: "TUNSETQUEUE",
}
# include/uapi/linux/vhost.h: _IOW(VHOST_VIRTIO=0xAF, 0x30, struct vhost_vring_file)
VHOST_NET_SET_BACKEND = 0x4008AF30
VHOST_PATH = "/dev/vhost-net"
VHOST_VQ_NAMES = {0: "rx", 1: "tx"}     # drivers/vhost/net.c VHOST_NET_VQ_RX/TX

IFF_TUN, IFF_TAP = 0x0001, 0x0002
IFF_NAPI, IFF_NAPI_FRAGS = 0x0010, 0x0020
IFF_MULTI_QUEUE, IFF_ATTACH_QUEUE, IFF_DETACH_QUEUE = 0x0100, 0x0200, 0x0400
IFF_PERSIST, IFF_NO_PI, IFF_ONE_QUEUE, IFF_VNET_HDR = 0x0800, 0x1000, 0x2000, 0x4000
IFF_TUN_EXCL, IFF_NO_CARRIER = 0x8000, 0x0040
IFF_NAMES = (
    (IFF_TUN, "tun"), (IFF_TAP, "tap"), (IFF_NAPI, "napi"), (IFF_NAPI_FRAGS, "napi_frags"),
    (IFF_NO_CARRIER, "no_carrier"), (IFF_MULTI_QUEUE, "multi_queue"),
    (IFF_ATTACH_QUEUE, "attach_queue"), (IFF_DETACH_QUEUE, "detach_queue"),
    (IFF_PERSIST, "persist"), (IFF_NO_PI, "no_pi"), (IFF_ONE_QUEUE, "one_queue"),
    (IFF_VNET_HDR, "vnet_hdr"), (IFF_TUN_EXCL, "tun_excl"),
)

O_CLOEXEC = 0o2000000
# Open.flags of an open seen only at the fd's first TUN ioctl, when /proc could no
# longer say whether it was close-on-exec (it was closed or its process gone)
CLOEXEC_UNKNOWN = 1 << 40
MSG_CMSG_CLOEXEC = 0x40000000
MSG_PEEK = 0x2
CLONE_VM, CLONE_FILES, CLONE_VFORK, CLONE_THREAD = 0x100, 0x400, 0x4000, 0x10000
CLOSE_RANGE_UNSHARE, CLOSE_RANGE_CLOEXEC = 2, 4
UNSHARE_AT_EXEC = 1 << 40          # TT_UNSHARE_AT_EXEC: an exec began (see bpf/events.h)
UNSHARE_EXEC = 1 << 41             # TT_UNSHARE_EXEC: an exec's point of no return
EXIT_THREAD = 1                    # TT_EXIT_THREAD: Exit.thread


def iff_names(flags: int) -> list[str]:
    """IFF_* bits as lowercase names, in a fixed order."""
    return [name for bit, name in IFF_NAMES if flags & bit]


def clone_names(flags: int) -> list[str]:
    out = []
    for bit, name in ((CLONE_VM, "CLONE_VM"), (CLONE_FILES, "CLONE_FILES"),
                      (CLONE_VFORK, "CLONE_VFORK"), (CLONE_THREAD, "CLONE_THREAD")):
        if flags & bit:
            out.append(name)
    return out


@dataclass(frozen=True)
class Base:
    ts: int          # CLOCK_MONOTONIC ns
    pid: int         # tgid
    tid: int
    comm: str
    # a thread's record (tid != pid): did it use a fd table not its leader's when it
    # acted (the kernel's task->files, bpf/common.h init_event)? None: not known
    own_table: bool | None = dataclasses.field(default=None, kw_only=True)
    # the fd table it acted on (the kernel's struct files_struct *, its identity
    # while it lives; 0: not known). For a change of table (model.parts) it may be
    # the one left or the one taken: not read there
    table: int = dataclasses.field(default=0, kw_only=True)


@dataclass(frozen=True)
class Open(Base):
    fd: int
    path: str
    flags: int       # open flags (O_CLOEXEC matters)
    file: int = 0    # the struct file * (kernel backend; 0: not known)


@dataclass(frozen=True)
class TunIoctl(Base):
    fd: int
    cmd: int
    ret: int         # 0 or -errno
    ifname: str      # ifr_name after the call ("" when not an ifreq ioctl)
    value: int       # ifr_flags, or the int argument of SETPERSIST/SETOWNER/SETGROUP
    file: int = 0    # the struct file * (0: not known)
    netns: int = 0   # the namespace inode the file was opened in (0: not known)
    cloexec: bool | None = None   # the fd's close-on-exec bit at the call (None: not read)
    # set by the session: a persist/owner/group change that the last snapshot's read
    # of the taps already shows (with whatever came after it): the tap keeps that
    shown: bool = False


@dataclass(frozen=True)
class Dup(Base):
    oldfd: int
    newfd: int
    how: str         # dup, dup2, dup3, F_DUPFD, F_DUPFD_CLOEXEC
    cloexec: bool    # the new fd's close-on-exec bit
    file: int = 0    # the struct file * (kernel backend; 0: not known)


@dataclass(frozen=True)
class Close(Base):
    fd: int
    file: int = 0    # the struct file * (kernel backend; 0: not known)


@dataclass(frozen=True)
class CloseRange(Base):
    first: int
    last: int
    flags: int


@dataclass(frozen=True)
class SetFd(Base):
    fd: int
    cloexec: bool
    how: str         # F_SETFD, FIOCLEX, FIONCLEX


@dataclass(frozen=True)
class Fork(Base):
    child: int
    flags: int       # clone flags


@dataclass(frozen=True)
class Exec(Base):
    old_pid: int


@dataclass(frozen=True)
class Exit(Base):
    thread: bool = False   # one thread with a table of its own (tid), not the process


@dataclass(frozen=True)
class ScmSend(Base):
    sock: int
    fds: tuple[int, ...]
    # kernel backend: the struct file * of each tracked file in the message, in order
    # (it sees files, not the sender's fd numbers: then fds is empty)
    files: tuple[int, ...] = ()
    truncated: bool = False   # the message had fds the record does not hold
    # tracepoint backend: the unix socket (struct sock *) whose queue the message
    # goes to, the sender's peer (0: not known)
    queue: int = 0
    queue_ino: int = 0        # that socket's inode number (0: not known)


@dataclass(frozen=True)
class ScmRecv(Base):
    sock: int
    fds: tuple[int, ...]
    cloexec: bool    # MSG_CMSG_CLOEXEC
    files: tuple[int, ...] = ()   # kernel backend: the struct file * of each fd
    truncated: bool = False       # the message(s) had fds the record does not hold
    peek: bool = False            # MSG_PEEK: installed, the message stays queued
    queue: int = 0                # tracepoint backend: the receiving unix socket (0: not known)
    queue_ino: int = 0            # its inode number (0: not known)


@dataclass(frozen=True)
class Unshare(Base):
    flags: int


@dataclass(frozen=True)
class PidfdGetfd(Base):
    pidfd: int
    target_fd: int
    newfd: int
    source_pid: int = 0   # filled in by user space from /proc (pidfd's Pid:)
    file: int = 0         # the struct file * (kernel backend; 0: not known)


@dataclass(frozen=True)
class PidfdOpen(Base):
    """pidfd_open(target) returned fd: user space keeps the mapping for pidfd_getfd."""
    fd: int
    target: int


@dataclass(frozen=True)
class VhostBackend(Base):
    """ioctl(fd, VHOST_NET_SET_BACKEND, &{index, backend_fd}) returned ret."""
    fd: int          # the vhost-net fd
    index: int       # vring: 0 rx, 1 tx
    backend_fd: int  # the tap (or packet socket) fd; -1 detaches the backend
    ret: int         # 0 or -errno


@dataclass(frozen=True)
class Lost(Base):
    """Made by user space: records were dropped; a resync follows."""
    count: int = 0


Event = (Open | TunIoctl | Dup | Close | CloseRange | SetFd | Fork | Exec | Exit | ScmSend
         | ScmRecv | Unshare | PidfdGetfd | PidfdOpen | VhostBackend | Lost)


def _cstr(raw: bytes) -> str:
    # Names are bytes the kernel accepted; surrogateescape keeps them exact.
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def raw_field(buf: bytes, name: str) -> int:
    """One scalar field of a raw struct tt_event, by its name in bpf/events.h."""
    return struct.unpack_from(_FIELD_AT[name][1], buf, _FIELD_AT[name][0])[0]


def _field_offsets() -> dict[str, tuple[int, str]]:
    out, off = {}, 0
    for name, code in zip(RECORD_FIELDS, re.findall(r"\d*[A-Za-z]", RECORD.format[1:])):
        one = struct.Struct("<" + code)
        if code[-1] != "s" and len(code) > 1:          # an array of ints (fds)
            out[name] = (off, "<" + code[-1])
        else:
            out[name] = (off, "<" + code)
        off += one.size
    return out


_FIELD_AT = _field_offsets()


def decode(buf: bytes) -> Event | None:
    """One raw struct tt_event to its typed record (None for an unknown type)."""
    (ts, typ, tgid, tid, fd, ret, arg, arg2, comm, name, nfds, *fds) = RECORD.unpack_from(buf)
    # the tail: fkind (the kernel backend's), file, netns, fdflags, table
    fds, file, netns, fdflags, table = fds[:-5], fds[-4], fds[-3], fds[-2], fds[-1]
    base = {"ts": ts, "pid": tgid, "tid": tid, "comm": _cstr(comm), "table": table}
    if tid != tgid and fdflags & FD_TABLE_KNOWN:
        base["own_table"] = bool(fdflags & FD_OWN_TABLE)
    if typ == EV_OPEN:
        return Open(**base, fd=ret, path=_cstr(name), flags=arg, file=file)
    if typ == EV_TUN_IOCTL:
        return TunIoctl(**base, fd=fd, cmd=arg, ret=ret, ifname=_cstr(name), value=arg2,
                        file=file, netns=netns,
                        cloexec=bool(fdflags & FD_CLOEXEC_BIT) if file else None)
    if typ == EV_DUP:
        how = arg & 0xFF
        cloexec = how == 4 or bool(arg & DUP_CLOEXEC)
        return Dup(**base, oldfd=fd, newfd=ret, how=DUP_HOW.get(how, "dup"), cloexec=cloexec,
                   file=file)
    if typ == EV_CLOSE:
        return Close(**base, fd=fd, file=file)
    if typ == EV_CLOSE_RANGE:
        return CloseRange(**base, first=fd & 0xFFFFFFFF, last=arg & 0xFFFFFFFF, flags=arg2)
    if typ == EV_SETFD:
        return SetFd(**base, fd=fd, cloexec=bool(arg2), how=SETFD_HOW.get(arg, "F_SETFD"))
    if typ == EV_FORK:
        return Fork(**base, child=arg2, flags=arg)
    if typ == EV_EXEC:
        return Exec(**base, old_pid=arg2)
    if typ == EV_EXIT:
        return Exit(**base, thread=bool(arg & EXIT_THREAD))
    n = min(nfds, len(fds))
    files = (file,) if file else ()
    cut = bool(fdflags & FD_TRUNCATED)
    if typ == EV_SCM_SEND:
        return ScmSend(**base, sock=fd, fds=tuple(fds[:n]), files=files, truncated=cut,
                       queue=arg2, queue_ino=netns)
    if typ == EV_SCM_RECV:
        return ScmRecv(**base, sock=fd, fds=tuple(fds[:n]),
                       cloexec=bool(arg & MSG_CMSG_CLOEXEC), files=files, truncated=cut,
                       peek=bool(arg & MSG_PEEK), queue=arg2, queue_ino=netns)
    if typ == EV_UNSHARE:
        return Unshare(**base, flags=arg)
    if typ == EV_PIDFD_GETFD:
        return PidfdGetfd(**base, pidfd=fd, target_fd=arg, newfd=ret, file=file)
    if typ == EV_PIDFD_OPEN:
        return PidfdOpen(**base, fd=fd, target=arg)
    if typ == EV_VHOST_BACKEND:
        backend = arg2 & 0xFFFFFFFF                  # an int stored as u32
        return VhostBackend(**base, fd=fd, index=arg & 0xFFFFFFFF,
                            backend_fd=backend - (1 << 32) if backend >> 31 else backend,
                            ret=ret)
    return None


_KINDS = {cls.__name__: cls for cls in (Open, TunIoctl, Dup, Close, CloseRange, SetFd, Fork,
                                         Exec, Exit, ScmSend, ScmRecv, Unshare, PidfdGetfd,
                                         PidfdOpen, VhostBackend, Lost)}


def to_record(e: Event) -> dict:
    """A JSON-able form of a record, for `watch --record` and replays."""
    d = {"kind": type(e).__name__}
    d.update(dataclasses.asdict(e))
    # the kernel backend's identities only where there are some: recordings made
    # with the tracepoint backend stay as they were
    if not d.get("file", 1):
        del d["file"]
    if not d.get("netns", 1):
        del d["netns"]
    if not d.get("queue", 1):
        del d["queue"]
    if not d.get("queue_ino", 1):
        del d["queue_ino"]
    if "cloexec" in d and d["cloexec"] is None and isinstance(e, TunIoctl):
        del d["cloexec"]
    if d.get("thread") is False and isinstance(e, Exit):
        del d["thread"]
    if d.get("own_table") is None:
        del d["own_table"]
    if not d.get("table", 1):
        del d["table"]
    for k in ("truncated", "peek", "shown"):
        if d.get(k) is False:
            del d[k]
    if d.get("files") == ():
        del d["files"]
    return d


def from_record(d: dict) -> Event:
    d = dict(d)
    cls = _KINDS.get(d.pop("kind", None))
    if cls is None:
        raise ValueError(f"unknown record kind in {d!r}")
    for k in ("fds", "files"):
        if k in d:
            d[k] = tuple(d[k])
    return cls(**d)
