"""The model as a specification: a scenario as synthetic events, then the table.

Rows are compared as {(pid, fd): (ifname, cloexec, how)}; reports by type.
"""

from __future__ import annotations

import errno
import itertools

import pytest

from tracer import events as ev
from tracer.model import Model
from tracer.procfs import FdInfo, ProcInfo, Snapshot, TapInfo

TAP = ev.IFF_TAP | ev.IFF_NO_PI
_ts = itertools.count(1000)


class Scenario:
    """Builds events with increasing timestamps and applies them."""

    def __init__(self, model: Model | None = None) -> None:
        self.m = model or Model()
        self.reports: list[dict] = []

    def __call__(self, cls, pid, *, tid=None, comm="proc", **kw):
        e = cls(ts=next(_ts), pid=pid, tid=tid or pid, comm=comm, **kw)
        out = self.m.apply(e)
        self.reports.extend(out)
        return out

    def tap(self, pid, fd, name, flags=TAP, cloexec=True, comm="proc"):
        self(ev.Open, pid, comm=comm, fd=fd, path="/dev/net/tun",
             flags=ev.O_CLOEXEC if cloexec else 0)
        return self(ev.TunIoctl, pid, comm=comm, fd=fd, cmd=ev.TUNSETIFF, ret=0, ifname=name,
                    value=flags)

    def table(self) -> dict:
        return {(r["pid"], r["fd"]): (r["ifname"], r["cloexec"], r["how"])
                for r in self.m.rows()}

    def of(self, kind: str) -> list[dict]:
        return [r for r in self.reports if r["type"] == kind]


def test_open_and_tunsetiff_create_then_attach_then_busy():
    s = Scenario()
    out = s.tap(10, 3, "tap0")
    assert out[0]["created"] is True and out[0]["flags"] == ["tap", "no_pi"]
    s(ev.TunIoctl, 10, fd=3, cmd=ev.TUNSETPERSIST, ret=0, ifname="", value=1)
    out = s.tap(11, 4, "tap0")
    assert out[0]["created"] is False
    out = s(ev.TunIoctl, 12, fd=5, cmd=ev.TUNSETIFF, ret=-errno.EBUSY, ifname="tap0", value=TAP)
    assert out[0]["error"] == "EBUSY" and out[0]["created"] is False
    rows = {(r["pid"], r["fd"]): r for r in s.m.rows()}
    assert rows[(10, 3)]["creator_pid"] == 10 and rows[(11, 4)]["creator_pid"] == 11
    assert rows[(10, 3)]["file"] != rows[(11, 4)]["file"]
    assert "persist" in rows[(10, 3)]["flags"]


@pytest.mark.parametrize("err,msg", [
    (-errno.ENOTTY, "fd 9 is not a tap (ENOTTY)"),
    (-errno.EBADF, "fd 9 is not open (EBADF)"),
    (-errno.EBADFD, "fd 9 is a tun fd with no interface attached (EBADFD)"),
])
def test_failed_tungetiff_says_why(err, msg):
    s = Scenario()
    out = s(ev.TunIoctl, 50, comm="qemu-system-x86", fd=9, cmd=ev.TUNGETIFF, ret=err,
            ifname="", value=0)
    assert out[0]["message"] == msg and out[0]["ifname"] is None
    assert s.m.rows() == []


def test_tungetiff_success_names_the_fd():
    s = Scenario()
    s.tap(1, 3, "vnet0")
    out = s(ev.TunIoctl, 1, fd=3, cmd=ev.TUNGETIFF, ret=0, ifname="vnet0", value=TAP)
    assert out[0]["message"] == "fd 3 is vnet0"


def test_queue_detach_owner_group():
    s = Scenario()
    s.tap(1, 3, "mq0", TAP | ev.IFF_MULTI_QUEUE)
    s.tap(1, 4, "mq0", TAP | ev.IFF_MULTI_QUEUE)
    out = s(ev.TunIoctl, 1, fd=4, cmd=ev.TUNSETQUEUE, ret=0, ifname="",
            value=ev.IFF_DETACH_QUEUE)
    assert out[0]["op"] == "detach" and out[0]["ifname"] == "mq0"
    queues = {r["fd"]: r["queue"] for r in s.m.rows()}
    assert queues == {3: "attached", 4: "detached"}
    assert s(ev.TunIoctl, 1, fd=3, cmd=ev.TUNSETOWNER, ret=0, ifname="", value=107)[0]["uid"] \
        == 107
    assert s(ev.TunIoctl, 1, fd=3, cmd=ev.TUNSETGROUP, ret=0, ifname="",
             value=0xFFFFFFFF)[0]["gid"] is None
    s(ev.Close, 1, fd=3)
    assert not s.of("tap_gone")                    # the other queue still holds it
    s(ev.Close, 1, fd=4)
    assert [r["ifname"] for r in s.of("tap_gone")] == ["mq0"]


