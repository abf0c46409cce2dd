"""/proc and /sys: the starting snapshot and the ground truth.

Only stdlib. Processes exit mid-scan and some /proc/PID/fd dirs are EACCES
even for root: such entries are skipped quietly.
"""

from __future__ import annotations

import ctypes
import marshal
import os
import re
from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import TypeVar

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
IFF_MULTI_QUEUE, IFF_PERSIST, IFF_VNET_HDR = 0x0100, 0x0800, 0x4000


@dataclass(frozen=True)
class FdInfo:
    """One fd of one process that refers to a tun/tap (or vhost-net) character device."""
    pid: int
    fd: int
    path: str                 # "/dev/net/tun", "/dev/tapN" (macvtap/ipvtap), "/dev/vhost-net"
    ifname: str | None        # fdinfo "iff:" (exact, surrogateescape); None: not attached
    cloexec: bool
    flags: int                # open flags from fdinfo "flags:" (octal)


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


@dataclass
class Snapshot:
    procs: dict[int, ProcInfo]           # holders of tun fds
    fds: list[FdInfo]
    taps: dict[str, TapInfo]
    files: list[list[tuple[int, int]]]   # (pid, fd) groups that are one open file
    tables: list[list[int]]              # pid groups sharing one fd table


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


def _classes(items: Iterable[_T], order: Callable[[_T, _T], int]) -> list[list[_T]]:
    """Partition items into kcmp's equivalence classes, using its total order.

    order(a, b) is kcmp's answer: 0 equal, 1 a < b, 2 a > b, anything else: failed.

    One representative per class is kept sorted, so an item costs one kcmp when
    it belongs with the item before it (callers put likely copies next to each
    other) and O(log classes) otherwise, not a comparison with every class.
    An item kcmp cannot place (its process or fd is gone) becomes a class of
    its own; a representative that has gone is replaced by a live member.
    """
    reps: list[_T] = []
    classes: list[list[_T]] = []          # parallel to reps
    out: list[list[_T]] = []

    def alive(x: _T) -> bool:
        return order(x, x) == 0

    def place(it: _T) -> list[_T]:
        lo, hi = 0, len(reps)
        retries = 8
        while lo < hi:
            mid = (lo + hi) // 2
            r = order(reps[mid], it)
            if r == 0:
                classes[mid].append(it)
                return classes[mid]
            if r == 1:
                lo = mid + 1
            elif r == 2:
                hi = mid
            elif retries == 0 or not alive(it) or alive(reps[mid]):
                out.append([it])            # gone, or kcmp cannot order these two
                return out[-1]
            else:                           # the representative has gone
                retries -= 1
                live = next((m for m in classes[mid] if m != reps[mid] and alive(m)), None)
                if live is None:
                    del reps[mid], classes[mid]
                    lo, hi = 0, len(reps)
                else:
                    reps[mid] = live
        cls = [it]
        out.append(cls)
        reps.insert(lo, it)
        classes.insert(lo, cls)
        return cls

    prev: list[_T] | None = None
    for it in items:
        if prev is not None and order(prev[-1], it) == 0:
            prev.append(it)
        else:
            prev = place(it)
    return out


def _kcmp_works() -> bool:
    me = os.getpid()
    return kcmp(me, me, KCMP_FILES) == 0


