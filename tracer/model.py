"""The pure model: processes, fd tables, open files and taps, and each file's lineage.

No bcc and no /proc here: events (tracer.events) and snapshots (tracer.procfs)
come in, reports (plain dicts with stable field names, see README) go out. The
one outside question the model asks - "what is fd N of pid P right now?" -
goes through an injected `FdProbe`, so replays and unit tests run anywhere.
"""

from __future__ import annotations

import dataclasses
import errno
import fnmatch
import itertools
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from . import events as ev

# (pid, fd) -> ifname of that fd if it is an attached tun/tap fd, "" if it is a
# tun fd with no interface, None if it is not a tun fd or cannot be read. A probe
# that can tell "open, but not a tun fd" apart from "gone" may answer False for the
# former: an SCM_RIGHTS receive is then never matched to a send of a tap by order.
FdProbe = Callable[[int, int], str | bool | None]
# (pid, fd) -> (inode, name) of the network namespace of the tap behind that fd
# (name: `ip netns`'s, or None); None when it cannot be told. Asked when a file first
# gets its interface (TUNSETIFF, or TUNGETIFF on a file the model missed): a tap's
# identity is (namespace, name), as two namespaces may each have a `tap0`.
NetnsProbe = Callable[[int, int], tuple[int | None, str | None] | None]

LINEAGE_HEAD = 16
LINEAGE_MAX = 64
SCM_PENDING_NS = ev.SCM_PENDING_NS
# a send whose taps only the message holds is checked against the kernel after this
SCM_FREED_CHECK_NS = 500_000_000
RELEASED_MAX = 256
SHARED_MAX = 32
CHAIN_OPS = ("open", "tunsetiff", "snapshot", "fork", "exec", "recv")  # hops of a chain


def _no_probe(_pid: int, _fd: int) -> str | None:
    return None


def _no_netns(_pid: int, _fd: int) -> None:
    return None


def _requested_kind(flags: int) -> str | None:
    if flags & ev.IFF_TAP:
        return "tap"
    return "tun" if flags & ev.IFF_TUN else None


def errname(ret: int) -> str:
    return errno.errorcode.get(-ret, str(-ret)) if ret < 0 else ""


# changes to an fd table that a read of it from /proc after them shows
READ_SHOWS = (ev.Open, ev.Dup, ev.Close, ev.CloseRange, ev.SetFd, ev.PidfdGetfd)


def parts(e: ev.Event) -> bool:
    """Does e change the fd table its task uses, or end its use (an unshare, an
    exec, a close_range that unshares, an exit)? Its record may then name either
    table, and say either of the leader's (Event.table, own_table)."""
    return isinstance(e, (ev.Exec, ev.Exit, ev.Unshare)) or (
        isinstance(e, ev.CloseRange) and bool(e.flags & ev.CLOSE_RANGE_UNSHARE))


def acted_on(e: ev.Event) -> int:
    """The fd table e's task acted on (Event.table; 0: not known, or e parts)."""
    return 0 if parts(e) else getattr(e, "table", 0)


@dataclass(eq=False)
class OpenFile:
    """One open file on /dev/net/tun, /dev/tapN or /dev/vhost-net (a struct file).

    A vhost-net file holds a reference to the file backing each of its vrings
    (VHOST_NET_SET_BACKEND fget()s it): `backends` maps the vring index to that
    OpenFile (None: a backend the model does not track, e.g. a packet socket), and
    the backend's `refs` count it, so a tap whose fds are all closed lives on while
    a vhost file still uses it, as in the kernel.
    """

    id: int
    path: str = "/dev/net/tun"
    ifname: str | None = None
    iff: int = 0                      # IFF_* given at TUNSETIFF
    netns: int | None = None          # its tap's network namespace (None: unknown/own)
    creator_pid: int | None = None
    creator_comm: str | None = None
    queue_detached: bool = False
    refs: int = 0                     # fd entries, messages in flight, vhost vrings
    lineage: list = field(default_factory=list)
    backends: dict = field(default_factory=dict)   # vhost only: vring index -> OpenFile
    ptr: int = 0                      # its struct file * where the kernel backend said it

    def step(self, ts: int, op: str, pid: int, comm: str, fd: int | None = None,
             **extra) -> None:
        hop = {"ts_ns": ts, "op": op, "pid": pid, "comm": comm, "fd": fd, **extra}
        self.lineage.append(hop)
        if len(self.lineage) > LINEAGE_MAX:
            del self.lineage[LINEAGE_HEAD]

    @property
    def is_vhost(self) -> bool:
        return self.path == ev.VHOST_PATH

    @property
    def label(self) -> str | None:
        """The interface this file is about: its own, or for a vhost file the tap
        backing its lowest vring."""
        if not self.is_vhost:
            return self.ifname
        return next((b.ifname for _i, b in sorted(self.backends.items())
                     if b is not None and b.ifname), None)

    @property
    def kind(self) -> str:
        if self.is_vhost:
            return "vhost"
        if self.path.startswith("/dev/tap"):
            return "macvtap"
        if self.iff & ev.IFF_TAP:
            return "tap"
        if self.iff & ev.IFF_TUN:
            return "tun"
        return "tun" if self.ifname is None else "tap"


@dataclass(eq=False)
class Entry:
    file: OpenFile
    cloexec: bool | None              # None: unknown (see ev.CLOEXEC_UNKNOWN) until exec
    how: str                          # opened, dup, inherited, received, snapshot
    from_pid: int | None = None
    from_fd: int | None = None
    by: int | None = None             # the pid that put it in this table (None: unknown)


@dataclass(eq=False)
class FdTable:
    id: int
    fds: dict = field(default_factory=dict)     # fd -> Entry
    users: set = field(default_factory=set)     # pids sharing it (CLONE_FILES)
    # the kernel's struct files_struct * (Event.table), learned from the records
    # of its users (0: not known yet); a table the model makes (a copy) has none
    ptr: int = 0


@dataclass(eq=False)
class Process:
    pid: int
    comm: str
    table: FdTable
    ppid: int | None = None
    # a sharer's table as its exec began (kernels without sched_prepare_exec): its
    # own if the exec succeeds, dropped if anything else comes first
    exec_table: FdTable | None = None
    # its other threads (ids), each a user of the table it uses (a table goes when
    # its last user, process or thread, does)
    threads: set = field(default_factory=set)
    # tid -> the table of a thread (not the leader) whose table is not the leader's
    # (it unshared one, or the leader did): what it does applies there; `table`
    # stays the leader's, the one /proc/PID/fd shows
    thread_tables: dict = field(default_factory=dict)


@dataclass
class Tap:
    ifname: str
    kind: str = "tap"
    iff: int = 0
    persist: bool = False
    created_by: int | None = None
    created_comm: str | None = None
    files: set = field(default_factory=set)      # OpenFile ids attached to it
    owner: int | None = None                     # TUNSETOWNER uid (None: none, -1 in /sys)
    group: int | None = None                     # TUNSETGROUP gid
    persist_by: int | None = None                # whose TUNSETPERSIST made it persistent (live)
    netns: int | None = None                     # None: unknown (taken as the own one)
    ifindex: int | None = None                   # in its namespace, where known

    @property
    def key(self) -> tuple:
        return (self.netns, self.ifname)


@dataclass
class PendingSend:
    ts: int
    pid: int
    comm: str
    sock: int
    fds: tuple                                   # every fd sent, in order
    files: list                                  # OpenFile or None, per fd
    truncated: bool = False                      # more fds than the record held
    queue: int = 0                               # the receiving socket (0: not known)
    queue_ino: int = 0                           # and its inode number (0: not known)


