"""/proc and /sys: the starting snapshot and the ground truth.

Only stdlib. Processes exit mid-scan and some /proc/PID/fd dirs are EACCES
even for root: such entries are skipped quietly.
"""

from __future__ import annotations

import ctypes
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass

SYS_KCMP = 312           # x86-64
KCMP_FILE = 0
KCMP_FILES = 2
O_CLOEXEC = 0o2000000
TUN_PATH = "/dev/net/tun"
_TAPDEV = re.compile(r"/dev/tap(\d+)$")
_GONE = (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError)

IFF_TUN, IFF_TAP = 0x0001, 0x0002
IFF_MULTI_QUEUE, IFF_PERSIST, IFF_VNET_HDR = 0x0100, 0x0800, 0x4000


@dataclass(frozen=True)
class FdInfo:
    """One fd of one process that refers to a tun/tap character device."""
    pid: int
    fd: int
    path: str                 # "/dev/net/tun" or "/dev/tapN" (macvtap/ipvtap)
    ifname: str | None        # fdinfo "iff:" (exact, surrogateescape); None: not attached
    cloexec: bool
    flags: int                # open flags from fdinfo "flags:" (octal)


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    comm: str
    cmdline: tuple[str, ...]
    uid: int


@dataclass(frozen=True)
class TapInfo:
    ifname: str
    ifindex: int
    kind: str                 # "tun" or "tap"
    tun_flags: int
    persist: bool
    multi_queue: bool
    vnet_hdr: bool
    owner: int | None
    group: int | None
    mac: str | None


@dataclass
class Snapshot:
    procs: dict[int, ProcInfo]
    fds: list[FdInfo]
    taps: dict[str, TapInfo]
    files: list[list[tuple[int, int]]]   # (pid, fd) groups that are one open file
    tables: list[list[int]]              # pid groups sharing one fd table


# ---- kcmp ------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def kcmp(pid1: int, pid2: int, kind: int, idx1: int = 0, idx2: int = 0) -> int | None:
    """kcmp(2): 0 equal, 1/2 ordered, 3 not equal; None on error."""
    r = _libc.syscall(SYS_KCMP, ctypes.c_int(pid1), ctypes.c_int(pid2), ctypes.c_int(kind),
                      ctypes.c_ulong(idx1), ctypes.c_ulong(idx2))
    return None if r < 0 else r


def same_file(pid1: int, fd1: int, pid2: int, fd2: int) -> bool | None:
    r = kcmp(pid1, pid2, KCMP_FILE, fd1, fd2)
    return None if r is None else r == 0


def same_fd_table(pid1: int, pid2: int) -> bool | None:
    r = kcmp(pid1, pid2, KCMP_FILES)
    return None if r is None else r == 0


# ---- parsing ---------------------------------------------------------------

def parse_fdinfo(text: str) -> tuple[int, str | None]:
    """(open flags, iff name) from the text of /proc/PID/fdinfo/N."""
    flags, ifname = 0, None
    for line in text.split("\n"):
        if line.startswith("flags:"):
            try:
                flags = int(line[6:].strip(), 8)
            except ValueError:
                flags = 0
        elif line.startswith("iff:"):
            # tun prints "iff:" with an empty name for a fd with no interface yet
            ifname = line[4:].lstrip("\t ") or None
    return flags, ifname


def _read_text(path: str) -> str:
    with open(path, "rb") as f:
        return f.read().decode("utf-8", "surrogateescape")


def _ifindex_names() -> dict[int, str]:
    out = {}
    try:
        names = os.listdir("/sys/class/net")
    except OSError:
        return out
    for name in names:
        try:
            out[int(_read_text(f"/sys/class/net/{name}/ifindex"))] = name
        except (OSError, ValueError):
            continue
    return out


def _fdinfo(pid: int, fd: int, path: str, ifindex: dict[int, str] | None) -> FdInfo | None:
    try:
        flags, ifname = parse_fdinfo(_read_text(f"/proc/{pid}/fdinfo/{fd}"))
    except (OSError, ValueError):
        return None
    m = _TAPDEV.match(path)
    if m and ifname is None:
        ifname = (ifindex if ifindex is not None else _ifindex_names()).get(int(m.group(1)))
    return FdInfo(pid, fd, path, ifname, bool(flags & O_CLOEXEC), flags)


def _is_tun_path(path: str) -> bool:
    return path == TUN_PATH or bool(_TAPDEV.match(path))


def read_fdinfo(pid: int, fd: int) -> FdInfo | None:
    """The fd if it is a tun/tap fd (None if not, or gone)."""
    try:
        path = os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None
    if not _is_tun_path(path):
        return None
    return _fdinfo(pid, fd, path, None)


def tun_fds(pid: int, ifindex: dict[int, str] | None = None) -> list[FdInfo]:
    out = []
    base = f"/proc/{pid}/fd"
    try:
        it = os.scandir(base)
    except OSError:
        return out
    with it:
        for entry in it:
            try:
                path = os.readlink(f"{base}/{entry.name}")
            except OSError:
                continue
            if _is_tun_path(path):
                info = _fdinfo(pid, int(entry.name), path, ifindex)
                if info is not None:
                    out.append(info)
    return out


def proc_info(pid: int) -> ProcInfo | None:
    try:
        stat = _read_text(f"/proc/{pid}/stat")
        status = _read_text(f"/proc/{pid}/status")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except (OSError, ValueError):
        return None
    try:
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
    except (ValueError, IndexError):
        return None
    uid = 0
    for line in status.split("\n"):
        if line.startswith("Uid:"):
            uid = int(line.split()[1])
            break
    cmdline = tuple(a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0")[:-1])
    return ProcInfo(pid, ppid, comm, cmdline, uid)


def _opt_id(text: str) -> int | None:
    v = int(text)
    return None if v < 0 else v


def list_taps() -> dict[str, TapInfo]:
    out: dict[str, TapInfo] = {}
    try:
        names = os.listdir("/sys/class/net")
    except OSError:
        return out
    for name in names:
        d = f"/sys/class/net/{name}"
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
    try:
        return [int(n) for n in os.listdir("/proc") if n.isdigit()]
    except OSError:
        return []


def _group(items: list, same) -> list[list]:
    """Partition items into classes of an equivalence given by same(a, b)."""
    groups: list[list] = []
    for it in items:
        for g in groups:
            if same(g[0], it):
                g.append(it)
                break
        else:
            groups.append([it])
    return groups


def snapshot(pids: Iterable[int] | None = None) -> Snapshot:
    """Every tun/tap fd of the given processes (default: all), grouped by open file."""
    ifindex = _ifindex_names()
    fds: list[FdInfo] = []
    for pid in (_pids() if pids is None else pids):
        fds.extend(tun_fds(pid, ifindex))
    procs: dict[int, ProcInfo] = {}
    for pid in sorted({f.pid for f in fds}):
        info = proc_info(pid)
        if info is not None:
            procs[pid] = info
    fds = [f for f in fds if f.pid in procs]

    def same_table(a: int, b: int) -> bool:
        return bool(same_fd_table(a, b))

    tables = _group(sorted(procs), same_table)

    # Two fds can be one open file only if they name the same interface.
    by_name: dict = {}
    for f in fds:
        by_name.setdefault((f.path, f.ifname), []).append((f.pid, f.fd))

    def same(a: tuple[int, int], b: tuple[int, int]) -> bool:
        return bool(same_file(a[0], a[1], b[0], b[1]))

    files: list[list[tuple[int, int]]] = []
    for keys in by_name.values():
        files.extend(_group(keys, same))
    return Snapshot(procs, fds, list_taps(), files, tables)