def test_dup_family_and_dup2_over_a_tracked_fd():
    s = Scenario()
    s.tap(1, 3, "a")
    s.tap(1, 4, "b")
    s(ev.Dup, 1, oldfd=3, newfd=20, how="dup3", cloexec=True)
    s(ev.Dup, 1, oldfd=3, newfd=30, how="F_DUPFD_CLOEXEC", cloexec=True)
    s(ev.Dup, 1, oldfd=3, newfd=31, how="dup", cloexec=False)
    out = s(ev.Dup, 1, oldfd=4, newfd=20, how="dup2", cloexec=False)
    assert [r["type"] for r in out] == ["close", "dup"]
    assert out[0]["how"] == "dup2" and out[0]["ifname"] == "a"
    s(ev.Dup, 1, oldfd=5, newfd=31, how="dup2", cloexec=False)   # an untracked fd over 31
    assert s.table() == {(1, 3): ("a", True, "opened"), (1, 4): ("b", True, "opened"),
                         (1, 20): ("b", False, "dup"), (1, 30): ("a", True, "dup")}
    assert s(ev.Dup, 1, oldfd=3, newfd=3, how="dup2", cloexec=False) == []


def test_cloexec_changes_and_close_range():
    s = Scenario()
    s.tap(1, 3, "a")
    for fd in (4, 5, 6):
        s(ev.Dup, 1, oldfd=3, newfd=fd, how="dup", cloexec=False)
    s(ev.SetFd, 1, fd=3, cloexec=False, how="FIONCLEX")
    s(ev.SetFd, 1, fd=4, cloexec=True, how="F_SETFD")
    s(ev.CloseRange, 1, first=5, last=6, flags=ev.CLOSE_RANGE_CLOEXEC)
    assert {fd: c for (_, fd), (_, c, _) in s.table().items()} == {
        3: False, 4: True, 5: True, 6: True}
    s(ev.CloseRange, 1, first=4, last=5, flags=0)
    assert sorted(fd for _, fd in s.table()) == [3, 6]
    assert [r["fd"] for r in s.of("close") if r["how"] == "close_range"] == [4, 5]
    s(ev.SetFd, 1, fd=77, cloexec=True, how="FIOCLEX")          # untracked: nothing
    assert not [r for r in s.of("cloexec") if r["fd"] == 77]


def test_fork_then_exec_with_mixed_cloexec_bits():
    s = Scenario()
    s.tap(100, 27, "vnet0", cloexec=True, comm="libvirtd")
    s.tap(100, 28, "vnet1", cloexec=True, comm="libvirtd")
    out = s(ev.Fork, 100, comm="libvirtd", child=200, flags=17)
    assert out[0]["fds"] == [27, 28] and out[0]["shared_table"] is False
    s(ev.SetFd, 200, comm="libvirtd", fd=27, cloexec=False, how="F_SETFD")
    s(ev.Close, 100, comm="libvirtd", fd=27)
    s(ev.Close, 100, comm="libvirtd", fd=28)
    out = s(ev.Exec, 200, comm="qemu-system-x86", old_pid=200)
    assert out[0]["type"] == "exec" and out[0]["kept"] == [27] and out[0]["closed"] == [28]
    assert [r["ifname"] for r in out if r["type"] == "tap_gone"] == ["vnet1"]
    assert s.table() == {(200, 27): ("vnet0", False, "inherited")}
    row = s.m.rows()[0]
    assert row["comm"] == "qemu-system-x86" and row["creator_pid"] == 100
    assert row["from_pid"] == 100
    f = next(iter(s.m.files.values()))
    assert [(h["op"], h["pid"]) for h in Model.chain(f)] == [
        ("open", 100), ("fork", 200), ("exec", 200)]


def test_clone_files_shares_the_table_until_exec():
    s = Scenario()
    s.tap(1, 3, "a")
    out = s(ev.Fork, 1, child=2, flags=ev.CLONE_FILES | 17)
    assert out[0]["shared_table"] is True
    s(ev.Dup, 2, oldfd=3, newfd=9, how="dup", cloexec=False)
    s(ev.Close, 2, fd=3)
    assert s.table() == {(1, 9): ("a", False, "dup"), (2, 9): ("a", False, "dup")}
    s(ev.Exec, 2, comm="child", old_pid=2)         # exec unshares, then applies cloexec
    s(ev.Close, 1, fd=9)
    assert s.table() == {(2, 9): ("a", False, "dup")}
    assert not s.of("tap_gone")


