"""/proc and /sys: the starting snapshot and the ground truth.

Only stdlib. Processes exit mid-scan and some /proc/PID/fd dirs are EACCES
even for root: such entries are skipped quietly.
"""

from __future__ import annotations

import ctypes
import fcntl
import marshal
import os
import re
import socket
import struct
import time
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

SYS_KCMP = 312           # x86-64
KCMP_FILE = 0
KCMP_FILES = 2
O_CLOEXEC = 0o2000000
TUN_PATH = "/dev/net/tun"
VHOST_PATH = "/dev/vhost-net"  # its fdinfo has no iff: and nothing shows its backends
SYS_NET = "/sys/class/net"
_TAPDEV = re.compile(r"/dev/tap(\d+)")      # macvtap/ipvtap: /dev/tap<ifindex>
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

IFF_TUN, IFF_TAP = 0x0001, 0x0002
IFF_MULTI_QUEUE, IFF_PERSIST, IFF_NO_PI, IFF_VNET_HDR = 0x0100, 0x0800, 0x1000, 0x4000

# A tap's network namespace. A tun file makes (or finds) its device in the namespace
# it was *opened* in (tun_set_iff uses the file's socket's net), not in the one of the
# process doing TUNSETIFF or holding it now (slirp4netns's parent holds a tap of the
# container's namespace). TUNGETDEVNETNS (5.2+) asks the device itself: exact.
TUNGETDEVNETNS = 0x54E3            # _IO('T', 227)
SYS_PIDFD_OPEN = 434
PIDFD_THREAD = 0o200               # O_EXCL: a pidfd of that thread, not its process (6.9+)
SYS_PIDFD_GETFD = 438
SYS_SETNS = 308                    # x86-64
CLONE_NEWNET = 0x40000000
NETNS_RUN = "/run/netns"           # `ip netns` names: bind mounts of nsfs files


@dataclass(frozen=True)
class FdInfo:
    """One fd of one process that refers to a tun/tap (or vhost-net) character device."""
    pid: int
    fd: int
    path: str                 # "/dev/net/tun", "/dev/tapN" (macvtap/ipvtap), "/dev/vhost-net"
    ifname: str | None        # fdinfo "iff:" (exact, surrogateescape); None: not attached
    cloexec: bool
    flags: int                # open flags from fdinfo "flags:" (octal)
    netns: int | None = None  # the tap's network namespace (nsfs inode); None: unknown


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    comm: str
    cmdline: tuple[str, ...]
    uid: int                  # real uid


@dataclass(frozen=True)
class TapInfo:
    """An existing tun/tap netdev, from /sys/class/net/IF."""
    ifname: str
    ifindex: int
    kind: str                 # "tun" or "tap"
    tun_flags: int            # IFF_* bits
    persist: bool
    multi_queue: bool
    vnet_hdr: bool
    owner: int | None
    group: int | None
    mac: str | None
    netns: int | None = None  # its network namespace (nsfs inode); None: taptrace's own


@dataclass
class Snapshot:
    procs: dict[int, ProcInfo]           # holders of tun fds
    fds: list[FdInfo]
    taps: dict[str, TapInfo]             # keyed by name (own namespace) or "INODE:name"
    files: list[list[tuple[int, int]]]   # (pid, fd) groups that are one open file
    tables: list[list[int]]              # pid groups sharing one fd table
    own_netns: int | None = None         # taptrace's network namespace
    netns_names: dict[int, str] = field(default_factory=dict)   # `ip netns` names
    # when each holder's fd table was read (CLOCK_MONOTONIC ns, the clock of the
    # records): a record of that table stamped earlier is already in the snapshot, and
    # so is a clone older than the read of its child (of a process that holds none,
    # the snapshot says nothing: its records apply)
    read_ns: dict[int, int] = field(default_factory=dict)
    taps_ns: int = 0                     # when the taps (/sys, rtnetlink) were read
    # tid -> pid: a thread (not its process's leader) whose fd table is not its
    # leader's and holds tun fds. Its fds are listed under the tid (in `fds`,
    # `files`, `read_ns`: /proc/TID/fd and kcmp reach its table through it), its
    # table is grouped in `tables` like a process's; its process is in `procs`.
    threads: dict[int, int] = field(default_factory=dict)


# ---- kcmp ------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
# A prototype with argtypes: a third cheaper per call than wrapping each argument.
_syscall = ctypes.CFUNCTYPE(ctypes.c_long, ctypes.c_long, ctypes.c_int, ctypes.c_int,
                            ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong,
                            use_errno=True)(("syscall", _libc))


def kcmp(pid1: int, pid2: int, kind: int, idx1: int = 0, idx2: int = 0) -> int | None:
    """kcmp(2): 0 equal, 1 first is less, 2 first is greater, 3 not equal; None on error."""
    r = _syscall(SYS_KCMP, pid1, pid2, kind, idx1, idx2)
    return None if r < 0 else r


def same_file(pid1: int, fd1: int, pid2: int, fd2: int) -> bool | None:
    r = kcmp(pid1, pid2, KCMP_FILE, fd1, fd2)
    return None if r is None else r == 0


def same_fd_table(pid1: int, pid2: int) -> bool | None:
    r = kcmp(pid1, pid2, KCMP_FILES)
    return None if r is None else r == 0


