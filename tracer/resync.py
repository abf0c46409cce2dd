"""What the last /proc snapshot already shows of a record read after it.

The records the BPF side delivers lag behind: when a snapshot is taken (at start,
and again after lost records), some of the records still to be read are older
than what the snapshot shows. A snapshot reads one fd table after another and
notes when it read each (procfs.Snapshot.read_ns), and when it read the taps
(taps_ns). SnapshotTimes keeps those timings and judges each record by its
timestamp: shown already (the session does not apply it, but may learn from it),
or news (it applies). It asks nothing of the kernel but whether a process is
alive, and reads the model only, so it can be tried with crafted records and a
crafted snapshot.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from . import events as ev
from . import procfs
from .model import Model

# TUN ioctls that change an interface, not a table (SnapshotTimes.tap_news)
TAP_STATE_IOCTLS = (ev.TUNSETPERSIST, ev.TUNSETOWNER, ev.TUNSETGROUP, ev.TUNSETQUEUE)
# ... of those, the ones whose result /sys and rtnetlink show
SYS_SHOWN_IOCTLS = (ev.TUNSETPERSIST, ev.TUNSETOWNER, ev.TUNSETGROUP)
# records that change an fd table (see SnapshotTimes.in_snapshot); an exec closes its
# close-on-exec fds, an unshare makes a table of its own
TABLE_RECORDS = (ev.Open, ev.TunIoctl, ev.Dup, ev.Close, ev.CloseRange, ev.SetFd, ev.ScmRecv,
                 ev.PidfdGetfd, ev.Exec, ev.Unshare)


class SnapshotTimes:
    """The timings of the last snapshot (CLOCK_MONOTONIC ns, the records' clock), and
    what they say of a record: all questions about the model as it stands before the
    record applies. alive(pid): is that process still there (/proc)? exits_sharing(pid):
    do the records not applied yet end with its exit, with no exec or unshare of its
    before (Ahead.exits_sharing)?"""

    def __init__(self, model: Model, alive: Callable[[int], bool] = procfs.alive,
                 exits_sharing: Callable[[int], bool] = lambda _pid: False) -> None:
        self.model = model
        self._alive = alive
        self._exits_sharing = exits_sharing
        self.min_ts = 0                     # when the last snapshot began
        self.snap_end = 0                   # when it was complete
        self.taps_ns = 0                    # when it read the taps
        self.read_ns: dict[int, int] = {}   # when it read each holder's fd table
        self.read_last = 0                  # the latest of read_ns
        self.unread: set[int] = set()       # processes whose kept tables it did not read

    def taken(self, snap: procfs.Snapshot, start: int, end: int,
              unread: Iterable[int] = ()) -> None:
        """A snapshot begun at `start` and complete at `end` is the model's now.
        unread: processes it did not show, whose tables the model kept as it had
        them (Model.resync's `kept`): none of their records is in it."""
        self.unread = set(unread)
        self.min_ts = start
        self.snap_end = end
        self.taps_ns = snap.taps_ns or end
        self.read_ns = snap.read_ns
        self.read_last = max(snap.read_ns.values(), default=0)

    def read_again(self, pid: int, now: int) -> None:
        """pid's fd table was read from /proc again at `now` (a fork's child, or an
        exec's or unshare's copy: Session._reread; a thread first seen with a table
        of its own: Session._thread_table); its records from before are in it, as in
        a snapshot."""
        self.read_ns[pid] = now
        self.read_last = max(self.read_last, now)

    def shows(self, e: ev.Event) -> bool:
        """Does the snapshot show e's effect already? Then e does not apply as it is
        (the session may still learn from it, or apply it for what the snapshot
        cannot show: unseen_sharing). Stamped before the snapshot began, or made on a
        table before the snapshot read it (in_snapshot); but never an exit whose
        process is dead (died_before_snapshot) nor a change of a tap made after the
        taps were read (tap_news)."""
        return (e.ts < self.min_ts or self.in_snapshot(e)) and e.pid not in self.unread \
            and not self.died_before_snapshot(e) and not self.tap_news(e)

    def unseen_sharing(self, e: ev.Event) -> bool:
        """A record from before the snapshot that tells what the snapshot cannot: a
        clone(CLONE_FILES) whose child the scan did not read - between processes
        that hold no tun fd (the scan lists holders only), or from a holder to a
        child gone before the scan came to it, which shared the table until it
        died (its records after the snapshot began are a sharer's: a send of fds
        of that table) - or an exec or unshare that parts such a sharer from its
        table. It makes no fd: it applies (pasta's helper may make a tap there
        next)."""
        if isinstance(e, ev.Fork):
            if not e.flags & ev.CLONE_FILES or e.flags & ev.CLONE_THREAD \
                    or e.child in self.read_ns:
                return False
            if e.pid not in self.read_ns:
                return self._alive(e.child)
            # (a child alive and not read parted from the table: its exec or
            # unshare may be shown already, and would not part it again)
            return not self._alive(e.child) and self._exits_sharing(e.child)
        if isinstance(e, (ev.Exec, ev.Unshare)) or self._parts_shared(e):
            table = self.model.table_of(e.pid, e.tid)
            return e.pid not in self.read_ns and table is not None and not table.fds
        return False

    def tap_news(self, e: ev.Event) -> bool:
        """A TUN ioctl that changes the interface, not the fd table (persist, owner,
        group, a queue's attach), made after the snapshot read the taps, on an fd the
        table has: the read of its process's table after it (a fork's child read
        again) does not show it, so it applies."""
        if not (isinstance(e, ev.TunIoctl) and e.cmd in TAP_STATE_IOCTLS
                and e.ts >= self.taps_ns):
            return False
        table = self.model.table_of(e.pid, e.tid)
        return table is not None and e.fd in table.fds

    def tap_state_shown(self, e: ev.Event) -> bool:
        """A persist, owner or group change older than the snapshot's read of the taps
        (applied for what it does to the table: its fd may be new since its process
        was read): /sys already showed its result, and maybe a later change too,
        which the record must not undo."""
        return isinstance(e, ev.TunIoctl) and e.cmd in SYS_SHOWN_IOCTLS \
            and e.ts < self.taps_ns

    def raced_snapshot(self, e: ev.Event) -> bool:
        """An exec or unshare by a holder the last snapshot listed, made while it ran.
        The scan reads each table at its own time, but sees who shares a table with
        whom (kcmp) once, at its end: a process that left a shared table in between
        is read as one table's user and grouped as another's, and the records of the
        time between cannot say which files were whose. The snapshot is taken again
        (by the session, RACED_MAX times in a row at most)."""
        return (isinstance(e, (ev.Exec, ev.Unshare)) or self._parts_shared(e)) \
            and self.min_ts <= e.ts < self.snap_end and e.pid in self.read_ns

    def last_setiff(self, e: ev.TunIoctl, after: list[ev.Event]) -> bool:
        """No other successful TUNSETIFF on e's interface from before the snapshot
        follows e that the snapshot may show (one after it attaches what it did not see)."""
        return not any(isinstance(x, ev.TunIoctl) and x.cmd == ev.TUNSETIFF and x.ret == 0
                       and x.ts < self.read_last and x.ifname == e.ifname
                       and x.netns == e.netns for x in after)

    def in_snapshot(self, e: ev.Event) -> bool:
        """A change to an fd table that the last snapshot read after it was made. The
        scan reads one table after another, and may take longer than the records
        made meanwhile: a record stamped after the scan began may be older than the
        read of its table, which then shows its result already. A clone whose child
        the scan read after it, holding tun fds: the child's table (shared or its
        own) is what the scan saw, not the parent's that the clone would give. (The
        scan tells nothing of processes that hold none: their records apply.)"""
        if isinstance(e, ev.Fork):
            return not e.flags & ev.CLONE_THREAD and e.ts < self.read_ns.get(e.child, 0)
        if isinstance(e, (ev.Exec, ev.Unshare)) or self._parts_shared(e):
            # they part their process (or thread) from the table it shared: a read of
            # another sharer's does not show that, only a read of its own after it
            # (a thread's unshare applies: where the scan found the thread's own
            # table it has no other user, and applying it again copies nothing)
            return e.tid == e.pid and e.ts < self.read_ns.get(e.pid, 0)
        return isinstance(e, TABLE_RECORDS) and self.read_after(e)

    def _parts_shared(self, e: ev.Event) -> bool:
        """A close_range(CLOSE_RANGE_UNSHARE) on a table the model has shared: an
        unshare first, then its closes in the copy."""
        if not (isinstance(e, ev.CloseRange) and e.flags & ev.CLOSE_RANGE_UNSHARE):
            return False
        table = self.model.table_of(e.pid, e.tid)
        return table is not None and len(table.users) > 1

    def read_after(self, e: ev.Event) -> bool:
        """Did the last snapshot read the table e's thread uses after e was made?"""
        if e.ts >= self.read_last:
            return False                     # newer than every read: the usual case
        # (a thread's own table is read under a tid using it - where the snapshot
        # found it, or where it was read again as its thread was first seen - or
        # under a CLONE_FILES child's pid: never under its leader's, whose
        # /proc/PID/fd shows another, and who is no user of it)
        table = self.model.table_of(e.pid, e.tid)
        if table is None or e.table and table.ptr and e.table != table.ptr:
            return False        # the record names another kernel table than that one
        reads = [self.read_ns[u] for u in table.users if u in self.read_ns]
        return bool(reads) and e.ts < min(reads)

    def parted_unread(self, e: ev.Event) -> bool:
        """An exec or unshare by a process the scan did not read (it held no tun fd
        then), leaving a table another user's read shows after it: the copy it took
        is of that table before the read, and the model has it only as read, with
        what the others did after. Its table is read from /proc again once the
        record applies (Session._reread)."""
        parts = isinstance(e, ev.Exec) or (
            # (an exec's unshare parts it at the point of no return, UNSHARE_EXEC,
            # not where the exec begins)
            isinstance(e, ev.Unshare) and not e.flags & ev.UNSHARE_AT_EXEC
        ) or isinstance(e, ev.CloseRange) and bool(e.flags & ev.CLOSE_RANGE_UNSHARE)
        if not parts or e.tid != e.pid or e.pid in self.read_ns or e.ts >= self.read_last:
            return False
        table = self.model.table_of(e.pid, e.tid)
        # (any read after it: the table as loaded holds what was read last)
        reads = [self.read_ns[u] for u in table.users if u in self.read_ns] \
            if table is not None else []
        return bool(reads) and e.ts < max(reads)

    def died_before_snapshot(self, e: ev.Event) -> bool:
        """An exit stamped before the last snapshot that the snapshot still shows: the
        kernel releases a process's files after sched_process_exit, so a snapshot taken
        in between lists the fds of the dead. Dead is dead: the exit applies."""
        return isinstance(e, ev.Exit) and e.pid in self.model.procs \
            and not self._alive(e.pid)
