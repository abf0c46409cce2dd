"""Which records a snapshot already shows (tracer/resync.py), as a specification.

The scenario: a /proc snapshot begun at 1000 and complete at 5000 (CLOCK_MONOTONIC
ns, the records' clock) that read the fd table of each holder at its own time and
the taps (/sys) at 4500; the model loaded from it. The action: one record read
after it, stamped just before or just after a read time. The expected answer:
does the snapshot show its effect already (the session does not apply it), or is
it news (it applies)?

    pid 10  fd 3 tap0            table read at 2000
    pid 20  fd 4 tap1            table read at 3000
    pid 30  fd 5 tap2  } one     read at 2500
    pid 31  fd 5 tap2  } table   read at 4000   (the latest read: read_last)
    pid 50, 51: no tun fd (the scan does not list them); 50 known to the model
"""

from __future__ import annotations

import pytest

from tracer import events as ev
from tracer.model import Model
from tracer.procfs import FdInfo, ProcInfo, Snapshot, TapInfo
from tracer.resync import SnapshotTimes

TAP = ev.IFF_TAP | ev.IFF_NO_PI
SIGCHLD = 17
START, END, TAPS = 1000, 5000, 4500
READ = {10: 2000, 20: 3000, 30: 2500, 31: 4000}


def snapshot(read_ns: dict[int, int], taps_ns: int = TAPS) -> Snapshot:
    holders = [(10, 3, "tap0"), (20, 4, "tap1"), (30, 5, "tap2"), (31, 5, "tap2")]
    return Snapshot(
        procs={pid: ProcInfo(pid, 1, f"p{pid}", (f"p{pid}",), 0) for pid, _, _ in holders},
        fds=[FdInfo(pid, fd, "/dev/net/tun", name, False, 0o2) for pid, fd, name in holders],
        taps={name: TapInfo(name, 10 + i, "tap", TAP, False, False, False, None, None, None)
              for i, name in enumerate(("tap0", "tap1", "tap2"))},
        files=[[(10, 3)], [(20, 4)], [(30, 5), (31, 5)]],
        tables=[[10], [20], [30, 31]],
        read_ns=dict(read_ns), taps_ns=taps_ns)


class Scene:
    """A model loaded from the snapshot above, and the judge of its timings."""

    def __init__(self, read_ns: dict[int, int] | None = None, **model) -> None:
        self.model = Model(**model)
        self.live = {10, 20, 30, 31, 50, 51}
        snap = snapshot(READ if read_ns is None else read_ns)
        self.model.load(snap)
        self.model._proc(50, "sh")               # traced, holds nothing (Session.track)
        self.exiting: set[int] = set()           # exits the records ahead hold
        self.times = SnapshotTimes(self.model, alive=lambda pid: pid in self.live,
                                   exits_sharing=lambda pid: pid in self.exiting)
        self.times.taken(snap, START, END)

    def apply(self, e: ev.Event) -> None:
        """A record the model has applied already (it changes what it knows)."""
        self.model.apply(e)


@pytest.fixture
def s() -> Scene:
    return Scene()


def rec(cls, ts: int, pid: int, tid: int | None = None, **kw) -> ev.Event:
    return cls(ts=ts, pid=pid, tid=pid if tid is None else tid, comm=f"p{pid}", **kw)


def close(ts, pid, fd=3, **kw):
    return rec(ev.Close, ts, pid, fd=fd, **kw)


def ioctl(ts, pid, cmd, fd=3, ifname="", ret=0, netns=0):
    return rec(ev.TunIoctl, ts, pid, fd=fd, cmd=cmd, ret=ret, ifname=ifname, value=0,
               netns=netns)


def fork(ts, pid, child, flags=SIGCHLD):
    return rec(ev.Fork, ts, pid, child=child, flags=flags)


# =============================================================================
# the timings kept
# =============================================================================

def test_a_snapshot_taken_sets_its_timings(s):
    t = s.times
    assert (t.min_ts, t.snap_end, t.taps_ns, t.read_ns, t.read_last) == (
        START, END, TAPS, READ, 4000)


def test_a_snapshot_that_did_not_say_when_it_read_the_taps_read_them_at_its_end():
    t = SnapshotTimes(Model())
    t.taken(Snapshot({}, [], {}, [], []), 100, 200)
    assert (t.taps_ns, t.read_last, t.read_ns) == (200, 0, {})