def test_unshare_and_close_range_unshare_split_the_table():
    s = Scenario()
    s.tap(1, 3, "a")
    s(ev.Fork, 1, child=2, flags=ev.CLONE_FILES)
    s(ev.CloseRange, 2, first=0, last=100, flags=ev.CLOSE_RANGE_UNSHARE)
    assert s.table() == {(1, 3): ("a", True, "opened")}
    s(ev.Fork, 1, child=3, flags=ev.CLONE_FILES)
    s(ev.Unshare, 3, flags=ev.CLONE_FILES)
    s(ev.Close, 3, fd=3)
    assert (1, 3) in s.table()


def test_threads_act_on_the_process_and_keep_its_name():
    s = Scenario()
    s.tap(1, 3, "a", comm="qemu-system-x86")
    s(ev.Dup, 1, tid=7, comm="CPU 0/TCG", oldfd=3, newfd=8, how="dup", cloexec=False)
    s(ev.Close, 1, tid=7, comm="CPU 0/TCG", fd=3)
    assert s.table() == {(1, 8): ("a", False, "dup")}
    assert s.m.rows()[0]["comm"] == "qemu-system-x86"


def test_scm_rights_several_fds_sender_closes_before_receive():
    probe = {(2, 40): "a", (2, 41): None, (2, 42): "b"}
    s = Scenario(Model(probe_fd=lambda pid, fd: probe.get((pid, fd))))
    s.tap(1, 3, "a", comm="libvirtd")
    s.tap(1, 4, "b", comm="libvirtd")
    out = s(ev.ScmSend, 1, comm="libvirtd", sock=9, fds=(3, 7, 4))
    assert out[0]["fds"] == [3, 4]
    s(ev.Close, 1, comm="libvirtd", fd=3)
    s(ev.Close, 1, comm="libvirtd", fd=4)
    assert not s.of("tap_gone")                    # the message in flight holds them
    out = s(ev.ScmRecv, 2, comm="qemu", sock=5, fds=(40, 41, 42), cloexec=True)
    assert out[0]["fds"] == [40, 42] and out[0]["from_fds"] == [3, 4]
    assert out[0]["from_pid"] == 1 and out[0]["cloexec"] is True
    assert s.table() == {(2, 40): ("a", True, "received"), (2, 42): ("b", True, "received")}
    assert s.m.pending == []


def test_scm_receive_matches_the_send_carrying_that_tap():
    probe = {(3, 50): "b"}
    s = Scenario(Model(probe_fd=lambda pid, fd: probe.get((pid, fd))))
    s.tap(1, 3, "a")
    s.tap(2, 3, "b")
    s(ev.ScmSend, 1, sock=9, fds=(3,))
    s(ev.ScmSend, 2, sock=9, fds=(3,))
    out = s(ev.ScmRecv, 3, sock=5, fds=(50,), cloexec=False)
    assert out[0]["from_pid"] == 2 and out[0]["ifnames"] == ["b"]
    assert len(s.m.pending) == 1 and s.m.pending[0].pid == 1


def test_an_unreceived_send_expires_and_releases_its_files():
    s = Scenario()
    s.tap(1, 3, "a")
    s(ev.ScmSend, 1, sock=9, fds=(3,))
    s(ev.Close, 1, fd=3)
    assert not s.of("tap_gone")
    out = s.m.expire_pending(10**15)
    assert [r["ifname"] for r in out if r["type"] == "tap_gone"] == ["a"]


def test_pid_reuse_after_a_missed_exit():
    s = Scenario()
    s.tap(1, 3, "a")
    s.tap(5, 3, "b")                              # pid 5 is stale: its exit was missed
    s(ev.Fork, 1, child=5, flags=17)
    assert s.table() == {(1, 3): ("a", True, "opened"), (5, 3): ("a", True, "inherited")}
    assert [r["ifname"] for r in s.of("tap_gone")] == ["b"]