def group_files(keys: Iterable[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """(pid, fd) pairs grouped by open file (KCMP_FILE); singletons if kcmp is unusable."""
    # Fork copies keep their fd number: sorting by fd puts them side by side.
    keys = sorted(keys, key=lambda k: (k[1], k[0]))
    if len(keys) < 2 or not _kcmp_works():
        return [[k] for k in keys]
    # The raw syscall (-1 on error) is enough for _classes and saves a call per kcmp.
    return _classes(keys, lambda a, b: _syscall(SYS_KCMP, a[0], b[0], KCMP_FILE, a[1], b[1]))


def group_tables(pids: Iterable[int]) -> list[list[int]]:
    """pids grouped by shared fd table (KCMP_FILES); singletons if kcmp is unusable."""
    pids = sorted(pids)
    if len(pids) < 2 or not _kcmp_works():
        return [[p] for p in pids]
    return _classes(pids, lambda a, b: _syscall(SYS_KCMP, a, b, KCMP_FILES, 0, 0))


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
            info_dir: int | None = None) -> FdInfo | None:
    """The FdInfo of a fd whose link is a tun/tap path; info_dir: an open /proc/PID/fdinfo."""
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
    return FdInfo(pid, fd, path, ifname, bool(flags & O_CLOEXEC), flags)


def read_fdinfo(pid: int, fd: int) -> FdInfo | None:
    """The fd if it is a tun/tap or vhost-net fd (None if not, or gone)."""
    try:
        path = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None
    if not _is_tun_path(path):
        return None
    return _fdinfo(pid, fd, path, _Ifindex())


def _tun_fds(pid: int, taps: _Ifindex) -> list[FdInfo]:
    out: list[FdInfo] = []
    try:
        fd_dir = os.open(f"/proc/{pid}/fd", _DIR_FLAGS)
    except OSError:
        return out
    info_dir = -1
    try:
        names = os.listdir(fd_dir)
        for name in names:
            try:
                path = os.readlink(name, dir_fd=fd_dir)
            except OSError:
                continue
            # inline, not _is_tun_path(): this runs for every fd of every process
            if (path != TUN_PATH and path != VHOST_PATH
                    and not (path.startswith("/dev/tap") and _TAPDEV.fullmatch(path))):
                continue
            if info_dir < 0:
                info_dir = os.open(f"/proc/{pid}/fdinfo", _DIR_FLAGS)
            info = _fdinfo(pid, int(name), path, taps, info_dir)
            if info is not None:
                out.append(info)
    except OSError:
        pass                               # the process went away mid-scan
    finally:
        os.close(fd_dir)
        if info_dir >= 0:
            os.close(info_dir)
    return out


def tun_fds(pid: int) -> list[FdInfo]:
    """Every tun/tap and vhost-net fd of a process; [] if it is gone or unreadable."""
    return _tun_fds(pid, _Ifindex())


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


def list_taps() -> dict[str, TapInfo]:
    """Every tun/tap netdev (those with /sys/class/net/IF/tun_flags), held or not."""
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
                            bool(tun_flags & IFF_VNET_HDR), owner, group, mac)
    return out


def _pids() -> list[int]:
    """Thread-group leaders: /proc lists no other tasks."""
    try:
        return [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return []


def _scan(pids: Iterable[int], taps: _Ifindex) -> list[FdInfo]:
    fds: list[FdInfo] = []
    for pid in pids:
        fds.extend(_tun_fds(pid, taps))
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
            data = memoryview(marshal.dumps(
                [(f.pid, f.fd, f.path, f.ifname, f.cloexec, f.flags)
                 for f in _scan(pids, _Ifindex())]))
            while data:
                data = data[os.write(w, data):]
            code = 0
        finally:
            os._exit(code)
    os.close(w)
    return child, r


def _collect(child: int, r: int) -> list[FdInfo] | None:
    """A helper's FdInfo list; None if it failed."""
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
        return [FdInfo(*t) for t in marshal.loads(data)]
    except (EOFError, ValueError, TypeError):
        return None


def _scan_parallel(pids: list[int], taps: _Ifindex, workers: int) -> list[FdInfo]:
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
        fds = _scan(shares[0], taps)
        while helpers:
            child, r, share = helpers.pop(0)
            got = _collect(child, r)
            fds.extend(_scan(share, taps) if got is None else got)
        for share in unforked:
            fds.extend(_scan(share, taps))
    finally:                                    # interrupted: no helper left behind
        for child, r, _ in helpers:
            os.close(r)
            os.waitpid(child, 0)
    order = {pid: i for i, pid in enumerate(pids)}
    fds.sort(key=lambda f: order[f.pid])   # the serial scan's order (stable: fds in place)
    return fds


def snapshot(pids: Iterable[int] | None = None, workers: int = 1) -> Snapshot:
    """Every tun/tap and vhost-net fd of the given processes (default: all), grouped by
    open file. Which tap backs a vhost fd's vrings is not in /proc: the trace sees it.

    workers > 1 scans in that many processes (forked helpers) when there are enough
    pids; only for a single-threaded caller (`taptrace ls`), not a tracer with BPF."""
    taps = _Ifindex()
    pids = _pids() if pids is None else list(pids)
    workers = min(workers, len(pids) // _PIDS_PER_WORKER)
    fds = _scan_parallel(pids, taps, workers) if workers > 1 else _scan(pids, taps)
    procs: dict[int, ProcInfo] = {}
    for pid in sorted({f.pid for f in fds}):
        info = proc_info(pid)
        if info is not None:
            procs[pid] = info
    fds = [f for f in fds if f.pid in procs]

    # Two fds can be one open file only if they show the same device and interface.
    buckets: dict[tuple[str, str | None], list[tuple[int, int]]] = {}
    for f in fds:
        buckets.setdefault((f.path, f.ifname), []).append((f.pid, f.fd))
    files: list[list[tuple[int, int]]] = []
    for keys in buckets.values():
        files.extend(group_files(keys))
    return Snapshot(procs, fds, list_taps(), files, group_tables(procs))