def test_a_table_read_again_counts_as_read_then(s):
    s.times.read_again(12, 6000)
    assert (s.times.read_ns[12], s.times.read_last) == (6000, 6000)
    s.times.read_again(13, 5500)                 # earlier than the latest: stays
    assert (s.times.read_ns[13], s.times.read_last) == (5500, 6000)


# =============================================================================
# shows: stamped before the snapshot began
# =============================================================================

@pytest.mark.parametrize("pid", [10, 50, 99])     # a holder, a non-holder, unknown
def test_a_record_stamped_before_the_snapshot_began_is_shown(s, pid):
    assert s.times.shows(close(START - 1, pid))


def test_a_record_stamped_when_the_snapshot_began_is_shown_only_by_a_later_read(s):
    assert not s.times.shows(close(START, 50))          # a table the scan did not read
    assert s.times.shows(close(START, 10, fd=7))        # 10's, read at 2000


# =============================================================================
# in_snapshot / read_after: a change of a table the scan read after it
# =============================================================================

def test_a_close_just_before_its_process_was_read_is_in_the_snapshot(s):
    assert s.times.read_after(close(1999, 10))
    assert s.times.in_snapshot(close(1999, 10)) and s.times.shows(close(1999, 10))


def test_a_close_when_or_after_its_process_was_read_is_news(s):
    for ts in (2000, 2001):
        assert not s.times.in_snapshot(close(ts, 10))
        assert not s.times.shows(close(ts, 10))


def test_a_record_newer_than_every_read_is_news_whoever_made_it(s):
    for pid, fd in ((10, 3), (20, 4), (31, 5)):
        late = close(4000, pid, fd=fd)                   # read_last: the usual case
        assert not s.times.read_after(late) and not s.times.shows(late)


@pytest.mark.parametrize("cls, kw", [
    (ev.Open, {"fd": 7, "path": "/dev/net/tun", "flags": 2}),
    (ev.TunIoctl, {"fd": 3, "cmd": ev.TUNSETIFF, "ret": 0, "ifname": "tap0", "value": TAP}),
    (ev.Dup, {"oldfd": 3, "newfd": 7, "how": "dup", "cloexec": False}),
    (ev.Close, {"fd": 3}),
    (ev.CloseRange, {"first": 3, "last": 3, "flags": 0}),
    (ev.SetFd, {"fd": 3, "cloexec": True, "how": "F_SETFD"}),
    (ev.ScmRecv, {"sock": 9, "fds": (7,), "cloexec": False}),
    (ev.PidfdGetfd, {"pidfd": 8, "target_fd": 3, "newfd": 7}),
])
def test_each_table_record_before_its_read_is_in_the_snapshot(s, cls, kw):
    assert s.times.in_snapshot(rec(cls, 1999, 10, **kw))
    assert not s.times.in_snapshot(rec(cls, 2000, 10, **kw))


@pytest.mark.parametrize("cls, kw", [
    (ev.ScmSend, {"sock": 9, "fds": (3,)}),
    (ev.Exit, {}),
    (ev.VhostBackend, {"fd": 3, "index": 0, "backend_fd": 4, "ret": 0}),
])
def test_a_record_that_changes_no_table_is_not_in_the_snapshot(s, cls, kw):
    assert not s.times.in_snapshot(rec(cls, 1999, 10, **kw))


def test_a_shared_table_counts_as_read_only_once_every_user_was_read(s):
    # 30 read at 2500, 31 at 4000: by either sharer, a change before 2500 is in both
    # reads; one at 3000 is in 31's read but not in 30's
    for pid in (30, 31):
        assert s.times.read_after(close(2499, pid, fd=5))
        assert not s.times.read_after(close(2500, pid, fd=5))
        assert not s.times.read_after(close(3000, pid, fd=5))


def test_a_record_of_a_process_the_scan_did_not_list_is_news(s):
    assert s.model.table_of(50, 50) is not None          # known, holds nothing
    assert not s.times.in_snapshot(close(1500, 50))
    assert not s.times.in_snapshot(close(1500, 99))      # not known at all