class Model:
    """State of every tracked tun/tap fd; apply() turns events into reports."""

    def __init__(self, probe_fd: FdProbe = _no_probe,
                 ifindex_name: Callable[[int], str | None] = lambda _i: None,
                 comm_of: Callable[[int], str | None] = lambda _p: None,
                 netns_of: NetnsProbe = _no_netns,
                 threads_of: Callable[[int], list[int]] = lambda _p: [],
                 same_file: Callable[[int, int, int, int], bool | None] = (
                     lambda _p1, _f1, _p2, _f2: None),
                 thread_table: Callable[[int, int, bool | None], list | None] = (
                     lambda _p, _t, _k: None),
                 same_table: Callable[[int, int], bool | None] = lambda _a, _b: None
                 ) -> None:
        """comm_of(pid): the process's own name (/proc/PID/comm), asked only when a
        process is first seen through a thread, whose records carry the thread's.
        threads_of(pid): its threads (ids, not the leader's), asked when the leader
        unshares its table: the ones not seen yet keep the table it leaves.
        thread_table(pid, tid, known): asked when a thread is first seen acting: None
        if it uses its leader's fd table (or nobody can tell), else the tun fds of its
        own table (it unshared before it was tracked), as (fd, ifname, cloexec) with
        ifname as probe_fd answers; `known` is what the thread's record says
        (Event.own_table: True, a table not its leader's; None, not known).
        same_table(a, b): do two tasks (processes or threads) use one fd table (kcmp
        KCMP_FILES; None: cannot tell)?"""
        self._threads_of = threads_of
        self._thread_table = thread_table
        self._same_table = same_table
        # (process, its leader's table) while a thread's event runs on the thread's
        self._swapped: tuple[Process, FdTable] | None = None
        # pid -> the pids it shared an fd table with, for processes the last resync's
        # snapshot did not list (see _proc)
        self._missed: dict[int, list[int]] = {}
        # same_file(pid1, fd1, pid2, fd2): kcmp's answer (None: cannot tell)
        self._same_file = same_file
        self.procs: dict[int, Process] = {}
        self.taps: dict[tuple, Tap] = {}             # (netns, ifname) -> Tap
        self.own_netns: int | None = None            # the tracer's, from the snapshot
        self.netns_names: dict[int, str] = {}        # inode -> `ip netns` name
        self._netns_of = netns_of
        self.files: dict[int, OpenFile] = {}
        self.pending: list[PendingSend] = []
        self.released: deque[OpenFile] = deque(maxlen=RELEASED_MAX)
        # open files by their struct file * (kernel backend records carry it): the
        # file's identity, so an install, a dup or a receive of it is known exactly
        self.by_ptr: dict[int, OpenFile] = {}
        # after a (re)load: a file the model had split off one the snapshot shows
        # whole -> that file (see _load)
        self._alias: dict[int, OpenFile] = {}
        self._probe_fd = probe_fd
        self._ifindex_name = ifindex_name
        self._comm_of = comm_of
        self._next_id = 1

    # ---- construction ------------------------------------------------------

    def _new_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def _new_file(self, path: str = "/dev/net/tun", ifname: str | None = None) -> OpenFile:
        f = OpenFile(self._new_id(), path=path, ifname=ifname)
        self.files[f.id] = f
        return f

    def _new_table(self) -> FdTable:
        return FdTable(self._new_id())

    def _proc(self, pid: int, comm: str) -> Process:
        p = self.procs.get(pid)
        if p is None:
            # a process the last snapshot missed (it exited while /proc was read, or
            # so /proc said) whose records still come: it shared a table with these
            others = self._missed.pop(pid, ())
            sharer = next((self.procs[q] for q in others if q in self.procs), None)
            table = sharer.table if sharer is not None else self._new_table()
            for q in others:                # the ones not seen again yet join it later
                if q in self._missed:
                    self._missed[q] = [pid]
            table.users.add(pid)
            p = self.procs[pid] = Process(pid, comm, table)
        return p

    def load(self, snap) -> None:
        """Start from a /proc snapshot (tracer.procfs.Snapshot)."""
        self.procs.clear()
        self.taps.clear()
        self.files.clear()
        self.pending.clear()
        self.by_ptr.clear()
        self._load(snap, {}, {})

    def _load(self, snap, keep_files: dict, keep_entries: dict,
              in_flight: list | None = None) -> None:
        self.own_netns = getattr(snap, "own_netns", None)
        self.netns_names.update(getattr(snap, "netns_names", None) or {})
        for info in snap.taps.values():
            ns = getattr(info, "netns", None)
            tap = Tap(info.ifname, info.kind, info.tun_flags, info.persist,
                      owner=info.owner, group=info.group, netns=ns,
                      ifindex=info.ifindex or None)
            self.taps[tap.key] = tap
        table_of: dict[int, FdTable] = {}
        for group in snap.tables:
            t = self._new_table()
            for pid in group:
                table_of[pid] = t
        for pid, info in snap.procs.items():
            t = table_of.get(pid)
            if t is None:
                t = table_of[pid] = self._new_table()
            t.users.add(pid)
            self.procs[pid] = Process(pid, info.comm, t, info.ppid)
        # threads whose table is not their leader's (their fds are listed by tid)
        for tid, pid in sorted((getattr(snap, "threads", None) or {}).items()):
            proc = self.procs.get(pid)
            if proc is None or tid in self.procs:
                continue
            t = table_of.get(tid)
            if t is None or t is proc.table:
                t = table_of[tid] = self._new_table()
            t.users.add(tid)
            proc.threads.add(tid)
            proc.thread_tables[tid] = t
        table_at = {pid: p.table for pid, p in self.procs.items()}
        table_at.update((tid, t) for p in self.procs.values()
                        for tid, t in p.thread_tables.items())
        byfd = {(fi.pid, fi.fd): fi for fi in snap.fds}
        reused: set[int] = set()
        # model files the snapshot shows to be one open file with another (the model
        # had split it, records lost): kept file id -> the file each snapshot group
        # holding one of its fds became
        split: dict[int, list[OpenFile]] = {}
        candidates = list({f.id: f for f in [*keep_files.values(), *(in_flight or [])]
                           if f.ifname}.values())
        names_seen: dict = {}          # ifname -> how many snapshot files have it
        for group in snap.files:
            first = next((byfd[k] for k in group if k in byfd), None)
            if first is not None and first.ifname:
                names_seen[first.ifname] = names_seen.get(first.ifname, 0) + 1
        for group in snap.files:
            first = next((byfd[k] for k in group if k in byfd), None)
            if first is None:
                continue
            # The file the model already had there, unless another group took it:
            # two snapshot files are never one model file.
            first_ns = getattr(first, "netns", None)
            old = next((keep_files[k] for k in group if k in keep_files
                        and keep_files[k].ifname == first.ifname
                        and self._same_ns(keep_files[k].netns, first_ns)
                        and keep_files[k].id not in reused), None)
            if old is None and names_seen.get(first.ifname) == 1:
                # not where the model had it: moved while /proc was read (the scan
                # is not one instant), received unseen while it was in flight (a
                # lost or truncated receive). Taken when it is the only file of its
                # name before and after (else which is which cannot be told).
                named = [f for f in candidates if f.ifname == first.ifname
                         and self._same_ns(f.netns, first_ns) and f.id not in reused]
                if len(named) == 1:
                    old = named[0]
            f = old or OpenFile(self._new_id(), path=first.path, ifname=first.ifname)
            reused.add(f.id)
            for k in group:
                kf = keep_files.get(k)
                if kf is not None and kf is not f and kf.ifname == first.ifname:
                    split.setdefault(kf.id, []).append(f)
            f.refs = 0
            self.files[f.id] = f
            tap = self._tap(first_ns if first_ns is not None else f.netns, f.ifname)
            f.netns = tap.netns if tap is not None else first_ns
            if tap is not None:
                tap.files.add(f.id)
                if not f.iff:
                    f.iff = tap.iff
            for key in group:
                fi = byfd.get(key)
                table = table_at.get(key[0])      # a process's, or a thread's own
                if fi is None or table is None:
                    continue
                if key[1] in table.fds:
                    continue        # shared table: already placed via another user
                prev = keep_entries.get(key)
                if prev is not None and prev.file is not f:
                    prev = None     # that fd held another file before: it is new
                how = prev.how if prev else "snapshot"
                table.fds[key[1]] = Entry(f, fi.cloexec, how,
                                          prev.from_pid if prev else None,
                                          prev.from_fd if prev else None,
                                          prev.by if prev else None)
                f.refs += 1
        # A model file no snapshot file became, whose fds all lie in one snapshot
        # file: the same open file (kcmp says so of its fds). What else refers to it
        # (a message in flight, a vhost backend) refers to that file.
        self._alias = {i: fs[0] for i, fs in split.items()
                       if i not in reused and all(x is fs[0] for x in fs)}
        self._reattach_backends()

    def _reattach_backends(self) -> None:
        """After a (re)load: /proc does not show vhost backends, so a kept vhost file
        keeps the ones the trace saw, and they count again as references. A backend
        no fd holds any more is kept alive by the vhost file alone (as in the kernel),
        unless its tap is gone."""
        for f in [f for f in self.files.values() if f.backends]:
            for idx, b in list(f.backends.items()):
                if b is None:
                    continue
                if b.id in self._alias:
                    b = f.backends[idx] = self._alias[b.id]
                if b.id not in self.files:
                    tap = self._tap_of(b)
                    if b.ifname and tap is None:
                        del f.backends[idx]
                        continue
                    b.refs = 0
                    self.files[b.id] = b
                    if tap is not None:
                        tap.files.add(b.id)
                b.refs += 1

    def resync(self, snap, alive: Callable[[int], bool] | None = None,
               parted: Callable[[int, int], bool] | None = None,
               one_table: Callable[[int, int], bool] | None = None,
               acting: Callable[[int], bool] | None = None) -> dict:
        """Replace the state with a fresh snapshot, keeping what is still true.
        alive(pid): is a process the snapshot does not list (it holds no tun fd)
        still there? Such a process that shared an fd table keeps sharing it, unless
        parted(pid, other) says it parted from the other before the snapshot.
        one_table(pid, other): do the records to come show the two use one kernel
        table (see _rejoin_split)? acting(pid): do records to come, from the scan
        on, show a process the snapshot does not list act? One that shared no
        table keeps the table the model had (the scan came to it after it died);
        the report's `kept` names them."""
        before = {(*row_key(r), r["ifname"]) for r in self.rows()}
        keep_files: dict = {}
        keep_entries: dict = {}
        for p in self.procs.values():
            # (task, fd): a thread's own table under each of its threads (the
            # snapshot names it by one of them)
            tasks = [(p.pid, p.table), *p.thread_tables.items()]
            for task, t in tasks:
                for fd, e in t.fds.items():
                    keep_files[(task, fd)] = e.file
                    keep_entries[(task, fd)] = e
        taps_before = dict(self.taps)
        sharers = {p.pid: sorted(p.table.users - {p.pid} - p.threads)
                   for p in self.procs.values() if len(p.table.users - p.threads) > 1}
        procs_before = list(self.procs.values())
        # files only a message in flight held may have landed in a table unseen (a
        # receive whose record was lost or could not hold its fds)
        in_flight = {f.id: f for s in self.pending for f in s.files if f is not None}
        sends = list(self.pending)
        self.procs.clear()
        self.taps.clear()
        self.files.clear()
        self.pending.clear()
        if alive is not None:
            snap = self._rejoin_split(snap, sharers, alive, one_table)
        self._load(snap, keep_files, keep_entries, list(in_flight.values()))
        # (one that unshared, its record among those lost, shares no more: the
        # snapshot lists the other, and shows no tun fd in its own table)
        self._missed = {pid: kept for pid, others in sharers.items() if pid not in self.procs
                        if (kept := [q for q in others
                                     if parted is None or not parted(pid, q)])}
        # sharers of a table that holds no tun fd (yet), alive: a CLONE_FILES pair
        # about to make a tap in it (the snapshot lists holders only)
        for pid in sorted(self._missed):
            if alive is not None and pid not in self.procs and alive(pid):
                old = next(p for p in procs_before if p.pid == pid)
                self._proc(pid, old.comm).ppid = old.ppid
        kept = []
        for old in procs_before:
            if old.pid in self.procs or old.pid in sharers or acting is None \
                    or not old.table.fds or not acting(old.pid):
                continue
            # it died while the scan ran, before the scan came to it, and its
            # records from before that still come: its table is the model's
            kept.append(old.pid)
            t = self._new_table()
            t.users.add(old.pid)
            self.procs[old.pid] = Process(old.pid, old.comm, t, old.ppid)
            for fd, entry in sorted(old.table.fds.items()):
                f = self._alias.get(entry.file.id, entry.file)
                if f.id not in self.files:
                    tap = self._tap_of(f)
                    if f.ifname and tap is None:
                        continue                # its tap is gone
                    f.refs = 0
                    self.files[f.id] = f
                    if tap is not None:
                        tap.files.add(f.id)
                f.refs += 1
                t.fds[fd] = dataclasses.replace(entry, file=f)
        # Messages in flight survive: /proc cannot show them, and their receives may
        # come after the snapshot. Each keeps its reference to its files (a receive
        # the snapshot already shows is taken off by forget_receive).
        for f in in_flight.values():
            if f.id not in self.files:      # in no table: the messages' references only
                f.refs = 0
        for send in sends:
            send.files = [self._alias.get(f.id, f) if f is not None else None
                          for f in send.files]
            for f in send.files:
                if f is None:
                    continue
                f.refs += 1
                if f.id not in self.files:
                    self.files[f.id] = f
                    tap = self._tap_of(f)
                    if tap is not None:
                        tap.files.add(f.id)
            self.pending.append(send)
        self.by_ptr = {f.ptr: f for f in self.files.values() if f.ptr}
        for key, tap in self.taps.items():
            old = taps_before.get(key)
            if old is not None:
                tap.created_by, tap.created_comm = old.created_by, old.created_comm
                tap.persist_by = old.persist_by if tap.persist else None
        after = {(*row_key(r), r["ifname"]) for r in self.rows()}
        report = {"type": "resync", "added": len(after - before),
                  "removed": len(before - after), "rows": len(after)}
        if kept:
            report["kept"] = kept
        return report

    @staticmethod
    def _rejoin_split(snap, sharers: dict[int, list[int]], alive: Callable[[int], bool],
                      one_table: Callable[[int, int], bool] | None = None):
        """The snapshot with tables it split that the model had as one joined again.
        The scan groups tables by kcmp (KCMP_FILES) once, at its end: a process that
        died after its table was read has no table then, and is grouped alone (a
        CLONE_FILES child killed while the scan ran). Two processes the model had
        sharing, one of them dead by now, that the scan split, were one table when
        read (the records of the dead one's last moments changed both) where it read
        the same files at the same numbers in both, or where the records to come
        name one kernel table for both (one_table: the scan reads one table after
        another, and a change between the two reads differs them)."""
        where = {pid: i for i, group in enumerate(snap.tables) for pid in group}
        if len(where) < 2:
            return snap
        held: dict[int, set] = {}
        for i, group in enumerate(snap.files):
            for pid, fd in group:
                held.setdefault(pid, set()).add((fd, i))
        parent = list(range(len(snap.tables)))

        def root(i: int) -> int:
            while parent[i] != i:
                i = parent[i]
            return i
        for pid, others in sharers.items():
            for q in others:
                if pid not in where or q not in where:
                    continue
                a, b = root(where[pid]), root(where[q])
                if a != b and not (alive(pid) and alive(q)) and (
                        held.get(pid) == held.get(q)
                        or one_table is not None and one_table(pid, q)):
                    parent[b] = a
        if all(root(i) == i for i in range(len(parent))):
            return snap
        joined: dict[int, list[int]] = {}
        for i, group in enumerate(snap.tables):
            joined.setdefault(root(i), []).extend(group)
        return dataclasses.replace(snap, tables=[sorted(g) for g in joined.values()])

    # ---- helpers -----------------------------------------------------------

    def _same_ns(self, a: int | None, b: int | None) -> bool:
        """Could two namespace answers be one namespace? (None: unknown, or own.)"""
        if a is None or b is None:
            return True
        return a == b

    def _tap(self, netns: int | None, ifname: str | None) -> Tap | None:
        """The tap (netns, ifname). A namespace not known (None) is taken as the
        tracer's own, else the only tap of that name; a known one as said, where a
        tap of unknown namespace with that name stands in (a snapshot that could
        not tell)."""
        if not ifname:
            return None
        tap = self.taps.get((netns, ifname))
        if tap is not None:
            return tap
        if netns is None:
            tap = self.taps.get((self.own_netns, ifname))
            if tap is not None:
                return tap
            named = [t for t in self.taps.values() if t.ifname == ifname]
            return named[0] if len(named) == 1 else None
        if netns == self.own_netns:
            return self.taps.get((None, ifname))
        return None

    def _tap_of(self, f: OpenFile) -> Tap | None:
        return self._tap(f.netns, f.ifname) if f.ifname else None

    def _learn_netns(self, f: OpenFile, pid: int, fd: int) -> None:
        """Ask where the tap behind pid/fd lives (the file has just got its name)."""
        got = self._netns_of(pid, fd)
        if got is None:
            return
        ino, name = got
        f.netns = ino
        if ino is not None and name:
            self.netns_names[ino] = name

    def ns_fields(self, netns: int | None) -> dict:
        """`netns` and `netns_name` of a report or row."""
        return {"netns": netns,
                "netns_name": self.netns_names.get(netns) if netns is not None else None}

    def _file_ns(self, f: OpenFile | None) -> dict:
        """The namespace fields of a report about one file (a vhost file: its tap's)."""
        if f is None:
            return self.ns_fields(None)
        if f.is_vhost:
            f = next((b for _i, b in sorted(f.backends.items())
                      if b is not None and b.ifname), None)
            if f is None:
                return self.ns_fields(None)
        return self.ns_fields(f.netns)

    def _learn(self, f: OpenFile, ptr: int) -> None:
        """The kernel backend named this file's struct file *: remember it."""
        if ptr and not f.ptr:
            f.ptr = ptr
            self.by_ptr[ptr] = f

    def _release(self, f: OpenFile, ts: int, pid: int, comm: str, out: list) -> None:
        f.refs -= 1
        if f.refs > 0:
            return
        self.files.pop(f.id, None)
        if f.ptr and self.by_ptr.get(f.ptr) is f:
            del self.by_ptr[f.ptr]      # the kernel may reuse the address now
        f.step(ts, "released", pid, comm)
        backends, f.backends = f.backends, {}
        for _idx, b in sorted(backends.items()):
            if b is not None:     # vhost_net_release puts each vring's socket
                self._release(b, ts, pid, comm, out)
        if f.ifname:
            self.released.append(f)  # bounded: `who --watch` shows closed files too
        if not f.ifname:
            return
        tap = self._tap_of(f)
        if tap is None:
            return
        tap.files.discard(f.id)
        if not tap.files and not tap.persist:
            del self.taps[tap.key]
            out.append(self._report("tap_gone", ts, pid, 0, comm, ifname=f.ifname,
                                    **self.ns_fields(tap.netns)))

    def _drop_entry(self, proc: Process, fd: int, ts: int, tid: int, comm: str, how: str,
                    out: list, report: bool = True) -> Entry | None:
        e = proc.table.fds.pop(fd, None)
        if e is None:
            return None
        e.file.step(ts, "close", proc.pid, comm, fd, how=how)
        if report:
            out.append(self._report("close", ts, proc.pid, tid, comm, fd=fd,
                                    ifname=e.file.label, how=how, **_kind(e.file),
                                    **self._file_ns(e.file)))
        self._release(e.file, ts, proc.pid, comm, out)
        return e

    def _drop_table_user(self, proc: Process, ts: int, comm: str, out: list) -> list:
        t = proc.table
        t.users.discard(proc.pid)
        if t.users:
            return []
        closed = []
        for fd in sorted(t.fds):
            e = t.fds.pop(fd)
            closed.append((fd, e.file.label, e.file.is_vhost, self._file_ns(e.file)["netns"]))
            e.file.step(ts, "close", proc.pid, comm, fd, how="exit")
            self._release(e.file, ts, proc.pid, comm, out)
        return closed

    def _discard_table(self, t: FdTable, ts: int, proc: Process, out: list) -> None:
        """Drop a copy nobody came to use (a failed exec's): its references go."""
        for fd in sorted(t.fds):
            self._release(t.fds.pop(fd).file, ts, proc.pid, proc.comm, out)

    def _copy_table(self, src: FdTable) -> FdTable:
        t = self._new_table()
        for fd, e in src.fds.items():
            t.fds[fd] = Entry(e.file, e.cloexec, e.how, e.from_pid, e.from_fd, e.by)
            e.file.refs += 1
        return t

    def _unshare(self, proc: Process, own: FdTable | None = None, ts: int = 0) -> None:
        """Give a sharer a table of its own: a copy of the shared one as it is now,
        or `own`, a copy made earlier (see Process.exec_table)."""
        if len(proc.table.users) <= 1:
            if own is not None:
                self._discard_table(own, ts, proc, [])
            return
        old = proc.table
        old.users.discard(proc.pid)
        proc.table = own if own is not None else self._copy_table(old)
        proc.table.users.add(proc.pid)
        for tid in proc.threads:            # its threads keep the table it left
            if tid not in proc.thread_tables and tid in old.users:
                proc.thread_tables[tid] = old
        # Its own table now: what another sharer put there, it inherited from that one.
        for fd, entry in proc.table.fds.items():
            if entry.by is not None and entry.by != proc.pid:
                entry.how, entry.from_pid, entry.from_fd = "inherited", entry.by, fd
                entry.by = proc.pid

    def _leader_unshare(self, proc: Process) -> None:
        """unshare(CLONE_FILES) by the process's leader (a thread's: see apply): its
        threads, seen yet or not, keep the table it leaves."""
        for tid in self._threads_of(proc.pid):
            self._know_thread(proc, tid, ask=False)   # /proc shows them after it
        self._unshare(proc)

    def _fds_fields(self, table: FdTable, fds: list) -> dict:
        """`ifnames` (and their `netns`) of fds of a table, and `vhost_fds` when some
        are vhost fds."""
        out: dict = {"ifnames": [table.fds[fd].file.label for fd in fds],
                     "netns": [self._file_ns(table.fds[fd].file)["netns"] for fd in fds]}
        vhost = [fd for fd in fds if table.fds[fd].file.is_vhost]
        if vhost:
            out["vhost_fds"] = vhost
        return out

    @staticmethod
    def _report(type_: str, ts: int, pid: int, tid: int, comm: str, **fields) -> dict:
        return {"type": type_, "ts_ns": ts, "pid": pid, "tid": tid, "comm": comm, **fields}

    @staticmethod
    def chain(f: OpenFile, pid: int | None = None) -> list:
        """The way an open file came to `pid` (default: its latest holder): its creator,
        then each fork, exec and receive on that way - not the side branches (a child
        that was forked with it and closed it is no step towards QEMU)."""
        steps: list[dict] = []
        for s in f.lineage:
            if s["op"] in CHAIN_OPS and not (
                    steps and s["op"] in ("fork", "exec") and
                    (steps[-1]["op"], steps[-1]["pid"], steps[-1]["ts_ns"]) ==
                    (s["op"], s["pid"], s["ts_ns"])):
                steps.append(s)           # one fork/exec of a file held at several fds
        i = len(steps) - 1
        if pid is not None:
            while i >= 0 and steps[i]["pid"] != pid:
                i -= 1
        path: list[dict] = []
        while i >= 0:
            s = steps[i]
            path.append(s)
            if s["op"] in ("open", "snapshot"):
                break                    # where the file came from
            came_from = {"fork": s.get("parent"), "recv": s.get("from_pid")}.get(
                s["op"], s["pid"])      # exec, tunsetiff: the same process earlier
            i -= 1
            while i >= 0 and steps[i]["pid"] != came_from:
                i -= 1
        hops: list[dict] = []
        for s in reversed(path):
            if hops and s["op"] == "tunsetiff" and hops[-1]["pid"] == s["pid"]:
                continue                 # open + TUNSETIFF by one process: one hop
            hops.append({k: s[k] for k in ("op", "pid", "comm", "fd")})
        return hops

    # ---- events ------------------------------------------------------------

    def apply(self, e: ev.Event) -> list[dict]:
        """Apply one event; return the reports it produces (maybe none)."""
        out: list[dict] = []
        proc = self.procs.get(getattr(e, "pid", None))
        if proc is None and e.pid in self._missed and any(
                q in self.procs for q in self._missed[e.pid]):
            proc = self._proc(e.pid, e.comm)    # it shares a table with a known one
        if proc is not None and proc.exec_table is not None and not isinstance(e, ev.Exec):
            # the exec that began did not happen (it failed, or the process died)
            own, proc.exec_table = proc.exec_table, None
            self._discard_table(own, e.ts, proc, out)
        tid = getattr(e, "tid", None)
        ptr = acted_on(e)
        if ptr and proc is not None and tid != proc.pid and tid in proc.threads:
            self._check_thread(proc, e, ptr, out)
        self._apply(proc, e, out)
        if ptr:
            self._learn_table(e.pid, tid, ptr)
        return out

    def _apply(self, proc: Process | None, e: ev.Event, out: list) -> None:
        tid = getattr(e, "tid", None)
        if proc is not None and isinstance(e, ev.Fork) and e.flags & ev.CLONE_THREAD:
            self._new_thread(proc, tid, e, out)
            return
        if proc is not None and tid is not None and tid != proc.pid:
            e = self._thread_event(proc, e, out)
            if e is None:
                return
            if tid in proc.thread_tables and not (isinstance(e, ev.Exit) and not e.thread):
                # a thread with a table other than the leader's: the event is about it
                # (the process's exit, seen by its last thread, is about every table)
                leader, proc.table = proc.table, proc.thread_tables[tid]
                self._swapped = (proc, leader)
                try:
                    getattr(self, "_on_" + type(e).__name__)(e, out)
                finally:
                    self._swapped = None
                    if self.procs.get(proc.pid) is proc and tid in proc.thread_tables:
                        proc.thread_tables[tid], proc.table = proc.table, leader
                return
        getattr(self, "_on_" + type(e).__name__)(e, out)

    def _tables(self):
        """Every fd table the model holds (a table shared by several, once each)."""
        seen = set()
        for proc in self.procs.values():
            for t in (proc.table, *proc.thread_tables.values()):
                if id(t) not in seen:
                    seen.add(id(t))
                    yield t

    def _table_at(self, ptr: int) -> FdTable | None:
        """The table the kernel's struct files_struct * names, where learned."""
        return next((t for t in self._tables() if t.ptr == ptr), None)

    def _learn_table(self, pid: int, tid: int, ptr: int) -> None:
        """A record of task tid says which kernel table the one the model has it use
        is: learned where not known yet (another the model took for it - freed
        since, its address reused - no longer is)."""
        proc = self.procs.get(pid)
        if proc is None or (tid != pid and tid not in proc.threads):
            return
        t = self._table_of(proc, tid)
        if t.ptr:
            return
        other = self._table_at(ptr)
        if other is not None:
            other.ptr = 0
        t.ptr = ptr

    def _check_thread(self, proc: Process, e: ev.Event, ptr: int, out: list) -> None:
        """A known thread whose record names another kernel table than the one the
        model has it use: the model took it for a user of a table it had left
        before the trace (it unshared, then its leader did: all the model sees is
        the leader's unshare). It is forgotten, and known again at this record, as
        a thread first seen acting. (A record that says the thread was on its
        leader's table, where the model has it: the leader's to answer for.)"""
        tid = e.tid
        t = self._table_of(proc, tid)
        if t.ptr and t.ptr != ptr and not (t is proc.table and e.own_table is False):
            proc.threads.discard(tid)
            self._leave_table(proc.thread_tables.pop(tid, proc.table), tid, e.ts, proc, out)

    # ---- threads: each a user of the fd table it uses ----------------------------

    def _table_of(self, proc: Process, tid: int) -> FdTable:
        return proc.thread_tables.get(tid, proc.table)

    def _task(self, e: ev.Event) -> int:
        """The task whose view of /proc (and kcmp) is the fd table e applies to: its
        thread, while that thread's own table is swapped in (see apply), else the
        process (its leader's table)."""
        swapped = self._swapped
        return e.tid if swapped is not None and swapped[0].pid == e.pid else e.pid

    def _task_tables(self, proc: Process) -> list[tuple[int, FdTable]]:
        """Each fd table of a process with a task /proc and kcmp reach it through:
        (pid, its leader's), then (tid, table) for each of its threads' own tables,
        once, under the lowest tid using it (also while a thread's event runs)."""
        leader = self._leaders_table(proc)
        out = [(proc.pid, leader)]
        seen = {id(leader)}
        for tid in sorted(proc.thread_tables):
            t = proc.thread_tables[tid]
            if id(t) not in seen:
                seen.add(id(t))
                out.append((tid, t))
        return out

    def _leaders_table(self, proc: Process) -> FdTable:
        """The table of proc's leader, the one its pid names (pidfd_getfd takes from
        it), even while one of its threads' events is applied to the thread's."""
        swapped = self._swapped
        return swapped[1] if swapped is not None and swapped[0] is proc else proc.table

    def table_of(self, pid: int, tid: int) -> FdTable | None:
        """The fd table thread `tid` of process `pid` uses (None: not known). A
        process the last snapshot missed that shared a table with a known one
        (see apply) uses that table."""
        proc = self.procs.get(pid)
        if proc is None:
            sharer = next((q for q in self._missed.get(pid, ()) if q in self.procs), None)
            return self.procs[sharer].table if sharer is not None else None
        return self._table_of(proc, tid)

    def _new_thread(self, proc: Process, tid: int, e: ev.Fork, out: list) -> None:
        """clone(CLONE_THREAD): the new thread uses its creator's table (a copy of it
        without CLONE_FILES)."""
        self._know_thread(proc, tid, known=e.own_table, ptr=acted_on(e))
        child = e.child
        if child in proc.threads:
            # named already by a look at /proc/PID/task made after this clone (an
            # unshare's): its clone, not that look, says which table it uses
            proc.threads.discard(child)
            self._leave_table(proc.thread_tables.pop(child, proc.table), child, e.ts,
                              proc, out)
        t = self._table_of(proc, tid)
        if not e.flags & ev.CLONE_FILES:
            t = self._copy_table(t)
        t.users.add(child)
        proc.threads.add(child)
        if t is not proc.table:
            proc.thread_tables[child] = t

    def _know_thread(self, proc: Process, tid: int, ask: bool = True,
                     known: bool | None = None, ptr: int = 0) -> bool:
        """A thread first seen acting (made before the trace or a resync): it uses
        the leader's table unless /proc says it has one of its own (`ask`), which
        it then gets, with what /proc shows in it. known: what the thread's record
        says (Event.own_table); False, the leader's table - nothing to ask. True
        if its table is one read from /proc just now."""
        if tid == proc.pid or tid in proc.threads:
            return False
        proc.threads.add(tid)
        # a table the model knows by the kernel's identity (ptr: its record's)
        kin = self._table_at(ptr) if ptr and ask and known is not False else None
        if kin is not None and not (known and kin is proc.table):
            kin.users.add(tid)
            if kin is not proc.table:
                proc.thread_tables[tid] = kin
            return False
        own = self._thread_table(proc.pid, tid, known) if ask and known is not False \
            else None
        if own is None:
            proc.table.users.add(tid)
            return False
        # its own table may be one another thread of its process has (it was made
        # by a thread that had unshared, both unseen) or another process's (it
        # unshared, then cloned a CLONE_FILES child; a resync since forgot the
        # thread): then it is that one
        kin = next((t for task, t in self._task_tables(proc)[1:]
                    if self._same_table(tid, task)), None)
        if kin is None:
            kin = next((q.table for q in self.procs.values() if q is not proc
                        and self._same_table(tid, q.pid)), None)
        if kin is not None:
            kin.users.add(tid)
            proc.thread_tables[tid] = kin
            self._know_table_mates(proc, tid, kin)
            return False
        t = self._new_table()
        t.users.add(tid)
        proc.thread_tables[tid] = t
        self._fill_from_proc(t, tid, own, [proc])
        self._know_table_mates(proc, tid, t)
        return True

    def _know_table_mates(self, proc: Process, tid: int, t: FdTable) -> None:
        """Threads of proc not seen yet that use the table thread tid was just found
        to have of its own (made by it, or left it with it by the leader's unshare,
        before the trace): users of that table too (kcmp KCMP_FILES), so that it is
        one table, its rows named by the lowest tid using it."""
        for other in self._threads_of(proc.pid):
            if other != tid and other not in proc.threads and self._same_table(tid, other):
                proc.threads.add(other)
                t.users.add(other)
                proc.thread_tables[other] = t

    def _fill_from_proc(self, t: FdTable, pid: int, own: list, first: list) -> None:
        """Put the tun fds /proc shows in a table of pid's (or a thread's) into `t`,
        each known by kcmp where a process holds it (those of `first` asked first),
        else a file of its own."""
        others = first + [p for p in self.procs.values() if p not in first]
        for fd, name, cloexec in own:
            if not isinstance(name, str):
                continue
            f = (self._kcmp_file(pid, fd, name, others) or self._inflight_file(pid, fd, name)
                 or self._file_from_proc(pid, fd, name))
            f.refs += 1
            t.fds[fd] = Entry(f, cloexec, "snapshot", None, None, None)

    def reload_table(self, pid: int, own: list, ts: int) -> list[dict]:
        """A process's fd table as /proc shows it now ((fd, ifname, cloexec) as in
        thread_table), instead of the copy a fork (or an exec's or unshare's parting)
        gave it: one older than the snapshot's read of the table it copied copies
        what the others did after."""
        proc = self.procs.get(pid)
        out: list[dict] = []
        if proc is None:
            return out
        for fd in sorted(proc.table.fds):
            self._drop_entry(proc, fd, ts, pid, proc.comm, "stale", out, report=False)
        parent = self.procs.get(proc.ppid) if proc.ppid is not None else None
        rest = []
        for fd, name, cloexec in own:
            # a fork copies fd numbers: the parent's file at that fd, unless kcmp
            # says otherwise
            held = parent.table.fds.get(fd) if parent is not None else None
            if held is not None and isinstance(name, str) and \
                    (held.file.ifname or "") == name and \
                    self._same_file(pid, fd, parent.pid, fd) is not False:
                held.file.refs += 1
                proc.table.fds[fd] = Entry(held.file, cloexec, "inherited", parent.pid, fd,
                                           None)
            else:
                rest.append((fd, name, cloexec))
        self._fill_from_proc(proc.table, pid, rest, [parent] if parent is not None else [])
        return out

    def _leave_table(self, t: FdTable, user: int, ts: int, proc: Process, out: list) -> None:
        """A process or thread stops using a table: its files go with its last user."""
        t.users.discard(user)
        if not t.users:
            self._discard_table(t, ts, proc, out)

    def _thread_event(self, proc: Process, e: ev.Event, out: list) -> ev.Event | None:
        """An event of a thread that is not the leader, as it acts on the tables: its
        unshare (unshare(CLONE_FILES), close_range's CLOSE_RANGE_UNSHARE) gives it a
        table of its own when it shares one, its exit leaves its table. None:
        nothing more to apply."""
        tid = e.tid
        if isinstance(e, ev.Exit) and e.thread:
            if tid in proc.threads:
                proc.threads.discard(tid)
                self._leave_table(proc.thread_tables.pop(tid, proc.table), tid, e.ts, proc,
                                  out)
            return None
        if self._know_thread(proc, tid, known=e.own_table, ptr=acted_on(e)) \
                and isinstance(e, READ_SHOWS) \
                and not (isinstance(e, ev.CloseRange) and e.flags & ev.CLOSE_RANGE_UNSHARE):
            # its table was read from /proc just now, after e: e's change is in it
            # (applied again, an open would put a file /proc named in its fd;
            # a TUNSETIFF and a receive still apply, for who made and who sent)
            if isinstance(e, ev.Open) and e.file:
                entry = self._table_of(proc, tid).fds.get(e.fd)
                if entry is not None and not entry.file.ptr:
                    entry.file.ptr = e.file     # the kernel's identity of what /proc named
            return None
        unshare = isinstance(e, ev.Unshare) and not e.flags & ev.UNSHARE_AT_EXEC
        if unshare or (isinstance(e, ev.CloseRange) and e.flags & ev.CLOSE_RANGE_UNSHARE):
            t = self._table_of(proc, tid)
            if len(t.users) > 1:            # the kernel copies a table only if shared
                own = self._copy_table(t)
                t.users.discard(tid)
                own.users.add(tid)
                proc.thread_tables[tid] = own
            if unshare:
                return None
            return dataclasses.replace(e, flags=e.flags & ~ev.CLOSE_RANGE_UNSHARE)
        return e

    def _comm_for(self, e) -> str:
        p = self.procs.get(e.pid)
        if p is not None and e.tid != e.pid:
            return p.comm            # a thread's name is not the process's
        if p is not None:
            p.comm = e.comm          # the leader renamed itself (prctl, exec)
        elif e.tid != e.pid:         # a new process seen through one of its threads
            return self._comm_of(e.pid) or e.comm
        return e.comm

    def _on_Open(self, e: ev.Open, out: list) -> None:
        proc = self._proc(e.pid, self._comm_for(e))
        self._drop_entry(proc, e.fd, e.ts, e.tid, e.comm, "stale", out, report=False)
        known = self.by_ptr.get(e.file) if e.file else None
        if known is not None:
            # installed again, not opened (io_uring, seccomp addfd): the kernel
            # backend knows it by its struct file
            known.refs += 1
            cloexec = bool(e.flags & ev.O_CLOEXEC)
            proc.table.fds[e.fd] = Entry(known, cloexec, "installed", by=e.pid)
            known.step(e.ts, "install", e.pid, self._comm_for(e), e.fd)
            out.append(self._report("open", e.ts, e.pid, e.tid, self._comm_for(e), fd=e.fd,
                                    path=known.path, ifname=known.label, cloexec=cloexec,
                                    how="installed", **_kind(known)))
            return
        ifname = None
        if e.path.startswith("/dev/tap"):
            try:
                ifname = self._ifindex_name(int(e.path[8:]))
            except ValueError:
                ifname = None
        f = self._new_file(e.path, ifname)
        f.refs = 1
        self._learn(f, e.file)
        if ifname or f.is_vhost:    # the open is the attach (macvtap) or the whole make
            f.creator_pid, f.creator_comm = e.pid, self._comm_for(e)
            if ifname:
                self._learn_netns(f, e.pid, e.fd)
            tap = self._tap_of(f)
            if tap is not None:
                tap.files.add(f.id)
        cloexec = None if e.flags & ev.CLOEXEC_UNKNOWN else bool(e.flags & ev.O_CLOEXEC)
        proc.table.fds[e.fd] = Entry(f, cloexec, "opened", by=e.pid)
        f.step(e.ts, "open", e.pid, self._comm_for(e), e.fd, path=e.path)
        out.append(self._report("open", e.ts, e.pid, e.tid, self._comm_for(e), fd=e.fd,
                                path=e.path, ifname=ifname, cloexec=cloexec,
                                **self._file_ns(f)))

    def _file_at(self, pid: int, fd: int, comm: str, ptr: int = 0,
                 cloexec: bool | None = None) -> OpenFile:
        """The open file behind pid/fd, adopting one the model missed (with the
        close-on-exec bit the record read, where it did)."""
        proc = self._proc(pid, comm)
        entry = proc.table.fds.get(fd)
        if entry is None:
            f = self._new_file()
            f.refs = 1
            entry = proc.table.fds[fd] = Entry(f, bool(cloexec), "unknown", by=pid)
        elif entry.cloexec is None and cloexec is not None:
            entry.cloexec = cloexec
        self._learn(entry.file, ptr)
        return entry.file

    @staticmethod
    def _stale_at(entry: Entry, e: ev.TunIoctl) -> bool:
        """Does this tun ioctl's result show that `entry` is no longer at e.fd?"""
        f = entry.file
        if f.is_vhost:                # vhost-net answers ENOTTY to every tun ioctl
            return e.ret != -errno.ENOTTY
        if -e.ret in (errno.EBADF, errno.ENOTTY):
            return True               # not open, or not a tun/tap fd at all
        if e.ret != 0 or not f.ifname or f.path.startswith("/dev/tap"):
            return False
        if e.cmd == ev.TUNSETIFF:
            return True               # an attached file gets EEXIST: this one was fresh
        return e.cmd == ev.TUNGETIFF and bool(e.ifname) and e.ifname != f.ifname

    def _on_TunIoctl(self, e: ev.TunIoctl, out: list) -> None:
        comm = self._comm_for(e)
        name = ev.TUN_IOCTL_NAMES.get(e.cmd, hex(e.cmd))
        base = {"fd": e.fd, "ioctl": name, "ret": e.ret, "error": errname(e.ret) or None}
        proc = self.procs.get(e.pid)
        entry = proc.table.fds.get(e.fd) if proc else None
        if entry is not None and (self._stale_at(entry, e) or (
                e.file and entry.file.ptr and entry.file.ptr != e.file)):
            # The kernel's answer proves the file the model had at this fd was closed
            # unseen (io_uring, lost records): it goes quietly, like a reused slot.
            self._drop_entry(proc, e.fd, e.ts, e.tid, comm, "stale", out, report=False)
            entry = None
        if e.cmd == ev.TUNGETIFF:
            f = None
            if e.ret == 0:
                f = self._file_at(e.pid, e.fd, comm, e.file, e.cloexec)
                if f.ifname is None:
                    f.ifname = e.ifname
                    f.iff = f.iff or e.value
                    self._learn_netns(f, e.pid, e.fd)
                    tap = self._tap_of(f)
                    if tap is not None:     # it holds the tap too: no tap_gone without it
                        tap.files.add(f.id)
                        f.netns = tap.netns
                msg = f"fd {e.fd} is {e.ifname}"
            else:
                msg = {
                    errno.ENOTTY: f"fd {e.fd} is not a tap (ENOTTY)",
                    errno.EBADF: f"fd {e.fd} is not open (EBADF)",
                    errno.EBADFD: f"fd {e.fd} is a tun fd with no interface attached (EBADFD)",
                }.get(-e.ret, f"TUNGETIFF on fd {e.fd} failed ({errname(e.ret)})")
            out.append(self._report("tungetiff", e.ts, e.pid, e.tid, comm, **base,
                                    ifname=e.ifname if e.ret == 0 else None, message=msg,
                                    **self._file_ns(f)))
            return
        if e.cmd == ev.TUNSETIFF:
            if e.ret != 0:
                out.append(self._report("tunsetiff", e.ts, e.pid, e.tid, comm, **base,
                                        ifname=e.ifname or None, flags=ev.iff_names(e.value),
                                        created=False, kind=_requested_kind(e.value),
                                        **self.ns_fields(None)))
                return
            f = self._file_at(e.pid, e.fd, comm, e.file, e.cloexec)
            if f.path.startswith("/dev/tap"):
                # macvtap/ipvtap: the open was the attach; TUNSETIFF only sets flags
                # and ignores (and returns) the name it was given
                f.iff = e.value
                out.append(self._report("tunsetiff", e.ts, e.pid, e.tid, comm, **base,
                                        ifname=f.ifname, flags=ev.iff_names(e.value),
                                        created=False, kind=f.kind, **self._file_ns(f)))
                return
            f.ifname, f.iff = e.ifname, e.value
            f.creator_pid, f.creator_comm = e.pid, comm
            # The device was made (or found) in the namespace the file was opened in,
            # which the fd itself tells (not where the process is now)
            f.netns = None
            self._learn_netns(f, e.pid, e.fd)
            tap = self._tap_of(f)
            created = tap is None
            if created:
                # IFF_PERSIST in TUNSETIFF's flags is ignored by the kernel: a new
                # device is persistent only after TUNSETPERSIST.
                tap = Tap(e.ifname, "tap" if e.value & ev.IFF_TAP else "tun",
                          e.value & ~ev.IFF_PERSIST, False, e.pid, comm, netns=f.netns)
                self.taps[tap.key] = tap
            f.netns = tap.netns
            tap.files.add(f.id)
            f.step(e.ts, "tunsetiff", e.pid, comm, e.fd, created=created)
            out.append(self._report("tunsetiff", e.ts, e.pid, e.tid, comm, **base,
                                    ifname=e.ifname, flags=ev.iff_names(e.value),
                                    created=created, kind=tap.kind, **self._file_ns(f)))
            return
        f = entry.file if entry else None
        ifname = f.ifname if f else (e.ifname or None)
        ns = self._file_ns(f)
        if e.cmd == ev.TUNSETQUEUE:
            attach = bool(e.value & ev.IFF_ATTACH_QUEUE)
            if e.ret == 0 and f is not None:
                f.queue_detached = not attach
            out.append(self._report("tunsetqueue", e.ts, e.pid, e.tid, comm, **base,
                                    ifname=ifname, op="attach" if attach else "detach", **ns))
        elif e.cmd == ev.TUNSETPERSIST:
            tap = self._tap(f.netns if f else None, ifname)
            if e.ret == 0 and tap is not None and not e.shown:
                tap.persist = bool(e.value)
                tap.persist_by = e.pid if e.value else None
            out.append(self._report("tunsetpersist", e.ts, e.pid, e.tid, comm, **base,
                                    ifname=ifname, persist=bool(e.value), **ns))
        elif e.cmd in (ev.TUNSETOWNER, ev.TUNSETGROUP):
            key = "uid" if e.cmd == ev.TUNSETOWNER else "gid"
            value = e.value & 0xFFFFFFFF
            tap = self._tap(f.netns if f else None, ifname)
            if e.ret == 0 and tap is not None and not e.shown:
                who = None if value == 0xFFFFFFFF else value
                if key == "uid":
                    tap.owner = who
                else:
                    tap.group = who
            out.append(self._report(name.lower(), e.ts, e.pid, e.tid, comm, **base,
                                    ifname=ifname, **{key: None if value == 0xFFFFFFFF
                                                      else value}, **ns))

    @staticmethod
    def _vhost_error(e: ev.VhostBackend, f: OpenFile | None) -> str:
        """Why VHOST_NET_SET_BACKEND failed, in the terms of drivers/vhost/net.c."""
        err = errname(e.ret)
        if f is not None and not f.is_vhost:
            what = f"a {f.kind} fd ({f.label})" if f.label else f"a {f.kind} fd"
            return f"fd {e.fd} is {what}, not vhost-net ({err})"
        return {
            errno.ENOTTY: f"fd {e.fd} is not a vhost-net fd (ENOTTY)",
            errno.EBADF: f"fd {e.fd} is not open (EBADF)",
            errno.ENOTSOCK: f"fd {e.backend_fd} is not a tap, macvtap or packet socket "
                            "(ENOTSOCK)",
            errno.EPERM: f"fd {e.fd} has another owner or none yet: VHOST_SET_OWNER "
                         "first (EPERM)",
            errno.ENOBUFS: f"no vring {e.index}: vhost-net has 0 (rx) and 1 (tx) (ENOBUFS)",
            errno.EFAULT: f"vring {e.index} is not set up, or a bad pointer (EFAULT)",
        }.get(-e.ret, f"VHOST_NET_SET_BACKEND on fd {e.fd} failed ({err})")

    def _backend_at(self, proc: Process, fd: int, comm: str) -> OpenFile | None:
        """The file at `fd` that a vhost vring now uses: a tracked one, or a tun fd the
        model missed (asked of the FdProbe); None for anything else (packet socket)."""
        entry = proc.table.fds.get(fd)
        if entry is not None:
            return entry.file
        name = self._probe_fd(proc.pid, fd)
        if not isinstance(name, str):
            return None
        f = self._file_at(proc.pid, fd, comm)
        if name and f.ifname is None:
            f.ifname = name
            self._learn_netns(f, proc.pid, fd)
            tap = self._tap_of(f)
            if tap is not None:
                f.iff, f.netns = tap.iff, tap.netns
                tap.files.add(f.id)
        return f

    def _on_VhostBackend(self, e: ev.VhostBackend, out: list) -> None:
        comm = self._comm_for(e)
        proc = self.procs.get(e.pid)
        entry = proc.table.fds.get(e.fd) if proc else None
        if entry is not None:
            f = entry.file
            # Only vhost-net knows this ioctl: success proves a tun file there was
            # closed unseen; ENOTTY/EBADF prove the same of a vhost file.
            stale = (-e.ret in (errno.EBADF, errno.ENOTTY) if f.is_vhost
                     else e.ret == 0 or e.ret == -errno.EBADF)
            if stale:
                self._drop_entry(proc, e.fd, e.ts, e.tid, comm, "stale", out, report=False)
                entry = None
        vq = ev.VHOST_VQ_NAMES.get(e.index)
        base = {"fd": e.fd, "index": e.index, "vq": vq, "backend_fd": e.backend_fd,
                "ret": e.ret, "error": errname(e.ret) or None}
        where = f"vring {e.index}{f' ({vq})' if vq else ''}"
        if e.ret != 0:
            wanted = proc.table.fds.get(e.backend_fd) if proc and e.backend_fd >= 0 else None
            out.append(self._report("vhost_backend", e.ts, e.pid, e.tid, comm, **base,
                                    op="detach" if e.backend_fd == -1 else "attach",
                                    ifname=wanted.file.label if wanted else None,
                                    message=self._vhost_error(e, entry.file if entry else None),
                                    **self._file_ns(wanted.file if wanted else None)))
            return
        proc = self._proc(e.pid, comm)
        if entry is None:             # a vhost fd the model missed: it is one now
            f = self._new_file(ev.VHOST_PATH)
            f.refs = 1
            entry = proc.table.fds[e.fd] = Entry(f, False, "unknown", by=e.pid)
        f = entry.file
        old = f.backends.pop(e.index, None)
        if e.backend_fd == -1:
            ifname = old.label if old is not None else None
            msg = f"{where} detached{f' from {ifname}' if ifname else ''}"
            op = "detach"
            about = old
        else:
            b = self._backend_at(proc, e.backend_fd, comm)
            if b is f:
                b = None              # cannot be (ENOTSOCK); never a cycle of references
            f.backends[e.index] = b
            if b is not None:         # the vring holds the backend's file
                b.refs += 1
                b.step(e.ts, "vhost", e.pid, comm, e.backend_fd, vhost_fd=e.fd,
                       index=e.index)
            ifname = b.label if b is not None else None
            what = f"{b.kind} {ifname}" if b is not None and ifname else (
                f"{b.kind} fd" if b is not None else "an untracked socket")
            msg = f"{where} ← fd {e.backend_fd} ({what})"
            op = "attach"
            about = b
        gone: list[dict] = []         # the line first, then a tap_gone it caused
        if old is not None:           # the replaced backend's reference goes after
            self._release(old, e.ts, e.pid, comm, gone)
        f.step(e.ts, "vhost_backend", e.pid, comm, e.fd, index=e.index,
               backend_fd=e.backend_fd)
        out.append(self._report("vhost_backend", e.ts, e.pid, e.tid, comm, **base, op=op,
                                ifname=ifname, message=msg,
                                **self._file_ns(about)))
        out.extend(gone)

    def _on_Dup(self, e: ev.Dup, out: list) -> None:
        proc = self.procs.get(e.pid)
        if proc is None or e.oldfd == e.newfd:
            return
        comm = self._comm_for(e)
        src = proc.table.fds.get(e.oldfd)
        if src is not None:
            self._learn(src.file, e.file)
        elif e.file in self.by_ptr:      # kernel backend: the file, whatever the fd says
            f = self.by_ptr[e.file]
            src = Entry(f, None, "dup")
        held = proc.table.fds.get(e.newfd)
        if (src is None and held is not None and held.file.ifname
                and self._probe_fd(e.pid, e.newfd) == held.file.ifname):
            # from an fd the model does not know onto one it does, and /proc shows the
            # same tap there now: a snapshot read after this dup already holds its
            # result (the file it shows at newfd is the one that was at oldfd)
            return
        if e.how in ("dup2", "dup3"):
            # dup2/dup3 silently close what newfd held.
            self._drop_entry(proc, e.newfd, e.ts, e.tid, comm, e.how, out)
        else:
            # dup/F_DUPFD take a free slot: whatever the model had there is stale.
            self._drop_entry(proc, e.newfd, e.ts, e.tid, comm, "stale", out, report=False)
        if src is None:
            return
        proc.table.fds[e.newfd] = Entry(src.file, e.cloexec, "dup", e.pid, e.oldfd, e.pid)
        src.file.refs += 1
        src.file.step(e.ts, "dup", e.pid, comm, e.newfd, from_fd=e.oldfd)
        out.append(self._report("dup", e.ts, e.pid, e.tid, comm, fd=e.oldfd, newfd=e.newfd,
                                how=e.how, cloexec=e.cloexec, ifname=src.file.label,
                                **_kind(src.file), **self._file_ns(src.file)))

    def _on_Close(self, e: ev.Close, out: list) -> None:
        proc = self.procs.get(e.pid)
        if proc is not None:
            self._drop_entry(proc, e.fd, e.ts, e.tid, self._comm_for(e), "close", out)

    def _on_CloseRange(self, e: ev.CloseRange, out: list) -> None:
        proc = self.procs.get(e.pid)
        if proc is None:
            return
        comm = self._comm_for(e)
        if e.flags & ev.CLOSE_RANGE_UNSHARE:
            self._leader_unshare(proc)
        for fd in sorted(fd for fd in proc.table.fds if e.first <= fd <= e.last):
            if e.flags & ev.CLOSE_RANGE_CLOEXEC:
                entry = proc.table.fds[fd]
                entry.cloexec = True
                out.append(self._report("cloexec", e.ts, e.pid, e.tid, comm, fd=fd,
                                        cloexec=True, how="close_range",
                                        ifname=entry.file.label, **_kind(entry.file),
                                        **self._file_ns(entry.file)))
            else:
                self._drop_entry(proc, fd, e.ts, e.tid, comm, "close_range", out)

    def _on_SetFd(self, e: ev.SetFd, out: list) -> None:
        proc = self.procs.get(e.pid)
        entry = proc.table.fds.get(e.fd) if proc else None
        if entry is None:
            return
        entry.cloexec = e.cloexec
        out.append(self._report("cloexec", e.ts, e.pid, e.tid, self._comm_for(e), fd=e.fd,
                                cloexec=e.cloexec, how=e.how, ifname=entry.file.label,
                                **_kind(entry.file), **self._file_ns(entry.file)))

    def _on_Fork(self, e: ev.Fork, out: list) -> None:
        if e.flags & ev.CLONE_THREAD:                  # a thread of an unknown process
            return
        stale = self.procs.pop(e.child, None)          # pid reuse after a missed exit
        if stale is not None:
            self._drop_table_user(stale, e.ts, stale.comm, out)
        shared = bool(e.flags & ev.CLONE_FILES)
        parent = self.procs.get(e.pid)
        if parent is None and shared:
            # a table shared before it holds any tap (the BPF reports these clones from
            # anyone): the child may make a tap in it and leave, the parent keep it (pasta)
            parent = self._proc(e.pid, e.comm)
        if parent is None:
            return
        comm = self._comm_for(e)                       # the parent process's name
        child_comm = e.comm                            # the child copies the forking thread's
        if shared:
            table = parent.table
        else:
            table = self._copy_table(parent.table)
            for fd, entry in table.fds.items():
                entry.how, entry.from_pid, entry.from_fd = "inherited", e.pid, fd
                entry.by = e.child
        table.users.add(e.child)
        self.procs[e.child] = Process(e.child, child_comm, table, e.pid)
        fds = sorted(table.fds)
        if not shared:
            for fd in fds:
                table.fds[fd].file.step(e.ts, "fork", e.child, child_comm, fd, parent=e.pid)
        out.append(self._report("fork", e.ts, e.pid, e.tid, comm, child_pid=e.child,
                                flags=ev.clone_names(e.flags), shared_table=shared,
                                fds=fds, **self._fds_fields(table, fds), quiet=not fds))

    def _on_Exec(self, e: ev.Exec, out: list) -> None:
        proc = self.procs.get(e.pid)
        if proc is None:
            return
        own, proc.exec_table = proc.exec_table, None
        # the other threads die in the exec; the one that exec'd becomes the leader,
        # with the table it used
        mine = self._table_of(proc, e.old_pid)
        for tid in sorted(proc.threads - {e.old_pid}):
            self._leave_table(self._table_of(proc, tid), tid, e.ts, proc, out)
        if e.old_pid != proc.pid:
            mine.users.discard(e.old_pid)
            if mine is not proc.table:
                self._leave_table(proc.table, proc.pid, e.ts, proc, out)
                proc.table = mine
                mine.users.add(proc.pid)
        proc.threads, proc.thread_tables = set(), {}
        self._unshare(proc, own, e.ts)  # exec gives a CLONE_FILES sharer its own table
        proc.comm = e.comm
        kept, closed, gone = [], [], []   # the exec line first, then what it made go
        for fd in sorted(proc.table.fds):
            entry = proc.table.fds[fd]
            if entry.cloexec is None:
                # unknown since its first sight: what /proc shows after the exec says
                entry.cloexec = not isinstance(self._probe_fd(proc.pid, fd), str)
            if entry.cloexec:
                closed.append(fd)
                self._drop_entry(proc, fd, e.ts, e.tid, e.comm, "exec", gone, report=False)
            else:
                kept.append(fd)
                entry.file.step(e.ts, "exec", e.pid, e.comm, fd)
        vhost = [fd for fd in kept if proc.table.fds[fd].file.is_vhost]
        out.append(self._report("exec", e.ts, e.pid, e.tid, e.comm, kept=kept, closed=closed,
                                ifnames={str(fd): proc.table.fds[fd].file.label
                                         for fd in kept},
                                netns={str(fd): self._file_ns(proc.table.fds[fd].file)["netns"]
                                       for fd in kept},
                                **({"vhost_fds": vhost} if vhost else {}),
                                quiet=not kept and not closed))
        out.extend(gone)

    def _on_Exit(self, e: ev.Exit, out: list) -> None:
        if e.thread:                    # a thread's own table (see apply): not the process
            return
        proc = self.procs.pop(e.pid, None)
        if proc is None:
            return
        gone: list[dict] = []
        for tid in sorted(proc.threads):   # threads the exit did not report one by one
            self._leave_table(self._table_of(proc, tid), tid, e.ts, proc, gone)
        proc.threads, proc.thread_tables = set(), {}
        closed = self._drop_table_user(proc, e.ts, proc.comm, gone)
        vhost = [fd for fd, _n, is_vhost, _ns in closed if is_vhost]
        out.append(self._report("exit", e.ts, e.pid, e.tid, proc.comm,
                                closed=[fd for fd, _n, _v, _ns in closed],
                                ifnames=[n for _fd, n, _v, _ns in closed],
                                netns=[ns for _fd, _n, _v, ns in closed],
                                **({"vhost_fds": vhost} if vhost else {}), quiet=not closed))
        out.extend(gone)

    def _on_Unshare(self, e: ev.Unshare, out: list) -> None:
        proc = self.procs.get(e.pid)
        if proc is None:
            return
        if not e.flags & ev.UNSHARE_AT_EXEC:
            self._leader_unshare(proc)
        elif len(proc.table.users) > 1:
            proc.exec_table = self._copy_table(proc.table)

    def _on_ScmSend(self, e: ev.ScmSend, out: list) -> None:
        proc = self.procs.get(e.pid)
        if proc is None:
            return
        if e.files and not e.fds:
            # kernel backend: the message's files; the sender's fd holding each
            files, fds = [], []
            for ptr in e.files:
                f = self.by_ptr.get(ptr)
                fd = next((fd for fd, en in sorted(proc.table.fds.items()) if en.file is f),
                          None) if f is not None else None
                if fd is not None:
                    files.append(f)
                    fds.append(fd)
            e = dataclasses.replace(e, fds=tuple(fds))
        else:
            files = [proc.table.fds[fd].file if fd in proc.table.fds else None
                     for fd in e.fds]
        if not any(files):
            return
        comm = self._comm_for(e)
        for fd, f in zip(e.fds, files):
            if f is not None:
                f.refs += 1                     # the message in flight holds it
                f.step(e.ts, "send", e.pid, comm, fd, sock=e.sock)
        self.pending.append(PendingSend(e.ts, e.pid, comm, e.sock, e.fds, files,
                                        e.truncated, e.queue, e.queue_ino))
        tracked = [fd for fd, f in zip(e.fds, files) if f]
        out.append(self._report("scm_send", e.ts, e.pid, e.tid, comm, sock=e.sock,
                                fds=tracked, **self._fds_fields(proc.table, tracked)))

    def _match_send(self, e: ev.ScmRecv) -> PendingSend | None:
        task = self._task(e)
        names = [self._probe_fd(task, fd) for fd in e.fds]
        # A control buffer too small for every fd (MSG_CTRUNC) gets the first ones
        # only; the kernel drops the rest. Such a shorter receive takes a longer send
        # only when no send matches exactly and /proc confirms what arrived.
        # A message too large for its records is so at both ends: a cut-short
        # receive is matched only to a cut-short send, by the fds both list.
        # (The kernel hands all of a message's fds over in one list, so a message
        # sent in too many lists is cut short at its send only.)
        # Where both ends say which socket's queue (tracepoint backend with BTF), a
        # send queued on another socket is no candidate, whatever its shape.
        # (a socket at the address of one freed with a message nobody received:
        # another socket, by its inode)
        pending = [s for s in self.pending
                   if not (e.queue and s.queue and s.queue != e.queue)
                   and not (e.queue_ino and s.queue_ino and s.queue_ino != e.queue_ino)]
        short = [s for s in pending if s.truncated and len(s.fds) <= len(e.fds)]
        if e.truncated:
            exact, cut = short, []
        else:
            exact = [s for s in pending if not s.truncated and len(s.fds) == len(e.fds)]
            exact += short
            cut = [s for s in pending if not s.truncated and len(s.fds) > len(e.fds)]
        if not any(isinstance(n, str) and n for n in names):
            cut = []
        for send in exact + cut:
            ok = True
            for f, name in zip(send.files, names):
                if name is None:
                    continue          # not readable now: trust the order
                if name is False:     # open, and not a tun fd
                    if f is not None:
                        ok = False
                    continue
                if f is None and name:
                    ok = False        # a tap arrived where an untracked fd was sent
                if f is not None and name != (f.ifname or ""):
                    ok = False
            if ok:
                return send
        return None

    def _recv_unmatched(self, e: ev.ScmRecv, fds, out: list, report: bool = True,
                        sender: int | None = None) -> list:
        """Received fds no send in flight explains (its send was not seen: lost, cut
        short, before the trace): the ones /proc names as tun/tap fds are taken as
        they are, from an unknown sender - or, where kcmp says one is the same open
        file as one of `sender`'s fds, as that file. Returns the fds taken."""
        task = self._task(e)
        names = [self._probe_fd(task, fd) for fd in fds]
        if not any(isinstance(n, str) for n in names):
            return []
        comm = self._comm_for(e)
        proc = self._proc(e.pid, comm)
        got, ifnames, nses = [], [], []
        for fd, name in zip(fds, names):
            if not isinstance(name, str):
                continue
            self._drop_entry(proc, fd, e.ts, e.tid, comm, "stale", out, report=False)
            f = self._sender_file(task, fd, name, sender)
            from_pid = sender if f is not None else None
            if f is None:
                f = self._held_file(task, fd, name) or self._file_from_proc(task, fd, name)
            f.refs += 1
            proc.table.fds[fd] = Entry(f, e.cloexec, "received", from_pid, None, e.pid)
            f.step(e.ts, "recv", e.pid, comm, fd, from_pid=from_pid, from_fd=None)
            got.append(fd)
            ifnames.append(f.label)
            nses.append(self._file_ns(f)["netns"])
        if report:
            out.append(self._report("scm_recv", e.ts, e.pid, e.tid, comm, sock=e.sock,
                                    fds=got, from_pid=None, from_comm=None,
                                    from_fds=[None] * len(got), ifnames=ifnames, netns=nses,
                                    cloexec=e.cloexec))
        return got

    def _file_from_proc(self, pid: int, fd: int, name: str) -> OpenFile:
        """A received file the model did not know, as /proc names it ("": no tap
        attached): its namespace asked, its tap's flags taken (no reference yet)."""
        f = self._new_file(ifname=name or None)
        if f.ifname:
            self._learn_netns(f, pid, fd)
        tap = self._tap_of(f)
        if tap is not None:
            f.iff = tap.iff
            tap.files.add(f.id)
        return f

    def _inflight_file(self, pid: int, fd: int, name: str) -> OpenFile | None:
        """The file of a message in flight that pid's fd is, when no table holds it
        (kcmp has nothing to compare with): a single-queue interface has one file at
        a time, so an fd attached to it is the one file of it in flight, if exactly
        one is (and no table holds one: kcmp said pid's fd is none of those)."""
        if not name:
            return None
        cands = {f.id: f for s in self.pending for f in s.files
                 if f is not None and f.ifname == name}
        if len(cands) != 1:
            return None
        f = next(iter(cands.values()))
        if not f.iff or f.iff & ev.IFF_MULTI_QUEUE or any(
                e.file.ifname == name for p in self.procs.values()
                for _task, t in self._task_tables(p) for e in t.fds.values()):
            return None
        got = self._netns_of(pid, fd) if f.netns is not None else None
        if got is not None and got[0] is not None and got[0] != f.netns:
            return None                     # a namesake in another namespace
        return f

    def _sender_file(self, pid: int, fd: int, name: str, sender: int | None):
        """The open file of `sender` that pid's fd is (kcmp), of that name, or None."""
        proc = self.procs.get(sender) if sender is not None else None
        return self._kcmp_file(pid, fd, name, [proc] if proc is not None else [])

    def _held_file(self, pid: int, fd: int, name: str):
        """The open file, of that name, some tracked process holds that pid's fd is
        (kcmp; the receiver's own first): a file whose sender has gone, or whose
        send was cut short, is still the one its other holders have."""
        first = self.procs.get(pid)
        if first is None and self._swapped is not None:
            first = self._swapped[0]        # pid is a thread of it (its own table)
        procs = ([first] if first is not None else []) + [
            p for p in self.procs.values() if p is not first]
        return self._kcmp_file(pid, fd, name, procs)

    def _kcmp_file(self, pid: int, fd: int, name: str, procs: list) -> OpenFile | None:
        """The file of those procs' tables (their threads' own too, asked through a
        thread using each) that kcmp says pid's fd is."""
        known: set[int] = set()             # files kcmp said pid's fd is not
        for proc in procs:
            for task, table in self._task_tables(proc):
                for sfd, entry in sorted(table.fds.items()):
                    f = entry.file
                    if f.id in known or (f.ifname or "") != name or (task, sfd) == (pid, fd):
                        continue
                    same = self._same_file(pid, fd, task, sfd)
                    if same:
                        return f
                    if same is not None:
                        known.add(f.id)
        return None

    def learn_from_before(self, e: ev.TunIoctl, last: bool = False) -> None:
        """A TUNSETIFF from before the last snapshot, which already shows its result:
        who did it, which /proc cannot tell, is still worth knowing. `last`: no later
        TUNSETIFF on that interface came before the snapshot either."""
        if e.cmd != ev.TUNSETIFF or e.ret != 0:
            return
        table = self.table_of(e.pid, e.tid)
        entry = table.fds.get(e.fd) if table is not None else None
        f = entry.file if entry is not None else None
        if (f is None or f.ifname != e.ifname) and last:
            f = self._sole_file(e)
        if f is None or f.ifname != e.ifname or f.creator_pid is not None:
            return
        if e.file and f.ptr and f.ptr != e.file:
            return                          # another file at that fd by now
        comm = self._comm_for(e)
        f.creator_pid, f.creator_comm = e.pid, comm
        tap = self._tap_of(f)
        if tap is None:
            # made after the snapshot read /sys (a table read again after it: see
            # reload_table): the record says what it is
            tap = Tap(e.ifname, "tap" if e.value & ev.IFF_TAP else "tun",
                      e.value & ~ev.IFF_PERSIST, False, e.pid, comm,
                      netns=f.netns if f.netns is not None else (e.netns or None))
            self.taps[tap.key] = tap
            f.netns, f.iff = tap.netns, f.iff or e.value
            tap.files.add(f.id)
        elif tap.created_by is None:
            tap.created_by, tap.created_comm = e.pid, comm

    def _sole_file(self, e: ev.TunIoctl) -> OpenFile | None:
        """The file a TUNSETIFF from before the snapshot attached, when the snapshot
        found it elsewhere than at its maker's fd (the maker dup'd and closed it, sent
        it, or exec'd away from a table it shared): a single-queue interface has one
        file at a time, and the last TUNSETIFF on it attached the one it has."""
        if e.value & ev.IFF_MULTI_QUEUE:
            return None
        netns = e.netns or None
        held = [f for f in self.files.values() if f.ifname == e.ifname
                and (netns is None or f.netns in (None, netns))]
        return held[0] if len(held) == 1 and held[0].creator_pid is None else None

    def forget_receive(self, e: ev.ScmRecv) -> list[dict]:
        """A receive from before the last snapshot, which shows what it installed:
        its message is no longer in flight (its references go, nothing else)."""
        out: list[dict] = []
        if e.peek:
            return out
        if e.files:
            sends = [s for s in self.pending
                     if any(f is not None and f.ptr in e.files for f in s.files)]
        else:
            send = self._match_send(e)
            sends = [send] if send is not None else []
        for send in sends[:1]:
            self.pending.remove(send)
            for f in send.files:
                if f is not None:
                    self._release(f, e.ts, e.pid, e.comm, out)
        return out

    def _on_scm_recv_files(self, e: ev.ScmRecv, out: list) -> None:
        """A receive the kernel backend saw: each fd with its struct file, so each is
        matched to the send in flight holding that very file, not by order."""
        comm = self._comm_for(e)
        proc = self._proc(e.pid, comm)
        got, names, nses, from_fds, vhost, gone = [], [], [], [], [], []
        sender: PendingSend | None = None
        for newfd, ptr in zip(e.fds, e.files):
            self._drop_entry(proc, newfd, e.ts, e.tid, comm, "stale", out, report=False)
            send, at = next(((s, i) for s in self.pending for i, f in enumerate(s.files)
                             if f is not None and f.ptr == ptr), (None, -1))
            if send is not None and e.peek:   # MSG_PEEK: the message keeps its own
                f, oldfd = send.files[at], send.fds[at]
                f.refs += 1
                sender = sender or send
                from_pid = send.pid
            elif send is not None:        # the in-flight reference becomes the fd's
                f, oldfd = send.files[at], send.fds[at]
                send.files = send.files[:at] + send.files[at + 1:]
                send.fds = send.fds[:at] + send.fds[at + 1:]
                if not any(send.files):
                    self.pending.remove(send)
                sender = sender or send
                from_pid: int | None = send.pid
            else:                         # its send was not seen (before the trace)
                f = self.by_ptr.get(ptr)
                if f is None:
                    task = self._task(e)
                    name = self._probe_fd(task, newfd)
                    f = self._file_from_proc(task, newfd, name if isinstance(name, str)
                                             else "")
                    self._learn(f, ptr)
                f.refs += 1
                oldfd, from_pid = None, None
            proc.table.fds[newfd] = Entry(f, e.cloexec, "received", from_pid, oldfd, e.pid)
            f.step(e.ts, "recv", e.pid, comm, newfd, from_pid=from_pid, from_fd=oldfd)
            got.append(newfd)
            names.append(f.label)
            nses.append(self._file_ns(f)["netns"])
            from_fds.append(oldfd)
            if f.is_vhost:
                vhost.append(newfd)
        if sender is not None and not e.peek and sender in self.pending:
            # One record is one message, received whole: files of it still in flight
            # did not fit the control buffer (MSG_CTRUNC), and the kernel dropped them.
            self.pending.remove(sender)
            self._drop_unfit(zip(sender.fds, sender.files), e, comm, gone)
        out.append(self._report("scm_recv", e.ts, e.pid, e.tid, comm, sock=e.sock, fds=got,
                                from_pid=sender.pid if sender else None,
                                from_comm=sender.comm if sender else None, from_fds=from_fds,
                                ifnames=names, netns=nses, cloexec=e.cloexec,
                                **({"vhost_fds": vhost} if vhost else {})))
        out.extend(gone)

    def _on_ScmRecv(self, e: ev.ScmRecv, out: list) -> None:
        if e.files:
            self._on_scm_recv_files(e, out)
            return
        send = self._match_send(e)
        if send is None:
            self._recv_unmatched(e, e.fds, out)
            return
        if not e.peek:                # MSG_PEEK installs the fds and leaves the message
            self.pending.remove(send)
        comm = self._comm_for(e)
        proc = self._proc(e.pid, comm)
        got, names, from_fds, gone, vhost, nses = [], [], [], [], [], []
        # did not fit (MSG_CTRUNC): dropped. (Not listed in a cut-short record:
        # installed where the resync that follows will find them.)
        if not e.peek and not e.truncated:
            self._drop_unfit(zip(send.fds[len(e.fds):], send.files[len(e.fds):]), e, comm,
                             gone)
        for newfd, oldfd, f in zip(e.fds, send.fds, send.files):
            # fd_install fills free slots only: what the model had there is stale.
            self._drop_entry(proc, newfd, e.ts, e.tid, comm, "stale", out, report=False)
            if f is None:
                continue
            proc.table.fds[newfd] = Entry(f, e.cloexec, "received", send.pid, oldfd, e.pid)
            # the in-flight reference becomes this fd's reference (a peek: a new one)
            if e.peek:
                f.refs += 1
            f.step(e.ts, "recv", e.pid, comm, newfd, from_pid=send.pid, from_fd=oldfd,
                   **({"peek": True} if e.peek else {}))
            got.append(newfd)
            names.append(f.label)
            nses.append(self._file_ns(f)["netns"])
            from_fds.append(oldfd)
            if f.is_vhost:
                vhost.append(newfd)
        # a message cut short at its send: the fds its record did not list
        for fd in self._recv_unmatched(e, e.fds[len(send.fds):], out, report=False,
                                       sender=send.pid):
            entry = proc.table.fds[fd]
            got.append(fd)
            names.append(entry.file.label)
            nses.append(self._file_ns(entry.file)["netns"])
            from_fds.append(None)
        out.append(self._report("scm_recv", e.ts, e.pid, e.tid, comm, sock=e.sock, fds=got,
                                from_pid=send.pid, from_comm=send.comm, from_fds=from_fds,
                                ifnames=names, netns=nses, cloexec=e.cloexec,
                                **({"vhost_fds": vhost} if vhost else {})))
        out.extend(gone)

    def _drop_unfit(self, sent, e: ev.ScmRecv, comm: str, gone: list) -> None:
        """(sender's fd, file) of a received message that did not fit the receiver's
        control buffer (MSG_CTRUNC): the kernel dropped them with the message."""
        for oldfd, f in sent:
            if f is not None:
                f.step(e.ts, "close", e.pid, comm, None, how="ctrunc", from_fd=oldfd)
                self._release(f, e.ts, e.pid, comm, gone)

    def _on_PidfdGetfd(self, e: ev.PidfdGetfd, out: list) -> None:
        src = self.procs.get(e.source_pid)
        entry = self._leaders_table(src).fds.get(e.target_fd) if src else None
        if entry is None and e.file in self.by_ptr:    # kernel backend: the file itself
            entry = Entry(self.by_ptr[e.file], None, "received")
        mine = self.procs.get(e.pid)
        if mine is not None:      # newfd was a free slot: what the model had there is stale
            self._drop_entry(mine, e.newfd, e.ts, e.tid, mine.comm, "stale", out, report=False)
        if entry is None:
            return
        comm = self._comm_for(e)
        proc = self._proc(e.pid, comm)
        proc.table.fds[e.newfd] = Entry(entry.file, True, "received", e.source_pid,
                                        e.target_fd, e.pid)
        entry.file.refs += 1
        entry.file.step(e.ts, "recv", e.pid, comm, e.newfd, from_pid=e.source_pid,
                        from_fd=e.target_fd, via="pidfd_getfd")
        out.append(self._report("pidfd_getfd", e.ts, e.pid, e.tid, comm, fd=e.newfd,
                                from_pid=e.source_pid, from_fd=e.target_fd,
                                ifname=entry.file.label, **_kind(entry.file),
                                **self._file_ns(entry.file)))

    def holder_at(self, ptr: int, fd: int, but: int) -> int:
        """The one process but `but` that holds the open file `ptr` (kernel backend) at
        `fd`: whose fd a pidfd_getfd took, when the pidfd is closed before /proc is
        read. 0: none, or several (sharers of a table, fork children)."""
        f = self.by_ptr.get(ptr) if ptr else None
        if f is None:
            return 0
        pids = [p.pid for p in self.procs.values() if p.pid != but
                and (en := p.table.fds.get(fd)) is not None and en.file is f]
        return pids[0] if len(pids) == 1 else 0

    def _on_Lost(self, e: ev.Lost, out: list) -> None:
        out.append(self._report("lost", e.ts, e.pid, e.tid, e.comm, count=e.count))

    def expire_pending(self, now_ns: int,
                       tap_exists: Callable[[Tap], bool | None] | None = None) -> list[dict]:
        """Drop sends nobody received within SCM_PENDING_NS (receiver gone), and sends
        whose message the kernel has freed already: a tap only messages in flight
        held is gone from the kernel (`tap_exists` says False: the socket was
        closed unread, or the send failed)."""
        out: list[dict] = []
        for send in [s for s in self.pending if now_ns - s.ts > SCM_PENDING_NS]:
            self.pending.remove(send)
            for f in send.files:
                if f is not None:
                    self._release(f, now_ns, send.pid, send.comm, out)
        if tap_exists is None or not self.pending:
            return out
        in_flight: dict[int, int] = {}
        for send in self.pending:
            for f in send.files:
                if f is not None:
                    in_flight[f.id] = in_flight.get(f.id, 0) + 1
        for send in list(self.pending):
            if now_ns - send.ts < SCM_FREED_CHECK_NS:
                continue
            # a tap only messages hold lives while they do: if one is gone from the
            # kernel, its message was freed, and the message is one unit
            taps = [self._tap_of(f) for f in send.files
                    if f is not None and f.ifname and f.refs == in_flight[f.id]]
            if any(t is not None and not t.persist and tap_exists(t) is False for t in taps):
                self.pending.remove(send)
                for f in send.files:
                    if f is not None:
                        in_flight[f.id] -= 1
                        self._release(f, now_ns, send.pid, send.comm, out)
        return out

    def drop_vanished(self, tap_exists: Callable[[Tap], bool | None]) -> list[Tap]:
        """Taps that nothing holds and that are not persistent live only while the
        kernel unregisters them, which a snapshot may catch: dropped (and returned)
        once `tap_exists` says they are gone."""
        gone = [t for t in self.taps.values()
                if not t.files and not t.persist and tap_exists(t) is False]
        for tap in gone:
            del self.taps[tap.key]
        return gone

    # ---- views -------------------------------------------------------------

    def row_tables(self) -> list[tuple[Process, int | None, FdTable]]:
        """The fd tables that are rows, in row order, as (process, tid, table): each
        process's own (its leader's, the one /proc/PID/fd shows; tid None), then
        each table of its threads that is not that one (tid: the thread). A table
        several of its threads use (the leader unshared, threads 2 and 3 kept the
        old one) is listed once, under the lowest tid using it."""
        return [(p, None if task == p.pid else task, t)
                for p in (self.procs[pid] for pid in sorted(self.procs))
                for task, t in self._task_tables(p)]

    def holders(self) -> set[int]:
        """Processes holding a tun/tap fd, in their own table or a thread's."""
        return {p.pid for p, _tid, t in self.row_tables() if t.fds}

    def rows(self, ifname_glob: str | None = None) -> list[dict]:
        """The live table: one row per (pid, fd) holding a tun/tap file, and per
        (pid, tid, fd) of a thread's own table (see row_tables). `tid` is None for
        the process's table. `shared_with` names the other holders of the same
        open file as [pid, fd], or [pid, fd, tid] for a thread's own table."""
        tables = self.row_tables()
        by_file: dict[int, list] = {}
        for p, tid, t in tables:
            for fd in t.fds:
                by_file.setdefault(t.fds[fd].file.id, []).append(holder_key(p.pid, fd, tid))
        rows = []
        for p, tid, t in tables:
            pid = p.pid
            for fd in sorted(t.fds):
                me = holder_key(pid, fd, tid)
                entry = t.fds[fd]
                f = entry.file
                label = f.label
                if ifname_glob and not fnmatch.fnmatchcase(label or "", ifname_glob):
                    continue
                tap = self._tap_of(f)
                iff = f.iff or (tap.iff if tap else 0)
                if tap is not None:   # TUNSETPERSIST may have changed it since
                    iff = (iff & ~ev.IFF_PERSIST) | (ev.IFF_PERSIST if tap.persist else 0)
                flags = [n for n in ev.iff_names(iff) if n in ("vnet_hdr", "multi_queue",
                                                               "persist", "no_pi")]
                rows.append({
                    "pid": pid, "tid": tid, "comm": p.comm, "fd": fd, "ifname": label,
                    "kind": f.kind, "flags": flags, "cloexec": entry.cloexec,
                    "path": f.path, "file": f.id,
                    "creator_pid": f.creator_pid, "creator_comm": f.creator_comm,
                    "how": entry.how, "from_pid": entry.from_pid, "from_fd": entry.from_fd,
                    # the first SHARED_MAX others; `shared_count` says how many in all
                    # (one file held by 2,000 processes would make rows quadratic)
                    "shared_with": [list(k) for k in itertools.islice(
                        (k for k in by_file[f.id] if k != me), SHARED_MAX)],
                    "shared_count": len(by_file[f.id]) - 1,
                    "queue": "detached" if f.queue_detached else "attached",
                    "owner": tap.owner if tap else None, "group": tap.group if tap else None,
                    **self._file_ns(f),
                    "backends": [{"index": i, "vq": ev.VHOST_VQ_NAMES.get(i),
                                  "ifname": b.ifname if b else None,
                                  "file": b.id if b else None}
                                 for i, b in sorted(f.backends.items())],
                })
        return rows

    def tap_list(self) -> list[dict]:
        """Every known tun/tap device, with how many open files hold it."""
        return [{"ifname": t.ifname, "kind": t.kind,
                 "flags": ev.iff_names((t.iff & ~ev.IFF_PERSIST)
                                       | (ev.IFF_PERSIST if t.persist else 0)),
                 "persist": t.persist, "files": len(t.files), "created_by": t.created_by,
                 "created_comm": t.created_comm, "owner": t.owner, "group": t.group,
                 "persist_by": t.persist_by, "ifindex": t.ifindex,
                 **self.ns_fields(t.netns)}
                for t in sorted(self.taps.values(),
                                key=lambda t: (t.ifname, t.netns != self.own_netns,
                                               t.netns or 0))]

    def lineage(self, ifname: str, netns: int | None = None) -> list[dict]:
        """Each open file of `ifname` (in namespace `netns`, or any), live or released
        while traced, with its hops."""
        out = []
        files = {f.id: f for f in self.released}
        files.update(self.files)
        for f in sorted(files.values(), key=lambda f: f.id):
            if f.ifname == ifname and (netns is None or self._same_ns(f.netns, netns)):
                out.append({"file": f.id, "creator_pid": f.creator_pid, **self.ns_fields(f.netns),
                            "open": f.id in self.files,
                            "steps": list(f.lineage), "chain": self.chain(f)})
        return out


