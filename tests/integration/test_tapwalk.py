"""One fd path per test, walked with real syscalls by tests/helpers/tapwalk.c under a
real `taptrace watch --json`.

Each test asserts (a) the events the walk must produce, with their fields, and
(b) that the final table, restricted to the walk's processes, equals the kernel's
/proc/PID/fdinfo truth taken while those processes still hold their fds (plus
creator_pid / how / cloexec of the rows)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
import tapkit
from conftest import (
    SEES_BAD_FD_IOCTLS,
    StepReader,
    end_scenario,
    events_of,
    need_root,
    table_triples,
)

HELPERS = Path(__file__).resolve().parents[1] / "helpers"
BIN = HELPERS / "bin" / "tapwalk"


@pytest.fixture(scope="module", autouse=True)
def built():
    need_root()
    subprocess.run(["make", "-s", "-C", str(HELPERS)], check=True)


class Walk:
    """A running tapwalk scenario: its JSON steps, held until release()."""

    def __init__(self, scenario: str, *names: str) -> None:
        self.names = list(names)
        # its own session, so that release() can end the whole tree by its pgid
        self.proc = subprocess.Popen([str(BIN), scenario, *names], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, start_new_session=True)
        self.steps: list[dict] = []
        if StepReader(self.proc, self.steps).until("hold") is None:
            self.release()
            raise AssertionError(f"tapwalk {scenario} did not reach hold: {self.steps}")

    def step(self, name: str, **match) -> dict:
        return next(s for s in self.steps if s["step"] == name
                    and all(s.get(k) == v for k, v in match.items()))

    def steps_of(self, name: str) -> list[dict]:
        return [s for s in self.steps if s["step"] == name]

    @property
    def pid(self) -> int:
        return self.steps[0]["pid"]

    @property
    def holder(self) -> int:
        return self.step("hold")["pid"]

    @property
    def pids(self) -> set[int]:
        return {s["pid"] for s in self.steps}

    def release(self) -> None:
        end_scenario(self.proc, self.names, b"go\n")   # stragglers of this walk only


@pytest.fixture
def walk():
    started: list[Walk] = []

    def start(scenario: str, *names: str) -> Walk:
        w = Walk(scenario, *names)
        started.append(w)
        return w

    yield start
    for w in started:
        w.release()


def names(n: int) -> list[str]:
    return [tapkit.unique_name("tw") for _ in range(n)]


def finish(t, w: Walk) -> tuple[list[dict], dict]:
    """Stop the tracer while the walk holds its fds: table == /proc truth."""
    truth = tapkit.truth(w.pids)
    lines, table = t.stop()
    assert truth, "the walk should hold taps at this point"
    assert table_triples(table, w.pids) == truth
    for r in table["rows"]:
        if r["pid"] in w.pids:
            assert r["cloexec"] == tapkit.cloexec_of(r["pid"], r["fd"]), r
    return lines, table


def row(table: dict, pid: int, fd: int) -> dict:
    found = [r for r in table["rows"] if r["pid"] == pid and r["fd"] == fd]
    assert len(found) == 1, (pid, fd, found)
    return found[0]


def of_pid(lines: list[dict], pid: int) -> list[dict]:
    return [o for o in lines if o.get("pid") == pid]


def index(lines: list[dict], obj: dict) -> int:
    return next(i for i, o in enumerate(lines) if o is obj)


def one(found: list[dict]) -> dict:
    assert len(found) == 1, found
    return found[0]


# ---- the dup family ---------------------------------------------------------------


def test_dup3_with_o_cloexec(tracer, walk):
    t = tracer()
    (a,) = names(1)
    w = walk("dup3", a)
    lines, table = finish(t, w)
    pid, tfd = w.pid, w.step("tap")["fd"]
    mine = of_pid(lines, pid)
    assert one(events_of(mine, "dup", fd=tfd, newfd=20))["how"] == "dup3"
    assert events_of(mine, "dup", fd=tfd, newfd=20, how="dup3", cloexec=True, ifname=a)
    assert events_of(mine, "dup", fd=tfd, newfd=21, how="dup3", cloexec=False, ifname=a)
    r = row(table, pid, 20)
    assert (r["how"], r["from_pid"], r["from_fd"], r["cloexec"]) == ("dup", pid, tfd, True)
    assert r["creator_pid"] == pid and r["ifname"] == a
    assert row(table, pid, 21)["cloexec"] is False
    r = row(table, pid, tfd)
    assert (r["how"], r["creator_pid"], r["cloexec"]) == ("opened", pid, False)
    assert sorted(map(tuple, r["shared_with"])) == [(pid, 20), (pid, 21)]


def test_fcntl_dupfd_cloexec_and_dupfd(tracer, walk):
    t = tracer()
    (a,) = names(1)
    w = walk("dupfd", a)
    lines, table = finish(t, w)
    pid, tfd = w.pid, w.step("tap")["fd"]
    c, p, d = (w.step(s)["newfd"] for s in ("F_DUPFD_CLOEXEC", "F_DUPFD", "dup"))
    mine = of_pid(lines, pid)
    assert events_of(mine, "dup", fd=tfd, newfd=c, how="F_DUPFD_CLOEXEC", cloexec=True,
                     ifname=a)
    assert events_of(mine, "dup", fd=tfd, newfd=p, how="F_DUPFD", cloexec=False, ifname=a)
    assert events_of(mine, "dup", fd=c, newfd=d, how="dup", cloexec=False, ifname=a)
    assert row(table, pid, c)["cloexec"] is True
    assert row(table, pid, p)["cloexec"] is False
    assert (row(table, pid, d)["from_fd"], row(table, pid, d)["cloexec"]) == (c, False)
    assert {r["file"] for r in table["rows"] if r["pid"] == pid} == {row(table, pid, tfd)["file"]}


def test_ioctl_fioclex_fionclex(tracer, walk):
    t = tracer()
    (a,) = names(1)
    w = walk("ioctl", a)
    lines, table = finish(t, w)
    pid, tfd = w.pid, w.step("tap")["fd"]
    d = w.step("FIONCLEX")["fd"]
    mine = of_pid(lines, pid)
    cl = events_of(mine, "cloexec")
    assert [(o["fd"], o["how"], o["cloexec"]) for o in cl] == [
        (tfd, "FIOCLEX", True), (d, "FIOCLEX", True), (d, "FIONCLEX", False)]
    assert all(o["ifname"] == a for o in cl)          # and nothing for the pipe
    assert row(table, pid, tfd)["cloexec"] is True
    assert row(table, pid, d)["cloexec"] is False


def test_fcntl_f_setfd(tracer, walk):
    t = tracer()
    (a,) = names(1)
    w = walk("setfd", a)
    lines, table = finish(t, w)
    pid = w.pid
    off, on = w.steps_of("F_SETFD")
    mine = of_pid(lines, pid)
    assert events_of(mine, "cloexec", fd=off["fd"], how="F_SETFD", cloexec=False, ifname=a)
    assert events_of(mine, "cloexec", fd=on["fd"], how="F_SETFD", cloexec=True, ifname=a)
    assert row(table, pid, off["fd"])["cloexec"] is False
    assert row(table, pid, on["fd"])["cloexec"] is True


def test_close_range_plain_cloexec_and_to_the_end(tracer, walk):
    t = tracer()
    (a,) = names(1)
    w = walk("close_range", a)
    lines, table = finish(t, w)
    pid, tfd = w.pid, w.step("tap")["fd"]
    mine = of_pid(lines, pid)
    closed = [o["fd"] for o in events_of(mine, "close", how="close_range", ifname=a)]
    assert closed == [40, 41, 45]
    marked = [o["fd"] for o in events_of(mine, "cloexec", how="close_range", cloexec=True)]
    assert marked == [42, 43]
    assert not events_of(mine, "close", fd=44) and not events_of(mine, "close", fd=tfd)
    assert {r["fd"] for r in table["rows"] if r["pid"] == pid} == {tfd, 42, 43, 44}
    assert [row(table, pid, fd)["cloexec"] for fd in (42, 43, 44)] == [True, True, False]
    assert not events_of(lines, "tap_gone", ifname=a)


def test_dup2_and_dup3_over_tracked_fds(tracer, walk):
    t = tracer()
    a, b, c = names(3)
    w = walk("dup2", a, b, c)
    lines, table = finish(t, w)
    pid = w.pid
    ta, tb, tc = (s["fd"] for s in w.steps_of("tap"))
    mine = of_pid(lines, pid)
    # dup2(b, 20): fd 20 held a dup of A, which the kernel closed silently
    assert events_of(mine, "close", fd=20, how="dup2", ifname=a)
    assert events_of(mine, "dup", fd=tb, newfd=20, how="dup2", cloexec=False, ifname=b)
    # dup3(a, tb, O_CLOEXEC) replaced B's first fd (B lives on at 20)
    assert events_of(mine, "close", fd=tb, how="dup3", ifname=b)
    assert events_of(mine, "dup", fd=ta, newfd=tb, how="dup3", cloexec=True, ifname=a)
    # dup2(a, tc) replaced C's only fd: C is gone, right after that close
    close_c = one(events_of(mine, "close", fd=tc, how="dup2", ifname=c))
    gone_c = one(events_of(lines, "tap_gone", ifname=c))
    assert index(lines, close_c) < index(lines, gone_c)
    # dup2(pipe, 20) put a non-tap over B's last fd: B is gone too, and 20 is no row
    close_b = one(events_of(mine, "close", fd=20, ifname=b))
    assert close_b["how"] == "dup2"
    gone_b = one(events_of(lines, "tap_gone", ifname=b))
    assert index(lines, close_b) < index(lines, gone_b)
    assert not events_of(lines, "tap_gone", ifname=a)
    assert {r["fd"] for r in table["rows"] if r["pid"] == pid} == {ta, tb, tc}
    assert (row(table, pid, tb)["ifname"], row(table, pid, tb)["cloexec"]) == (a, True)
    assert (row(table, pid, tc)["ifname"], row(table, pid, tc)["cloexec"]) == (a, False)
    assert (row(table, pid, tb)["how"], row(table, pid, tb)["from_fd"]) == ("dup", ta)
    assert {b, c} & {x["ifname"] for x in table["taps"]} == set()


# ---- processes --------------------------------------------------------------------


@pytest.mark.smoke
def test_a_tap_made_by_a_clone_files_child_of_a_process_with_no_tap_stays_its_parents(
        tracer, walk):
    """pasta (rootless podman's network): the table is shared before it holds any tap,
    the child makes the tap and exits, the parent holds it. The clone must be seen
    although the parent held nothing then, or the child's exit takes the tap away."""
    t = tracer()
    (a,) = names(1)
    w = walk("pasta", a)
    lines, table = finish(t, w)
    parent, made = w.holder, w.step("tap")
    child = made["pid"]
    assert child != parent
    # (the clone itself is a quiet line: nothing was in the table yet)
    assert events_of(lines, "tunsetiff", pid=child, fd=made["fd"], ifname=a, created=True)
    assert not [o for o in events_of(lines, "exit", pid=child) if o["closed"]]
    assert not events_of(lines, "tap_gone", ifname=a)
    r = row(table, parent, made["fd"])
    assert (r["ifname"], r["creator_pid"], r["cloexec"]) == (a, child, True)


@pytest.mark.smoke
def test_clone_files_child_changes_the_parents_table_then_exits(tracer, walk):
    t = tracer()
    a, b = names(2)
    w = walk("files", a, b)
    lines, table = finish(t, w)
    parent = w.pid
    dup = w.step("child-dup")
    child = dup["pid"]
    bfd = w.step("child-tap")["fd"]
    fork = one(events_of(lines, "fork", pid=parent, child_pid=child))
    assert fork["shared_table"] is True and "CLONE_FILES" in fork["flags"]
    assert fork["fds"] == [dup["fd"]] and fork["ifnames"] == [a]
    assert events_of(lines, "dup", pid=child, fd=dup["fd"], newfd=dup["newfd"], ifname=a)
    assert events_of(lines, "close", pid=child, fd=dup["fd"], how="close", ifname=a)
    assert events_of(lines, "tunsetiff", pid=child, fd=bfd, ifname=b, created=True)
    # the child's exit closes nothing: the table lives on in the parent
    assert not [o for o in events_of(lines, "exit", pid=child) if o["closed"]]
    assert not events_of(lines, "tap_gone", ifname=a) and not events_of(lines, "tap_gone",
                                                                         ifname=b)
    assert {r["fd"] for r in table["rows"] if r["pid"] == parent} == {dup["newfd"], bfd}
    assert not [r for r in table["rows"] if r["pid"] == child]
    ra, rb = row(table, parent, dup["newfd"]), row(table, parent, bfd)
    assert (ra["ifname"], ra["creator_pid"], ra["how"]) == (a, parent, "dup")
    assert (rb["ifname"], rb["creator_pid"], rb["how"]) == (b, child, "opened")


@pytest.mark.smoke
def test_clone_files_child_execs_into_its_own_table(tracer, walk):
    t = tracer()
    keep, gone = names(2)
    w = walk("files_exec", keep, gone)
    lines, table = finish(t, w)
    parent, child = w.pid, w.holder
    cloned, after = w.step("cloned"), w.step("parent")
    assert cloned["child"] == child
    kfd, gfd = (s["fd"] for s in w.steps_of("tap"))
    fork = one(events_of(lines, "fork", pid=parent, child_pid=child))
    assert fork["shared_table"] is True and "CLONE_VFORK" in fork["flags"]
    assert fork["fds"] == [kfd, gfd]
    # the child's dup3 lands in the table both use; its exec leaves with a copy
    # that loses the close-on-exec fds, while the parent keeps all of them
    dup = one(events_of(lines, "dup", pid=child, fd=kfd, newfd=30))
    assert (dup["how"], dup["cloexec"], dup["ifname"]) == ("dup3", True, keep)
    ex = one(events_of(lines, "exec", pid=child))
    assert (ex["kept"], ex["closed"]) == (cloned["kept"], cloned["closed"])
    assert ex["ifnames"] == {str(kfd): keep}
    assert index(lines, dup) < index(lines, ex)
    # what the parent does afterwards touches its table only: 30 is still there to
    # close, and closing B's last fd (the exec closed the child's copy) makes B go
    close30 = one(events_of(lines, "close", pid=parent, fd=30))
    assert (close30["ifname"], close30["how"]) == (keep, "close")
    assert index(lines, ex) < index(lines, close30)
    assert events_of(lines, "dup", pid=parent, fd=kfd, newfd=after["dup"], how="dup")
    close_b = one(events_of(lines, "close", pid=parent, fd=gfd, ifname=gone))
    gone_ev = one(events_of(lines, "tap_gone", ifname=gone))
    assert index(lines, close_b) < index(lines, gone_ev)
    assert not events_of(lines, "tap_gone", ifname=keep)
    assert {r["fd"] for r in table["rows"] if r["pid"] == parent} == {kfd, after["dup"]}
    assert {r["fd"] for r in table["rows"] if r["pid"] == child} == {kfd}
    r = row(table, child, kfd)
    assert (r["ifname"], r["creator_pid"], r["cloexec"]) == (keep, parent, False)
    # its own table now: it inherited from the parent what the parent put there
    assert (r["how"], r["from_pid"], r["from_fd"]) == ("inherited", parent, kfd)
    assert sorted(map(tuple, r["shared_with"])) == [(parent, kfd), (parent, after["dup"])]
    assert row(table, parent, kfd)["how"] == "opened"


@pytest.mark.smoke
def test_clone_files_exec_while_the_parent_changes_its_table_at_once(tracer, walk):
    """The kernel unshares a CLONE_FILES child's table early in its exec
    (begin_new_exec: unshare_files, then exec_mmap releases the vfork parent): the
    parent's changes right after belong to its table only. sched_prepare_exec marks
    that point (6.10+)."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs: the parent runs while the child is in execve")
    t = tracer()
    keep, gone = names(2)
    w = walk("files_exec_race", keep, gone)
    _lines, table = finish(t, w)
    kfd = w.steps_of("tap")[0]["fd"]
    assert {r["fd"] for r in table["rows"] if r["pid"] == w.holder} == {kfd}


def test_a_short_lived_process_exit_closes_its_fds_and_the_tap_goes(tracer):
    t = tracer()
    (a,) = names(1)
    try:
        out = subprocess.run([str(BIN), "blink", a], stdout=subprocess.PIPE, check=True,
                             timeout=10).stdout
    finally:
        tapkit.delete_link(a)
    steps = [json.loads(x) for x in out.splitlines()]
    pid, tfd, d = steps[0]["pid"], steps[0]["fd"], steps[1]["newfd"]
    assert not os.path.exists(f"/sys/class/net/{a}")
    lines, table = t.stop(settle=0.6)
    mine = [o for o in of_pid(lines, pid) if o["type"] != "tap_gone"]
    assert [o["type"] for o in mine] == ["open", "tunsetiff", "dup", "close", "exit"]
    assert (mine[1]["fd"], mine[1]["ifname"], mine[1]["created"]) == (tfd, a, True)
    assert (mine[2]["newfd"], mine[3]["fd"]) == (d, d)
    ex = mine[4]
    assert (ex["closed"], ex["ifnames"]) == ([tfd], [a])
    gone = one(events_of(lines, "tap_gone", ifname=a))
    assert gone["pid"] == pid and index(lines, ex) < index(lines, gone)
    assert not [r for r in table["rows"] if r["pid"] == pid]
    assert a not in {x["ifname"] for x in table["taps"]}


@pytest.mark.smoke
def test_fork_exec_keeps_plain_fds_and_closes_cloexec_ones(tracer, walk):
    t = tracer()
    keep, gone = names(2)
    w = walk("exec", keep, gone)
    lines, table = finish(t, w)
    parent, child = w.pid, w.holder
    forked = w.step("forked")
    assert forked["child"] == child
    kfd, gfd = (s["fd"] for s in w.steps_of("tap"))
    fork = one(events_of(lines, "fork", pid=parent, child_pid=child))
    assert fork["shared_table"] is False and fork["fds"] == sorted([kfd, gfd, 30, 31])
    ex = one(events_of(lines, "exec", pid=child))
    assert ex["kept"] == forked["kept"] and ex["closed"] == forked["closed"]
    assert ex["ifnames"] == {str(kfd): keep, "31": keep}
    with open(f"/proc/{child}/comm") as f:
        comm = f.read().strip()
    assert ex["comm"] == comm
    # B's last fd was the child's close-on-exec copy: the exec line, then B goes
    gone_ev = one(events_of(lines, "tap_gone", ifname=gone))
    assert index(lines, ex) < index(lines, gone_ev)
    assert not events_of(lines, "tap_gone", ifname=keep)
    assert w.step("hold")["fds"] == forked["kept"]
    for fd in forked["kept"]:
        r = row(table, child, fd)
        assert (r["ifname"], r["how"], r["from_pid"], r["from_fd"]) == (keep, "inherited",
                                                                        parent, fd)
        assert (r["creator_pid"], r["comm"]) == (parent, comm)
    assert not [r for r in table["rows"] if r["pid"] == parent]


# ---- SCM_RIGHTS -------------------------------------------------------------------


@pytest.mark.smoke
def test_scm_rights_several_fds_with_a_pipe_and_msg_cmsg_cloexec(tracer, walk):
    t = tracer()
    a, b = names(2)
    w = walk("scm", a, b)
    lines, table = finish(t, w)
    sent, got = w.step("sent"), w.step("received")
    sender, receiver = sent["pid"], got["pid"]
    assert got["cloexec"] == [1, 1, 1]
    snd = one(events_of(lines, "scm_send", pid=sender))
    assert (snd["sock"], snd["fds"], snd["ifnames"]) == (
        sent["sock"], [sent["fds"][0], sent["fds"][2]], [a, b])
    rcv = one(events_of(lines, "scm_recv", pid=receiver))
    assert rcv["from_pid"] == sender and rcv["cloexec"] is True
    assert rcv["sock"] == got["sock"]
    assert rcv["fds"] == [got["fds"][0], got["fds"][2]]             # not the pipe
    assert rcv["from_fds"] == [sent["fds"][0], sent["fds"][2]] and rcv["ifnames"] == [a, b]
    assert index(lines, snd) < index(lines, rcv)
    assert not events_of(lines, "tap_gone", ifname=a) and not events_of(lines, "tap_gone",
                                                                         ifname=b)
    for fd, from_fd, name in ((got["fds"][0], sent["fds"][0], a),
                              (got["fds"][2], sent["fds"][2], b)):
        r = row(table, receiver, fd)
        assert (r["ifname"], r["how"], r["from_pid"], r["from_fd"]) == (name, "received",
                                                                        sender, from_fd)
        assert r["cloexec"] is True and r["creator_pid"] == sender
    assert not [r for r in table["rows"] if r["pid"] == sender]


@pytest.mark.smoke
def test_sendmmsg_recvmmsg_two_messages(tracer, walk):
    t = tracer()
    a, b = names(2)
    w = walk("mmsg", a, b)
    lines, table = finish(t, w)
    sent, got = w.step("sent"), w.step("received")
    sender, receiver = sent["pid"], got["pid"]
    fa, _pipe, fb = sent["fds"]
    sends = events_of(lines, "scm_send", pid=sender)
    assert [(o["fds"], o["ifnames"]) for o in sends] == [([fa], [a]), ([fb], [b])]
    recvs = events_of(lines, "scm_recv", pid=receiver)
    assert [(o["fds"], o["from_fds"], o["ifnames"], o["from_pid"], o["cloexec"])
            for o in recvs] == [([got["fds"][0]], [fa], [a], sender, True),
                                ([got["fds"][2]], [fb], [b], sender, True)]
    for fd, name in ((got["fds"][0], a), (got["fds"][2], b)):
        r = row(table, receiver, fd)
        assert (r["ifname"], r["how"], r["creator_pid"], r["cloexec"]) == (
            name, "received", sender, True)


def test_pidfd_getfd_then_close_of_the_pidfd(tracer, walk):
    t = tracer()
    (a,) = names(1)
    # user space reads the records a moment later than the walk runs (always true;
    # made certain here): by then the pidfd is closed
    t.proc.send_signal(signal.SIGSTOP)
    try:
        w = walk("getfd", a)
    finally:
        t.proc.send_signal(signal.SIGCONT)
    lines, table = finish(t, w)
    owner, got = w.pid, w.step("getfd")
    grabber = got["pid"]
    assert got["from_pid"] == owner and got["cloexec"] is True
    ev = one(events_of(lines, "pidfd_getfd", pid=grabber))
    assert (ev["fd"], ev["from_pid"], ev["from_fd"], ev["ifname"]) == (
        got["newfd"], owner, got["from_fd"], a)
    r = row(table, grabber, got["newfd"])
    assert (r["ifname"], r["how"], r["from_pid"], r["from_fd"]) == (a, "received", owner,
                                                                    got["from_fd"])
    assert r["creator_pid"] == owner and r["cloexec"] is True
    assert sorted(map(tuple, r["shared_with"])) == [(owner, got["from_fd"])]


def test_scm_rights_truncated_by_a_small_control_buffer(tracer, walk):
    t = tracer()
    a, b, c = names(3)
    w = walk("scm_trunc", a, b, c)
    lines, table = finish(t, w)
    sent, got = w.step("sent"), w.step("received")
    sender, receiver = sent["pid"], got["pid"]
    assert got["ctrunc"] is True and len(got["fds"]) == 2
    snd = one(events_of(lines, "scm_send", pid=sender))
    assert (snd["fds"], snd["ifnames"]) == (sent["fds"], [a, b, c])
    rcv = one(events_of(lines, "scm_recv", pid=receiver))
    assert (rcv["fds"], rcv["from_fds"], rcv["ifnames"], rcv["from_pid"]) == (
        got["fds"], sent["fds"][:2], [a, b], sender)
    # the kernel closed the fd that did not fit: that was C's last reference
    gone = one(events_of(lines, "tap_gone", ifname=c))
    assert index(lines, snd) < index(lines, gone)
    assert not events_of(lines, "tap_gone", ifname=a) and not events_of(lines, "tap_gone",
                                                                         ifname=b)
    for fd, name in zip(got["fds"], (a, b)):
        r = row(table, receiver, fd)
        assert (r["ifname"], r["how"], r["creator_pid"]) == (name, "received", sender)


def test_scm_rights_two_cmsgs_in_one_sendmsg(tracer, walk):
    t = tracer()
    a, b = names(2)
    w = walk("scm_2cmsg", a, b)
    lines, table = finish(t, w)
    sent, got = w.step("sent"), w.step("received")
    sender, receiver = sent["pid"], got["pid"]
    snd = one(events_of(lines, "scm_send", pid=sender))
    assert (snd["fds"], snd["ifnames"]) == (sent["fds"], [a, b])
    rcv = one(events_of(lines, "scm_recv", pid=receiver))
    assert (rcv["fds"], rcv["from_fds"], rcv["ifnames"]) == (got["fds"], sent["fds"], [a, b])
    for fd, name in zip(got["fds"], (a, b)):
        r = row(table, receiver, fd)
        assert (r["ifname"], r["how"], r["creator_pid"]) == (name, "received", sender)


# ---- the tun ioctls ---------------------------------------------------------------


@pytest.mark.smoke
def test_multi_queue_detach_and_attach(tracer, walk):
    t = tracer()
    (a,) = names(1)
    w = walk("queue", a)
    lines, table = finish(t, w)
    pid = w.pid
    q1, q2 = (s["fd"] for s in w.steps_of("tap"))
    sets = events_of(lines, "tunsetiff", pid=pid, ifname=a)
    assert [(s["fd"], s["created"]) for s in sets] == [(q1, True), (q2, False)]
    assert all("multi_queue" in s["flags"] for s in sets)
    qs = events_of(lines, "tunsetqueue", pid=pid)
    assert [(q["fd"], q["op"], q["ret"], q["ifname"]) for q in qs] == [
        (q2, "detach", 0, a), (q2, "attach", 0, a), (q1, "detach", 0, a)]
    r1, r2 = row(table, pid, q1), row(table, pid, q2)
    assert (r1["queue"], r2["queue"]) == ("detached", "attached")
    assert r1["file"] != r2["file"] and r1["shared_with"] == [] == r2["shared_with"]
    assert "multi_queue" in r1["flags"] and r1["creator_pid"] == r2["creator_pid"] == pid


def test_tungetiff_on_a_tap_a_pipe_and_a_closed_fd(tracer, walk):
    t = tracer("--bad-ioctls")
    (a,) = names(1)
    w = walk("probe", a)
    lines, _table = finish(t, w)
    pid = w.pid
    ok, pipe, closed = w.steps_of("getiff")
    assert (pipe["errno"], closed["errno"]) == (25, 9)
    g = one(events_of(lines, "tungetiff", pid=pid, fd=ok["fd"]))
    assert (g["ret"], g["ifname"], g["message"]) == (0, a, f"fd {ok['fd']} is {a}")
    g = one(events_of(lines, "tungetiff", pid=pid, fd=pipe["fd"]))
    assert (g["ret"], g["error"], g["ifname"]) == (-25, "ENOTTY", None)
    assert g["message"] == f"fd {pipe['fd']} is not a tap (ENOTTY)"
    if not SEES_BAD_FD_IOCTLS:
        assert not events_of(lines, "tungetiff", pid=pid, fd=closed["fd"])
        return
    g = one(events_of(lines, "tungetiff", pid=pid, fd=closed["fd"]))
    assert (g["ret"], g["error"]) == (-9, "EBADF")
    assert g["message"] == f"fd {closed['fd']} is not open (EBADF)"


def test_tunsetpersist_keeps_the_tap_until_it_is_cleared(tracer, walk):
    t = tracer()
    a, b = names(2)
    w = walk("persist", a, b)
    lines, table = finish(t, w)
    pid = w.pid
    on, off = w.steps_of("persist")
    mine = of_pid(lines, pid)
    assert events_of(mine, "tunsetpersist", fd=on["fd"], ifname=a, persist=True)
    assert events_of(mine, "tunsetpersist", fd=off["fd"], ifname=a, persist=False)
    sets = events_of(mine, "tunsetiff", ifname=a)
    assert [s["created"] for s in sets] == [True, False]     # the second one attached
    first_close, last_close = events_of(mine, "close", ifname=a)
    gone = one(events_of(lines, "tap_gone", ifname=a))
    # closing the persistent tap's only fd did not make it go; the last close did
    assert index(lines, last_close) < index(lines, gone)
    assert index(lines, sets[1]) < index(lines, gone)
    assert index(lines, first_close) < index(lines, sets[1])
    assert not events_of(lines, "tap_gone", ifname=b)
    assert {x["ifname"] for x in table["taps"]} & {a, b} == {b}
    assert {r["ifname"] for r in table["rows"] if r["pid"] == pid} == {b}