def test_a_thread_with_a_table_of_its_own_was_never_read(s):
    # /proc/PID/fd shows the leader's table; the thread's own is never read
    s.apply(fork(1100, 10, 11, flags=ev.CLONE_THREAD))   # no CLONE_FILES: a copy
    assert 11 in s.model.procs[10].thread_tables
    thread_close = close(1500, 10, tid=11)
    assert not s.times.read_after(thread_close) and not s.times.shows(thread_close)
    assert s.times.read_after(close(1500, 10))           # the leader's: read at 2000


def test_a_thread_whose_own_table_a_listed_process_shares_was_read_with_it(s):
    # thread 11 of 10 unshared before the trace, then cloned 20 with CLONE_FILES:
    # 20's read (3000) shows that table, and so what 11 did in it before (found by
    # the fuzzer: seed 202187 of paused, a thread's own table read from /proc as
    # its thread was first seen, and a record its new thread made before the read)
    s = Scene(thread_table=lambda pid, tid, _known: [] if tid == 11 else None,
              same_table=lambda a, b: (a, b) == (11, 20))
    s.apply(close(5100, 10, tid=11, fd=9))               # 11 first seen acting
    assert s.model.table_of(10, 11) is s.model.procs[20].table
    assert s.times.read_after(close(2500, 10, tid=11, fd=4))
    assert s.times.read_after(close(2500, 20, fd=4))


def test_a_record_naming_another_table_than_the_one_read_is_not_read_after(s):
    # the model has learned which kernel table 20 uses (0x2000); a record of 20's
    # naming another (it used that one then) is not in the read of 0x2000
    s.apply(close(5100, 20, fd=9, table=0x2000))
    assert s.model.procs[20].table.ptr == 0x2000
    assert s.times.read_after(close(2500, 20, fd=4, table=0x2000))
    assert s.times.read_after(close(2500, 20, fd=4))
    assert not s.times.read_after(close(2500, 20, fd=4, table=0x3000))


def test_a_thread_sharing_its_leaders_table_was_read_with_it(s):
    s.apply(fork(1100, 10, 11, flags=ev.CLONE_THREAD | ev.CLONE_FILES))
    assert s.times.read_after(close(1500, 10, tid=11))


# ---- clones ----------------------------------------------------------------

def test_a_clone_whose_child_the_scan_read_after_it_is_in_the_snapshot(s):
    # 20 was read at 3000 holding tap1: what the scan saw of it is its table, not a
    # copy of 10's that the clone would give
    assert s.times.in_snapshot(fork(2999, 10, 20))
    assert s.times.in_snapshot(fork(2999, 10, 20, flags=ev.CLONE_FILES))
    assert not s.times.in_snapshot(fork(3000, 10, 20))


def test_a_thread_clone_is_never_in_the_snapshot(s):
    assert not s.times.in_snapshot(fork(1500, 10, 20, flags=ev.CLONE_THREAD))


def test_a_clone_whose_child_holds_nothing_is_news(s):
    # the scan says nothing of a child that holds no tun fd, even if its parent does
    assert not s.times.in_snapshot(fork(1500, 10, 12))
    assert not s.times.shows(fork(1500, 10, 12))


def test_a_fork_older_than_its_parents_read_is_read_after(s):
    # what drain asks to read the child's table again (Session._reread)
    assert s.times.read_after(fork(1999, 10, 12))
    assert not s.times.read_after(fork(2000, 10, 12))


# ---- exec and unshare: only a read of their own process's table shows them ----

@pytest.mark.parametrize("cls, kw", [(ev.Exec, {"old_pid": 31}),
                                     (ev.Unshare, {"flags": ev.CLONE_FILES}),
                                     (ev.CloseRange, {"first": 3, "last": 9, "flags": ev.CLOSE_RANGE_UNSHARE})])
def test_an_exec_or_unshare_before_its_own_read_is_in_the_snapshot(s, cls, kw):
    assert s.times.in_snapshot(rec(cls, 3999, 31, **kw))
    assert not s.times.in_snapshot(rec(cls, 4000, 31, **kw))


@pytest.mark.parametrize("cls, kw", [(ev.Exec, {"old_pid": 30}),
                                     (ev.Unshare, {"flags": ev.CLONE_FILES}),
                                     (ev.CloseRange, {"first": 3, "last": 9, "flags": ev.CLOSE_RANGE_UNSHARE})])