_T = TypeVar("_T", bound=Hashable)


class _Classes(Generic[_T]):
    """Items partitioned into kcmp's equivalence classes, using its total order, one
    item at a time (a scan places each process's fds as it reads them).

    order(a, b) is kcmp's answer: 0 equal, 1 a < b, 2 a > b, anything else: failed.

    One representative per class is kept sorted, so an item costs one kcmp when
    it belongs with the item before it (callers put likely copies next to each
    other) and O(log classes) otherwise, not a comparison with every class.
    An item kcmp cannot place (its process or fd is gone) becomes a class of
    its own; a representative that has gone is replaced by a live member.
    """

    def __init__(self, order: Callable[[_T, _T], int]) -> None:
        self.order = order
        self.reps: list[_T] = []
        self.classes: list[list[_T]] = []          # parallel to reps
        self.out: list[list[_T]] = []
        self._prev: list[_T] | None = None

    def _alive(self, x: _T) -> bool:
        return self.order(x, x) == 0

    def add(self, it: _T) -> list[_T]:
        """Place it; the class it joined (or began)."""
        if self._prev is not None and self.order(self._prev[-1], it) == 0:
            self._prev.append(it)
        else:
            self._prev = self._place(it)
        return self._prev

    def _place(self, it: _T) -> list[_T]:
        reps, classes = self.reps, self.classes
        lo, hi = 0, len(reps)
        retries = 8
        while lo < hi:
            mid = (lo + hi) // 2
            r = self.order(reps[mid], it)
            if r == 0:
                classes[mid].append(it)
                return classes[mid]
            if r == 1:
                lo = mid + 1
            elif r == 2:
                hi = mid
            elif retries == 0 or not self._alive(it) or self._alive(reps[mid]):
                self.out.append([it])       # gone, or kcmp cannot order these two
                return self.out[-1]
            else:                           # the representative has gone
                retries -= 1
                live = next((m for m in classes[mid]
                             if m != reps[mid] and self._alive(m)), None)
                if live is None:
                    del reps[mid], classes[mid]
                    lo, hi = 0, len(reps)
                else:
                    reps[mid] = live
        cls = [it]
        self.out.append(cls)
        reps.insert(lo, it)
        classes.insert(lo, cls)
        return cls


def _classes(items: Iterable[_T], order: Callable[[_T, _T], int]) -> list[list[_T]]:
    """items partitioned into kcmp's equivalence classes (see _Classes)."""
    c = _Classes(order)
    for it in items:
        c.add(it)
    return c.out


def _kcmp_works() -> bool:
    me = os.getpid()
    return kcmp(me, me, KCMP_FILES) == 0


_Key = tuple[int, int]          # (pid, fd)


def group_files(keys: Iterable[_Key]) -> list[list[_Key]]:
    """(pid, fd) pairs grouped by open file (KCMP_FILE); singletons if kcmp is unusable."""
    # Fork copies keep their fd number: sorting by fd puts them side by side.
    keys = sorted(keys, key=lambda k: (k[1], k[0]))
    if len(keys) < 2 or not _kcmp_works():
        return [[k] for k in keys]
    return _classes(keys, _kcmp_file)


def _kcmp_file(a: _Key, b: _Key) -> int:
    # the raw syscall (-1 on error) is enough for _Classes and saves a call per kcmp
    return _syscall(SYS_KCMP, a[0], b[0], KCMP_FILE, a[1], b[1])


class _FileGrouper:
    """The open files of a scan, placed as each process's tun fds are listed, before
    the slower reads of their fdinfo and namespaces: the process's fds compared
    with each other (kcmp), then one of each file with one live member of each
    file placed so far. kcmp run at the end of the scan instead would meet fds
    closed since their read, and could not place them."""

    def __init__(self) -> None:
        self.files: _Classes[_Key] = _Classes(_kcmp_file)

    def listed(self, pid: int, fds: list[int]) -> None:
        keys = [(pid, fd) for fd in sorted(fds)]
        for unit in (_classes(keys, _kcmp_file) if len(keys) > 1 else [keys]):
            # the unit's other fds join its file too: one still open stands in for
            # the file when the one compared has been closed since
            self.files.add(unit[0]).extend(unit[1:])

    def groups(self, bucket_of: dict[_Key, tuple[str, str | None]]
               ) -> dict[tuple[str, str | None], list[list[_Key]]]:
        """The files by device and interface as the fds' fdinfo showed them (fds it
        does not name are left out: gone before their fdinfo was read)."""
        out: dict[tuple[str, str | None], list[list[_Key]]] = {}
        for cls in self.files.out:
            split: dict[tuple[str, str | None], list[_Key]] = {}
            for m in cls:
                if m in bucket_of:
                    split.setdefault(bucket_of[m], []).append(m)
            for bucket, g in split.items():
                out.setdefault(bucket, []).append(sorted(g, key=lambda k: (k[1], k[0])))
        return out


def _fd_open(k: _Key) -> bool:
    """Is pid's fd still open (kcmp can compare it)?"""
    return _syscall(SYS_KCMP, k[0], k[0], KCMP_FILE, k[1], k[1]) == 0


