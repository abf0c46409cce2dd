"""The records read but not applied yet, as the model's questions to /proc need them.

The tracer is behind its records: when the model asks /proc something while one
record applies (what an fd holds, which threads a process has, whether a thread
has a table of its own), /proc answers for now, and the records not applied yet
may say that now is later than the record. Ahead holds where drain is (its batch
and the position after the record being applied) and the queue that polls fill
after it, and answers what those records say; the session decides what to ask.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator

from . import events as ev


class Ahead:
    """queue: the list the backend appends records to (the same list, emptied and
    refilled in place by drain); poll(): read what the kernel holds into it now."""

    def __init__(self, queue: list[ev.Event], poll: Callable[[], None]) -> None:
        self._queue = queue
        self._poll = poll
        self._batch: list[ev.Event] = []
        self._at = 0
        self._changes: tuple = (None, None, ({}, {}, {}))  # _index of them

    def at(self, batch: list[ev.Event], at: int) -> None:
        """drain applies batch[at - 1]: the records not applied yet are batch[at:],
        then the queue."""
        self._batch, self._at = batch, at

    def records(self) -> Iterator[ev.Event]:
        """The records not applied yet, after reading what the kernel holds."""
        self._poll()
        return itertools.chain(self._batch[self._at:], self._queue)

    def fd_changes(self, pids: set[int], fd: int) -> bool:
        """Does a record not applied yet change that fd (closed, dup'd over, received
        into) in one of those processes (the users of one table)? Reads what the
        kernel holds first."""
        self._poll()
        idx, ranges, _last = self._index()
        at = self._at
        for p in pids:
            pos = idx.get((p, fd))
            if pos and pos[-1] >= at or any(i >= at and lo <= fd <= hi
                                             for i, lo, hi in ranges.get(p, ())):
                return True
        return False

    def _index(self) -> tuple[dict, dict, dict]:
        """Where in the records not applied yet (the batch being drained, then the
        queue) each (pid, fd) changes: {(pid, fd): [positions]}, close_range's
        {pid: [(position, first, last)]}, and each process's last record {pid:
        position}. Built once per batch and queue length, so asking costs no scan of
        a burst."""
        batch = self._batch
        key = (len(batch), len(self._queue))
        if self._changes[0] is batch and self._changes[1] == key:
            return self._changes[2]
        idx: dict[tuple[int, int], list[int]] = {}
        ranges: dict[int, list[tuple[int, int, int]]] = {}
        last: dict[int, int] = {}
        for i, e in enumerate(itertools.chain(batch, self._queue)):
            last[e.pid] = i
            if isinstance(e, (ev.Close, ev.Open)):
                idx.setdefault((e.pid, e.fd), []).append(i)
            elif isinstance(e, (ev.Dup, ev.PidfdGetfd)):
                idx.setdefault((e.pid, e.newfd), []).append(i)
            elif isinstance(e, ev.ScmRecv):
                for fd in e.fds:
                    idx.setdefault((e.pid, fd), []).append(i)
            elif isinstance(e, ev.CloseRange):
                ranges.setdefault(e.pid, []).append((i, e.first, e.last))
        self._changes = (batch, key, (idx, ranges, last))
        return idx, ranges, last

    def unshares_later(self, tid: int) -> bool:
        """Does a record not applied yet say that thread unshares its table (then /proc
        shows what it did later, and it used its leader's table until then)? Reads
        what the kernel holds first."""
        return any(e.tid == tid and (
            # not an exec's: by then the other threads are gone
            isinstance(e, ev.Unshare) and not e.flags & (ev.UNSHARE_AT_EXEC | ev.UNSHARE_EXEC)
            or isinstance(e, ev.CloseRange) and e.flags & ev.CLOSE_RANGE_UNSHARE)
            for e in self.records())

    def acts(self, pid: int) -> bool:
        """Is process `pid` in a record not applied yet? Reads what the kernel holds
        first. (Asked at receives: the index, not a scan of a burst each time.)"""
        self._poll()
        return self._index()[2].get(pid, -1) >= self._at

    def parts_since(self, pids: set[int], ts: int) -> bool:
        """Does a record not applied yet, stamped at `ts` or later, show one of
        `pids` leave the fd table it had (exec, unshare, close_range with
        CLOSE_RANGE_UNSHARE, its process's exit)? Reads what the kernel holds
        first. (Asked at a resync: a scan of them.)"""
        return any(e.pid in pids and e.ts >= ts and (
            _unshares(e) or isinstance(e, ev.Exit) and not e.thread)
            for e in self.records())

    def acts_since(self, pid: int, ts: int) -> bool:
        """Is process `pid` in a record not applied yet stamped at `ts` or later?
        Reads what the kernel holds first. (Asked at a resync: a scan of them.)"""
        return any(e.pid == pid and e.ts >= ts for e in self.records())

    def table_children(self, pid: int) -> set[int]:
        """The processes that records not applied yet show `pid` clone with
        CLONE_FILES (not threads): users of its table from then on. Reads what the
        kernel holds first."""
        return {e.child for e in self.records() if isinstance(e, ev.Fork) and e.pid == pid
                and e.flags & ev.CLONE_FILES and not e.flags & ev.CLONE_THREAD}

    def one_table(self, pid: int, other: int) -> bool:
        """Do the records not applied yet show processes `pid` and `other` act on one
        kernel fd table (Event.table), neither leaving its table (exec, unshare,
        close_range with CLOSE_RANGE_UNSHARE) anywhere among them? A table's address
        is another table's only once every user of the first has left it, and
        `other` does not leave. Reads what the kernel holds first."""
        seen: dict[int, set[int]] = {pid: set(), other: set()}
        for e in self.records():
            if e.pid not in seen:
                continue
            if _unshares(e):
                return False
            if e.table and e.tid == e.pid:      # (a thread may have a table of its own)
                seen[e.pid].add(e.table)
        return bool(seen[pid] & seen[other])

    def exits_sharing(self, pid: int) -> bool:
        """Do the records not applied yet show process `pid` exit, with no exec or
        unshare of its fd table before (it used the table it had until it died)?
        Reads what the kernel holds first."""
        for e in self.records():
            if e.pid != pid:
                continue
            if isinstance(e, ev.Exit) and not e.thread:
                return True
            if _unshares(e):
                return False
        return False

    def threads_acting(self, pid: int) -> set[int]:
        """The threads of `pid` (not its leader) that records not applied yet show
        acting with no clone of theirs before (/proc lists no thread of a process
        killed since, or a thread exited since). Reads what the kernel holds first."""
        tids = set()
        made = set()
        for e in self.records():
            if e.pid != pid:
                continue
            if e.tid != pid and e.tid not in made:
                tids.add(e.tid)
            if isinstance(e, ev.Fork) and e.flags & ev.CLONE_THREAD:
                made.add(e.child)
        return tids


def _unshares(e: ev.Event) -> bool:
    """Does e leave the fd table its process had for a copy (exec, unshare,
    close_range with CLOSE_RANGE_UNSHARE)?"""
    return isinstance(e, (ev.Exec, ev.Unshare)) or (
        isinstance(e, ev.CloseRange) and bool(e.flags & ev.CLOSE_RANGE_UNSHARE))


def receives_after(e: ev.TunIoctl, rest: list[ev.Event]) -> Iterator[tuple[int, int]]:
    """Where the fd of e (a TUNSETIFF) went next, among the records that follow it:
    the receives of its first SCM_RIGHTS send, as (pid, fd) at the fd's position in
    the message, in order (the model matches a receive to a send by position and
    count; the caller takes the first whose fd has e's interface)."""
    send = next((r for r in rest if isinstance(r, ev.ScmSend) and r.pid == e.pid
                 and e.fd in r.fds), None)
    if send is None:
        return
    pos = send.fds.index(e.fd)
    for r in rest[rest.index(send) + 1:]:
        if isinstance(r, ev.ScmRecv) and pos < len(r.fds) <= len(send.fds):
            yield r.pid, r.fds[pos]