def holder_key(pid: int, fd: int, tid: int | None = None) -> tuple:
    """How a row is named among the holders of a file (`shared_with`): (pid, fd) for a
    process's table, (pid, fd, tid) for a thread's own."""
    return (pid, fd) if tid is None else (pid, fd, tid)


def row_key(row: dict) -> tuple:
    """holder_key of a row (one without `tid`, written before rows had it: the
    process's table)."""
    return holder_key(row["pid"], row["fd"], row.get("tid"))


def _kind(f: OpenFile) -> dict:
    """`kind: "vhost"` on a report about one vhost fd (its ifname is the backing tap)."""
    return {"kind": "vhost"} if f.is_vhost else {}


def descendants_filter(model: Model, root: int,
                       ppid_of: Callable[[int], int | None]) -> Callable[[int], bool]:
    """A predicate: is pid `root` or one of its descendants?"""
    memo: dict[int, bool] = {root: True}

    def check(pid: int) -> bool:
        seen = []
        cur: int | None = pid
        while cur is not None and cur not in memo and len(seen) < 64:
            seen.append(cur)
            p = model.procs.get(cur)
            cur = p.ppid if p is not None and p.ppid is not None else ppid_of(cur)
            if cur in (0, 1) and root not in (0, 1):
                cur = None
        ans = memo.get(cur, False) if cur is not None else False
        if ans:                       # only positives: a pid may be reused later
            for s in seen:
                memo[s] = True
        return ans

    return check


def iter_ifnames(report: dict) -> Iterable[str]:
    if report.get("ifname"):
        yield report["ifname"]
    for key in ("ifnames",):
        val = report.get(key)
        if isinstance(val, dict):
            yield from (v for v in val.values() if v)
        elif isinstance(val, list):
            yield from (v for v in val if v)