def group_tables(pids: Iterable[int]) -> list[list[int]]:
    """pids grouped by shared fd table (KCMP_FILES); singletons if kcmp is unusable."""
    pids = sorted(pids)
    if len(pids) < 2 or not _kcmp_works():
        return [[p] for p in pids]
    return _classes(pids, lambda a, b: _syscall(SYS_KCMP, a, b, KCMP_FILES, 0, 0))


# ---- network namespaces ----------------------------------------------------
#
# A namespace is named by its nsfs inode (what `ls -L -i /proc/PID/ns/net` shows),
# and by NAME where `ip netns` bind-mounted it at /run/netns/NAME.

_setns = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_int,
                          use_errno=True)(("setns", _libc))


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


def own_netns() -> int | None:
    """taptrace's own network namespace."""
    return _inode("/proc/self/ns/net")


def pid_netns(pid: int) -> int | None:
    """The namespace a process is in *now* (not necessarily its taps')."""
    return _inode(f"/proc/{pid}/ns/net")


def netns_names(run_dir: str = NETNS_RUN) -> dict[int, str]:
    """inode -> name of each `ip netns` namespace (a bind mount at /run/netns/NAME)."""
    out: dict[int, str] = {}
    try:
        names = sorted(os.listdir(run_dir))
        nsfs = os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return out
    for name in names:
        try:
            st = os.stat(os.path.join(run_dir, name))
        except OSError:
            continue
        if st.st_dev == nsfs:             # not a placeholder left without its mount
            out.setdefault(st.st_ino, name)
    return out


def pidfd_open(pid: int) -> int | None:
    fd = _syscall(SYS_PIDFD_OPEN, pid, 0, 0, 0, 0)
    return None if fd < 0 else fd


def task_pidfd(tid: int) -> int | None:
    """A pidfd whose pidfd_getfd reads the fd table of task `tid`: a process's (its
    leader's), or a thread's own (PIDFD_THREAD, 6.9+; before, None for a thread)."""
    fd = pidfd_open(tid)
    if fd is None:               # EINVAL: not a leader
        fd = _syscall(SYS_PIDFD_OPEN, tid, PIDFD_THREAD, 0, 0, 0)
    return None if fd is None or fd < 0 else fd


def tap_netns_fd(pid: int, fd: int, pidfd: int | None = None) -> int | None:
    """An fd of the namespace that the tap behind PID's fd N lives in: TUNGETDEVNETNS
    on a pidfd_getfd copy (root, or ptrace rights over PID). None: gone, no right, no
    tap attached, or not a tun file (macvtap has no TUNGETDEVNETNS)."""
    own = pidfd is None
    if own:
        pidfd = task_pidfd(pid)
        if pidfd is None:
            return None
    try:
        copy = _syscall(SYS_PIDFD_GETFD, pidfd, fd, 0, 0, 0)
        if copy < 0:
            return None
        try:
            return fcntl.ioctl(copy, TUNGETDEVNETNS)
        except OSError:
            return None
        finally:
            os.close(copy)
    finally:
        if own:
            os.close(pidfd)


def tap_netns(pid: int, fd: int, pidfd: int | None = None) -> int | None:
    """The inode of the tap's namespace (see tap_netns_fd); None: cannot be told."""
    ns = tap_netns_fd(pid, fd, pidfd)
    if ns is None:
        return None
    try:
        return os.fstat(ns).st_ino
    finally:
        os.close(ns)


# rtnetlink: enough of RTM_GETLINK to describe the tun/tap devices of a namespace
# whose /sys taptrace cannot see (/sys/class/net shows the namespace sysfs was
# mounted in). The socket is made inside that namespace and answers about it.
RTM_NEWLINK, RTM_GETLINK = 16, 18
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
IFLA_ADDRESS, IFLA_IFNAME, IFLA_MASTER, IFLA_OPERSTATE, IFLA_LINKINFO = 1, 3, 10, 16, 18
IFLA_INFO_KIND, IFLA_INFO_DATA = 1, 2
IFLA_TUN_OWNER, IFLA_TUN_GROUP, IFLA_TUN_TYPE, IFLA_TUN_PI = 1, 2, 3, 4
IFLA_TUN_VNET_HDR, IFLA_TUN_PERSIST, IFLA_TUN_MULTI_QUEUE = 5, 6, 7
OPERSTATES = ("unknown", "notpresent", "down", "lowerlayerdown", "testing", "dormant", "up")
_NLMSGHDR = struct.Struct("=IHHII")
_IFINFOMSG = struct.Struct("=BxHiII")
_RTATTR = struct.Struct("=HH")


@dataclass(frozen=True)
class Link:
    """One network device of a namespace, from rtnetlink."""
    ifname: str
    ifindex: int
    mac: str | None
    master: int | None        # the master's ifindex (bridge, OVS), same namespace
    operstate: str | None
    tun: tuple | None         # (tun_flags, owner, group) for a tun/tap device


def _rtattrs(buf: bytes, off: int = 0):
    """(type, payload) of each rtattr in buf[off:] (4-byte aligned)."""
    while off + 4 <= len(buf):
        length, kind = _RTATTR.unpack_from(buf, off)
        if length < 4 or off + length > len(buf):
            return
        yield kind & 0x3FFF, buf[off + 4:off + length]   # without NLA_F_NESTED & co
        off += (length + 3) & ~3


