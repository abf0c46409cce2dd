"""Session's decisions between the records and /proc: when receives need parsing
no more (scm_settled), and when a table read from /proc counts as read.

The tracepoint program parses recvmsg only while a send may be in flight; user
space says when none is (Probes.scm_settled). A send older than the last snapshot
but read after it is not kept by the model (the snapshot showed its fds), yet its
message may still be unreceived: /proc cannot show a message in flight, so its
receive must be recorded (it is then taken from /proc as a receive of an unknown
send). Found by the fuzzer: a send read just after a lost-records resync, the peek
that followed it never recorded, its two fds missing for good.

The backend here is a stand-in that delivers crafted records (the thing under
test is the session's decision, not the kernel's); /proc's snapshot is an empty
one, so that the machine's own taps do not enter, and the /proc reads a decision
rests on are answered by the test.
"""

from __future__ import annotations

import time

import pytest

from tracer import events as ev
from tracer import procfs, session
from tracer.probes import BackendInfo


class Probes:
    """What Session asks of a backend; records are delivered from `feed`."""

    info = BackendInfo("fake", "ringbuf", 1, None)

    def __init__(self, on_event) -> None:
        self._on_event = on_event
        self.feed: list[ev.Event] = []
        self.settled = 0
        self.interest: set[int] = set()
        self.one_by_one = False

    def poll(self, _timeout_ms: int) -> None:
        """Delivers what is fed, or one record a poll with `one_by_one` (records the
        kernel still holds when a batch begins)."""
        n = 1 if self.one_by_one else len(self.feed)
        feed, self.feed = self.feed[:n], self.feed[n:]
        for e in feed:
            self._on_event(e)

    def lost(self) -> int:
        return 0

    def scm_settled(self) -> None:
        self.settled += 1

    def set_interest(self, pids) -> None:
        self.interest |= set(pids)

    def drop_interest(self, pid: int) -> None:
        self.interest.discard(pid)

    def close(self) -> None:
        pass


@pytest.fixture
def s(monkeypatch):
    monkeypatch.setattr(session, "open_backend",
                        lambda _choice, on_event, *_a, **_k: (Probes(on_event), None))
    monkeypatch.setattr(procfs, "snapshot", lambda: procfs.Snapshot({}, [], {}, [], []))
    out: list[dict] = []
    sess = session.Session(out.append)
    sess.start()
    return sess


def send(ts: int) -> ev.ScmSend:
    return ev.ScmSend(ts=ts, pid=4242, tid=4242, comm="sender", sock=3, fds=(5,))


def test_nothing_in_flight_settles_receives(s):
    s.probes.feed.append(ev.Close(ts=time.monotonic_ns(), pid=4242, tid=4242, comm="x", fd=9))
    s.step(0)
    assert s.probes.settled == 1


def test_a_send_the_snapshot_came_after_keeps_receives_parsed(s):
    s.probes.feed.append(send(s._times.min_ts - 1))
    s.step(0)
    assert not s.model.pending            # not kept: /proc showed its fds
    assert s.probes.settled == 0          # but its message may be in flight


def test_and_does_so_only_as_long_as_a_send_is_kept(s):
    s.probes.feed.append(send(time.monotonic_ns() - ev.SCM_PENDING_NS - 1))
    s.step(0)
    assert s.probes.settled == 1


# A table read from /proc while records wait (a thread first seen with a table of
# its own, a table read again) counts as read then, like a snapshot's: the records
# from before it are in it. Not when its task has gone: /proc showed nothing, and
# the records are all there is.

@pytest.mark.parametrize("alive", [True, False])
def test_a_threads_own_table_read_counts_as_read_only_while_the_thread_lives(
        s, monkeypatch, alive):
    monkeypatch.setattr(procfs, "table_tun_fds", lambda _tid: [])
    monkeypatch.setattr(procfs, "alive", lambda _tid: alive)
    assert s._thread_table(4242, 4250, True) == []
    assert (4250 in s._times.read_ns) is alive


def test_a_thread_its_record_puts_on_its_leaders_table_is_not_read(s, monkeypatch):
    monkeypatch.setattr(procfs, "table_tun_fds", lambda _tid: pytest.fail("read"))
    monkeypatch.setattr(procfs, "same_fd_table", lambda _a, _b: pytest.fail("kcmp"))
    assert s._thread_table(4242, 4250, False) is None


@pytest.mark.parametrize("alive", [True, False])
def test_a_table_read_again_counts_as_read_only_while_its_process_lives(
        s, monkeypatch, alive):
    monkeypatch.setattr(procfs, "table_tun_fds", lambda _pid: [])
    monkeypatch.setattr(procfs, "alive", lambda _pid: alive)
    s._reread(4242, time.monotonic_ns())
    assert (4242 in s._times.read_ns) is alive


# A receive the BPF side records puts its receiver in the interest set, whatever
# fd it got (on_recv cannot tell a tun fd); a process leaves the set only at its
# exit. One that got nothing the model tracks leaves it when its receive applies.

def recv(pid: int, ts: int) -> ev.ScmRecv:
    return ev.ScmRecv(ts=ts, pid=pid, tid=pid, comm="rx", sock=4, fds=(7,), cloexec=False)


