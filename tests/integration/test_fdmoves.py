"""Each fd path, driven by tests/helpers/fdmoves.c through real syscalls, under a
real `taptrace watch`: the events say what happened, and the final table equals
the kernel's /proc/PID/fdinfo truth while the processes still hold their fds."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
import tapkit
from conftest import events_of, table_triples

BIN = Path(__file__).resolve().parents[1] / "helpers" / "bin" / "fdmoves"


@pytest.fixture(scope="module", autouse=True)
def built():
    subprocess.run(["make", "-s", "-C", str(BIN.parent.parent)], check=True)


class Walk:
    """A running fdmoves scenario: its JSON steps, held until release()."""

    def __init__(self, *args: str) -> None:
        self.names = [a for a in args[1:]]
        self.proc = subprocess.Popen([str(BIN), *args], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        self.steps: list[dict] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            self.steps.append(json.loads(line))
            if self.steps[-1]["step"] == "hold":
                return
        raise AssertionError(f"fdmoves {args} did not reach hold: {self.steps}")

    def step(self, name: str) -> dict:
        return next(s for s in self.steps if s["step"] == name)

    @property
    def pids(self) -> set[int]:
        return {s["pid"] for s in self.steps}

    def release(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("go\n")
                self.proc.stdin.close()
            except BrokenPipeError:
                pass
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        for n in self.names:
            tapkit.delete_link(n)


@pytest.fixture
def walk():
    started: list[Walk] = []

    def start(*args: str) -> Walk:
        w = Walk(*args)
        started.append(w)
        return w

    yield start
    for w in started:
        w.release()


def finish(t, w: Walk):
    """Stop the tracer while the scenario holds its fds; return lines, table, truth."""
    truth = tapkit.truth(w.pids)
    lines, table = t.stop()
    assert truth, "the scenario should hold taps at this point"
    assert table_triples(table, w.pids) == truth
    return lines, table


def row(table: dict, pid: int, fd: int) -> dict:
    return next(r for r in table["rows"] if r["pid"] == pid and r["fd"] == fd)


def test_dup3_dupfd_cloexec_ioctls_dup2_over_tracked_fd_and_close_range(tracer, walk):
    t = tracer()
    a, b = tapkit.unique_name(), tapkit.unique_name()
    w = walk("dup", a, b)
    lines, table = finish(t, w)
    pid = w.steps[0]["pid"]
    ta, tb = (s["fd"] for s in w.steps if s["step"] == "tap")
    c = w.step("F_DUPFD_CLOEXEC")["newfd"]
    mine = [o for o in lines if o.get("pid") == pid]
    assert events_of(mine, "dup", fd=ta, newfd=20, how="dup3", cloexec=True)
    assert events_of(mine, "dup", fd=ta, newfd=c, how="F_DUPFD_CLOEXEC", cloexec=True)
    assert events_of(mine, "cloexec", fd=c, how="FIONCLEX", cloexec=False)
    assert events_of(mine, "cloexec", fd=20, how="FIOCLEX", cloexec=True)
    assert events_of(mine, "cloexec", fd=c, how="F_SETFD", cloexec=True)
    assert events_of(mine, "close", fd=20, how="dup2", ifname=a)   # replaced silently
    assert events_of(mine, "dup", fd=tb, newfd=20, how="dup2", ifname=b)
    assert events_of(mine, "cloexec", fd=42, how="close_range", cloexec=True)
    assert events_of(mine, "close", fd=41, how="close_range", ifname=a)
    assert row(table, pid, 20)["ifname"] == b
    assert row(table, pid, c)["cloexec"] is False
    assert row(table, pid, 42)["cloexec"] is True
    for fd in (ta, c, 42):
        assert row(table, pid, fd)["cloexec"] == tapkit.cloexec_of(pid, fd)
    assert row(table, pid, ta)["creator_pid"] == pid and row(table, pid, ta)["how"] == "opened"
    assert row(table, pid, c)["how"] == "dup" and row(table, pid, c)["from_fd"] == ta


def test_clone_files_child_changes_the_shared_table(tracer, walk):
    t = tracer()
    name = tapkit.unique_name()
    w = walk("files", name)
    lines, table = finish(t, w)
    parent = w.steps[0]["pid"]
    dup = w.step("child-dup")
    child = dup["pid"]
    fork = events_of(lines, "fork", pid=parent, child_pid=child)
    assert fork and fork[0]["shared_table"] is True and "CLONE_FILES" in fork[0]["flags"]
    assert events_of(lines, "close", pid=child, fd=dup["fd"])
    # the child's dup and close happened in the parent's table too
    assert {r["fd"] for r in table["rows"] if r["pid"] == parent} == {dup["newfd"]}


def test_fork_exec_keeps_the_inheritable_tap_and_closes_the_cloexec_one(tracer, walk):
    t = tracer()
    keep, gone = tapkit.unique_name(), tapkit.unique_name()
    w = walk("exec", keep, gone)
    lines, table = finish(t, w)
    parent = w.steps[0]["pid"]
    child = w.step("hold")["pid"]
    fork = w.step("forked")
    ex = events_of(lines, "exec", pid=child)
    assert ex and ex[0]["kept"] == [fork["kept"]] and ex[0]["closed"] == [fork["closed"]]
    assert events_of(lines, "tap_gone", ifname=gone)
    r = row(table, child, fork["kept"])
    assert r["ifname"] == keep and r["how"] == "inherited" and r["from_pid"] == parent
    with open(f"/proc/{child}/comm") as f:
        assert r["creator_pid"] == parent and r["comm"] == f.read().strip()


@pytest.mark.parametrize("mode", ["scm", "mmsg"])
def test_scm_rights_several_fds_with_msg_cmsg_cloexec(tracer, walk, mode):
    t = tracer()
    a, b = tapkit.unique_name(), tapkit.unique_name()
    w = walk(mode, a, b)
    lines, table = finish(t, w)
    sender = w.step("sent")["pid"]
    got = w.step("received")
    receiver = got["pid"]
    recv = events_of(lines, "scm_recv", pid=receiver)
    assert len(recv) == 1
    sent = w.step("sent")["fds"]
    assert recv[0]["from_pid"] == sender and recv[0]["cloexec"] is True
    assert recv[0]["fds"] == [got["fds"][0], got["fds"][2]]          # the pipe is not a tap
    assert recv[0]["from_fds"] == [sent[0], sent[2]] and recv[0]["ifnames"] == [a, b]
    assert not events_of(lines, "tap_gone")        # in flight, then held by the receiver
    for fd, name in ((got["fds"][0], a), (got["fds"][2], b)):
        r = row(table, receiver, fd)
        assert r["ifname"] == name and r["how"] == "received" and r["cloexec"] is True
        assert r["creator_pid"] == sender


def test_multi_queue_detach(tracer, walk):
    t = tracer()
    name = tapkit.unique_name()
    w = walk("queue", name)
    lines, table = finish(t, w)
    pid = w.steps[0]["pid"]
    det = w.step("detached")
    assert events_of(lines, "tunsetqueue", pid=pid, fd=det["fd"], op="detach", ret=0)
    creates = events_of(lines, "tunsetiff", pid=pid, ifname=name)
    assert [c["created"] for c in creates] == [True, False]
    assert "multi_queue" in creates[0]["flags"]
    q = row(table, pid, det["fd"])
    assert q["queue"] == "detached" and row(table, pid, det["other"])["queue"] == "attached"
    assert q["file"] != row(table, pid, det["other"])["file"]


def test_failed_tungetiff_probes_and_persist(tracer, walk):
    t = tracer()
    name = tapkit.unique_name()
    w = walk("probe", name)
    lines, _ = finish(t, w)
    pid = w.steps[0]["pid"]
    pr = w.step("probes")
    assert pr["pipe_errno"] == 25 and pr["closed_errno"] == 9 and pr["bare_errno"] == 77
    msgs = {o["fd"]: o["message"] for o in events_of(lines, "tungetiff", pid=pid)}
    assert msgs[pr["pipe"]] == f"fd {pr['pipe']} is not a tap (ENOTTY)"
    assert msgs[99] == "fd 99 is not open (EBADF)"
    assert "no interface attached (EBADFD)" in msgs[pr["bare"]]
    persist = events_of(lines, "tunsetpersist", pid=pid, ifname=name)
    assert [p["persist"] for p in persist] == [True, False]


def test_exit_closes_everything_and_the_taps_go(tracer, walk):
    t = tracer()
    a, b = tapkit.unique_name(), tapkit.unique_name()
    w = walk("dup", a, b)
    pid = w.steps[0]["pid"]
    w.release()
    lines, table = t.stop()
    ex = events_of(lines, "exit", pid=pid)
    assert ex and sorted(set(ex[0]["ifnames"])) == sorted([a, b])
    assert {o["ifname"] for o in events_of(lines, "tap_gone")} >= {a, b}
    assert not [r for r in table["rows"] if r["pid"] == pid]
    assert not os.path.exists(f"/sys/class/net/{a}")