def _tun_info(data: bytes) -> tuple:
    """IFLA_INFO_DATA of a tun device -> (tun_flags as /sys shows them, owner, group)."""
    a = dict(_rtattrs(data))

    def u8(k: int) -> int:
        return a[k][0] if len(a.get(k, b"")) >= 1 else 0

    def u32(k: int) -> int | None:
        return struct.unpack_from("=I", a[k])[0] if len(a.get(k, b"")) >= 4 else None

    flags = (u8(IFLA_TUN_TYPE) & (IFF_TUN | IFF_TAP)
             | (0 if u8(IFLA_TUN_PI) else IFF_NO_PI)
             | (IFF_VNET_HDR if u8(IFLA_TUN_VNET_HDR) else 0)
             | (IFF_PERSIST if u8(IFLA_TUN_PERSIST) else 0)
             | (IFF_MULTI_QUEUE if u8(IFLA_TUN_MULTI_QUEUE) else 0))
    return flags, u32(IFLA_TUN_OWNER), u32(IFLA_TUN_GROUP)


def parse_links(data: bytes) -> tuple[list[Link], bool]:
    """The RTM_NEWLINK messages of a dump reply; True once NLMSG_DONE was seen.

    Raises OSError on an NLMSG_ERROR."""
    links: list[Link] = []
    off = 0
    while off + _NLMSGHDR.size <= len(data):
        length, kind, _flags, _seq, _pid = _NLMSGHDR.unpack_from(data, off)
        if length < _NLMSGHDR.size or off + length > len(data):
            break
        body = data[off + _NLMSGHDR.size:off + length]
        off += (length + 3) & ~3
        if kind == NLMSG_DONE:
            return links, True
        if kind == NLMSG_ERROR:
            err = -struct.unpack_from("=i", body)[0] if len(body) >= 4 else 0
            if err:
                raise OSError(err, os.strerror(err))
            continue
        if kind != RTM_NEWLINK or len(body) < _IFINFOMSG.size:
            continue
        _fam, _type, ifindex, _ifflags, _change = _IFINFOMSG.unpack_from(body)
        name, mac, master, oper, tun = None, None, None, None, None
        for k, v in _rtattrs(body, _IFINFOMSG.size):
            if k == IFLA_IFNAME:
                name = _decode(v.split(b"\0", 1)[0])
            elif k == IFLA_ADDRESS:
                mac = ":".join(f"{b:02x}" for b in v) or None
            elif k == IFLA_MASTER and len(v) >= 4:
                master = struct.unpack_from("=I", v)[0]
            elif k == IFLA_OPERSTATE and len(v) >= 1:
                oper = OPERSTATES[v[0]] if v[0] < len(OPERSTATES) else str(v[0])
            elif k == IFLA_LINKINFO:
                info = dict(_rtattrs(v))
                if info.get(IFLA_INFO_KIND, b"").rstrip(b"\0") == b"tun":
                    tun = _tun_info(info.get(IFLA_INFO_DATA, b""))
        if name is not None:
            links.append(Link(name, ifindex, mac, master, oper, tun))
    return links, False


def _socket_in(ns_fd: int) -> socket.socket:
    """A NETLINK_ROUTE socket of another namespace: setns there, make it, come back.

    Only this thread moves, for the time of one socket() call; a socket answers about
    the namespace it was made in wherever it is used."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _setns(ns_fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        try:
            return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC,
                                 socket.NETLINK_ROUTE)
        finally:
            if _setns(home, CLONE_NEWNET) != 0:
                # never go on reading /sys and /proc from someone else's namespace
                os.write(2, b"taptrace: cannot return to its own network namespace\n")
                os._exit(70)
    finally:
        os.close(home)


def links_in(ns_fd: int) -> list[Link]:
    """Every network device of the namespace ns_fd refers to (RTM_GETLINK dump)."""
    with _socket_in(ns_fd) as sock:
        sock.settimeout(2.0)
        req = _NLMSGHDR.pack(_NLMSGHDR.size + _IFINFOMSG.size, RTM_GETLINK,
                             NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + _IFINFOMSG.pack(0, 0, 0, 0, 0)
        sock.send(req)
        links: list[Link] = []
        while True:
            got, done = parse_links(sock.recv(1 << 16))
            links.extend(got)
            if done:
                return links


def taps_of_links(links: list[Link], netns: int | None) -> dict[str, TapInfo]:
    """The tun/tap devices among a namespace's links, as /sys would describe them."""
    out: dict[str, TapInfo] = {}
    for ln in links:
        if ln.tun is None:
            continue
        flags, owner, group = ln.tun
        out[ln.ifname] = TapInfo(ln.ifname, ln.ifindex, "tap" if flags & IFF_TAP else "tun",
                                 flags, bool(flags & IFF_PERSIST),
                                 bool(flags & IFF_MULTI_QUEUE), bool(flags & IFF_VNET_HDR),
                                 owner, group, ln.mac, netns)
    return out