def test_a_receiver_that_got_no_tracked_file_leaves_the_interest_set(s, monkeypatch):
    monkeypatch.setattr(session, "fd_ifname", lambda _pid, _fd: None)   # not a tun fd
    s.probes.interest.add(4343)                  # as on_recv put it there
    s.probes.feed.append(recv(4343, time.monotonic_ns()))
    s.step(0)
    assert 4343 not in s.probes.interest


def test_unless_a_record_not_applied_yet_shows_it_acting(s, monkeypatch):
    monkeypatch.setattr(session, "fd_ifname", lambda _pid, _fd: None)
    s.probes.interest.add(4343)
    s.probes.one_by_one = True                   # the second still in the kernel
    now = time.monotonic_ns()
    s.probes.feed += [recv(4343, now), recv(4343, now + 1)]
    s.step(0)
    assert 4343 in s.probes.interest             # kept while its records wait
    s.step(0)
    assert 4343 not in s.probes.interest


# A fork copies its parent's table. Where the model does not know the parent (the
# last snapshot's scan listed /proc before the fork and came to the parent after
# it exited: found by the fuzzer, seed 20261202), nor does it know the copy: the
# child's table is read from /proc.

@pytest.mark.parametrize("parent_known", [True, False])
def test_a_fork_by_a_process_the_model_does_not_know_reads_the_childs_table(
        s, monkeypatch, parent_known):
    read = []
    monkeypatch.setattr(procfs, "table_tun_fds", lambda pid: read.append(pid) or [])
    monkeypatch.setattr(procfs, "alive", lambda _pid: True)
    if parent_known:
        s.model._proc(4242, "parent")
    s.probes.feed.append(ev.Fork(ts=time.monotonic_ns(), pid=4242, tid=4242, comm="parent",
                                 child=4244, flags=17))     # SIGCHLD: a fork
    s.step(0)
    assert read == ([] if parent_known else [4244])


# A record from before the snapshot applied for what the scan cannot show (a
# clone(CLONE_FILES) between processes the scan did not read: they held no tun
# fd) names the kernel's table of then (Event.table): the model's tables are as
# the scan read them after, and learn no identity from it.

def test_a_clone_from_before_the_snapshot_names_no_table_to_the_model(s, monkeypatch):
    monkeypatch.setattr(s._times, "_alive", lambda _pid: True)   # the child lives
    s.probes.feed.append(ev.Fork(ts=1, pid=4242, tid=4242, comm="parent", child=4244,
                                 flags=ev.CLONE_FILES | 17, table=0xFFFF888000AA0000))
    s.step(0)
    assert s.model.procs[4244].table is s.model.procs[4242].table    # it applied
    assert s.model.procs[4242].table.ptr == 0


# A process whose records are read after it died (a CLONE_FILES sharer killed while
# the tracer was behind) has no /proc: what its fds were is asked of a sharer of its
# table that runs (found by the fuzzer: seed 617467 of scm under load, a receive
# into a dead receiver's shared table whose cut-short message's last fd was lost).

def sharing(s, alive: set[int], monkeypatch) -> None:
    s.model.apply(ev.Fork(ts=time.monotonic_ns(), pid=10, tid=10, comm="a", child=11,
                          flags=ev.CLONE_FILES | 17))
    monkeypatch.setattr(procfs, "alive", lambda pid: pid in alive)
    monkeypatch.setattr(session, "fd_ifname",
                        lambda pid, fd: "tap0" if (pid, fd) == (11, 5) else None)
    monkeypatch.setattr(procfs, "same_file",
                        lambda a, fa, b, fb: True if (a, b) == (11, 11) else None)


def test_a_dead_process_s_fds_are_read_through_a_sharer_that_runs(s, monkeypatch):
    sharing(s, {11}, monkeypatch)
    assert s.model.procs[10].table is s.model.procs[11].table
    assert s._fd_now(10, 5) == "tap0"
    assert s._same_file(10, 5, 10, 3) is True


def test_a_live_process_s_closed_fd_is_not_read_elsewhere(s, monkeypatch):
    sharing(s, {10, 11}, monkeypatch)
    assert s._fd_now(10, 5) is None
    assert s._same_file(10, 5, 10, 3) is None
    sharing(s, set(), monkeypatch)                  # nobody left to ask
    assert s._fd_now(10, 5) is None


def test_a_dead_process_s_fds_are_read_through_a_clone_files_child_still_to_come(
        s, monkeypatch):
    # its receive applies before its clone(CLONE_FILES) does: the child, which runs,
    # is a user of that table already (the record not applied yet says so)
    monkeypatch.setattr(procfs, "alive", lambda pid: pid == 12)
    monkeypatch.setattr(session, "fd_ifname",
                        lambda pid, fd: "tap0" if (pid, fd) == (12, 5) else None)
    s.model.apply(ev.Fork(ts=time.monotonic_ns(), pid=10, tid=10, comm="a", child=11,
                          flags=ev.CLONE_FILES | 17))   # (11 dead too)
    assert s._fd_now(10, 5) is None
    s._queue.append(ev.Fork(ts=time.monotonic_ns(), pid=10, tid=10, comm="a", child=12,
                            flags=ev.CLONE_FILES | 17))
    assert s._fd_now(10, 5) == "tap0"
    # (not where a record to come changes that fd)
    s._queue.append(ev.Close(ts=time.monotonic_ns(), pid=12, tid=12, comm="a", fd=5))
    assert s._fd_now(10, 5) is None
