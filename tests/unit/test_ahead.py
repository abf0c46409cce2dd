"""What the records not applied yet say (tracer/ahead.py), as a specification.

The scenario: drain is applying one record of a batch; more records wait after it
in the batch, and the kernel holds more still (a poll moves them to the queue).
The action: a question the model's look at /proc needs answered. The expected
answer: what those later records say (an fd changed, a thread unshares, threads
act), never what the records already applied say.
"""

from __future__ import annotations

from tracer import events as ev
from tracer.ahead import Ahead, receives_after

SIGCHLD = 17


def rec(cls, pid: int, tid: int | None = None, ts: int = 0, **kw) -> ev.Event:
    return cls(ts=ts, pid=pid, tid=pid if tid is None else tid, comm="p", **kw)


def close(pid, fd, **kw):
    return rec(ev.Close, pid, fd=fd, **kw)


class Kernel:
    """Records the kernel holds until the next poll puts them in the queue."""

    def __init__(self) -> None:
        self.queue: list[ev.Event] = []
        self.held: list[ev.Event] = []
        self.polls = 0

    def poll(self) -> None:
        self.polls += 1
        self.queue.extend(self.held)
        self.held.clear()


def ahead(batch: list[ev.Event], at: int, queue=(), held=()) -> tuple[Ahead, Kernel]:
    k = Kernel()
    k.queue.extend(queue)
    k.held.extend(held)
    a = Ahead(k.queue, k.poll)
    a.at(batch, at)
    return a, k


# =============================================================================
# fd_changes: an fd of a table changed after the record being applied
# =============================================================================

def test_an_fd_closed_later_in_the_batch_changes():
    batch = [close(10, 5), close(10, 3)]
    a, _ = ahead(batch, 1)                  # batch[0] applies
    assert a.fd_changes({10}, 3)
    assert not a.fd_changes({10}, 5)        # its close is the one applied (or before)
    assert not a.fd_changes({11}, 3)        # another table's fd 3


def test_an_fd_changed_by_a_sharer_of_the_table_changes():
    a, _ = ahead([close(10, 9), close(11, 3)], 1)
    assert a.fd_changes({10, 11}, 3) and not a.fd_changes({10}, 3)


def test_each_way_an_fd_changes():
    later = [
        rec(ev.Open, 10, fd=3, path="/dev/net/tun", flags=2),
        rec(ev.Dup, 10, oldfd=7, newfd=4, how="dup2", cloexec=False),
        rec(ev.PidfdGetfd, 10, pidfd=8, target_fd=1, newfd=5),
        rec(ev.ScmRecv, 10, sock=9, fds=(6, 7), cloexec=False),
    ]
    a, _ = ahead([close(10, 1), *later], 1)
    assert [fd for fd in range(9) if a.fd_changes({10}, fd)] == [3, 4, 5, 6, 7]


def test_a_close_range_changes_the_fds_in_its_range():
    batch = [close(10, 1), rec(ev.CloseRange, 10, first=4, last=6, flags=0)]
    a, _ = ahead(batch, 1)
    assert [fd for fd in range(9) if a.fd_changes({10}, fd)] == [4, 5, 6]
    a.at(batch, 2)                          # the close_range itself applies now
    assert not any(a.fd_changes({10}, fd) for fd in range(9))


def test_what_the_kernel_holds_counts_and_is_read_first():
    a, k = ahead([close(10, 1)], 1, queue=[close(10, 2)], held=[close(10, 3)])
    assert a.fd_changes({10}, 2)            # queued
    assert a.fd_changes({10}, 3) and k.polls == 2   # held until the poll that asks
    assert k.queue == [close(10, 2), close(10, 3)]


def test_the_index_follows_the_queue_as_it_grows():
    a, k = ahead([close(10, 1)], 1)
    assert not a.fd_changes({10}, 3)
    k.held.append(close(10, 3))
    assert a.fd_changes({10}, 3)


def test_the_index_follows_a_new_batch():
    a, _ = ahead([close(10, 1), close(10, 3)], 1)
    assert a.fd_changes({10}, 3)
    a.at([close(10, 1), close(10, 4)], 1)
    assert not a.fd_changes({10}, 3) and a.fd_changes({10}, 4)


# =============================================================================
# unshares_later: a thread parts from its leader's table in a later record
# =============================================================================

def test_an_unshare_later_by_that_thread_counts():
    a, _ = ahead([close(10, 1), rec(ev.Unshare, 10, tid=11, flags=0x400)], 1)
    assert a.unshares_later(11) and not a.unshares_later(10)


def test_an_unshare_already_applied_does_not():
    a, _ = ahead([rec(ev.Unshare, 10, tid=11, flags=0x400), close(10, 1)], 1)
    assert not a.unshares_later(11)