def open_netns(door) -> int | None:
    """An fd of a namespace from a way into it: a path (/run/netns/NAME,
    /proc/PID/ns/net) or a (pid, fd) holding one of its taps."""
    if isinstance(door, str):
        try:
            return os.open(door, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return None
    return tap_netns_fd(*door)


def links_of_netns(netns: int, doors: Iterable) -> list[Link] | None:
    """The devices of namespace `netns`, through the first door that leads there."""
    for door in doors:
        fd = open_netns(door)
        if fd is None:
            continue
        try:
            if os.fstat(fd).st_ino != netns:
                continue              # the path or fd now leads somewhere else
            return links_in(fd)
        except OSError:
            continue
        finally:
            os.close(fd)
    return None


# ---- parsing ---------------------------------------------------------------

def _field(text: str, key: str) -> str | None:
    """The rest of the line after key (which starts with "\\n"), or None."""
    i = text.find(key)
    if i < 0:
        return None
    i += len(key)
    j = text.find("\n", i)
    return text[i:] if j < 0 else text[i:j]


def parse_fdinfo(text: str) -> tuple[int, str | None]:
    """(open flags, iff name) from the text of /proc/PID/fdinfo/N.

    The kernel prints "iff:\t%s\n" with the name's exact bytes. A name holds no
    whitespace and no ":" but may hold other control characters, so only "\n"
    ends it (not str.splitlines). tun prints an empty name for a fd with no
    interface yet: that is None. find() rather than a split: this runs per fd.
    """
    text = "\n" + text
    flags = 0
    value = _field(text, "\nflags:")
    if value is not None:
        try:
            flags = int(value.strip(), 8)
        except ValueError:
            flags = 0
    ifname = None
    value = _field(text, "\niff:")
    if value is not None:
        ifname = (value[1:] if value.startswith("\t") else value.strip()) or None
    return flags, ifname


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "surrogateescape")


