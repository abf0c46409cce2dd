"""A live tracing session: probes + /proc snapshot + model, with loss recovery.

Order at start: attach the probes first (so nothing is missed), then take the
/proc snapshot, load it, put its holders into the in-kernel interest set, and
only then report `ready`. Records stamped before the snapshot began are dropped
(the snapshot already shows their effect). After lost records the same happens
again: resync from /proc, drop what predates it. Which records a snapshot shows
is judged by its timings (resync.SnapshotTimes); what the records read but not
applied yet say, when the model asks /proc, by ahead.Ahead.
"""

from __future__ import annotations

import dataclasses
import errno
import fnmatch
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import events as ev
from . import procfs
from .ahead import Ahead, receives_after
from .backends import open_backend
from .enrich import enrich_rows
from .model import Model, OpenFile, descendants_filter, iter_ifnames
from .resync import SnapshotTimes

POLL_MS = 100
PIDFDS_MAX = 4096
HELD_OPENS_MAX = 4096
NETNS_NAMES_EVERY_NS = 1_000_000_000
# How long a TUNSETIFF whose process has already gone (slirp4netns's child sends the
# fd to its parent and exits) may wait for the record of the fd's receive, where the
# tap's namespace can be asked of the receiver's copy.
NETNS_HOLD_NS = 1_000_000_000   # 300 ms was too short on a loaded machine (CI run)


@dataclass(frozen=True)
class Filters:
    pid: int | None = None          # that process and its descendants
    comm: str | None = None         # glob on the process name
    ifname: str | None = None       # glob on the interface name

    def active(self) -> bool:
        return any(v is not None for v in (self.pid, self.comm, self.ifname))


def fd_ifname(pid: int, fd: int) -> str | bool | None:
    """The model's FdProbe: ifname of a tun fd ("" unattached); False for an open fd
    that is something else; None when it cannot be told (gone, unreadable)."""
    info = procfs.read_fdinfo(pid, fd)
    if info is not None:
        return info.ifname or ""
    try:
        os.readlink(f"/proc/{pid}/fd/{fd}")
    except OSError:
        return None
    return False


def ifindex_name(ifindex: int) -> str | None:
    try:
        for name in os.listdir("/sys/class/net"):
            try:
                with open(f"/sys/class/net/{name}/ifindex") as f:
                    if int(f.read()) == ifindex:
                        return name
            except (OSError, ValueError):
                continue
    except OSError:
        pass
    return None