def test_an_exec_or_unshare_read_only_in_a_sharers_table_is_news(s, cls, kw):
    # 30 left the table it shared with 31 at 2600: 31's read at 4000 shows 31's
    # table, not that 30 is no longer in it
    assert not s.times.in_snapshot(rec(cls, 2600, 30, **kw))
    assert s.times.in_snapshot(rec(cls, 2400, 30, **kw))


@pytest.mark.parametrize("cls, kw", [
    (ev.Exec, {"old_pid": 52}), (ev.Unshare, {"flags": ev.CLONE_FILES}),
    (ev.CloseRange, {"first": 3, "last": 9, "flags": ev.CLOSE_RANGE_UNSHARE})])
def test_a_sharer_the_scan_did_not_read_parts_from_a_table_read_after_it(s, cls, kw):
    # 52 shares 31's table (a CLONE_FILES child holding no tun fd of its own when
    # the scan passed it: not read) and leaves it at 3500; 31's read at 4000 shows
    # the table with what 31 did after: the copy 52 took is read from /proc again
    s.apply(fork(1100, 31, 52, flags=ev.CLONE_FILES | SIGCHLD))
    # it applies: no read of 52's own shows it (found by the fuzzer for a
    # close_range(CLOSE_RANGE_UNSHARE), fixed-seed seed 20261141: its maker's
    # TUNSETIFF after it was judged shown in the table it had left)
    assert not s.times.shows(rec(cls, 3500, 52, **kw))
    assert not s.times.shows(rec(cls, 2400, 52, **kw))
    assert s.times.parted_unread(rec(cls, 3500, 52, **kw))
    # (read earlier too: 30's read at 2500 shows the table after 2400)
    assert s.times.parted_unread(rec(cls, 2400, 52, **kw))
    # after every read of the table: its copy is the table the model has
    assert not s.times.parted_unread(rec(cls, 4000, 52, **kw))


def test_what_parts_a_table_read_after_it_is_read_again_only_once_and_not_for_others(s):
    s.apply(fork(1100, 31, 52, flags=ev.CLONE_FILES | SIGCHLD))
    t = s.times
    # its own table read (a holder): the snapshot shows what it holds
    assert not t.parted_unread(rec(ev.Exec, 3500, 31, old_pid=31))
    assert not t.parted_unread(rec(ev.CloseRange, 3500, 52, first=3, last=9, flags=0))
    assert not t.parted_unread(close(3500, 52))
    t.read_again(52, 3600)                           # read again: it is a read of its own
    assert not t.parted_unread(rec(ev.Exec, 3500, 52, old_pid=52))


def test_an_exec_parts_a_table_at_its_point_of_no_return(s):
    # the kernel unshares an exec's table at its point of no return (UNSHARE_EXEC,
    # the record before the Exec's), not where the exec begins (UNSHARE_AT_EXEC)
    s.apply(fork(1100, 31, 52, flags=ev.CLONE_FILES | SIGCHLD))
    t = s.times
    assert not t.parted_unread(rec(ev.Unshare, 3500, 52, flags=ev.UNSHARE_AT_EXEC))
    s.apply(rec(ev.Unshare, 3500, 52, flags=ev.UNSHARE_AT_EXEC))
    assert t.parted_unread(rec(ev.Unshare, 3501, 52, flags=ev.UNSHARE_EXEC))
    s.apply(rec(ev.Unshare, 3501, 52, flags=ev.UNSHARE_EXEC))
    assert not t.parted_unread(rec(ev.Exec, 3502, 52, old_pid=52))   # parted already


def test_an_unshare_by_a_thread_is_never_in_the_snapshot(s):
    s.apply(fork(1100, 10, 11, flags=ev.CLONE_THREAD | ev.CLONE_FILES))
    assert not s.times.in_snapshot(rec(ev.Unshare, 1500, 10, tid=11, flags=ev.CLONE_FILES))


# =============================================================================
# died_before_snapshot: the dead are dead
# =============================================================================

def test_an_exit_of_a_process_the_snapshot_still_lists_applies_when_it_is_dead(s):
    s.live.discard(10)
    e = rec(ev.Exit, START - 1, 10)
    assert s.times.died_before_snapshot(e)
    assert not s.times.shows(e)              # older than the snapshot, and yet it applies