def _read_at(name: str, dir_fd: int | None = None) -> bytes:
    fd = os.open(name, os.O_RDONLY | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        data = os.read(fd, 8192)          # /proc and /sys files: one read, almost always
        if len(data) < 8192:
            return data
        chunks = [data]
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_text(path: str) -> str:
    return _decode(_read_at(path))


def _ifindex_names() -> dict[int, str]:
    out: dict[int, str] = {}
    try:
        names = os.listdir(SYS_NET)
    except OSError:
        return out
    for name in names:
        try:
            out[int(_read_text(f"{SYS_NET}/{name}/ifindex"))] = name
        except (OSError, ValueError):
            continue
    return out


class _Ifindex:
    """/dev/tapN -> ifname, reading /sys only if a macvtap fd turns up."""

    def __init__(self) -> None:
        self._names: dict[int, str] | None = None

    def name(self, path: str) -> str | None:
        m = _TAPDEV.fullmatch(path)
        if m is None:
            return None
        if self._names is None:
            self._names = _ifindex_names()
        return self._names.get(int(m.group(1)))


def _is_tun_path(path: str) -> bool:
    """A path the tracer follows: tun, macvtap/ipvtap, vhost-net."""
    return (path == TUN_PATH or path == VHOST_PATH
            or (path.startswith("/dev/tap") and _TAPDEV.fullmatch(path) is not None))


def _fdinfo(pid: int, fd: int, path: str, taps: _Ifindex,
            info_dir: int | None = None, pidfd: int | None = None) -> FdInfo | None:
    """The FdInfo of a fd whose link is a tun/tap path; info_dir: an open /proc/PID/fdinfo.
    With a pidfd of PID, an attached tun fd also gets its tap's namespace."""
    try:
        if info_dir is None:
            raw = _read_at(f"/proc/{pid}/fdinfo/{fd}")
        else:
            raw = _read_at(str(fd), dir_fd=info_dir)
        flags, ifname = parse_fdinfo(_decode(raw))
    except (OSError, ValueError):
        return None
    if ifname is None and path != TUN_PATH and path != VHOST_PATH:
        ifname = taps.name(path)           # macvtap prints no iff:; opening it attached it
    netns = None
    if pidfd is not None and ifname is not None and path == TUN_PATH:
        netns = tap_netns(pid, fd, pidfd)
    return FdInfo(pid, fd, path, ifname, bool(flags & O_CLOEXEC), flags, netns)


def table_tun_fds(tid: int) -> list[FdInfo]:
    """The tun/tap fds of the fd table a process or thread uses (/proc/TID/fd: a
    thread's id names its own view, though /proc does not list it), without
    vhost-net ones."""
    return [f for f in _tun_fds(tid, _Ifindex()) if f.path != VHOST_PATH]


def read_fdinfo(pid: int, fd: int) -> FdInfo | None:
    """The fd if it is a tun/tap or vhost-net fd (None if not, or gone)."""
    try:
        path = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None
    if not _is_tun_path(path):
        return None
    return _fdinfo(pid, fd, path, _Ifindex())


def _tun_fds(pid: int, taps: _Ifindex,
             listed: Callable[[int, list[int]], None] | None = None) -> list[FdInfo]:
    """listed(pid, fds): told the tun fds as soon as they are listed, before what is
    slower to read (fdinfo, namespaces)."""
    out: list[FdInfo] = []
    try:
        fd_dir = os.open(f"/proc/{pid}/fd", _DIR_FLAGS)
    except OSError:
        return out
    info_dir = -1
    pidfd: int | None = -1
    try:
        names = os.listdir(fd_dir)
        tun: list[tuple[str, str]] = []
        for name in names:
            try:
                path = os.readlink(name, dir_fd=fd_dir)
            except OSError:
                continue
            # inline, not _is_tun_path(): this runs for every fd of every process
            if (path != TUN_PATH and path != VHOST_PATH
                    and not (path.startswith("/dev/tap") and _TAPDEV.fullmatch(path))):
                continue
            tun.append((name, path))
        if listed is not None and tun:
            listed(pid, [int(n) for n, _ in tun])
        for name, path in tun:
            if info_dir < 0:
                info_dir = os.open(f"/proc/{pid}/fdinfo", _DIR_FLAGS)
            if pidfd == -1 and path == TUN_PATH:
                pidfd = task_pidfd(pid)    # once per holder: each tap's namespace
            info = _fdinfo(pid, int(name), path, taps, info_dir, pidfd)
            if info is not None:
                out.append(info)
    except OSError:
        pass                               # the process went away mid-scan
    finally:
        os.close(fd_dir)
        if info_dir >= 0:
            os.close(info_dir)
        if pidfd is not None and pidfd >= 0:
            os.close(pidfd)
    return out


def tun_fds(pid: int) -> list[FdInfo]:
    """Every tun/tap and vhost-net fd of a process; [] if it is gone or unreadable."""
    return _tun_fds(pid, _Ifindex())


def own_tables(pid: int) -> list[list[int]]:
    """The fd tables of pid's threads that are not its leader's, each as the ids of
    the threads using it (ascending; the table listed under the first). A thread's
    table is its leader's after a clone(CLONE_THREAD | CLONE_FILES), as pthreads
    makes them, until it (or the leader) unshares.

    Bounded cost: a process with no other thread costs one stat (the link count of
    /proc/PID/task is 2 + its threads); one with threads, a listing of
    /proc/PID/task and one kcmp (KCMP_FILES) per thread against the leader; the
    threads whose table differs are grouped by kcmp's order (one kcmp each when
    it is the table of the thread before, O(log tables) otherwise). No fd is
    listed here. A leader that has exited (a zombie whose threads go on) has no
    table: each of its threads' tables is one of these."""
    try:
        if os.stat(f"/proc/{pid}/task").st_nlink <= 3:
            return []
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except (OSError, ValueError):
        return []
    # not the leader's table (-1: gone, or no kcmp)
    own = [t for t in tids if t != pid and _syscall(SYS_KCMP, pid, t, KCMP_FILES, 0, 0)
           not in (0, -1)]
    if not own:
        return []
    groups = _classes(own, lambda a, b: _syscall(SYS_KCMP, a, b, KCMP_FILES, 0, 0))
    return sorted(sorted(g) for g in groups)


def threads(pid: int) -> list[int]:
    """The ids of a process's threads other than its leader ([] if gone)."""
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
    except (OSError, ValueError):
        return []


def alive(pid: int) -> bool:
    """The process runs (or sleeps): not gone, not a zombie, not dead."""
    try:
        stat = _read_text(f"/proc/{pid}/stat")
        return stat[stat.rindex(")") + 2] not in "ZXx"
    except (OSError, ValueError, IndexError):
        return False


def proc_info(pid: int) -> ProcInfo | None:
    try:
        stat = _read_text(f"/proc/{pid}/stat")
        status = _read_text(f"/proc/{pid}/status")
        raw = _read_at(f"/proc/{pid}/cmdline")
    except (OSError, ValueError):
        return None
    try:
        # comm may hold ")" and spaces: it ends at the last ")"
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
    except (ValueError, IndexError):
        return None
    uid = 0
    for line in status.split("\n"):
        if line.startswith("Uid:"):
            uid = int(line.split()[1])
            break
    cmdline = tuple(_decode(a) for a in raw.split(b"\0")[:-1])
    return ProcInfo(pid, ppid, comm, cmdline, uid)


def _opt_id(text: str) -> int | None:
    v = int(text)
    return None if v < 0 else v


def list_taps(netns: int | None = None) -> dict[str, TapInfo]:
    """Every tun/tap netdev of taptrace's own namespace (those with
    /sys/class/net/IF/tun_flags), held or not; `netns`: that namespace's inode."""
    out: dict[str, TapInfo] = {}
    try:
        names = os.listdir(SYS_NET)
    except OSError:
        return out
    for name in names:
        d = f"{SYS_NET}/{name}"
        try:
            tun_flags = int(_read_text(f"{d}/tun_flags"), 16)
        except (OSError, ValueError):
            continue                   # not a tun/tap device
        try:
            ifindex = int(_read_text(f"{d}/ifindex"))
            owner = _opt_id(_read_text(f"{d}/owner"))
            group = _opt_id(_read_text(f"{d}/group"))
        except (OSError, ValueError):
            ifindex, owner, group = 0, None, None
        try:
            mac = _read_text(f"{d}/address").strip() or None
        except OSError:
            mac = None
        out[name] = TapInfo(name, ifindex, "tap" if tun_flags & IFF_TAP else "tun", tun_flags,
                            bool(tun_flags & IFF_PERSIST), bool(tun_flags & IFF_MULTI_QUEUE),
                            bool(tun_flags & IFF_VNET_HDR), owner, group, mac, netns)
    return out


def _pids() -> list[int]:
    """Thread-group leaders: /proc lists no other tasks."""
    try:
        return [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return []


def _scan(pids: Iterable[int], taps: _Ifindex, read_ns: dict[int, int] | None = None,
          files: _FileGrouper | None = None,
          threads: dict[int, int] | None = None) -> list[FdInfo]:
    """The tun fds of pids, and of their threads' own fd tables (own_tables: listed
    under the first tid of each; `threads` is told tid -> pid of every thread using
    one that holds a tun fd); read_ns: when each table was read; files: each
    table's fds placed by open file as it is read."""
    fds: list[FdInfo] = []
    listed = files.listed if files is not None and _kcmp_works() else None
    for pid in pids:
        start = time.monotonic_ns()
        got = _tun_fds(pid, taps, listed)
        if got and read_ns is not None:
            read_ns[pid] = start
        fds.extend(got)
        for group in own_tables(pid) if threads is not None else ():
            start = time.monotonic_ns()
            got = _tun_fds(group[0], taps, listed)
            if not got:
                continue
            for tid in group:
                threads[tid] = pid
                if read_ns is not None:
                    read_ns[tid] = start
            fds.extend(got)
    return fds


_PIDS_PER_WORKER = 256      # below this a fork (~2 ms) costs more than it saves


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 1 << 16):
        chunks.append(chunk)
    return b"".join(chunks)


def _scan_in_child(pids: list[int]) -> tuple[int, int]:
    """Fork a helper that scans pids and sends back its FdInfo fields (marshal):
    (helper pid, read end of its pipe)."""
    r, w = os.pipe()
    try:
        child = os.fork()
    except OSError:
        os.close(r)
        os.close(w)
        raise
    if child == 0:                  # the helper: never returns, whatever happens
        code = 1
        try:
            os.close(r)
            threads: dict[int, int] = {}
            fds = _scan(pids, _Ifindex(), threads=threads)
            data = memoryview(marshal.dumps(
                ([(f.pid, f.fd, f.path, f.ifname, f.cloexec, f.flags, f.netns)
                  for f in fds], threads)))
            while data:
                data = data[os.write(w, data):]
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    return child, r


def _collect(child: int, r: int) -> tuple[list[FdInfo], dict[int, int]] | None:
    """A helper's FdInfo list and threads (see _scan); None if it failed."""
    try:
        data = _read_all(r)
    except OSError:
        data = b""
    finally:
        os.close(r)
    _, status = os.waitpid(child, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return None
    try:
        fds, threads = marshal.loads(data)
        return [FdInfo(*t) for t in fds], dict(threads)
    except (EOFError, ValueError, TypeError):
        return None


def _scan_parallel(pids: list[int], taps: _Ifindex, workers: int,
                   threads: dict[int, int] | None = None) -> list[FdInfo]:
    """_scan in `workers` processes, this one included, each taking every workers-th pid.

    Nearly all of a full scan is the kernel's work per fd (getdents instantiating a
    dentry, readlinkat): it splits across CPUs, but not across threads, which hand the
    GIL over at every microsecond-long syscall. A helper that cannot be forked or fails
    has its share scanned here, so the result is the serial scan's in any case."""
    shares = [pids[i::workers] for i in range(workers)]
    helpers: list[tuple[int, int, list[int]]] = []    # (pid, pipe, share) to collect
    unforked: list[list[int]] = []
    try:
        for share in shares[1:]:
            try:
                helpers.append((*_scan_in_child(share), share))
            except OSError:
                unforked.append(share)
        threads = {} if threads is None else threads
        fds = _scan(shares[0], taps, threads=threads)
        while helpers:
            child, r, share = helpers.pop(0)
            got = _collect(child, r)
            if got is None:
                fds.extend(_scan(share, taps, threads=threads))
            else:
                fds.extend(got[0])
                threads.update(got[1])
        for share in unforked:
            fds.extend(_scan(share, taps, threads=threads))
    finally:                                    # interrupted: no helper left behind
        for child, r, _ in helpers:
            os.close(r)
            os.waitpid(child, 0)
    order = {pid: i for i, pid in enumerate(pids)}
    # the serial scan's order (stable: fds in place; a thread's after its process's)
    fds.sort(key=lambda f: order[threads.get(f.pid, f.pid)])
    return fds


def snapshot(pids: Iterable[int] | None = None, workers: int = 1) -> Snapshot:
    """Every tun/tap and vhost-net fd of the given processes (default: all), and of
    their threads' own fd tables (see own_tables), grouped by open file. Which tap
    backs a vhost fd's vrings is not in /proc: the trace sees it.

    workers > 1 scans in that many processes (forked helpers) when there are enough
    pids; only for a single-threaded caller (`taptrace ls`), not a tracer with BPF."""
    taps = _Ifindex()
    pids = _pids() if pids is None else list(pids)
    workers = min(workers, len(pids) // _PIDS_PER_WORKER)
    read_ns: dict[int, int] = {}
    threads: dict[int, int] = {}
    grouper = _FileGrouper() if workers <= 1 else None
    fds = (_scan_parallel(pids, taps, workers, threads) if workers > 1
           else _scan(pids, taps, read_ns, grouper, threads))
    procs: dict[int, ProcInfo] = {}
    for pid in sorted({f.pid for f in fds if f.pid not in threads} | set(threads.values())):
        info = proc_info(pid)
        if info is not None:
            procs[pid] = info
    threads = {tid: pid for tid, pid in threads.items() if pid in procs}
    fds = [f for f in fds if f.pid in procs or f.pid in threads]

    # Two fds can be one open file only if they show the same device and interface.
    buckets: dict[tuple[str, str | None], list[tuple[int, int]]] = {}
    for f in fds:
        buckets.setdefault((f.path, f.ifname), []).append((f.pid, f.fd))
    placed = grouper.groups({(f.pid, f.fd): (f.path, f.ifname) for f in fds}) \
        if grouper is not None and grouper.files.out else {}
    own = own_netns()
    names = netns_names()
    taps_ns = time.monotonic_ns()
    taps = all_taps(own, names, fds, pids)
    by_key = {(f.pid, f.fd): f for f in fds}
    files: list[list[tuple[int, int]]] = []
    tables = group_tables([*procs, *threads])
    for bucket, keys in buckets.items():
        if bucket in placed:
            inside = set(keys)     # a holder proc_info could not read is left out
            groups = [g for g in ([k for k in g if k in inside] for g in placed[bucket]) if g]
            seen = {k for g in groups for k in g}
            groups += [[k] for k in keys if k not in seen]
        else:
            groups = group_files(keys)
        files.extend(_join_slots(_join_gone(groups, by_key, taps, own), tables))
    return Snapshot(procs, fds, taps, files, tables, own, names,
                    {pid: t for pid, t in read_ns.items() if pid in procs or pid in threads},
                    taps_ns, threads)


def _join_slots(groups: list[list[_Key]], tables: list[list[int]]) -> list[list[_Key]]:
    """Groups of one device and interface that hold one fd of one shared table are one
    file: the same slot, read through two of its users (kcmp, after the scan, may
    not have been able to compare an fd closed since)."""
    table_of = {pid: i for i, group in enumerate(tables) for pid in group}
    parent = list(range(len(groups)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = i = parent[parent[i]]
        return i
    first_at: dict[tuple[int, int], int] = {}     # (table, fd) -> a group holding it
    for i, g in enumerate(groups):
        for pid, fd in g:
            j = first_at.setdefault((table_of.get(pid, -pid), fd), i)
            parent[root(i)] = root(j)
    merged: dict[int, list[_Key]] = {}
    for i, g in enumerate(groups):
        merged.setdefault(root(i), []).extend(g)
    return [sorted(g, key=lambda k: (k[1], k[0])) for g in merged.values()]


def _join_gone(groups: list[list[tuple[int, int]]], by_key: dict[tuple[int, int], FdInfo],
               taps: dict[str, TapInfo], own: int | None) -> list[list[tuple[int, int]]]:
    """kcmp runs after the whole scan: an fd closed (or a process gone) since its
    read cannot be compared and stands alone. If it was attached to a single-queue
    interface that one other group of fds holds, it was that group's file: such an
    interface has one file at a time."""
    if len(groups) < 2:
        return groups
    gone = [g for g in groups if not any(_fd_open(k) for k in g)]
    rest = [g for g in groups if not any(g is x for x in gone)]
    if not gone or len(rest) != 1:
        return groups
    first = by_key[rest[0][0]]
    if first.ifname is None or first.path != TUN_PATH:
        return groups
    nss = {by_key[k].netns for g in groups for k in g} - {None}
    if len(nss) > 1:
        return groups
    ns = next(iter(nss), None)
    tap = taps.get(first.ifname if ns in (None, own) else f"{ns}:{first.ifname}")
    if tap is None or tap.multi_queue:
        return groups
    return [rest[0] + [k for g in gone for k in g]]


def all_taps(own: int | None, names: dict[int, str], fds: Iterable[FdInfo],
             pids: Iterable[int] = ()) -> dict[str, TapInfo]:
    """The taps of taptrace's namespace (from /sys, keyed by name) and of every other
    namespace it can find and enter (from rtnetlink there, keyed "INODE:name"): those
    of held taps, `ip netns` ones and those of `pids`. Persistent taps that nobody holds
    in a container's namespace are found that way too. Namespaces it may not enter
    (not root) are left out."""
    taps = list_taps(own)
    doors: dict[int, list] = {}
    for f in fds:
        if f.netns is not None and f.netns != own:
            doors.setdefault(f.netns, []).append((f.pid, f.fd))
    for ino, name in names.items():
        if ino != own:
            doors.setdefault(ino, []).append(os.path.join(NETNS_RUN, name))
    for pid in pids:
        ino = pid_netns(pid)
        if ino is not None and ino != own and len(doors.setdefault(ino, [])) < 4:
            doors[ino].append(f"/proc/{pid}/ns/net")
    for ino in sorted(doors):
        links = links_of_netns(ino, doors[ino])
        if links is None:
            continue
        for name, info in taps_of_links(links, ino).items():
            taps[f"{ino}:{name}"] = info
    return taps