def test_an_execs_unshare_does_not():
    # by then the other threads are gone
    for flag in (ev.UNSHARE_AT_EXEC, ev.UNSHARE_EXEC):
        a, _ = ahead([close(10, 1), rec(ev.Unshare, 10, tid=11, flags=0x400 | flag)], 1)
        assert not a.unshares_later(11)


def test_a_close_range_unshare_counts_a_plain_one_does_not():
    cr = rec(ev.CloseRange, 10, tid=11, first=3, last=3, flags=ev.CLOSE_RANGE_UNSHARE)
    assert ahead([close(10, 1), cr], 1)[0].unshares_later(11)
    plain = rec(ev.CloseRange, 10, tid=11, first=3, last=3, flags=ev.CLOSE_RANGE_CLOEXEC)
    assert not ahead([close(10, 1), plain], 1)[0].unshares_later(11)


def test_an_unshare_the_kernel_still_holds_counts():
    a, _ = ahead([close(10, 1)], 1, held=[rec(ev.Unshare, 10, tid=11, flags=0x400)])
    assert a.unshares_later(11)


# =============================================================================
# threads_acting: threads the records show before /proc would
# =============================================================================

def test_threads_acting_later_are_the_processes_threads():
    batch = [close(10, 1), close(10, 2, tid=11), close(20, 2, tid=21), close(10, 3)]
    a, _ = ahead(batch, 1, held=[close(10, 4, tid=12)])
    assert a.threads_acting(10) == {11, 12}     # not the leader, not 20's


def test_a_thread_cloned_in_the_records_is_not_one_acting_unseen():
    # its clone applies first and makes it known; only one acting before its
    # clone (a reused tid) counts
    batch = [close(10, 1), rec(ev.Fork, 10, child=11, flags=ev.CLONE_THREAD),
             close(10, 2, tid=11), close(10, 2, tid=13),
             rec(ev.Fork, 10, child=13, flags=ev.CLONE_THREAD)]
    assert ahead(batch, 1)[0].threads_acting(10) == {13}


def test_a_process_cloned_is_no_thread():
    batch = [close(10, 1), rec(ev.Fork, 10, child=11, flags=SIGCHLD), close(10, 2, tid=11)]
    assert ahead(batch, 1)[0].threads_acting(10) == {11}


def test_threads_acting_only_in_records_applied_are_not_asked_of():
    batch = [close(10, 2, tid=11), close(10, 1)]
    assert ahead(batch, 2)[0].threads_acting(10) == set()


# =============================================================================
# acts: a process in a record not applied yet
# =============================================================================

def test_a_process_acts_later_only_in_records_not_applied_yet():
    a, _ = ahead([close(51, 3), close(10, 1), close(10, 2)], 2)
    assert a.acts(10) and not a.acts(51)     # 51's record is applied already


def test_a_record_the_kernel_still_holds_is_one_acting_later():
    a, _ = ahead([close(10, 1)], 1, held=[close(51, 3)])
    assert a.acts(51)


def test_the_answer_follows_the_queue_as_it_grows():
    a, k = ahead([close(10, 1)], 1)
    assert not a.acts(51)
    k.held.append(close(51, 3))
    assert a.acts(51)


# =============================================================================
# exits_sharing: a process that used its table until it died
# =============================================================================

def exit_(pid, **kw):
    return rec(ev.Exit, pid, **kw)


def test_an_exit_to_come_with_nothing_parting_before_it():
    a, _ = ahead([close(10, 1), close(51, 3), exit_(51)], 1)
    assert a.exits_sharing(51) and not a.exits_sharing(10)


def test_an_exec_or_unshare_before_the_exit_parted_it():
    for parting in (rec(ev.Exec, 51, old_pid=51), rec(ev.Unshare, 51, flags=0x400),
                    rec(ev.CloseRange, 51, first=3, last=3,
                        flags=ev.CLOSE_RANGE_UNSHARE)):
        assert not ahead([close(10, 1), parting, exit_(51)], 1)[0].exits_sharing(51)


def test_a_threads_exit_or_an_exit_applied_already_is_not_its_end():
    assert not ahead([close(10, 1), exit_(51, tid=52, thread=True)], 1)[0].exits_sharing(51)
    assert not ahead([exit_(51), close(10, 1)], 1)[0].exits_sharing(51)


def test_an_exit_the_kernel_still_holds_counts():
    assert ahead([close(10, 1)], 1, held=[exit_(51)])[0].exits_sharing(51)


# =============================================================================
# parts_since: a process left its table after a resync's scan began
# =============================================================================

def test_a_parting_from_the_scan_on_counts_for_either_process():
    for parting in (rec(ev.Exec, 51, ts=100, old_pid=51),
                    rec(ev.Unshare, 51, ts=100, flags=0x400), exit_(51, ts=100),
                    rec(ev.CloseRange, 51, ts=100, first=3, last=3,
                        flags=ev.CLOSE_RANGE_UNSHARE)):
        a, _ = ahead([close(10, 1), parting], 1)
        assert a.parts_since({51, 10}, 100) and a.parts_since({51}, 50)
        assert not a.parts_since({10}, 50)