def test_exit_closes_the_table_and_nonpersistent_taps_go():
    s = Scenario()
    s.tap(1, 3, "a")
    s.tap(1, 4, "keep")
    s(ev.TunIoctl, 1, fd=4, cmd=ev.TUNSETPERSIST, ret=0, ifname="", value=1)
    out = s(ev.Exit, 1)
    assert out[0]["type"] == "exit" and out[0]["closed"] == [3, 4]
    assert [r["ifname"] for r in out if r["type"] == "tap_gone"] == ["a"]
    assert s.m.rows() == []
    assert [t["ifname"] for t in s.m.tap_list()] == ["keep"]
    assert s.m.tap_list()[0]["files"] == 0


def snapshot_two_holders() -> Snapshot:
    tap = TapInfo("vnet0", 7, "tap", TAP | ev.IFF_VNET_HDR, False, False, True, None, None,
                  "fe:54:00:00:00:01")
    return Snapshot(
        procs={1: ProcInfo(1, 0, "libvirtd", ("libvirtd",), 0),
               2: ProcInfo(2, 1, "qemu", ("qemu",), 64055)},
        fds=[FdInfo(1, 27, "/dev/net/tun", "vnet0", True, 0o2000002),
             FdInfo(2, 27, "/dev/net/tun", "vnet0", False, 2)],
        taps={"vnet0": tap}, files=[[(1, 27), (2, 27)]], tables=[[1], [2]])


def test_load_from_a_snapshot_then_resync_keeps_what_is_still_true():
    s = Scenario()
    s.m.load(snapshot_two_holders())
    rows = s.m.rows()
    assert [(r["pid"], r["fd"], r["how"], r["shared_with"]) for r in rows] == [
        (1, 27, "snapshot", [[2, 27]]), (2, 27, "snapshot", [[1, 27]])]
    assert "vnet_hdr" in rows[0]["flags"]
    s(ev.Close, 1, comm="libvirtd", fd=27)
    s(ev.Dup, 2, comm="qemu", oldfd=27, newfd=30, how="dup", cloexec=False)
    before = s.m.rows()
    snap = snapshot_two_holders()
    snap.fds = [FdInfo(2, 27, "/dev/net/tun", "vnet0", False, 2),
                FdInfo(2, 30, "/dev/net/tun", "vnet0", False, 2)]
    snap.files = [[(2, 27), (2, 30)]]
    snap.procs.pop(1)
    snap.tables = [[2]]
    report = s.m.resync(snap)
    assert report["type"] == "resync" and report["added"] == 0 and report["removed"] == 0
    assert [(r["pid"], r["fd"], r["how"]) for r in s.m.rows()] == [
        (r["pid"], r["fd"], r["how"]) for r in before]


REPORT_KEYS = {
    "open": {"fd", "path", "ifname", "cloexec"},
    "tunsetiff": {"fd", "ioctl", "ret", "error", "ifname", "flags", "created", "kind"},
    "dup": {"fd", "newfd", "how", "cloexec", "ifname"},
    "close": {"fd", "ifname", "how"},
    "fork": {"child_pid", "flags", "shared_table", "fds", "ifnames", "quiet"},
    "exec": {"kept", "closed", "ifnames", "quiet"},
    "exit": {"closed", "ifnames", "quiet"},
    "scm_send": {"sock", "fds", "ifnames"},
    "scm_recv": {"sock", "fds", "from_pid", "from_comm", "from_fds", "ifnames", "cloexec"},
    "tap_gone": {"ifname"},
}
ROW_KEYS = {"pid", "comm", "fd", "ifname", "kind", "flags", "cloexec", "path", "file",
            "creator_pid", "creator_comm", "how", "from_pid", "from_fd", "shared_with", "queue"}


def test_json_field_names_are_stable():
    s = Scenario(Model(probe_fd=lambda pid, fd: "a"))
    s.tap(1, 3, "a")
    s(ev.Dup, 1, oldfd=3, newfd=4, how="dup", cloexec=False)
    s(ev.Close, 1, fd=4)
    s(ev.Fork, 1, child=2, flags=17)
    s(ev.Exec, 2, comm="x", old_pid=2)
    s(ev.ScmSend, 1, sock=9, fds=(3,))
    s(ev.ScmRecv, 2, sock=5, fds=(6,), cloexec=False)
    assert {r["fd"] for r in s.m.rows() if r["pid"] == 2} == {6}
    assert set(s.m.rows()[0]) == ROW_KEYS
    s(ev.Exit, 1)
    s(ev.Exit, 2)
    common = {"type", "ts_ns", "pid", "tid", "comm"}
    for r in s.reports:
        if r["type"] in REPORT_KEYS:
            assert set(r) == common | REPORT_KEYS[r["type"]], r["type"]
    assert {r["type"] for r in s.reports} >= set(REPORT_KEYS)