def test_an_old_exit_of_a_process_alive_now_is_shown(s):
    # the pid lives (reused, or a thread's exit): the snapshot's view stands
    e = rec(ev.Exit, START - 1, 10)
    assert not s.times.died_before_snapshot(e) and s.times.shows(e)


def test_an_exit_of_a_process_the_model_does_not_know_is_no_death_to_apply(s):
    s.live.discard(99)
    assert not s.times.died_before_snapshot(rec(ev.Exit, START - 1, 99))
    s.live.discard(10)
    assert not s.times.died_before_snapshot(close(START - 1, 10))   # exits only


# =============================================================================
# tap_news and tap_state_shown: what /sys showed of a tap
# =============================================================================

@pytest.mark.parametrize("cmd", [ev.TUNSETPERSIST, ev.TUNSETOWNER, ev.TUNSETGROUP,
                                 ev.TUNSETQUEUE])
def test_a_tap_change_after_the_taps_were_read_on_a_known_fd_is_news(s, cmd):
    assert s.times.tap_news(ioctl(TAPS, 10, cmd))
    assert not s.times.tap_news(ioctl(TAPS - 1, 10, cmd))
    assert not s.times.tap_news(ioctl(TAPS, 10, cmd, fd=9))     # an fd the table lacks
    assert not s.times.tap_news(ioctl(TAPS, 99, cmd))           # a table not known


def test_a_tunsetiff_is_no_tap_news(s):
    assert not s.times.tap_news(ioctl(TAPS, 10, ev.TUNSETIFF, ifname="tap0"))


def test_a_tap_change_on_a_table_read_again_after_it_still_applies(s):
    # a fork's child read again after the taps: its table is newer than the change,
    # /sys's read of the tap older
    s.apply(fork(4600, 10, 12))
    s.times.read_again(12, 6000)
    persist = ioctl(5500, 12, ev.TUNSETPERSIST)
    assert s.times.in_snapshot(persist) and s.times.tap_news(persist)
    assert not s.times.shows(persist)
    assert s.times.shows(close(5500, 12))               # a change of the table: shown


@pytest.mark.parametrize("cmd, shown", [(ev.TUNSETPERSIST, True), (ev.TUNSETOWNER, True),
                                        (ev.TUNSETGROUP, True), (ev.TUNSETQUEUE, False),
                                        (ev.TUNSETIFF, False)])
def test_a_tap_change_older_than_the_read_of_the_taps_is_shown_by_sys(s, cmd, shown):
    assert s.times.tap_state_shown(ioctl(TAPS - 1, 10, cmd)) is shown
    assert not s.times.tap_state_shown(ioctl(TAPS, 10, cmd))


# =============================================================================
# raced_snapshot: a holder left a shared table while the scan ran
# =============================================================================

@pytest.mark.parametrize("cls, kw", [(ev.Exec, {"old_pid": 20}),
                                     (ev.Unshare, {"flags": ev.CLONE_FILES})])
def test_an_exec_or_unshare_by_a_holder_while_the_scan_ran_raced_it(s, cls, kw):
    assert s.times.raced_snapshot(rec(cls, START, 20, **kw))
    assert s.times.raced_snapshot(rec(cls, END - 1, 20, **kw))
    assert not s.times.raced_snapshot(rec(cls, START - 1, 20, **kw))
    assert not s.times.raced_snapshot(rec(cls, END, 20, **kw))


def test_an_exec_by_a_process_the_scan_did_not_list_raced_nothing(s):
    assert not s.times.raced_snapshot(rec(ev.Exec, 3000, 50, old_pid=50))


def test_other_records_while_the_scan_ran_race_nothing(s):
    assert not s.times.raced_snapshot(close(3000, 20, fd=4))
    assert not s.times.raced_snapshot(fork(3000, 20, 21))


# =============================================================================
# unseen_sharing: what the scan cannot show of processes that hold no tun fd
# =============================================================================

def test_a_clone_files_between_non_holders_applies(s):
    # older than the snapshot, which cannot show it: drain applies it all the same
    e = fork(900, 50, 51, flags=ev.CLONE_FILES)
    assert s.times.shows(e) and s.times.unseen_sharing(e)