def ppid_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return int(data[data.rindex(b")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return None


# Snapshots taken again at once because a holder left a shared table while one ran
# (SnapshotTimes.raced_snapshot); after that many in a row the last one stands.
RACED_MAX = 3
PERF_EVENT_LINK = "anon_inode:[perf_event]"


def perf_event_fds() -> list[int]:
    """This process's perf event fds: one per attached tracepoint."""
    out = []
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return out
    for name in names:
        try:
            if os.readlink(f"/proc/self/fd/{name}") == PERF_EVENT_LINK:
                out.append(int(name))
        except (OSError, ValueError):
            continue
    return out


def _close_all(fds: list[int]) -> None:
    """Close fds in parallel: each perf event's release waits for grace periods,
    and concurrent releases share some of them (18 events: 1.4 s -> 0.7 s here)."""
    threads = [threading.Thread(target=os.close, args=(fd,)) for fd in fds]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def pidfd_pid(pid: int, pidfd: int) -> int:
    try:
        with open(f"/proc/{pid}/fdinfo/{pidfd}") as f:
            for line in f:
                if line.startswith("Pid:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return 0


class Session:
    """Runs the tracer; every report (dict) goes to `emit`."""

    def __init__(self, emit: Callable[[dict], None], filters: Filters = Filters(),
                 buffer_pages: int = 256, force_perf: bool = False,
                 record: Callable[[dict], None] | None = None, backend: str = "auto",
                 scope=None, bad_ioctls: bool = False) -> None:
        """scope: a tracer.scope.CommandScope (`watch -- CMD`): only its processes and
        taps are shown; None: everything (as the filters allow). bad_ioctls: see
        backends.open_backend."""
        self.emit = emit
        self._record = record
        self.filters = filters
        self.model = Model(probe_fd=self._fd_now, ifindex_name=ifindex_name,
                           netns_of=self._netns_of, threads_of=self._threads_of,
                           same_file=self._same_file, thread_table=self._thread_table,
                           same_table=self._same_table)
        self._threads_asked: list[int] | None = None   # the answer, recorded
        self._tables_asked: list[list] = []      # thread_table's answers, recorded
        self._same_asked: list[list] = []        # same_table's answers, recorded
        self._ns_asked: list[list] = []          # the model's netns questions, recorded
        self._ns_ready: dict[tuple[int, int], tuple[int, str | None]] = {}
        self._self_pid = os.getpid()
        self._ns_names: dict[int, str] = {}
        self._ns_names_at = 0
        self._queue: list[ev.Event] = []
        self._ahead = Ahead(self._queue, lambda: self.probes.poll(0))  # not applied yet
        # -i: `open` lines of fds whose interface is not known yet, by open file id
        self._held: dict[int, tuple[OpenFile, dict]] = {}
        self._pidfds: dict[tuple[int, int], int] = {}
        self._times = SnapshotTimes(self.model, alive=procfs.alive,  # of the last snapshot
                                    exits_sharing=self._ahead.exits_sharing)
        self._raced = 0                      # snapshots taken again in a row (RACED_MAX)
        # a send the last snapshot came after, read after it: the model does not
        # keep it (its fds are what /proc showed), but its message may be in flight,
        # so receives stay parsed until then (drain, scm_settled)
        self._sends_unseen_until = 0
        self._lost_seen = 0
        self._roots: list[int] = []          # processes traced from the start (track)
        self.stats = {"events": 0, "lost": 0, "resyncs": 0, "truncated": 0}
        self._pid_ok = (descendants_filter(self.model, filters.pid, ppid_of)
                        if filters.pid is not None else None)
        self.scope = scope
        if scope is not None:
            scope.bind(self.model)
        self.probes, self.backend_note = open_backend(backend, self._queue.append,
                                                      buffer_pages, force_perf,
                                                      bad_ioctls=bad_ioctls)
        self.clock_offset_ns = time.time_ns() - time.monotonic_ns()

    # ---- start / stop ------------------------------------------------------

    def start(self, extra: dict | None = None) -> dict:
        """Snapshot, then the `ready` report (with `extra`'s fields)."""
        self._snapshot(initial=True)
        info = self.probes.info
        ready = {"type": "ready", "backend": info.name, "buffer": info.buffer,
                 "buffer_pages": info.buffer_pages, "kernel_source": info.kernel_source,
                 "rows": sum(len(t.fds) for _p, _tid, t in self.model.row_tables()),
                 "taps": len(self.model.taps),
                 "tracer_pid": os.getpid(), "own_netns": self.model.own_netns}
        if info.hooks:
            ready["hooks"] = info.hooks        # the kernel backend's: fentry or kprobe
        if self.backend_note:
            ready["backend_note"] = self.backend_note
        ready.update(extra or {})
        self.emit(ready)
        return ready

    def _snapshot(self, initial: bool) -> dict | None:
        start = time.monotonic_ns()
        # read before /proc is: records lost while it is read (their changes may be
        # newer than what the scan saw) make the next poll resync again
        lost_before = self.probes.lost()
        snap = procfs.snapshot()
        asked: dict[str, list] = {"alive": [], "parted": [], "one_table": [], "acting": []}
        if initial:
            self.model.load(snap)
            report = None
        else:
            def alive(pid: int) -> bool:
                if procfs.alive(pid):
                    asked["alive"].append(pid)
                    return True
                return False

            def parted(pid: int, other: int) -> bool:
                if self._parted(pid, other, start):
                    asked["parted"].append([pid, other])
                    return True
                return False

            def one_table(pid: int, other: int) -> bool:
                if self._ahead.one_table(pid, other):
                    asked["one_table"].append([pid, other])
                    return True
                return False

            def acting(pid: int) -> bool:
                if self._ahead.acts_since(pid, start):
                    asked["acting"].append(pid)
                    return True
                return False

            report = self.model.resync(snap, alive=alive, parted=parted,
                                       one_table=one_table, acting=acting)
        if self._record is not None:
            rec = {"kind": "snapshot", "ts": start, "snapshot": dataclasses.asdict(snap)}
            if any(asked.values()):
                rec["resync_asked"] = asked     # what replay cannot ask
            self._record(rec)
        # Every process the model knows (holders and sharers) must be in the set.
        self.probes.set_interest(self.model.procs.keys())
        self._track_root()
        self._times.taken(snap, start, time.monotonic_ns(),
                          unread=(report or {}).pop("kept", ()))
        self._lost_seen = lost_before
        return report

    def _first_sight(self, e: ev.TunIoctl | ev.VhostBackend) -> ev.Open | None:
        """The open behind an fd's first TUN (or vhost) ioctl, named from /proc.

        There is no open probe (every open on the machine would pay for it, see
        bpf/), so an fd on /dev/net/tun, /dev/tapN or /dev/vhost-net is first seen
        at its first ioctl; the kernel's answer says whether it is one (not ENOTTY,
        not EBADF), /proc says which node and whether it is close-on-exec."""
        if -e.ret in (errno.ENOTTY, errno.EBADF):
            return None
        table = self.model.table_of(e.pid, e.tid)
        if table is not None and e.fd in table.fds:
            return None
        # the thread's table (/proc/TID shows a thread's own); a CLONE_FILES child
        # may be gone already: its table lives on in the others
        sharers = sorted(table.users - {e.tid}) if table is not None else []
        info = None
        for pid in [e.tid, *sharers]:
            info = procfs.read_fdinfo(pid, e.fd)
            if info is not None:
                break
        if info is not None:
            path, flags = info.path, info.flags | (ev.O_CLOEXEC if info.cloexec else 0)
        else:      # closed or gone by now: the kernel's answer still says what it was
            path = procfs.VHOST_PATH if isinstance(e, ev.VhostBackend) else procfs.TUN_PATH
            flags = ev.CLOEXEC_UNKNOWN
        if getattr(e, "cloexec", None) is not None:
            # the record read the bit at the call itself: /proc now may show a later
            # F_SETFD, or another file at a reused fd number
            flags = (flags & ~(ev.CLOEXEC_UNKNOWN | ev.O_CLOEXEC)) | (
                ev.O_CLOEXEC if e.cloexec else 0)
        return ev.Open(ts=e.ts, pid=e.pid, tid=e.tid, comm=e.comm, fd=e.fd, path=path,
                       flags=flags, own_table=e.own_table, table=e.table)

    def _threads_of(self, pid: int) -> list[int]:
        """The threads of `pid` (not its leader) as an unshare by its leader finds
        them: /proc/PID/task, and those that records not applied yet show acting
        with no clone of theirs before (a tracer behind its records: /proc lists no
        thread of a process killed since, or a thread exited since). Recorded."""
        tids = set(procfs.threads(pid))
        tids |= self._ahead.threads_acting(pid)
        self._threads_asked = sorted(tids)
        return self._threads_asked

    def _thread_table(self, pid: int, tid: int, known: bool | None) -> list | None:
        """A thread first seen: None if it uses its leader's fd table, else the tun
        fds of its own (/proc/TID/fd) as (fd, ifname or "", cloexec). known: what
        its record says (True: a table of its own when it acted); None, kcmp."""
        own = None
        now = time.monotonic_ns()
        if known is None:
            # kcmp compares the tables the two use now: an unshare by either that
            # a record not applied yet says came later parted them after this record
            known = procfs.same_fd_table(pid, tid) is False \
                and not self._ahead.unshares_later(tid) and not self._ahead.unshares_later(pid)
        if known:
            own = [(fi.fd, fi.ifname or "", fi.cloexec) for fi in procfs.table_tun_fds(tid)]
            # read now, as a snapshot reads a table: the records not applied yet
            # that its users made before (the thread, a CLONE_FILES child the record
            # being applied makes) are in it already, and apply no more (a thread
            # gone by then shows nothing: its records are all there is)
            if procfs.alive(tid):
                self._times.read_again(tid, now)
        self._tables_asked.append([tid, own])
        return own

    def _parted(self, pid: int, other: int, since: int) -> bool:
        """At a resync: had process `pid`, which the snapshot (read from `since`) does
        not list, parted from the table it shared with `other` (an unshare whose
        record was lost, or one the snapshot shows)? kcmp says so of two live
        processes, for now: trusted where no record not applied yet shows either
        leave its table from the scan on (then they may have shared it when read),
        and where both run (a dead task has no table)."""
        return (procfs.alive(pid) and procfs.alive(other)
                and not self._ahead.parts_since({pid, other}, since)
                and procfs.same_fd_table(pid, other) is False)

    def _same_table(self, a: int, b: int) -> bool | None:
        """Do tasks a and b use one fd table (kcmp)? Recorded, for replay."""
        same = procfs.same_fd_table(a, b)
        self._same_asked.append([a, b, same])
        return same

    def _fd_now(self, pid: int, fd: int) -> str | bool | None:
        """The model's FdProbe: fd_ifname, unless a record not applied yet says that
        fd of that table changed after the record being applied (closed, dup'd over,
        received into: a tracer behind its records). /proc then shows a later fd than
        the record's: None, cannot be told, and the model trusts what it knows."""
        table = self.model.procs[pid].table if pid in self.model.procs else None
        sharers = {pid} | ({p for p in table.users if p in self.model.procs}
                           if table is not None else set())
        if self._ahead.fd_changes(sharers, fd):
            return None
        name = fd_ifname(pid, fd)
        if name is None:
            other = self._through(pid)
            if other is not None and other != pid and \
                    not self._ahead.fd_changes(sharers | {other}, fd):
                name = fd_ifname(other, fd)
        return name

    def _through(self, pid: int) -> int | None:
        """The task whose /proc (and kcmp) reaches the fd table task `pid` uses:
        `pid` while it runs; once it has died (its records read late), another
        user of that table that runs (a CLONE_FILES sharer, a thread, or a
        CLONE_FILES child a record not applied yet shows it make); else None."""
        if procfs.alive(pid):
            return pid
        proc = self.model.procs.get(pid)
        if proc is None:
            return None
        users = (proc.table.users | self._ahead.table_children(pid)) - {pid}
        return next((q for q in sorted(users) if procfs.alive(q)), None)

    def _same_file(self, pid1: int, fd1: int, pid2: int, fd2: int) -> bool | None:
        """kcmp(KCMP_FILE) of two fds, each reached through a task that runs where
        the one named has died (see _through)."""
        same = procfs.same_file(pid1, fd1, pid2, fd2)
        if same is None:
            a, b = self._through(pid1), self._through(pid2)
            if a is not None and b is not None and (a, b) != (pid1, pid2):
                same = procfs.same_file(a, fd1, b, fd2)
        return same

    def _netns_name(self, ino: int) -> str | None:
        """`ip netns`'s name for a namespace (re-read /run/netns at most once a second
        when a namespace it did not name turns up)."""
        if ino not in self._ns_names and ino != self.model.own_netns:
            now = time.monotonic_ns()
            if now - self._ns_names_at > NETNS_NAMES_EVERY_NS:
                self._ns_names, self._ns_names_at = procfs.netns_names(), now
        return self._ns_names.get(ino)

    def _netns_of(self, pid: int, fd: int) -> tuple[int | None, str | None] | None:
        """The model's NetnsProbe: the namespace of the tap behind pid/fd.

        Asked of the fd itself (TUNGETDEVNETNS on a pidfd_getfd copy): exact, because
        the device lives where the file was opened, whatever the process did since
        (slirp4netns's and pasta's children setns() first). The fd may be gone by the
        time its record is read: then a sharer of the same fd table (a CLONE_FILES
        child that made the tap and exited leaves it to its parent), and only then the
        process's own namespace *now*, a guess (wrong if it setns()ed since)."""
        ready = self._ns_ready.pop((pid, fd), None)
        ino = ready[0] if ready is not None else self._netns_exact(pid, fd)
        if ino is None:
            ino = procfs.pid_netns(pid)
        if ino is None:
            self._ns_asked.append([pid, fd, None, None])
            return None
        name = self._netns_name(ino)
        self._ns_asked.append([pid, fd, ino, name])
        return ino, name

    def _netns_exact(self, pid: int, fd: int) -> int | None:
        """TUNGETDEVNETNS on pid's fd, or on the same fd of a sharer of its table."""
        proc = self.model.procs.get(pid)
        sharers = sorted(proc.table.users - {pid}) if proc is not None else []
        for p in [pid, *sharers]:
            ino = procfs.tap_netns(p, fd)
            if ino is not None:
                return ino
        return None

    def _netns_ahead(self, e: ev.TunIoctl, rest: list) -> int | None:
        """The namespace of the tap just made at e.pid/e.fd, asked of where the fd went
        next when its maker has gone: the receiver of its SCM_RIGHTS send among the
        records that follow (the first receive of that position whose fd has that
        name, as the model will match it)."""
        for pid, fd in receives_after(e, rest):
            if fd_ifname(pid, fd) == e.ifname:
                return procfs.tap_netns(pid, fd)
        return None

    def _prepare_netns(self, e: ev.TunIoctl, rest: list) -> bool:
        """Read the namespace of the tap a TUNSETIFF made before the model asks (see
        _netns_of); False only when its fd has gone and no receiver's copy can tell
        yet (an fd still open that cannot tell, a macvtap's, will not tell later)."""
        ino = self._netns_exact(e.pid, e.fd)
        if ino is None:
            ino = self._netns_ahead(e, rest)
        if ino is None:
            return fd_ifname(e.pid, e.fd) is not None
        self._ns_ready[(e.pid, e.fd)] = (ino, None)
        return True

    def _remember_pidfd(self, e: ev.PidfdOpen) -> None:
        # The pidfd is often closed before its pidfd_getfd record is read: remember
        # what it named when it was made (bounded; a reused number is overwritten).
        self._pidfds[(e.pid, e.fd)] = e.target
        if len(self._pidfds) > PIDFDS_MAX:
            del self._pidfds[next(iter(self._pidfds))]

    def _adopt(self, pid: int) -> None:
        """A process first seen through one of its threads: name it after itself
        (/proc/PID/comm), not after the thread (QEMU's "CPU 0/TCG", libvirtd's
        "rpc-libvirtd")."""
        info = procfs.proc_info(pid)
        if info is not None:
            proc = self.model._proc(pid, info.comm)
            proc.ppid = info.ppid
            if self._record is not None:     # a replay knows it from here, not /proc
                self._record({"kind": "adopt", "pid": pid, "comm": info.comm,
                              "ppid": info.ppid})

    def _track_root(self) -> None:
        """With -p, trace the root itself, so its forks (and so its descendants) are
        known even when a child has exited before user space reads its records."""
        for root in (self.filters.pid, *self._roots):
            if root is not None:
                self.track(root)

    def track(self, pid: int) -> None:
        """Trace process `pid` from now on, tap fds or not: in the in-kernel interest
        set (its children inherit it there) and in the model, so its forks are."""
        info = procfs.proc_info(pid)
        if info is None:
            return
        proc = self.model._proc(pid, info.comm)   # known to the model, even if empty
        proc.ppid = info.ppid
        self.probes.set_interest([pid])
        if pid not in self._roots and pid != self.filters.pid:
            self._roots.append(pid)

    def untrack(self, pid: int) -> None:
        """A process traced with track() has gone: its pid may be reused."""
        if pid in self._roots:
            self._roots.remove(pid)

    def table(self) -> dict:
        if self.scope is not None:
            self.scope.absorb()
        rows = [r for r in self.model.rows(self.filters.ifname) if self._row_ok(r)]
        taps = self.model.tap_list()
        if self.scope is not None:
            taps = [t for t in taps if self.scope.tap_ok(t)]
        return {"type": "table", "own_netns": self.model.own_netns,
                "rows": enrich_rows(rows, own_netns=self.model.own_netns),
                "taps": taps}

    def close(self) -> None:
        """Detach the probes. Releasing a tracepoint's perf event waits for RCU grace
        periods in the kernel (50-90 ms each on an idle machine), and bcc closes them
        one after another: 1.4 s for our 18 (2.6 s was seen once). We hold a second
        reference to each, let bcc close its own (cheap now), and drop ours from
        threads at once, so the releases share their grace periods (about 0.7 s)."""
        held = []
        for fd in perf_event_fds():
            try:
                held.append(os.dup(fd))
            except OSError:
                break               # out of fds: bcc releases the rest the slow way
        try:
            self.probes.close()
        finally:
            _close_all(held)

    # ---- the loop ----------------------------------------------------------

    def run(self, duration: float | None = None, should_stop: Callable[[], bool] = lambda: False,
            on_tick: Callable[[], None] | None = None) -> None:
        deadline = None if duration is None else time.monotonic() + duration
        while not should_stop():
            timeout = POLL_MS
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                timeout = max(1, min(POLL_MS, int(left * 1000)))
            self.step(timeout)
            if on_tick is not None:
                on_tick()
        # what the kernel already recorded belongs in the final table
        self.probes.poll(0)
        self.drain(final=True)

    def step(self, timeout_ms: int = POLL_MS) -> None:
        """Poll once, apply what arrived, recover from loss."""
        self.probes.poll(timeout_ms)
        self.drain()

    def drain(self, final: bool = False) -> None:
        """Apply what arrived. A TUNSETIFF whose tap's namespace cannot be read yet
        (its maker gone, its receive not recorded yet) holds back itself and what
        follows until the next poll, for NETNS_HOLD_NS at most; `final`: hold nothing."""
        batch, self._queue[:] = list(self._queue), []
        cut = raced = False
        if self.probes.info.buffer == "perf":
            batch.sort(key=lambda e: e.ts)          # per-CPU buffers: restore order
        self._ns_ready.clear()
        for i, e in enumerate(batch):
            self._ahead.at(batch, i + 1)
            if isinstance(e, ev.PidfdOpen):
                self._remember_pidfd(e)
                continue
            if e.pid == self._self_pid:
                # its own copies of tun fds (taken to read namespaces) put the tracer
                # into the in-kernel interest set: out again, and no events
                self.probes.drop_interest(self._self_pid)
                continue
            raced = raced or self._times.raced_snapshot(e)
            if self._times.shows(e):
                if isinstance(e, ev.ScmSend):
                    # /proc cannot show a message in flight: its receive, taken
                    # from /proc as one of an unknown send, must be recorded
                    self._sends_unseen_until = max(self._sends_unseen_until,
                                                   e.ts + ev.SCM_PENDING_NS)
                elif isinstance(e, ev.ScmRecv):
                    # the snapshot shows what it installed; its message has landed
                    for report in self.model.forget_receive(e):
                        self._out(report)
                elif isinstance(e, ev.TunIoctl):
                    # who made it: not in /proc
                    self.model.learn_from_before(
                        e, last=self._times.last_setiff(e, batch[i + 1:]))
                elif self._times.unseen_sharing(e):
                    # (the table it names is one of before the snapshot: the model's
                    # are as read after)
                    self._apply(dataclasses.replace(e, table=0))
                continue
            if isinstance(e, ev.TunIoctl) and e.netns:
                # the record read the file's namespace in the kernel: nothing to ask
                self._ns_ready[(e.pid, e.fd)] = (e.netns, None)
            elif (isinstance(e, ev.TunIoctl) and e.cmd == ev.TUNSETIFF and e.ret == 0
                    and not self._prepare_netns(e, batch[i + 1:]) and not final
                    and time.monotonic_ns() - e.ts < NETNS_HOLD_NS):
                self._queue[:0] = batch[i:]
                break
            self.stats["events"] += 1
            if isinstance(e, ev.PidfdGetfd):
                src = (self._pidfds.get((e.pid, e.pidfd)) or pidfd_pid(e.pid, e.pidfd)
                       or self.model.holder_at(e.file, e.target_fd, e.pid))
                e = dataclasses.replace(e, source_pid=src)
            if e.tid != e.pid and e.pid not in self.model.procs:
                self._adopt(e.pid)
            if isinstance(e, (ev.TunIoctl, ev.VhostBackend)):
                opened = self._first_sight(e)
                if opened is not None:
                    self._apply(opened)
                    if isinstance(e, ev.TunIoctl) and self._times.shows(e):
                        # a thread first seen at it: its own table, read from /proc
                        # as the open applied, shows the ioctl done (and what its
                        # users did after: a dup of the fd is the same file, not a
                        # file the ioctl's answer proves closed)
                        self.model.learn_from_before(
                            e, last=self._times.last_setiff(e, batch[i + 1:]))
                        continue
            # (a fork's, once it applied: a thread first seen at its fork has its
            # table read from /proc then, after the fork)
            reread = e.pid if not isinstance(e, ev.Fork) and self._times.parted_unread(e) \
                else None
            if self._times.tap_state_shown(e):
                e = dataclasses.replace(e, shown=True)
            # a fork by a process the model does not know: its table then is not
            # known (the last snapshot's scan listed /proc before the fork and came
            # to the parent after it exited), nor so the copy the child got
            unknown = isinstance(e, ev.Fork) and e.pid not in self.model.procs
            self._apply(e)
            if isinstance(e, ev.Fork) and not e.flags & (ev.CLONE_THREAD | ev.CLONE_FILES) \
                    and (unknown or self._times.read_after(e)):
                reread = e.child      # it copied a table read from /proc after it
            if isinstance(e, ev.ScmRecv):
                self._receiver_interest(e.pid)
            if reread is not None:
                self._reread(reread, e.ts)
            if isinstance(e, ev.TunIoctl):
                self._ns_ready.pop((e.pid, e.fd), None)    # its answer, if not asked
            elif isinstance(e, (ev.ScmSend, ev.ScmRecv)) and e.truncated:
                cut = True
        lost = self.probes.lost()
        if lost > self._lost_seen:
            self._recover(lost - self._lost_seen)
        elif cut:
            # a message with more fds than its record holds (bpf/tracepoint.bpf.c):
            # the fds it did not name are read from /proc, like after a loss
            self.stats["truncated"] += 1
            self._recover(0, why="truncated")
        elif raced and self._raced < RACED_MAX:
            self._raced += 1
            self._recover(0, why="raced")
        else:
            self._raced = 0
        now = time.monotonic_ns()
        for report in self.model.expire_pending(now, self._tap_exists):
            self._out(report)
        for tap in self.model.drop_vanished(self._tap_exists):
            self._out({"type": "tap_gone", "ts_ns": now, **self._me(), "ifname": tap.ifname,
                       **self.model.ns_fields(tap.netns)})
        if not self.model.pending and not self._queue and now >= self._sends_unseen_until:
            # nothing in flight, nothing read and held back: receives need not be
            # parsed until the next send
            self.probes.scm_settled()

    def _me(self) -> dict:
        """The fields of a report taptrace itself makes (a resync, a loss)."""
        return {"pid": self._self_pid, "tid": self._self_pid, "comm": "taptrace"}

    def _tap_exists(self, tap) -> bool | None:
        """Is the tap still a device of the kernel? Asked of /sys for taps of
        taptrace's own namespace (None: another one, not asked)."""
        if tap.netns not in (None, self.model.own_netns) or "/" in tap.ifname:
            return None
        return os.path.exists(f"/sys/class/net/{tap.ifname}/tun_flags")

    def _receiver_interest(self, pid: int) -> None:
        """The kernel puts a receiver in the interest set at any receive it records
        (bpf on_recv: it cannot tell a tun fd there), and a process leaves the set
        only at its exit: one that received no tracked file (nor holds or is
        traced otherwise: not in the model) leaves it now, unless records not
        applied yet show it acting (a later receive of a tap). One the receive put
        in the model is in the set (again)."""
        if pid in self.model.procs:
            self.probes.set_interest([pid])
        elif not self._ahead.acts(pid):
            self.probes.drop_interest(pid)

    def _reread(self, pid: int, ts: int) -> None:
        """A table copied from one the snapshot read after the copy (a fork older
        than the read of its parent's table; an exec or unshare of a sharer the scan
        did not read, resync.parted_unread): the copy the model made holds what the
        others did after it. The table is read from /proc instead, and, like a
        snapshot's, counts as read now (its records from before are in it) - unless
        the process is gone by then: /proc shows nothing, its records are all
        there is."""
        now = time.monotonic_ns()
        own = [(fi.fd, fi.ifname or "", fi.cloexec) for fi in procfs.table_tun_fds(pid)]
        if procfs.alive(pid):
            self._times.read_again(pid, now)
        if self._record is not None:
            self._record({"kind": "reread", "ts": ts, "pid": pid,
                          "fds": [list(x) for x in own]})
        for report in self.model.reload_table(pid, own, ts):
            self._out(report)

    def _apply(self, e: ev.Event) -> None:
        rec = None
        if self._record is not None:
            rec = ev.to_record(e)
            if isinstance(e, ev.ScmRecv):   # what the model asks /proc, for replay
                # (of the receiving thread's own table where it has one: /proc/TID)
                proc = self.model.procs.get(e.pid)
                task = e.tid if proc is not None and e.tid in proc.thread_tables else e.pid
                rec["probe"] = [self._fd_now(task, fd) for fd in e.fds]
            elif isinstance(e, ev.Exec):
                proc = self.model.procs.get(e.pid)
                unknown = [fd for fd, entry in proc.table.fds.items()
                           if entry.cloexec is None] if proc is not None else []
                if unknown:
                    rec["probe"] = [[fd, self._fd_now(e.pid, fd)] for fd in unknown]
        self._ns_asked.clear()
        self._threads_asked = None
        self._tables_asked = []
        self._same_asked = []
        if self.scope is not None:
            self.scope.before(e)
        reports = self.model.apply(e)
        if rec is not None:
            if self._ns_asked:              # the namespaces read for it, for replay
                rec["ns_asked"] = [list(a) for a in self._ns_asked]
            if self._threads_asked is not None:    # (a thread first seen: its table's)
                rec["probe" if isinstance(e, (ev.Unshare, ev.CloseRange))
                    else "threads_asked"] = self._threads_asked
            if self._tables_asked:
                rec["tables_asked"] = self._tables_asked
            if self._same_asked:
                rec["same_asked"] = self._same_asked
            self._record(rec)
        for report in reports:
            if report["type"] == "open" and self._hold_open(report):
                continue
            self._out(report)
        if self.scope is not None:
            self.scope.after(e)

    def _recover(self, count: int, why: str = "lost") -> None:
        """Rebuild from /proc: after `count` lost records, or (why="truncated") a
        message whose record could not hold all its fds."""
        self.stats["lost"] += count
        self.stats["resyncs"] += 1
        me = self._me()
        if count:
            self.emit({"type": "lost", "ts_ns": time.monotonic_ns(), **me, "count": count})
        # The snapshot says what is. The records already read stay queued: all older
        # than it, they are not applied, but a TUNSETIFF says who made a tap /proc
        # shows, a receive that a message in flight has landed, an exit that a process
        # the scan still lists is dead (drain: learn_from_before, forget_receive).
        taps_before = set(self.model.taps)
        report = self._snapshot(initial=False)
        if self.scope is not None:
            self.scope.forget_outside()
            self.scope.absorb()
        now = time.monotonic_ns()
        if report is not None:
            report.update(ts_ns=now, **me, why=why)
            self.emit(report)
        # what went away while records were lost still deserves its line
        for netns, name in sorted(taps_before - set(self.model.taps),
                                  key=lambda k: (k[1], k[0] or 0)):
            self._out({"type": "tap_gone", "ts_ns": now, **me, "ifname": name,
                       **self.model.ns_fields(netns)})

    # ---- filtering ---------------------------------------------------------

    def follow(self, pid: int) -> None:
        """From now on show only `pid` and its descendants."""
        self.filters = dataclasses.replace(self.filters, pid=pid)
        self._pid_ok = descendants_filter(self.model, pid, ppid_of)
        self._track_root()

    def _row_ok(self, row: dict) -> bool:
        f = self.filters
        if f.comm is not None and not fnmatch.fnmatchcase(row["comm"], f.comm):
            return False
        if self.scope is not None and not self.scope.row_ok(row):
            return False
        return not (self._pid_ok is not None and not self._pid_ok(row["pid"]))

    def _hold_open(self, report: dict) -> bool:
        """With -i, an `open` has no interface yet (it is seen at the fd's first ioctl,
        usually the TUNSETIFF that names it): keep it until its file has one. True:
        held (or dropped by the pid/comm filters). With a scope, the same for an open
        outside the command's tree: shown once its file is one of the command's taps."""
        if report.get("ifname") or (self.filters.ifname is None and (
                self.scope is None or self.scope.member(report["pid"]))):
            return False
        if not self._proc_ok(report):
            return True
        # (the table of the thread that opened it: a thread's own, where it has one)
        table = self.model.table_of(report["pid"], report.get("tid") or report["pid"])
        entry = table.fds.get(report["fd"]) if table is not None else None
        if entry is None:
            return True
        self._held[entry.file.id] = (entry.file, report)
        if len(self._held) > HELD_OPENS_MAX:         # files that never get an interface
            del self._held[next(iter(self._held))]
        return True

    def _release_held(self) -> None:
        """Each held `open` whose file now has an interface: shown (named) if that
        interface matches -i, else dropped; dropped too once its file is closed.
        Called before any other line goes out, so the open comes before the line
        (TUNSETIFF, vhost_backend…) that named its file."""
        for fid, (file, report) in list(self._held.items()):
            name = file.label
            if name:
                del self._held[fid]
                glob = self.filters.ifname
                if (glob is None or fnmatch.fnmatchcase(name, glob)) and (
                        self.scope is None or self.scope.member(report["pid"])
                        or self.scope.file_ok(file)):
                    self.emit({**report, "ifname": name})
            elif self.model.files.get(fid) is not file:
                del self._held[fid]

    def _proc_ok(self, report: dict) -> bool:
        f = self.filters
        if f.comm is not None and not fnmatch.fnmatchcase(report.get("comm", ""), f.comm):
            return False
        return not (self._pid_ok is not None and not self._pid_ok(report.get("pid", -1)))

    def _out(self, report: dict) -> None:
        if self.scope is not None:
            self.scope.note(report)      # a tap made at the command's request
        if self._held:
            self._release_held()
        if report.get("quiet"):
            return
        f = self.filters
        if f.active():
            if not self._proc_ok(report):
                return
            if f.ifname is not None and not any(
                    fnmatch.fnmatchcase(n, f.ifname) for n in iter_ifnames(report)):
                return
        if self.scope is not None and not self.scope.report_ok(report):
            return
        self.emit(report)