def test_a_parting_before_the_scan_or_no_parting_does_not_count():
    # (an exec the snapshot shows already; the other's records after the scan
    # change fds, not which table it uses; a thread's exit, a plain close_range)
    a, _ = ahead([close(10, 1), rec(ev.Exec, 51, ts=99, old_pid=51), close(10, 3, ts=200),
                  exit_(51, ts=200, tid=52, thread=True),
                  rec(ev.CloseRange, 10, ts=200, first=3, last=3, flags=0)], 1)
    assert not a.parts_since({51, 10}, 100)
    # (one applied already)
    a, _ = ahead([exit_(51, ts=200), close(10, 1)], 1)
    assert not a.parts_since({51}, 100)


def test_a_parting_the_kernel_still_holds_counts():
    assert ahead([close(10, 1)], 1, held=[exit_(51, ts=100)])[0].parts_since({51}, 100)


def test_the_clone_files_children_to_come_use_the_table():
    fork = lambda child, flags: rec(ev.Fork, 51, child=child, flags=flags)
    a, _ = ahead([fork(60, ev.CLONE_FILES | SIGCHLD), close(10, 1),
                  fork(61, ev.CLONE_FILES | SIGCHLD), fork(62, SIGCHLD),
                  fork(63, ev.CLONE_FILES | ev.CLONE_THREAD)], 2,
                 held=[fork(64, ev.CLONE_FILES | SIGCHLD)])
    assert a.table_children(51) == {61, 64} and a.table_children(10) == set()


def test_a_process_acting_from_the_scan_on():
    a, _ = ahead([close(51, 3, ts=200), close(10, 1, ts=50), close(52, 3, ts=60)], 1,
                 held=[close(53, 3, ts=300)])
    assert a.acts_since(53, 100) and not a.acts_since(52, 100)
    assert not a.acts_since(51, 100)                # applied already
    assert a.acts_since(10, 50) and not a.acts_since(10, 51)


# =============================================================================
# one_table: two processes the records to come show on one kernel table
# =============================================================================

def test_two_processes_acting_on_one_kernel_table_use_one():
    a, _ = ahead([close(10, 1), close(51, 3, table=0xA), close(52, 4, table=0xA),
                  exit_(51, table=0xA)], 1)
    assert a.one_table(51, 52) and a.one_table(52, 51)
    a, _ = ahead([close(10, 1), close(51, 3, table=0xA), close(52, 4, table=0xB)], 1)
    assert not a.one_table(51, 52)
    # (a record with no table named; a record already applied; a thread's record)
    a, _ = ahead([close(51, 3, table=0xA), close(10, 1), close(52, 4),
                  close(52, 5, tid=53, table=0xA)], 2)
    assert not a.one_table(51, 52)


def test_a_parting_of_either_says_nothing_of_one_table():
    for parting in (rec(ev.Exec, 52, old_pid=52), rec(ev.Unshare, 51, flags=0x400),
                    rec(ev.CloseRange, 52, first=3, last=3,
                        flags=ev.CLOSE_RANGE_UNSHARE)):
        a, _ = ahead([close(10, 1), close(51, 3, table=0xA), parting,
                      close(52, 4, table=0xA)], 1)
        assert not a.one_table(51, 52)


# =============================================================================
# receives_after: where the fd of a TUNSETIFF went next
# =============================================================================

def setiff(pid, fd, name="tap0"):
    return rec(ev.TunIoctl, pid, fd=fd, cmd=ev.TUNSETIFF, ret=0, ifname=name, value=0)


def send(pid, fds):
    return rec(ev.ScmSend, pid, sock=9, fds=tuple(fds))


def recv(pid, fds):
    return rec(ev.ScmRecv, pid, sock=8, fds=tuple(fds), cloexec=False)


def test_the_receives_of_the_first_send_of_the_fd_at_its_position():
    rest = [close(10, 1), send(10, [4, 3]), recv(20, [7]), recv(20, [7, 8]),
            recv(30, [5, 6, 9]), send(10, [3]), recv(40, [2])]
    # pos 1 of a 2-fd message: a receive of one fd cannot be it, nor one of three
    assert list(receives_after(setiff(10, 3), rest)) == [(20, 8)]


def test_no_send_of_the_fd_no_receives():
    rest = [send(10, [4]), recv(20, [7]), send(11, [3]), recv(20, [5])]
    assert list(receives_after(setiff(10, 3), rest)) == []


def test_receives_before_the_send_are_not_of_it():
    rest = [recv(20, [7]), send(10, [3]), recv(30, [5])]
    assert list(receives_after(setiff(10, 3), rest)) == [(30, 5)]