def test_a_clone_files_between_non_holders_whose_child_is_gone_does_not(s):
    s.live.discard(51)
    assert not s.times.unseen_sharing(fork(900, 50, 51, flags=ev.CLONE_FILES))


def test_a_clone_files_from_a_holder_to_a_child_gone_before_its_read_applies(s):
    # the scan read the parent after the child exited: the child's records after
    # the snapshot began (a send of the table's fds) are a sharer's
    s.live.discard(51)
    s.exiting.add(51)
    e = fork(900, 10, 51, flags=ev.CLONE_FILES)
    assert s.times.shows(e) and s.times.unseen_sharing(e)


def test_but_not_when_its_exit_is_not_to_come(s):
    # lost, or after an exec or unshare that parted it: it would stay a user
    s.live.discard(51)
    assert not s.times.unseen_sharing(fork(900, 10, 51, flags=ev.CLONE_FILES))


@pytest.mark.parametrize("parent, child, flags", [
    (10, 51, ev.CLONE_FILES),                       # a holder's child alive, not read
    (50, 20, ev.CLONE_FILES),                       # the child is one
    (50, 51, ev.CLONE_FILES | ev.CLONE_THREAD),     # a thread
    (50, 51, SIGCHLD),                              # a copy, not a share
])
def test_other_clones_are_no_unseen_sharing(s, parent, child, flags):
    assert not s.times.unseen_sharing(fork(900, parent, child, flags=flags))


@pytest.mark.parametrize("cls, kw", [(ev.Exec, {"old_pid": 50}),
                                     (ev.Unshare, {"flags": ev.CLONE_FILES})])
def test_an_exec_or_unshare_by_a_non_holder_with_an_empty_table_applies(s, cls, kw):
    assert s.times.unseen_sharing(rec(cls, 900, 50, **kw))
    assert not s.times.unseen_sharing(rec(cls, 900, 10, **kw))     # a holder
    assert not s.times.unseen_sharing(rec(cls, 900, 99, **kw))     # not known


def test_an_exec_by_a_non_holder_whose_table_has_fds_now_is_no_unseen_sharing(s):
    # 50 got a tun fd after the snapshot: the model's table of it is not empty
    s.apply(rec(ev.Open, 5100, 50, fd=3, path="/dev/net/tun", flags=2))
    assert not s.times.unseen_sharing(rec(ev.Exec, 900, 50, old_pid=50))


def test_other_records_are_no_unseen_sharing(s):
    assert not s.times.unseen_sharing(close(900, 50))


# =============================================================================
# last_setiff: the last TUNSETIFF of an interface the snapshot may show
# =============================================================================

def setiff(ts, pid, name, ret=0, netns=0):
    return ioctl(ts, pid, ev.TUNSETIFF, ifname=name, ret=ret, netns=netns)


def test_a_tunsetiff_followed_by_another_of_its_interface_from_before_a_read_is_not_last(s):
    e = setiff(900, 10, "tap0")
    assert s.times.last_setiff(e, [])
    assert not s.times.last_setiff(e, [setiff(3999, 20, "tap0")])
    assert s.times.last_setiff(e, [setiff(4000, 20, "tap0")])      # after every read


@pytest.mark.parametrize("other", [
    setiff(1500, 20, "tap0", ret=-1),               # failed
    setiff(1500, 20, "tap9"),                       # another interface
    setiff(1500, 20, "tap0", netns=7),              # one of its name elsewhere
    ioctl(1500, 20, ev.TUNSETPERSIST, ifname="tap0"),
    close(1500, 20),
])
def test_only_a_successful_tunsetiff_of_the_same_interface_follows(s, other):
    assert s.times.last_setiff(setiff(900, 10, "tap0"), [other])


def test_a_table_kept_unread_shows_none_of_its_records(s):
    # a process the snapshot did not show, whose table the model kept as it had it
    # (Model.resync's `kept`): its records older than the scan apply
    assert s.times.shows(close(START - 1, 50, fd=4))
    s.times.taken(snapshot(READ), START, END, unread=[50])
    assert not s.times.shows(close(START - 1, 50, fd=4))
    assert s.times.shows(close(START - 1, 10, fd=4))
