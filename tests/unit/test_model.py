"""The model as a specification.

Each test is a scenario (who holds what), an action (the records the BPF side
would deliver for some syscalls), and the expected result: the table of rows,
written as {(pid, fd): (ifname, cloexec, how)} ((pid, fd, tid) for the rows of a
thread's own fd table), and the reports, by type.

The kernel facts these follow are in KERNEL-NOTES.md ("How fds move"): dup2/dup3
replace what newfd held; fork copies the table with its close-on-exec bits unless
CLONE_FILES shares it; exec first unshares a shared table, then closes every
close-on-exec fd; a file stays open while an SCM_RIGHTS message carrying it is in
flight; a non-persistent tap goes when its last open file is released.
"""

from __future__ import annotations

import errno
import itertools

import pytest

from tracer import events as ev
from tracer.model import SHARED_MAX, Model, descendants_filter, holder_key, row_key
from tracer.procfs import FdInfo, ProcInfo, Snapshot, TapInfo

TAP = ev.IFF_TAP | ev.IFF_NO_PI
VNET = TAP | ev.IFF_VNET_HDR
MQ = TAP | ev.IFF_MULTI_QUEUE
SIGCHLD = 17
ALL = 0xFFFFFFFF                       # close_range(first, ~0U, ...)


class World:
    """A Model fed with records built like the BPF side builds them.

    Every process has a name (comm) that its records carry, unless a record says
    otherwise (a thread's own name); fork and exec change names as the kernel does.
    """

    def __init__(self, probe=None, ifindex_name=None) -> None:
        kw = {}
        if probe is not None:
            kw["probe_fd"] = probe
        if ifindex_name is not None:
            kw["ifindex_name"] = ifindex_name
        self.m = Model(**kw)
        self.reports: list[dict] = []
        self.comm: dict[int, str] = {}
        self.clock = itertools.count(1_000_000)

    def named(self, **names: int) -> World:
        for comm, pid in names.items():
            self.comm[pid] = comm.replace("_", "-")
        return self

    def apply(self, cls, pid: int, *, tid: int | None = None, comm: str | None = None,
              **kw) -> list[dict]:
        comm = comm or self.comm.get(pid, "proc")
        out = self.m.apply(cls(ts=next(self.clock), pid=pid, tid=tid or pid, comm=comm, **kw))
        self.reports.extend(out)
        return out

    # ---- syscalls ----------------------------------------------------------

    def open(self, pid, fd, *, cloexec=False, path="/dev/net/tun", **kw):
        flags = 0o2 | (ev.O_CLOEXEC if cloexec else 0)
        return self.apply(ev.Open, pid, fd=fd, path=path, flags=flags, **kw)

    def ioctl(self, pid, fd, cmd, *, value=0, ret=0, ifname="", **kw):
        return self.apply(ev.TunIoctl, pid, fd=fd, cmd=cmd, ret=ret, ifname=ifname,
                          value=value, **kw)

    def setiff(self, pid, fd, name, flags=TAP, *, ret=0, **kw):
        return self.ioctl(pid, fd, ev.TUNSETIFF, value=flags, ret=ret, ifname=name, **kw)

    def tap(self, pid, fd, name, flags=TAP, *, cloexec=False, **kw):
        """open("/dev/net/tun") at fd, then TUNSETIFF(name): the usual way in."""
        return self.open(pid, fd, cloexec=cloexec, **kw) + self.setiff(pid, fd, name, flags, **kw)

    def dup(self, pid, old, new, how="dup", *, cloexec=False, **kw):
        return self.apply(ev.Dup, pid, oldfd=old, newfd=new, how=how, cloexec=cloexec, **kw)

    def close(self, pid, fd, **kw):
        return self.apply(ev.Close, pid, fd=fd, **kw)

    def close_range(self, pid, first, last, flags=0, **kw):
        return self.apply(ev.CloseRange, pid, first=first, last=last, flags=flags, **kw)

    def setfd(self, pid, fd, cloexec, how="F_SETFD", **kw):
        return self.apply(ev.SetFd, pid, fd=fd, cloexec=cloexec, how=how, **kw)

    def fork(self, pid, child, flags=SIGCHLD, **kw):
        out = self.apply(ev.Fork, pid, child=child, flags=flags, **kw)
        self.comm[child] = kw.get("comm") or self.comm.get(pid, "proc")
        return out

    def exec(self, pid, comm):
        self.comm[pid] = comm
        return self.apply(ev.Exec, pid, old_pid=pid)

    def exit(self, pid, **kw):
        return self.apply(ev.Exit, pid, **kw)

    def send(self, pid, sock, fds, **kw):
        return self.apply(ev.ScmSend, pid, sock=sock, fds=tuple(fds), **kw)

    def recv(self, pid, sock, fds, *, cloexec=False, **kw):
        return self.apply(ev.ScmRecv, pid, sock=sock, fds=tuple(fds), cloexec=cloexec, **kw)

    # ---- what the model says ----------------------------------------------

    def table(self) -> dict:
        """{(pid, fd) or, for a thread's own table, (pid, fd, tid): (ifname, cloexec,
        how)}"""
        return {row_key(r): (r["ifname"], r["cloexec"], r["how"]) for r in self.m.rows()}

    def row(self, pid, fd, tid=None) -> dict:
        return next(r for r in self.m.rows() if row_key(r) == holder_key(pid, fd, tid))

    def gone(self) -> list[str]:
        return [r["ifname"] for r in self.reports if r["type"] == "tap_gone"]

    def tap_info(self, ifname) -> dict | None:
        return next((t for t in self.m.tap_list() if t["ifname"] == ifname), None)


def types(reports: list[dict]) -> list[str]:
    return [r["type"] for r in reports]


def snapshot(procs: dict[int, str], fds: list[tuple], taps: dict[str, int],
             files: list[list[tuple[int, int]]] | None = None,
             tables: list[list[int]] | None = None,
             threads: dict[int, int] | None = None) -> Snapshot:
    """procs: pid -> comm; fds: (pid, fd, ifname, cloexec), pid a tid for a thread's
    own table; taps: ifname -> tun_flags; threads: tid -> pid of threads with a table
    of their own.

    Each fd is its own open file and each process its own table unless said."""
    return Snapshot(
        procs={pid: ProcInfo(pid, 1, comm, (comm,), 0) for pid, comm in procs.items()},
        fds=[FdInfo(pid, fd, "/dev/net/tun", name, cloexec,
                    0o2 | (ev.O_CLOEXEC if cloexec else 0))
             for pid, fd, name, cloexec in fds],
        taps={name: TapInfo(name, 10 + i, "tap" if flags & ev.IFF_TAP else "tun", flags,
                            bool(flags & ev.IFF_PERSIST), bool(flags & ev.IFF_MULTI_QUEUE),
                            bool(flags & ev.IFF_VNET_HDR), None, None, "fe:54:00:00:00:01")
              for i, (name, flags) in enumerate(taps.items())},
        files=files if files is not None else [[(pid, fd)] for pid, fd, _, _ in fds],
        tables=tables if tables is not None else [[pid] for pid in procs],
        threads=threads or {},
    )


# =============================================================================
# open + TUNSETIFF
# =============================================================================

def test_open_then_tunsetiff_creates_a_tap():
    w = World().named(tunctl=10)

    out = w.open(10, 3, cloexec=True)
    assert out == [{"type": "open", "ts_ns": out[0]["ts_ns"], "pid": 10, "tid": 10,
                    "comm": "tunctl", "fd": 3, "path": "/dev/net/tun", "ifname": None,
                    "cloexec": True, "netns": None, "netns_name": None}]
    assert w.table() == {(10, 3): (None, True, "opened")}     # a tun fd, no interface yet

    out = w.setiff(10, 3, "tap0", VNET)
    assert [(r["type"], r["ifname"], r["created"], r["kind"], r["flags"], r["error"])
            for r in out] == [("tunsetiff", "tap0", True, "tap", ["tap", "no_pi", "vnet_hdr"],
                               None)]
    assert w.table() == {(10, 3): ("tap0", True, "opened")}
    row = w.row(10, 3)
    assert (row["kind"], row["flags"], row["creator_pid"], row["creator_comm"],
            row["queue"]) == ("tap", ["no_pi", "vnet_hdr"], 10, "tunctl", "attached")
    assert w.m.tap_list() == [{"ifname": "tap0", "kind": "tap",
                               "flags": ["tap", "no_pi", "vnet_hdr"], "persist": False,
                               "files": 1, "created_by": 10, "created_comm": "tunctl",
                               "owner": None, "group": None, "persist_by": None,
                               "ifindex": None, "netns": None, "netns_name": None}]


def test_a_tun_device_is_kind_tun():
    w = World()
    w.tap(10, 3, "tun0", ev.IFF_TUN | ev.IFF_NO_PI)
    assert w.row(10, 3)["kind"] == "tun" and w.tap_info("tun0")["kind"] == "tun"


def test_a_tap_percent_d_template_is_known_by_the_name_the_kernel_chose():
    # the kernel copies the final ifreq back, so the record carries "tap7", not "tap%d"
    w = World()
    w.open(10, 3)
    out = w.setiff(10, 3, "tap7")
    assert out[0]["ifname"] == "tap7"
    assert w.table() == {(10, 3): ("tap7", False, "opened")}
    assert [t["ifname"] for t in w.m.tap_list()] == ["tap7"]


def test_a_failed_tunsetiff_with_a_template_changes_nothing():
    # on failure nothing is copied back: the record still holds the template
    w = World()
    w.open(10, 3)
    out = w.setiff(10, 3, "tap%d", ret=-errno.EPERM)
    assert [(r["type"], r["ifname"], r["created"], r["error"]) for r in out] == [
        ("tunsetiff", "tap%d", False, "EPERM")]
    assert w.table() == {(10, 3): (None, False, "opened")}
    assert w.m.tap_list() == []


def test_tunsetiff_attaches_to_an_existing_persistent_tap():
    w = World().named(tunctl=10, qemu=11)
    w.tap(10, 3, "tap0")
    w.ioctl(10, 3, ev.TUNSETPERSIST, value=1)
    w.close(10, 3)                                           # persistent: it stays

    out = w.tap(11, 5, "tap0")

    assert [(r["type"], r.get("created")) for r in out] == [
        ("open", None), ("tunsetiff", False)]
    assert w.table() == {(11, 5): ("tap0", False, "opened")}
    assert w.row(11, 5)["creator_pid"] == 11                 # who attached this open file
    assert w.tap_info("tap0")["created_by"] == 10            # who made the device
    assert w.tap_info("tap0")["files"] == 1
    assert w.gone() == []


def test_tunsetiff_ebusy_on_a_held_single_queue_tap_leaves_the_fd_unattached():
    w = World().named(a=10, b=11)
    w.tap(10, 3, "tap0")
    w.open(11, 4)

    out = w.setiff(11, 4, "tap0", ret=-errno.EBUSY)

    assert [(r["type"], r["error"], r["created"], r["ret"]) for r in out] == [
        ("tunsetiff", "EBUSY", False, -errno.EBUSY)]
    assert w.table() == {(10, 3): ("tap0", False, "opened"), (11, 4): (None, False, "opened")}
    assert w.tap_info("tap0")["files"] == 1
    w.close(11, 4)
    assert w.gone() == []                                    # the failed fd never held it


def test_iff_persist_in_tunsetiff_flags_does_not_make_the_tap_persistent():
    # the kernel keeps only TUN_FEATURES from TUNSETIFF; only TUNSETPERSIST persists
    w = World()
    w.tap(10, 3, "tap0", TAP | ev.IFF_PERSIST)
    assert w.tap_info("tap0")["persist"] is False
    assert "persist" not in w.row(10, 3)["flags"]
    w.close(10, 3)
    assert w.gone() == ["tap0"]


# =============================================================================
# TUNSETQUEUE, TUNSETPERSIST, TUNSETOWNER/GROUP
# =============================================================================

def test_tunsetqueue_detach_and_attach_on_a_multi_queue_tap():
    w = World().named(libvirtd=1)
    w.tap(1, 3, "mq0", MQ)
    w.tap(1, 4, "mq0", MQ)
    assert w.tap_info("mq0")["files"] == 2

    out = w.ioctl(1, 4, ev.TUNSETQUEUE, value=ev.IFF_DETACH_QUEUE)
    assert [(r["type"], r["op"], r["ifname"], r["error"]) for r in out] == [
        ("tunsetqueue", "detach", "mq0", None)]
    assert {fd: w.row(1, fd)["queue"] for fd in (3, 4)} == {3: "attached", 4: "detached"}

    out = w.ioctl(1, 4, ev.TUNSETQUEUE, value=ev.IFF_DETACH_QUEUE, ret=-errno.EINVAL)
    assert out[0]["error"] == "EINVAL" and w.row(1, 4)["queue"] == "detached"

    w.ioctl(1, 4, ev.TUNSETQUEUE, value=ev.IFF_ATTACH_QUEUE)
    assert w.row(1, 4)["queue"] == "attached"
    assert "multi_queue" in w.row(1, 4)["flags"]


def test_a_detached_queue_still_holds_the_tap():
    w = World()
    w.tap(1, 3, "mq0", MQ)
    w.tap(1, 4, "mq0", MQ)
    w.ioctl(1, 4, ev.TUNSETQUEUE, value=ev.IFF_DETACH_QUEUE)

    w.close(1, 3)                                  # the last attached queue
    assert w.gone() == []
    w.close(1, 4)
    assert w.gone() == ["mq0"]


def test_tunsetpersist_keeps_the_tap_after_its_last_close_until_cleared():
    w = World().named(a=10, b=11)
    w.tap(10, 3, "tap0")
    out = w.ioctl(10, 3, ev.TUNSETPERSIST, value=1)
    assert [(r["type"], r["ifname"], r["persist"]) for r in out] == [
        ("tunsetpersist", "tap0", True)]
    assert w.row(10, 3)["flags"] == ["persist", "no_pi"]
    assert w.tap_info("tap0")["persist"] is True

    w.close(10, 3)
    assert w.gone() == [] and w.m.rows() == []
    assert (w.tap_info("tap0")["files"], w.tap_info("tap0")["persist"]) == (0, True)

    w.tap(11, 4, "tap0")
    w.ioctl(11, 4, ev.TUNSETPERSIST, value=0)
    assert w.row(11, 4)["flags"] == ["no_pi"]
    w.close(11, 4)
    assert w.gone() == ["tap0"] and w.m.tap_list() == []


def test_a_failed_tunsetpersist_changes_nothing():
    w = World()
    w.tap(10, 3, "tap0")
    out = w.ioctl(10, 3, ev.TUNSETPERSIST, value=1, ret=-errno.EPERM)
    assert out[0]["error"] == "EPERM"
    w.close(10, 3)
    assert w.gone() == ["tap0"]


def test_clearing_persist_on_a_tap_the_snapshot_saw_persistent():
    w = World()
    w.m.load(snapshot({1: "qemu"}, [(1, 3, "tap0", False)], {"tap0": TAP | ev.IFF_PERSIST}))
    assert w.row(1, 3)["flags"] == ["persist", "no_pi"]

    w.ioctl(1, 3, ev.TUNSETPERSIST, value=0)

    assert w.row(1, 3)["flags"] == ["no_pi"]
    assert w.tap_info("tap0")["flags"] == ["tap", "no_pi"]
    assert w.tap_info("tap0")["persist"] is False
    w.close(1, 3)
    assert w.gone() == ["tap0"]


def test_tunsetowner_and_tunsetgroup_report_the_ids():
    w = World()
    w.tap(10, 3, "tap0")
    out = w.ioctl(10, 3, ev.TUNSETOWNER, value=107)
    assert [(r["type"], r["ifname"], r["uid"]) for r in out] == [("tunsetowner", "tap0", 107)]
    out = w.ioctl(10, 3, ev.TUNSETGROUP, value=0xFFFFFFFF)          # -1: no group
    assert [(r["type"], r["ifname"], r["gid"]) for r in out] == [("tunsetgroup", "tap0", None)]
    assert w.table() == {(10, 3): ("tap0", False, "opened")}


# =============================================================================
# TUNGETIFF: how QEMU adopts an fd
# =============================================================================

def test_tungetiff_names_a_tracked_fd():
    w = World()
    w.tap(1, 3, "vnet0")
    out = w.ioctl(1, 3, ev.TUNGETIFF, ifname="vnet0", value=TAP)
    assert [(r["type"], r["ifname"], r["message"], r["error"]) for r in out] == [
        ("tungetiff", "vnet0", "fd 3 is vnet0", None)]


@pytest.mark.parametrize("err,message", [
    (errno.ENOTTY, "fd 9 is not a tap (ENOTTY)"),
    (errno.EBADF, "fd 9 is not open (EBADF)"),
    (errno.EBADFD, "fd 9 is a tun fd with no interface attached (EBADFD)"),
    (errno.EPERM, "TUNGETIFF on fd 9 failed (EPERM)"),
])
def test_a_failed_tungetiff_says_why(err, message):
    w = World().named(qemu_system_x86=50)
    out = w.ioctl(50, 9, ev.TUNGETIFF, ret=-err)
    assert [(r["type"], r["fd"], r["ifname"], r["message"], r["error"]) for r in out] == [
        ("tungetiff", 9, None, message, errno.errorcode[err])]
    assert w.m.rows() == []


def test_tungetiff_on_an_fd_the_model_missed_adopts_it_and_it_holds_the_tap():
    # pid 1 held vnet0 at start; pid 2 got an fd of it in a way the model did not see
    w = World()
    w.m.load(snapshot({1: "libvirtd"}, [(1, 27, "vnet0", True)], {"vnet0": VNET}))

    w.ioctl(2, 9, ev.TUNGETIFF, ifname="vnet0", value=VNET, comm="qemu")

    assert w.table() == {(1, 27): ("vnet0", True, "snapshot"),
                         (2, 9): ("vnet0", False, "unknown")}
    assert w.tap_info("vnet0")["files"] == 2
    w.close(1, 27)
    assert w.gone() == []                           # pid 2 still holds it
    w.close(2, 9, comm="qemu")
    assert w.gone() == ["vnet0"]


# =============================================================================
# what a tun ioctl's result proves about fds the model missed closing
# =============================================================================

@pytest.mark.parametrize("err", [errno.EBADF, errno.ENOTTY])
def test_an_fd_the_kernel_says_is_not_open_or_not_a_tap_was_closed_unseen(err):
    # the model still has vnet0 at fd 9 (closed by io_uring, or a record was lost);
    # QEMU's TUNGETIFF says fd 9 is not open / is a socket now
    w = World().named(qemu=1)
    w.tap(1, 9, "vnet0")
    w.tap(1, 10, "vnet1")

    out = w.ioctl(1, 9, ev.TUNGETIFF, ret=-err)

    assert [(r["type"], r["ifname"]) for r in out] == [("tap_gone", "vnet0"),
                                                       ("tungetiff", None)]
    assert "close" not in types(out)                # nobody closed it now
    assert w.table() == {(1, 10): ("vnet1", False, "opened")}


def test_ebadfd_on_a_detached_queue_is_not_a_stale_fd():
    # a detached queue has no interface (EBADFD) yet still holds its tap
    w = World()
    w.tap(1, 3, "mq0", MQ)
    w.tap(1, 4, "mq0", MQ)
    w.ioctl(1, 4, ev.TUNSETQUEUE, value=ev.IFF_DETACH_QUEUE)

    w.ioctl(1, 4, ev.TUNGETIFF, ret=-errno.EBADFD)

    assert w.table() == {(1, 3): ("mq0", False, "opened"), (1, 4): ("mq0", False, "opened")}
    assert w.row(1, 4)["queue"] == "detached"


def test_a_tunsetiff_that_succeeds_where_the_model_saw_an_attached_file():
    # TUNSETIFF on an attached file fails with EEXIST, so success means the model's
    # file at fd 3 was closed unseen and fd 3 is a fresh open of /dev/net/tun
    w = World()
    w.tap(1, 3, "a")

    out = w.setiff(1, 3, "b")

    assert [(r["type"], r["ifname"]) for r in out] == [("tap_gone", "a"), ("tunsetiff", "b")]
    assert w.table() == {(1, 3): ("b", False, "unknown")}
    assert [t["ifname"] for t in w.m.tap_list()] == ["b"]
    assert [i["open"] for i in w.m.lineage("a")] == [False]


def test_a_tungetiff_naming_another_tap_replaces_the_stale_file():
    w = World().named(qemu=1)
    w.tap(1, 3, "a")

    out = w.ioctl(1, 3, ev.TUNGETIFF, ifname="b", value=TAP)

    assert types(out) == ["tap_gone", "tungetiff"] and out[-1]["message"] == "fd 3 is b"
    assert w.table() == {(1, 3): ("b", False, "unknown")}


# =============================================================================
# dup family
# =============================================================================

def test_dup_shares_the_open_file_and_clears_close_on_exec():
    w = World()
    w.tap(1, 3, "a", cloexec=True)

    out = w.dup(1, 3, 4)

    assert [(r["type"], r["fd"], r["newfd"], r["how"], r["cloexec"], r["ifname"])
            for r in out] == [("dup", 3, 4, "dup", False, "a")]
    assert w.table() == {(1, 3): ("a", True, "opened"), (1, 4): ("a", False, "dup")}
    assert (w.row(1, 4)["from_pid"], w.row(1, 4)["from_fd"]) == (1, 3)
    assert w.row(1, 3)["file"] == w.row(1, 4)["file"]
    assert w.row(1, 3)["shared_with"] == [[1, 4]] and w.row(1, 4)["shared_with"] == [[1, 3]]
    w.close(1, 3)
    assert w.gone() == []                           # fd 4 still holds the file


def test_dup2_over_a_tracked_fd_closes_the_file_it_replaced():
    w = World()
    w.tap(1, 3, "a")
    w.tap(1, 4, "b")

    out = w.dup(1, 3, 4, "dup2")                    # dup2 returns newfd: 4

    assert [(r["type"], r.get("fd"), r["ifname"], r.get("how")) for r in out] == [
        ("close", 4, "b", "dup2"), ("tap_gone", None, "b", None), ("dup", 3, "a", "dup2")]
    assert w.table() == {(1, 3): ("a", False, "opened"), (1, 4): ("a", False, "dup")}


def test_dup2_of_an_untracked_fd_over_a_tracked_one_only_closes():
    w = World()
    w.tap(1, 3, "a")
    w.dup(1, 3, 4)
    out = w.dup(1, 0, 4, "dup2")                    # e.g. /dev/null over fd 4
    assert types(out) == ["close"] and out[0]["how"] == "dup2"
    assert w.table() == {(1, 3): ("a", False, "opened")}


def test_dup2_onto_itself_does_nothing():
    w = World()
    w.tap(1, 3, "a", cloexec=True)
    assert w.dup(1, 3, 3, "dup2") == []
    assert w.table() == {(1, 3): ("a", True, "opened")}


@pytest.mark.parametrize("how,cloexec", [
    ("dup3", True), ("dup3", False), ("F_DUPFD_CLOEXEC", True), ("F_DUPFD", False),
])
def test_dup3_and_f_dupfd_set_close_on_exec_as_asked(how, cloexec):
    w = World()
    w.tap(1, 3, "a")
    out = w.dup(1, 3, 20, how, cloexec=cloexec)
    assert (out[-1]["how"], out[-1]["cloexec"]) == (how, cloexec)
    assert w.table() == {(1, 3): ("a", False, "opened"), (1, 20): ("a", cloexec, "dup")}


def test_dup3_with_o_cloexec_over_a_tracked_fd():
    w = World()
    w.tap(1, 3, "a")
    w.tap(1, 4, "b")
    out = w.dup(1, 4, 3, "dup3", cloexec=True)
    assert types(out) == ["close", "tap_gone", "dup"] and out[0]["how"] == "dup3"
    assert w.table() == {(1, 3): ("b", True, "dup"), (1, 4): ("b", False, "opened")}


def test_a_plain_dup_landing_where_the_model_saw_a_file_means_that_file_was_closed_unseen():
    # dup picks a free slot, so what the model still had at fd 5 is stale:
    # it goes quietly, with no "close" line blaming the dup
    w = World()
    w.tap(1, 3, "a")
    w.tap(1, 5, "b")                                # closed later by io_uring, unseen

    out = w.dup(1, 3, 5)

    assert "close" not in types(out) and types(out)[-1] == "dup"
    assert w.table() == {(1, 3): ("a", False, "opened"), (1, 5): ("a", False, "dup")}


# =============================================================================
# close-on-exec changes
# =============================================================================

def test_f_setfd_fioclex_and_fionclex_set_the_bit():
    w = World()
    w.tap(1, 3, "a")
    w.dup(1, 3, 4)
    w.dup(1, 3, 5)

    out = (w.setfd(1, 3, True, "F_SETFD") + w.setfd(1, 4, True, "FIOCLEX")
           + w.setfd(1, 4, False, "FIONCLEX") + w.setfd(1, 5, True, "FIOCLEX"))

    assert [(r["type"], r["fd"], r["cloexec"], r["how"], r["ifname"]) for r in out] == [
        ("cloexec", 3, True, "F_SETFD", "a"), ("cloexec", 4, True, "FIOCLEX", "a"),
        ("cloexec", 4, False, "FIONCLEX", "a"), ("cloexec", 5, True, "FIOCLEX", "a")]
    assert w.table() == {(1, 3): ("a", True, "opened"), (1, 4): ("a", False, "dup"),
                         (1, 5): ("a", True, "dup")}


def test_close_on_exec_changes_on_untracked_fds_are_not_reported():
    w = World()
    w.tap(1, 3, "a")
    assert w.setfd(1, 77, True, "FIOCLEX") == []
    assert w.setfd(2, 3, True) == []               # a process the model does not know


# =============================================================================
# close and close_range
# =============================================================================

def test_closing_the_last_fd_of_a_nonpersistent_tap_makes_it_go():
    w = World()
    w.tap(1, 3, "a")
    out = w.close(1, 3)
    assert [(r["type"], r["ifname"]) for r in out] == [("close", "a"), ("tap_gone", "a")]
    assert out[0]["how"] == "close"
    assert w.m.rows() == [] and w.m.tap_list() == []


def test_closing_an_untracked_fd_is_silent():
    w = World()
    w.tap(1, 3, "a")
    assert w.close(1, 8) == [] and w.close(99, 3) == []


def test_close_range_closes_every_tracked_fd_in_the_range():
    w = World()
    w.tap(1, 3, "a")
    w.dup(1, 3, 5)
    w.dup(1, 3, 6)
    w.tap(1, 9, "b")

    out = w.close_range(1, 5, ALL)

    assert [(r["type"], r.get("fd"), r["ifname"]) for r in out] == [
        ("close", 5, "a"), ("close", 6, "a"), ("close", 9, "b"), ("tap_gone", None, "b")]
    assert {r["how"] for r in out if r["type"] == "close"} == {"close_range"}
    assert w.table() == {(1, 3): ("a", False, "opened")}


def test_close_range_cloexec_only_marks():
    w = World()
    w.tap(1, 3, "a")
    w.dup(1, 3, 4)
    w.dup(1, 3, 10)

    out = w.close_range(1, 4, 9, ev.CLOSE_RANGE_CLOEXEC)

    assert [(r["type"], r["fd"], r["cloexec"], r["how"]) for r in out] == [
        ("cloexec", 4, True, "close_range")]
    assert w.table() == {(1, 3): ("a", False, "opened"), (1, 4): ("a", True, "dup"),
                         (1, 10): ("a", False, "dup")}


def test_close_range_unshare_closes_only_in_the_callers_new_table():
    w = World().named(parent=1)
    w.tap(1, 3, "a")
    w.fork(1, 2, ev.CLONE_FILES | SIGCHLD)

    w.close_range(2, 0, ALL, ev.CLOSE_RANGE_UNSHARE)

    assert w.table() == {(1, 3): ("a", False, "opened")}
    w.tap(1, 4, "b")
    assert (2, 4) not in w.table()                 # no longer shared
    assert w.gone() == []


def test_close_range_unshare_with_cloexec_marks_only_the_callers_copy():
    w = World()
    w.tap(1, 3, "a")
    w.fork(1, 2, ev.CLONE_FILES | SIGCHLD)
    w.close_range(2, 0, ALL, ev.CLOSE_RANGE_UNSHARE | ev.CLOSE_RANGE_CLOEXEC)
    assert w.table() == {(1, 3): ("a", False, "opened"), (2, 3): ("a", True, "inherited")}


# =============================================================================
# fork and exec
# =============================================================================

def test_fork_then_exec_with_mixed_close_on_exec_bits():
    # libvirtd opens three taps close-on-exec, forks; the child clears the bit on the
    # two it passes to QEMU (27, 30), then execs; 28 is closed by the exec
    w = World().named(libvirtd=100)
    w.tap(100, 27, "vnet0", VNET, cloexec=True)
    w.tap(100, 28, "vnet1", VNET, cloexec=True)
    w.tap(100, 30, "vnet2", VNET, cloexec=True)

    out = w.fork(100, 200)
    assert [(r["type"], r["child_pid"], r["shared_table"], r["fds"], r["ifnames"],
             r["flags"]) for r in out] == [
        ("fork", 200, False, [27, 28, 30], ["vnet0", "vnet1", "vnet2"], [])]
    assert w.table() == {
        (100, 27): ("vnet0", True, "opened"), (100, 28): ("vnet1", True, "opened"),
        (100, 30): ("vnet2", True, "opened"),
        (200, 27): ("vnet0", True, "inherited"), (200, 28): ("vnet1", True, "inherited"),
        (200, 30): ("vnet2", True, "inherited")}

    w.setfd(200, 27, False, "FIONCLEX")
    w.setfd(200, 30, False, "F_SETFD")
    out = w.exec(200, "qemu-system-x86")

    assert [(r["type"], r["kept"], r["closed"], r["ifnames"], r["comm"]) for r in out] == [
        ("exec", [27, 30], [28], {"27": "vnet0", "30": "vnet2"}, "qemu-system-x86")]
    assert w.gone() == []                           # libvirtd still holds vnet1
    assert {k: v for k, v in w.table().items() if k[0] == 200} == {
        (200, 27): ("vnet0", False, "inherited"), (200, 30): ("vnet2", False, "inherited")}
    assert (w.row(200, 27)["from_pid"], w.row(200, 27)["from_fd"]) == (100, 27)
    assert w.row(200, 27)["creator_pid"] == 100

    for fd in (27, 28, 30):
        w.close(100, fd)
    assert w.gone() == ["vnet1"]
    assert w.table() == {(200, 27): ("vnet0", False, "inherited"),
                         (200, 30): ("vnet2", False, "inherited")}
    assert {r["comm"] for r in w.m.rows()} == {"qemu-system-x86"}


def test_the_child_keeps_the_bits_it_copied_at_fork():
    w = World()
    w.tap(1, 3, "a", cloexec=True)
    w.fork(1, 2)
    w.setfd(1, 3, False, "FIONCLEX")               # the parent's change is its own
    assert w.table() == {(1, 3): ("a", False, "opened"), (2, 3): ("a", True, "inherited")}


def test_an_exec_that_closes_the_last_reference_reports_the_tap_gone_after_the_exec_line():
    w = World()
    w.tap(1, 3, "a", cloexec=True)
    w.fork(1, 2)
    w.close(1, 3)

    out = w.exec(2, "child")

    assert [(r["type"], r.get("closed"), r.get("ifname")) for r in out] == [
        ("exec", [3], None), ("tap_gone", None, "a")]
    assert w.m.rows() == []


def test_an_exec_with_nothing_tracked_is_quiet():
    w = World()
    w.tap(1, 3, "a")
    w.close(1, 3)
    out = w.exec(1, "x")
    assert [(r["type"], r["quiet"]) for r in out] == [("exec", True)]


def test_vfork_copies_the_table_too():
    w = World()
    w.tap(1, 3, "a", cloexec=True)
    out = w.fork(1, 2, ev.CLONE_VM | ev.CLONE_VFORK | SIGCHLD)
    assert out[0]["shared_table"] is False and out[0]["flags"] == ["CLONE_VM", "CLONE_VFORK"]
    w.exec(2, "helper")
    assert w.table() == {(1, 3): ("a", True, "opened")}


# =============================================================================
# CLONE_FILES: one table, several processes
# =============================================================================

def test_clone_files_shares_the_table_both_ways():
    w = World().named(parent=1)
    w.tap(1, 3, "a")

    out = w.fork(1, 2, ev.CLONE_FILES | SIGCHLD)

    assert (out[0]["shared_table"], out[0]["flags"]) == (True, ["CLONE_FILES"])
    assert w.table() == {(1, 3): ("a", False, "opened"), (2, 3): ("a", False, "opened")}
    assert w.row(1, 3)["shared_with"] == [[2, 3]]

    w.tap(2, 4, "b")                               # an open in one is in the other
    w.close(1, 3)                                  # a close in one is seen by the other
    assert w.table() == {(1, 4): ("b", False, "opened"), (2, 4): ("b", False, "opened")}
    assert w.gone() == ["a"]


def test_a_table_shared_before_any_tap_keeps_what_the_sharing_child_made():
    # pasta: clone(CLONE_VM|CLONE_FILES|CLONE_VFORK) from a process holding no tap; the
    # child opens the tap, TUNSETIFF, exits; the fd is the parent's (the one table)
    w = World()
    w.fork(1, 2, ev.CLONE_FILES | ev.CLONE_VM | ev.CLONE_VFORK | SIGCHLD)
    w.tap(2, 5, "a")

    w.exit(2)

    assert w.table() == {(1, 5): ("a", False, "opened")}
    assert w.gone() == []
    assert w.row(1, 5)["creator_pid"] == 2


def test_the_exit_of_one_sharer_closes_nothing_the_last_closes_all():
    w = World()
    w.tap(1, 3, "a")
    w.fork(1, 2, ev.CLONE_FILES | SIGCHLD)

    out = w.exit(1)
    assert [(r["type"], r["closed"], r["quiet"]) for r in out] == [("exit", [], True)]
    assert w.table() == {(2, 3): ("a", False, "opened")}

    out = w.exit(2)
    assert types(out) == ["exit", "tap_gone"] and out[0]["closed"] == [3]


def test_exec_of_a_sharer_unshares_first_then_closes_its_cloexec_fds():
    w = World()
    w.tap(1, 3, "a", cloexec=True)
    w.tap(1, 4, "b")
    w.fork(1, 2, ev.CLONE_FILES | SIGCHLD)

    out = w.exec(2, "child")

    assert (out[0]["kept"], out[0]["closed"]) == ([4], [3])
    # its own table now: the fds the parent put in the shared one were inherited
    assert w.table() == {(1, 3): ("a", True, "opened"), (1, 4): ("b", False, "opened"),
                         (2, 4): ("b", False, "inherited")}
    assert (w.row(2, 4)["from_pid"], w.row(2, 4)["from_fd"]) == (1, 4)
    assert w.gone() == []                           # the parent's table still holds a
    w.close(1, 4)                                  # two tables now: not seen by pid 2
    assert w.table() == {(1, 3): ("a", True, "opened"), (2, 4): ("b", False, "inherited")}


def test_a_sharer_leaving_keeps_saying_how_it_got_the_fds_it_put_there_itself():
    # while shared, each entry is one for both; who installed it decides, on leaving,
    # whether the leaver opened/dup'ed/received it or inherited it from the other
    w = World()
    w.tap(1, 3, "a")
    w.fork(1, 2, ev.CLONE_FILES | SIGCHLD)
    w.tap(2, 5, "b")                                # the child opens one
    w.dup(2, 3, 6)                                  # and dups the parent's
    assert w.table()[(2, 3)] == ("a", False, "opened")    # one shared entry

    w.apply(ev.Unshare, 2, flags=ev.CLONE_FILES)

    assert {k: v for k, v in w.table().items() if k[0] == 2} == {
        (2, 3): ("a", False, "inherited"), (2, 5): ("b", False, "opened"),
        (2, 6): ("a", False, "dup")}
    assert (w.row(2, 6)["from_pid"], w.row(2, 6)["from_fd"]) == (2, 3)
    assert w.row(1, 5)["how"] == "opened"           # the parent's copy is unchanged
    # a fork copy is the child's own: its exec keeps "inherited" from the parent
    w.fork(2, 7)
    w.exec(7, "x")
    assert w.table()[(7, 5)] == ("b", False, "inherited")
    assert w.row(7, 5)["from_pid"] == 2


def test_before_6_10_a_vfork_sharers_table_is_its_own_from_the_start_of_its_exec():
    # no sched_prepare_exec: the BPF says when the exec begins; the kernel unshares
    # before it lets the vfork parent go, so the parent's changes after that (seen
    # before the exec's own record) are the parent's alone
    w = World()
    w.tap(1, 3, "a")
    w.tap(1, 4, "b", cloexec=True)
    w.fork(1, 2, ev.CLONE_FILES | ev.CLONE_VM | ev.CLONE_VFORK | SIGCHLD)
    w.apply(ev.Unshare, 2, flags=ev.CLONE_FILES | ev.UNSHARE_AT_EXEC)
    w.dup(1, 3, 9)                                  # the released parent, at once
    w.close(1, 4)

    out = w.exec(2, "child")

    assert (out[0]["kept"], out[0]["closed"]) == ([3], [4])
    assert w.table() == {(1, 3): ("a", False, "opened"), (1, 9): ("a", False, "dup"),
                         (2, 3): ("a", False, "inherited")}
    assert types(out) == ["exec", "tap_gone"] and w.gone() == ["b"]


def test_an_exec_that_fails_after_it_began_leaves_the_table_shared():
    w = World()
    w.tap(1, 3, "a")
    w.fork(1, 2, ev.CLONE_FILES | SIGCHLD)
    w.apply(ev.Unshare, 2, flags=ev.CLONE_FILES | ev.UNSHARE_AT_EXEC)

    w.dup(2, 3, 5)                                  # execve returned ENOENT: still shared
    w.close(1, 3)

    assert w.table() == {(1, 5): ("a", False, "dup"), (2, 5): ("a", False, "dup")}
    w.exit(2)
    w.close(1, 5)
    assert w.gone() == ["a"]                        # the dropped copy held no reference


def test_an_exec_beginning_in_a_process_with_its_own_table_changes_nothing():
    w = World()
    w.tap(1, 3, "a")
    w.apply(ev.Unshare, 1, flags=ev.CLONE_FILES | ev.UNSHARE_AT_EXEC)
    w.exec(1, "x")
    w.close(1, 3)
    assert w.table() == {} and w.gone() == ["a"]


def test_unshare_clone_files_gives_the_caller_its_own_copy():
    w = World()
    w.tap(1, 3, "a")
    w.fork(1, 2, ev.CLONE_FILES | SIGCHLD)
    w.apply(ev.Unshare, 2, flags=ev.CLONE_FILES)
    w.close(2, 3)
    assert w.table() == {(1, 3): ("a", False, "opened")}
    assert w.gone() == []


# =============================================================================
# threads
# =============================================================================

def test_threads_act_on_the_process_table_and_do_not_rename_it():
    w = World().named(qemu_system_x86=1)
    w.open(1, 3)
    w.setiff(1, 3, "a", tid=7, comm="CPU 0/KVM")    # attached by a thread
    w.dup(1, 3, 8, tid=8, comm="worker")
    w.close(1, 3, tid=8, comm="worker")

    assert w.table() == {(1, 8): ("a", False, "dup")}
    assert w.row(1, 8)["comm"] == "qemu-system-x86"
    assert w.row(1, 8)["creator_comm"] == "qemu-system-x86"
    assert {r["comm"] for r in w.reports} == {"qemu-system-x86"}
    assert {r["tid"] for r in w.reports} == {1, 7, 8}


def test_a_thread_that_unshares_acts_on_its_own_table_and_leaves_the_leaders():
    # /proc/PID/fd shows the leader's table: a thread's unshare(CLONE_FILES) and
    # close there change nothing it shows; the tap lives while either table holds it
    w = World()
    w.tap(1, 3, "a")
    w.apply(ev.Unshare, 1, tid=7, flags=ev.CLONE_FILES)
    w.close(1, 3, tid=7)
    w.dup(1, 3, 5, tid=7)                  # EBADF in the thread's table: not seen there
    assert w.table() == {(1, 3): ("a", False, "opened")}
    w.tap(1, 4, "b", tid=7)                # made in the thread's own table: its row
    assert w.table() == {(1, 3): ("a", False, "opened"), (1, 4, 7): ("b", False, "opened")}
    assert w.row(1, 4, tid=7)["tid"] == 7 and w.row(1, 3)["tid"] is None
    w.close(1, 3)                          # the leader closes: the tap's last file
    assert w.gone() == ["a"]
    w.apply(ev.Exit, 1, tid=7, thread=True)   # the thread's table goes with it
    assert w.gone() == ["a", "b"]
    assert w.table() == {}


def test_close_range_unshare_by_a_thread_closes_in_its_copy_only():
    w = World()
    w.tap(1, 3, "a")
    w.close_range(1, 0, ALL, ev.CLOSE_RANGE_UNSHARE, tid=9)
    assert w.table() == {(1, 3): ("a", False, "opened")}
    w.close(1, 3)
    assert w.gone() == ["a"]               # the thread's copy is empty


def test_an_exec_by_a_thread_with_its_own_table_keeps_that_table():
    w = World()
    w.tap(1, 3, "a")
    w.apply(ev.Unshare, 1, tid=7, flags=ev.CLONE_FILES)
    w.tap(1, 4, "b", tid=7)
    w.close(1, 3, tid=7)
    w.comm[1] = "new"
    w.apply(ev.Exec, 1, old_pid=7)         # thread 7 execs and becomes the leader
    assert w.table() == {(1, 4): ("b", False, "opened")}
    assert w.gone() == ["a"]               # the old leader's table went


def test_a_process_exit_drops_its_threads_tables_too():
    w = World()
    w.apply(ev.Unshare, 1, tid=7, flags=ev.CLONE_FILES)
    w.tap(1, 4, "b", tid=7)
    w.exit(1)
    assert w.gone() == ["b"]


def test_a_leader_that_unshares_leaves_its_threads_the_old_table():
    # the leader's unshare copies the table its threads use (the kernel copies a
    # table that has other users); they go on in the old one, with a CLONE_FILES
    # child sharing it
    w = World()
    w.tap(1, 3, "a")
    w.apply(ev.Fork, 1, flags=ev.CLONE_VM | ev.CLONE_FILES | ev.CLONE_THREAD, child=7)
    w.apply(ev.Unshare, 1, flags=ev.CLONE_FILES)
    w.tap(1, 4, "b", tid=7)                # in the old table: not the leader's
    w.close(1, 3)                          # the leader's copy: the old table keeps a
    assert w.table() == {(1, 3, 7): ("a", False, "opened"), (1, 4, 7): ("b", False, "opened")}
    assert w.gone() == []
    w.apply(ev.Exit, 1, tid=7, thread=True)   # the old table's last user
    assert sorted(w.gone()) == ["a", "b"]


def test_a_thread_made_after_a_leader_unshare_uses_the_leaders_new_table():
    # the unshare's look at /proc/PID/task comes when its record is read, and may
    # list a thread the leader made after it: that thread's clone record says it
    # uses the leader's new table, so the process's exit leaves no table behind
    w = World()
    w.m = Model(threads_of=lambda pid: [7] if pid == 1 else [])
    w.tap(1, 3, "a")
    w.apply(ev.Unshare, 1, flags=ev.CLONE_FILES)
    w.apply(ev.Fork, 1, flags=ev.CLONE_VM | ev.CLONE_FILES | ev.CLONE_THREAD, child=7)
    w.apply(ev.Exit, 1, thread=True)          # the leader thread leaves first
    assert w.gone() == []
    w.apply(ev.Exit, 1, tid=7)                # the last thread: the process is gone
    assert w.gone() == ["a"]
    assert w.table() == {}


def test_a_thread_first_seen_with_a_table_of_its_own_gets_what_proc_shows_there():
    # it unshared before its process was tracked: kcmp (KCMP_FILES) says its table
    # is not the leader's, /proc/TID/fd what is in it; one file there is the
    # leader's (kcmp), one is its own
    w = World()
    w.m = Model(thread_table=lambda pid, tid, _known: [(3, "a", False), (4, "", True)]
                if (pid, tid) == (1, 7) else None,
                same_file=lambda p1, f1, p2, f2: (p1, f1, p2, f2) == (7, 3, 1, 3))
    w.tap(1, 3, "a")
    w.setiff(1, 4, "b", tid=7, ret=-errno.EINVAL)  # its fd 4: not the leader's
    assert w.m.procs[1].thread_tables[7].users == {7}
    assert w.table() == {(1, 3): ("a", False, "opened"), (1, 3, 7): ("a", False, "snapshot"),
                         (1, 4, 7): (None, True, "snapshot")}
    assert w.row(1, 3, tid=7)["file"] == w.row(1, 3)["file"]     # kcmp: one open file
    assert w.row(1, 3)["shared_with"] == [[1, 3, 7]]
    assert w.row(1, 3, tid=7)["shared_with"] == [[1, 3]]
    w.close(1, 3)                              # the leader's: the thread's copy holds
    assert w.gone() == []
    w.apply(ev.Exec, 1, old_pid=7)             # the thread becomes the leader
    assert set(w.table()) == {(1, 3)}          # fd 4 was close-on-exec
    assert w.row(1, 3)["creator_pid"] == 1
    w.apply(ev.Exit, 1)
    assert w.gone() == ["a"]


@pytest.mark.parametrize("own, asked", [(False, []), (True, [(7, True)]),
                                        (None, [(7, None)])])
def test_a_threads_record_that_says_which_table_it_used_is_taken_at_its_word(own, asked):
    # the kernel's task->files at the record (Event.own_table): its leader's table
    # needs no asking; a table of its own is read (the session skips kcmp, which
    # tells the tables of now: who unshared first, it cannot); not known, asked
    calls = []

    def thread_table(pid, tid, known):
        calls.append((tid, known))
        return [] if known is not False else None
    w = World()
    w.m = Model(thread_table=thread_table)
    w.tap(1, 3, "a")
    w.apply(ev.Close, 1, tid=7, fd=9, own_table=own)
    assert calls == asked
    assert (7 in w.m.procs[1].thread_tables) is (own is not False)


@pytest.mark.parametrize("cls, kw", [
    (ev.Open, {"fd": 3, "path": "/dev/net/tun", "flags": 2, "file": 0xAA}),
    (ev.Dup, {"oldfd": 4, "newfd": 3, "how": "dup2", "cloexec": False}),
    (ev.Close, {"fd": 5}),
    (ev.SetFd, {"fd": 3, "cloexec": True, "how": "F_SETFD"}),
])
def test_a_threads_first_change_is_in_the_table_read_after_it(cls, kw):
    # the tracer behind: its own table, read from /proc when its first record
    # applies, shows that record's change already (and what followed: here a
    # TUNSETIFF at fd 3); applied again, an open would put a nameless file at fd 3
    w = World()
    w.m = Model(thread_table=lambda pid, tid, _known: [(3, "t1", False)])
    w.tap(1, 3, "a")
    w.apply(cls, 1, tid=7, own_table=True, **kw)
    assert w.table() == {(1, 3): ("a", False, "opened"), (1, 3, 7): ("t1", False, "snapshot")}
    if cls is ev.Open:                       # the kernel's identity of it, learnt
        assert w.m.procs[1].thread_tables[7].fds[3].file.ptr == 0xAA


# ---- the kernel's identity of a table (Event.table, struct files_struct *) ----

T0, T1, T2 = 0xFFFF888000AA0000, 0xFFFF888000BB0000, 0xFFFF888000CC0000


def test_a_table_learns_its_kernel_identity_from_its_users_records():
    # the leader's record names the table; the copy its unshare makes has none
    # until the leader's next record, and the table it left keeps its own
    w = World()
    w.tap(1, 3, "a", table=T0)
    w.apply(ev.Fork, 1, flags=ev.CLONE_VM | ev.CLONE_FILES | ev.CLONE_THREAD, child=7,
            table=T0)
    old = w.m.procs[1].table
    assert old.ptr == T0
    w.apply(ev.Unshare, 1, flags=ev.CLONE_FILES, table=T2)   # (names the one it took)
    assert w.m.procs[1].table.ptr == 0 and old.ptr == T0
    w.close(1, 9, table=T2)
    assert w.m.procs[1].table.ptr == T2 and w.m.procs[1].thread_tables[7] is old


def test_a_thread_on_a_table_it_had_left_before_the_trace_is_known_again():
    # thread 8 unshared before its process was tracked (no record); the leader's
    # unshare left the old table to every thread the model knew of (8 too: all it
    # can see is the leader's). Thread 8's record names another table than the
    # old one: it is read from /proc as a thread first seen with a table of its
    # own, and its CLONE_FILES child shares that one, not the old table's tap
    asked = []

    def thread_table(pid, tid, known):
        asked.append((tid, known))
        return [] if known else None
    w = World()
    w.m = Model(thread_table=thread_table, threads_of=lambda pid: [7, 8])
    w.tap(1, 3, "a", tid=7, own_table=False, table=T0)
    w.apply(ev.Unshare, 1, flags=ev.CLONE_FILES)
    assert w.m.procs[1].thread_tables[8] is w.m.procs[1].thread_tables[7]
    w.fork(1, 20, flags=ev.CLONE_FILES | SIGCHLD, tid=8, own_table=True, table=T1)
    assert asked == [(8, True)]
    assert w.m.procs[1].thread_tables[8] is w.m.procs[20].table
    assert w.m.procs[20].table.ptr == T1 and w.m.procs[20].table.fds == {}
    assert set(w.table()) == {(1, 3), (1, 3, 7)}
    w.apply(ev.Exit, 1, tid=7, thread=True)     # the old table's last user
    assert set(w.table()) == {(1, 3)}           # the leader's copy holds a


def test_a_thread_first_seen_on_a_table_the_model_knows_by_its_identity_joins_it():
    # no kcmp, no /proc: the record's table is one a known process uses
    asked = []
    w = World()
    w.m = Model(thread_table=lambda pid, tid, known: asked.append(tid) or [],
                same_table=lambda a, b: asked.append((a, b)))
    w.tap(5, 3, "a", table=T1)
    w.tap(1, 4, "b", table=T0)
    w.close(1, 3, tid=7, own_table=True, table=T1)   # thread 7 closes process 5's fd 3
    assert asked == []
    assert w.m.procs[1].thread_tables[7] is w.m.procs[5].table
    assert w.gone() == ["a"]


def test_a_thread_on_its_leaders_table_by_its_record_stays_whatever_table_it_names():
    # the model has thread 7 on the leader's table, and so does its record: a table
    # named otherwise is the leader's to answer for, not the thread's
    asked = []
    w = World()
    w.m = Model(thread_table=lambda pid, tid, known: asked.append(tid) or [])
    w.tap(1, 3, "a", table=T0)
    w.close(1, 9, tid=7, own_table=False, table=T0)
    w.close(1, 9, tid=7, own_table=False, table=T1)
    assert asked == [] and w.m.procs[1].thread_tables == {}
    assert w.m.procs[1].table.users == {1, 7}


def test_a_thread_first_seen_whose_own_table_is_another_process_s_uses_that_table():
    # thread 7 of process 1 unshared, then cloned process 3 with CLONE_FILES; the
    # model learnt all this from a snapshot (a resync), which lists processes only:
    # kcmp (KCMP_FILES) says the thread's table is process 3's
    w = World()
    w.m = Model(thread_table=lambda pid, tid, _known: [(5, "a", False)] if (pid, tid) == (1, 7)
                else None,
                same_table=lambda a, b: {a, b} == {7, 3})
    w.m.load(snapshot({1: "leader", 3: "child"}, [(3, 5, "a", False)], {"a": TAP}))
    w.close(1, 5, tid=7)                      # the thread closes fd 5 of process 3's table
    assert w.table() == {}
    assert w.gone() == ["a"]
    assert w.m.procs[3].table.users == {3, 7}


def test_a_process_exit_seen_by_a_thread_with_its_own_table_drops_every_table():
    # exit_group: the leader thread goes first, the last thread (with a table of
    # its own) reports the process's exit; the leader's table goes too
    w = World()
    w.m = Model(threads_of=lambda pid: [7] if pid == 1 else [])
    w.tap(1, 3, "a", tid=7)
    w.close_range(1, 17, 32, ev.CLOSE_RANGE_UNSHARE)   # the leader: a copy of its own
    w.apply(ev.Exit, 1, thread=True)
    assert w.gone() == []
    w.apply(ev.Exit, 1, tid=7)
    assert w.gone() == ["a"] and w.m.procs == {}


def test_a_thread_made_without_clone_files_uses_a_copy_of_the_table():
    w = World()
    w.tap(1, 3, "a")
    w.apply(ev.Fork, 1, flags=ev.CLONE_VM | ev.CLONE_THREAD, child=7)
    w.close(1, 3)                             # the leader's table; the thread's copy holds
    assert w.gone() == []
    w.apply(ev.Exit, 1, tid=7, thread=True)
    assert w.gone() == ["a"]


def test_threads_made_by_a_thread_with_its_own_table_use_it():
    w = World()
    w.tap(1, 3, "a")
    w.apply(ev.Unshare, 1, tid=7, flags=ev.CLONE_FILES)
    w.apply(ev.Fork, 1, tid=7, flags=ev.CLONE_VM | ev.CLONE_FILES | ev.CLONE_THREAD,
            child=8)
    w.close(1, 3, tid=8)                   # closes 7's copy
    w.apply(ev.Exit, 1, tid=7, thread=True)
    w.close(1, 3)
    assert w.gone() == ["a"]               # 7's copy no longer held it
    w.apply(ev.Unshare, 1, tid=8, flags=ev.CLONE_FILES)   # alone in it: no copy
    assert w.m.procs[1].thread_tables[8].users == {8}


def test_a_thread_that_unshares_when_nothing_is_shared_keeps_its_table():
    # a single-threaded process's unshare copies nothing (files->count == 1)
    w = World()
    w.tap(1, 3, "a")
    w.apply(ev.Unshare, 1, flags=ev.CLONE_FILES)
    w.close(1, 3)
    assert w.gone() == ["a"]


def test_a_table_the_leader_left_to_two_threads_is_one_set_of_rows_under_the_lowest():
    # the leader unshares while threads 7 and 8 use its table: they keep the old one,
    # one table, so one row per fd (under 7), not one per thread
    w = World()
    w.m = Model(threads_of=lambda pid: [8, 7] if pid == 1 else [])
    w.tap(1, 3, "a")
    w.apply(ev.Unshare, 1, flags=ev.CLONE_FILES)
    w.close(1, 3)                          # the leader's copy
    assert w.m.procs[1].thread_tables[7] is w.m.procs[1].thread_tables[8]
    assert w.table() == {(1, 3, 7): ("a", False, "opened")}
    w.tap(1, 4, "b", tid=8)                # by the other thread, in the same table
    assert w.table() == {(1, 3, 7): ("a", False, "opened"), (1, 4, 7): ("b", False, "opened")}
    assert w.row(1, 4, tid=7)["creator_pid"] == 1
    w.apply(ev.Exit, 1, tid=7, thread=True)   # 8 still uses it: its rows now
    assert w.table() == {(1, 3, 8): ("a", False, "opened"), (1, 4, 8): ("b", False, "opened")}
    assert w.gone() == []


def test_a_process_holding_a_tap_only_in_a_thread_s_table_holds_it():
    # thread 7 unshared before its process held anything (no record); its first
    # record: kcmp says its table is its own (and /proc shows no tun fd there yet)
    w = World().named(worker=1)
    w.m = Model(thread_table=lambda pid, tid, _known: [] if tid == 7 else None)
    w.m._proc(1, "worker")                 # adopted (Session._adopt): seen through a thread
    w.tap(1, 5, "a", tid=7)
    assert w.m.holders() == {1}
    row = w.row(1, 5, tid=7)
    assert (row["pid"], row["tid"], row["comm"], row["ifname"], row["creator_pid"]) == (
        1, 7, "worker", "a", 1)
    assert [r["ifname"] for r in w.m.rows("a")] == ["a"]
    assert w.tap_info("a")["files"] == 1


def test_rows_of_one_file_in_a_process_s_table_and_a_thread_s_name_each_other():
    # shared_with is over every row: [pid, fd] for a process's table, [pid, fd, tid]
    # for a thread's own; the pairs agree both ways
    w = World()
    w.tap(1, 3, "a")
    w.apply(ev.Fork, 1, flags=ev.CLONE_VM | ev.CLONE_THREAD, child=7)   # a copy
    w.fork(1, 2)
    rows = {(r["pid"], r["fd"], r["tid"]): r for r in w.m.rows()}
    assert list(rows) == [(1, 3, None), (1, 3, 7), (2, 3, None)]      # in row order
    assert len({r["file"] for r in rows.values()}) == 1
    for (pid, fd, tid), r in rows.items():
        others = {tuple(k) for k in r["shared_with"]}
        assert others == {holder_key(*k) for k in rows} - {holder_key(pid, fd, tid)}
        assert r["shared_count"] == 2
    assert rows[(1, 3, 7)]["shared_with"] == [[1, 3], [2, 3]]
    assert rows[(2, 3, None)]["shared_with"] == [[1, 3], [1, 3, 7]]


def test_a_thread_first_seen_whose_table_another_thread_has_joins_that_table():
    # thread 7 unshared and made thread 8, both before the process was tracked: the
    # first of them seen gets a table of its own (kcmp, /proc), the second is told
    # by kcmp (KCMP_FILES) to use that one, not a second copy
    w = World()
    w.m = Model(thread_table=lambda pid, tid, _known: [(4, "b", False)] if tid in (7, 8) else None,
                same_table=lambda a, b: {a, b} == {7, 8})
    w.tap(1, 3, "a")
    w.setiff(1, 4, "b", tid=7, ret=-errno.EINVAL)      # 7 first seen
    w.close(1, 4, tid=8)                                # 8 closes in their table
    assert w.m.procs[1].thread_tables[8] is w.m.procs[1].thread_tables[7]
    assert w.table() == {(1, 3): ("a", False, "opened")}


def test_a_thread_first_seen_with_its_own_table_finds_the_threads_that_share_it():
    # the leader unshared before the process was tracked; threads 5 and 8 kept the old
    # table, thread 9 made one of its own. 8 is seen first: /proc/PID/task and kcmp
    # say 5 uses its table too, so the table's rows are 5's (the lowest), and 5's
    # records apply there without asking /proc again. (/proc, read after 8's open,
    # shows its fd 4 with no interface yet: the open is in the read, not applied
    # again; its TUNSETIFF names it.)
    asked = []

    def thread_table(pid, tid, _known):
        asked.append(tid)
        return [(4, "", False)] if tid == 8 else [] if tid in (5, 9) else None
    w = World()
    w.m = Model(threads_of=lambda pid: [5, 8, 9] if pid == 1 else [],
                thread_table=thread_table, same_table=lambda a, b: {a, b} == {5, 8})
    w.tap(1, 3, "a")
    w.tap(1, 4, "b", tid=8)
    assert w.table() == {(1, 3): ("a", False, "opened"), (1, 4, 5): ("b", False, "snapshot")}
    assert w.row(1, 4, tid=5)["creator_pid"] == 1
    w.close(1, 4, tid=5)
    assert asked == [8] and w.table() == {(1, 3): ("a", False, "opened")}
    assert w.gone() == ["b"]


def test_a_receive_into_a_thread_s_own_table_is_read_in_that_table():
    # thread 7 has a table of its own; it receives at fd 3, where the leader's table
    # holds another tap: /proc is asked of the thread's table (/proc/7/fd/3), so the
    # receive matches the send in flight
    probe = {(1, 3): "a", (7, 3): "b"}
    w = World(probe=lambda pid, fd: probe.get((pid, fd)))
    w.tap(1, 3, "a")
    w.apply(ev.Unshare, 1, tid=7, flags=ev.CLONE_FILES)
    w.close(1, 3, tid=7)
    w.tap(2, 4, "b")
    w.send(2, 9, [4])
    out = w.recv(1, 8, [3], tid=7)
    assert [(r["type"], r["from_pid"], r["ifnames"]) for r in out] == [
        ("scm_recv", 2, ["b"])]
    assert w.table() == {(1, 3): ("a", False, "opened"), (1, 3, 7): ("b", False, "received"),
                         (2, 4): ("b", False, "opened")}
    assert w.row(1, 3, tid=7)["file"] == w.row(2, 4)["file"]


def test_a_process_first_seen_through_a_thread_is_named_by_comm_of():
    # records carry the calling thread's name; a process the model meets through a
    # worker thread asks comm_of (/proc/PID/comm) for its own
    w = World()
    w.m = Model(comm_of={1: "qemu-system-x86", 2: "qemu-system-x86"}.get)
    w.tap(1, 3, "a", tid=7, comm="tapworker")
    w.send(1, 9, [3], tid=7, comm="tapworker")
    w.recv(2, 4, [40], tid=8, comm="iothread")

    assert {(r["pid"], r["comm"], r["creator_comm"]) for r in w.m.rows()} == {
        (1, "qemu-system-x86", "qemu-system-x86"), (2, "qemu-system-x86", "qemu-system-x86")}
    assert {r["comm"] for r in w.reports} == {"qemu-system-x86"}
    assert {r["tid"] for r in w.reports} == {7, 8}


def test_without_comm_of_a_process_first_seen_through_a_thread_has_that_thread_name():
    w = World()
    w.tap(1, 3, "a", tid=7, comm="tapworker")
    assert w.row(1, 3)["comm"] == "tapworker"
    w.setfd(1, 3, True, comm="qemu")                # the leader: now the model knows
    assert w.row(1, 3)["comm"] == "qemu"


def test_the_leader_renaming_itself_renames_the_process():
    w = World().named(qemu=1)
    w.tap(1, 3, "a")
    w.setfd(1, 3, True, comm="qemu:vm1")            # prctl(PR_SET_NAME) by the leader
    assert w.row(1, 3)["comm"] == "qemu:vm1"


def test_a_fork_from_a_thread_names_the_child_after_that_thread():
    # the child is a copy of the calling thread, name included
    w = World().named(qemu_system_x86=1)
    w.tap(1, 3, "a")
    out = w.fork(1, 2, tid=5, comm="worker")
    assert out[0]["comm"] == "qemu-system-x86"       # the parent process
    assert w.row(2, 3)["comm"] == "worker"


# =============================================================================
# SCM_RIGHTS
# =============================================================================

def test_scm_rights_with_several_fds_sender_closing_before_the_receive():
    # libvirtd sends [vnet0, a pipe, vnet1] and closes its fds at once; QEMU receives
    # them later with MSG_CMSG_CLOEXEC as 40, 41, 42
    probe = {(2, 40): "vnet0", (2, 41): None, (2, 42): "vnet1"}
    w = World(probe=lambda pid, fd: probe.get((pid, fd))).named(libvirtd=1, qemu=2)
    w.tap(1, 27, "vnet0", cloexec=True)
    w.tap(1, 28, "vnet1", cloexec=True)

    out = w.send(1, 9, [27, 5, 28])
    assert [(r["type"], r["sock"], r["fds"], r["ifnames"]) for r in out] == [
        ("scm_send", 9, [27, 28], ["vnet0", "vnet1"])]
    w.close(1, 27)
    w.close(1, 28)
    assert w.gone() == []                           # the message in flight holds both
    assert w.m.rows() == []
    assert [t["files"] for t in w.m.tap_list()] == [1, 1]

    out = w.recv(2, 4, [40, 41, 42], cloexec=True)

    assert [(r["type"], r["fds"], r["from_pid"], r["from_comm"], r["from_fds"],
             r["ifnames"], r["cloexec"]) for r in out] == [
        ("scm_recv", [40, 42], 1, "libvirtd", [27, 28], ["vnet0", "vnet1"], True)]
    assert w.table() == {(2, 40): ("vnet0", True, "received"),
                         (2, 42): ("vnet1", True, "received")}
    assert (w.row(2, 42)["from_pid"], w.row(2, 42)["from_fd"]) == (1, 28)
    assert w.row(2, 40)["creator_pid"] == 1
    assert w.m.pending == []
    w.exit(2)
    assert w.gone() == ["vnet0", "vnet1"]


def test_a_receive_takes_only_a_send_queued_on_its_own_socket():
    # A socketpair (socks 3, 4 in both processes' tables): pid 1 sends an unattached
    # tun fd on 4 (queued on 3's socket), then pid 2 sends another on 3 (queued on
    # 4's). A receive on 4 gets pid 2's file, though pid 1's send is older and of the
    # same shape and name.
    SK3, SK4 = 0xFFFF8880_0000_3000, 0xFFFF8880_0000_4000
    probe = {(3, 9): ""}
    w = World(probe=lambda pid, fd: probe.get((pid, fd))).named(a=1, b=2, c=3)
    w.open(1, 7)
    w.ioctl(1, 7, ev.TUNGETIFF, ret=-errno.EBADFD)
    w.open(2, 8)
    w.ioctl(2, 8, ev.TUNGETIFF, ret=-errno.EBADFD)
    w.send(1, 4, [7], queue=SK3)
    w.send(2, 3, [8], queue=SK4)

    out = w.recv(3, 4, [9], queue=SK4)

    assert [(r["type"], r["from_pid"], r["from_fds"]) for r in out] == [
        ("scm_recv", 2, [8])]
    assert [s.pid for s in w.m.pending] == [1]
    # where a record does not say (no BTF), order and names decide, as before
    out = w.recv(3, 3, [10])
    assert [(r["type"], r["from_pid"]) for r in out] == [("scm_recv", 1)]


def test_a_receive_on_a_socket_at_a_freed_sockets_address_takes_only_its_own_send():
    # pid 1 sends tap a on a socket nobody reads, which is then closed (the kernel
    # frees the message; no record says so): its send stays pending. A new socket
    # at the same address (the kernel reuses it) gets tap b from pid 2; its receive
    # takes b, the send on that socket by its inode, not the older one at the
    # address (found by the fuzzer: a receive named an earlier program's tap)
    SK = 0xFFFF8880_0000_3000
    w = World().named(a=1, b=2, c=3)
    w.tap(1, 7, "a")
    w.send(1, 4, [7], queue=SK, queue_ino=1001)
    w.tap(2, 8, "b")
    w.send(2, 4, [8], queue=SK, queue_ino=1002)

    out = w.recv(3, 5, [9], queue=SK, queue_ino=1002)

    assert [(r["type"], r["from_pid"], r["ifnames"]) for r in out] == [
        ("scm_recv", 2, ["b"])]
    assert [s.pid for s in w.m.pending] == [1]


def test_a_receive_without_msg_cmsg_cloexec_leaves_the_bit_clear():
    w = World()
    w.tap(1, 3, "a", cloexec=True)
    w.send(1, 9, [3])
    w.recv(2, 4, [6])
    assert w.table() == {(1, 3): ("a", True, "opened"), (2, 6): ("a", False, "received")}
    assert w.row(1, 3)["shared_with"] == [[2, 6]]   # one open file, two processes


def test_the_sender_exiting_with_the_message_in_flight_does_not_drop_the_tap():
    w = World().named(helper=3, qemu=2)
    w.tap(3, 5, "tap0")
    w.send(3, 4, [5])
    out = w.exit(3)
    assert types(out) == ["exit"] and w.gone() == []
    w.recv(2, 6, [25])
    assert w.table() == {(2, 25): ("tap0", False, "received")}


def test_a_receive_is_matched_to_the_pending_send_carrying_what_arrived():
    # two sends are pending; /proc says the receiver's new fd is "b"
    probe = {(3, 50): "b"}
    w = World(probe=lambda pid, fd: probe.get((pid, fd)))
    w.tap(1, 3, "a")
    w.tap(2, 3, "b")
    w.send(1, 9, [3])
    w.send(2, 9, [3])

    out = w.recv(3, 5, [50])

    assert (out[0]["from_pid"], out[0]["ifnames"]) == (2, ["b"])
    assert [(s.pid, s.fds) for s in w.m.pending] == [(1, (3,))]
    assert w.table()[(3, 50)] == ("b", False, "received")


def test_without_proc_to_ask_pending_sends_are_received_in_order():
    w = World()
    w.tap(1, 3, "a")
    w.tap(2, 3, "b")
    w.send(1, 9, [3])
    w.send(2, 9, [3])
    assert w.recv(3, 5, [50])[0]["ifnames"] == ["a"]
    assert w.recv(3, 5, [51])[0]["ifnames"] == ["b"]


def test_a_receive_of_a_fd_that_is_not_a_tun_fd_takes_no_pending_send():
    # a probe may answer False for "open, but not a tun fd" (say a memfd from dbus):
    # that receive is someone else's, not the pending tap send
    probe = {(7, 12): False, (2, 40): "a"}
    w = World(probe=lambda pid, fd: probe.get((pid, fd)))
    w.tap(1, 3, "a")
    w.send(1, 9, [3])

    assert w.recv(7, 5, [12]) == []
    assert len(w.m.pending) == 1
    assert w.recv(2, 5, [40])[0]["from_pid"] == 1


def test_a_receive_with_a_different_number_of_fds_is_another_message():
    w = World()
    w.tap(1, 3, "a")
    w.send(1, 9, [3])
    assert w.recv(2, 5, [40, 41]) == []
    assert len(w.m.pending) == 1


def test_a_receive_cut_short_by_a_small_control_buffer_gets_the_first_fds():
    # MSG_CTRUNC: the receiver had room for two of three; the kernel installs the
    # first two and drops the third, which was c's last reference
    probe = {(2, 40): "a", (2, 41): "b"}
    w = World(probe=lambda pid, fd: probe.get((pid, fd))).named(sender=1, receiver=2)
    for fd, name in ((3, "a"), (4, "b"), (5, "c")):
        w.tap(1, fd, name)
    w.send(1, 9, [3, 4, 5])
    for fd in (3, 4, 5):
        w.close(1, fd)

    out = w.recv(2, 6, [40, 41])

    assert [(r["type"], r.get("fds"), r.get("from_fds"), r["ifnames"] if "ifnames" in r
             else r["ifname"]) for r in out] == [
        ("scm_recv", [40, 41], [3, 4], ["a", "b"]), ("tap_gone", None, None, "c")]
    assert w.table() == {(2, 40): ("a", False, "received"), (2, 41): ("b", False, "received")}
    assert w.m.pending == []
    assert w.m.lineage("c")[0]["steps"][-2]["how"] == "ctrunc"


def test_a_shorter_receive_nobody_can_confirm_takes_no_longer_send():
    w = World()
    w.tap(1, 3, "a")
    w.tap(1, 4, "b")
    w.send(1, 9, [3, 4])
    assert w.recv(2, 6, [40]) == []                # /proc cannot say: not this message
    assert len(w.m.pending) == 1


def test_a_receive_prefers_the_send_with_as_many_fds():
    w = World(probe=lambda pid, fd: "a" if (pid, fd) == (2, 40) else None)
    w.tap(1, 3, "a")
    w.tap(1, 4, "b")
    w.send(1, 9, [3, 4])                            # cut to its first fd, it would fit too
    w.send(1, 9, [3])

    out = w.recv(2, 6, [40])

    assert (out[0]["from_fds"], out[0]["ifnames"]) == ([3], ["a"])
    assert [s.fds for s in w.m.pending] == [(3, 4)]
    assert w.gone() == []


def test_a_send_of_untracked_fds_only_is_not_followed():
    w = World()
    w.tap(1, 3, "a")
    assert w.send(1, 9, [0, 1]) == []
    assert w.m.pending == []
    assert w.recv(2, 5, [40, 41]) == []


def test_a_receive_replaces_what_the_model_wrongly_had_at_each_new_fd():
    # fd_install only fills free slots: 40 and 41 were free in the kernel
    w = World()
    w.tap(2, 40, "old0")
    w.tap(2, 41, "old1")                            # both closed unseen (io_uring)
    w.tap(1, 3, "a")
    w.send(1, 9, [3, 7])

    out = w.recv(2, 5, [40, 41])

    assert out[-1]["fds"] == [40]
    assert w.table() == {(1, 3): ("a", False, "opened"), (2, 40): ("a", False, "received")}
    assert sorted(w.gone()) == ["old0", "old1"]


def test_an_unreceived_send_expires_and_releases_its_files():
    w = World()
    w.tap(1, 3, "a")
    w.send(1, 9, [3])
    w.close(1, 3)
    assert w.m.expire_pending(w.m.pending[0].ts + 1) == []          # not yet
    out = w.m.expire_pending(w.m.pending[0].ts + 61_000_000_000)
    assert [(r["type"], r["ifname"]) for r in out] == [("tap_gone", "a")]
    assert w.m.pending == []


def test_a_receive_no_send_explains_takes_the_fds_proc_names():
    # its send was not seen (records lost, a message cut short, before the trace):
    # what /proc says the fds are is what the table shows, from an unknown sender
    names = {(2, 7): "a", (2, 8): "", (2, 9): False}
    w = World(probe=lambda pid, fd: names.get((pid, fd))).named(qemu=2)
    out = w.apply(ev.ScmRecv, 2, sock=4, fds=(7, 8, 9), cloexec=True)
    assert w.table() == {(2, 7): ("a", True, "received"), (2, 8): (None, True, "received")}
    assert out[-1]["type"] == "scm_recv" and out[-1]["from_pid"] is None
    assert out[-1]["fds"] == [7, 8]


def test_a_message_cut_short_at_its_send_is_received_whole():
    # sent in five SCM_RIGHTS lists (the record holds four); the kernel hands all
    # its fds over in one list: the receive lists more than the send did, and the
    # rest are the sender's files, as kcmp says
    names = {(2, 7): "a", (2, 8): "b", (2, 9): "b"}
    w = World(probe=lambda pid, fd: names.get((pid, fd))).named(libvirtd=1, qemu=2)
    w.m._same_file = lambda p1, f1, p2, f2: (p1, f1, p2, f2) == (2, 9, 1, 4)
    w.tap(1, 3, "a")
    w.tap(1, 4, "b")
    w.apply(ev.ScmSend, 1, sock=9, fds=(3, 4), truncated=True)
    w.apply(ev.ScmSend, 1, sock=10, fds=(4, 3))           # another message, in flight
    out = w.apply(ev.ScmRecv, 2, sock=11, fds=(7, 8, 9), cloexec=False)
    assert out[-1]["from_fds"] == [3, 4, None]
    assert w.row(2, 9)["file"] == w.row(1, 4)["file"] == w.row(2, 8)["file"]
    assert [s.fds for s in w.m.pending] == [(4, 3)]


def test_the_rest_of_a_cut_short_message_whose_sender_left_is_known_from_its_holders():
    # the sender listed one fd of two and exited: kcmp against it cannot answer; the
    # receiver's first fd (matched to the send) is the same open file, as kcmp says
    names = {(2, 7): "a", (2, 8): "a"}
    w = World(probe=lambda pid, fd: names.get((pid, fd))).named(libvirtd=1, qemu=2)
    w.m._same_file = lambda p1, f1, p2, f2: (
        None if 1 in (p1, p2) else (p1, f1, p2, f2) == (2, 8, 2, 7))
    w.tap(1, 3, "a")
    w.apply(ev.ScmSend, 1, sock=9, fds=(3,), truncated=True)
    w.exit(1)
    w.apply(ev.ScmRecv, 2, sock=11, fds=(7, 8), cloexec=False)
    assert w.row(2, 8)["file"] == w.row(2, 7)["file"]
    assert w.row(2, 8)["creator_pid"] == 1
    w.close(2, 7)
    assert w.gone() == []
    w.close(2, 8)
    assert w.gone() == ["a"]


def test_a_peek_installs_the_fds_and_the_message_stays_for_the_real_receive():
    w = World().named(libvirtd=1, qemu=2)
    w.tap(1, 3, "a")
    w.send(1, 9, [3])
    w.close(1, 3)
    w.apply(ev.ScmRecv, 2, sock=4, fds=(5,), cloexec=False, peek=True)
    w.apply(ev.ScmRecv, 2, sock=4, fds=(6,), cloexec=True)
    assert w.table() == {(2, 5): ("a", False, "received"), (2, 6): ("a", True, "received")}
    assert w.row(2, 5)["file"] == w.row(2, 6)["file"] and w.m.pending == []
    w.close(2, 5)
    assert w.gone() == []
    w.close(2, 6)
    assert w.gone() == ["a"]


def test_a_send_the_kernel_freed_unread_goes_when_its_tap_is_gone():
    # the sender closes its fd and exits: the socket goes, the message with it, and
    # the tap is gone from the kernel; the model learns it from the tap's absence
    w = World()
    w.tap(1, 3, "a")
    w.tap(1, 4, "b")
    w.send(1, 9, [3])
    w.send(1, 9, [4])
    w.close(1, 3)
    t0 = w.m.pending[0].ts
    exists = {"a": False, "b": True}
    assert w.m.expire_pending(t0 + 1, lambda tap: exists[tap.ifname]) == []   # too soon
    out = w.m.expire_pending(t0 + 600_000_000, lambda tap: exists[tap.ifname])
    assert [(r["type"], r["ifname"]) for r in out] == [("tap_gone", "a")]
    # b is still held by fd 4, so its message is not asked about; nor a tap not known
    assert [s.fds for s in w.m.pending] == [(4,)]
    assert w.m.expire_pending(t0 + 600_000_000, lambda tap: None) == []


def test_pidfd_getfd_copies_an_fd_with_close_on_exec_set():
    w = World().named(libvirtd=1, qemu=2)
    w.tap(1, 27, "a")
    out = w.apply(ev.PidfdGetfd, 2, pidfd=6, target_fd=27, newfd=11, source_pid=1)
    assert [(r["type"], r["fd"], r["from_pid"], r["from_fd"], r["ifname"]) for r in out] == [
        ("pidfd_getfd", 11, 1, 27, "a")]
    assert w.table() == {(1, 27): ("a", False, "opened"), (2, 11): ("a", True, "received")}
    w.close(1, 27)
    assert w.gone() == []


def test_pidfd_getfd_by_a_thread_with_its_own_table_takes_from_its_leader_s():
    # thread 7 has a table of its own; pidfd_open(its own pid) names the leader, whose
    # table pidfd_getfd takes from; the copy lands in the thread's table
    w = World()
    w.tap(1, 13, "a")
    w.apply(ev.Fork, 1, flags=ev.CLONE_VM | ev.CLONE_FILES | ev.CLONE_THREAD, child=7)
    w.apply(ev.Unshare, 1, tid=7, flags=ev.CLONE_FILES)  # a table of its own...
    w.close(1, 13, tid=7)                                # ...without fd 13
    w.apply(ev.PidfdGetfd, 1, tid=7, pidfd=5, target_fd=13, newfd=4, source_pid=1)
    assert w.m.procs[1].thread_tables[7].fds[4].file is w.m.procs[1].table.fds[13].file
    w.ioctl(1, 4, ev.TUNSETPERSIST, value=1, tid=7)      # through the thread's copy
    assert [t["persist"] for t in w.m.tap_list()] == [True]


def test_pidfd_getfd_of_an_untracked_fd_still_frees_the_slot_it_lands_in():
    w = World()
    w.tap(2, 11, "old")                             # closed unseen
    out = w.apply(ev.PidfdGetfd, 2, pidfd=6, target_fd=4, newfd=11, source_pid=1)
    assert types(out) == ["tap_gone"]
    assert w.m.rows() == []


# =============================================================================
# pid reuse, exit, multi-queue
# =============================================================================

def test_a_fork_to_a_pid_the_model_still_has_replaces_that_stale_process():
    w = World()
    w.tap(1, 3, "a")
    w.tap(5, 3, "b")                                # pid 5 exited unseen

    out = w.fork(1, 5)

    assert types(out) == ["tap_gone", "fork"] and w.gone() == ["b"]
    assert w.table() == {(1, 3): ("a", False, "opened"), (5, 3): ("a", False, "inherited")}


def test_a_fork_by_an_unknown_parent_still_retires_the_stale_pid():
    w = World()
    w.tap(5, 3, "b")
    w.fork(99, 5)                                   # the parent holds nothing tracked
    assert w.m.rows() == [] and w.gone() == ["b"]


def test_exit_closes_the_table_nonpersistent_taps_go_persistent_ones_stay():
    w = World().named(qemu=1)
    w.tap(1, 3, "a")
    w.tap(1, 4, "keep")
    w.ioctl(1, 4, ev.TUNSETPERSIST, value=1)

    out = w.exit(1)

    assert [(r["type"], r.get("closed"), r.get("ifnames"), r.get("ifname")) for r in out] == [
        ("exit", [3, 4], ["a", "keep"], None), ("tap_gone", None, None, "a")]
    assert out[0]["comm"] == "qemu" and out[0]["quiet"] is False
    assert w.m.rows() == [] and w.m.holders() == set()
    assert [(t["ifname"], t["files"], t["persist"]) for t in w.m.tap_list()] == [
        ("keep", 0, True)]


def test_an_exit_while_a_child_still_holds_the_file_keeps_the_tap():
    w = World()
    w.tap(1, 3, "a")
    w.fork(1, 2)
    w.exit(1)
    assert w.gone() == [] and w.table() == {(2, 3): ("a", False, "inherited")}


def test_two_open_files_on_one_multi_queue_tap():
    w = World()
    w.tap(1, 3, "mq0", MQ)
    w.tap(1, 4, "mq0", MQ)
    assert w.row(1, 3)["file"] != w.row(1, 4)["file"]
    assert w.row(1, 3)["shared_with"] == []         # same tap, different open files
    assert w.tap_info("mq0")["files"] == 2

    w.close(1, 3)
    assert w.gone() == [] and w.tap_info("mq0")["files"] == 1
    w.close(1, 4)
    assert w.gone() == ["mq0"]


def test_macvtap_open_is_the_attach():
    w = World(ifindex_name=lambda i: {12: "macvtap0"}.get(i))
    out = w.open(1, 3, path="/dev/tap12")
    assert out[0]["ifname"] == "macvtap0"
    assert w.table() == {(1, 3): ("macvtap0", False, "opened")}
    assert w.row(1, 3)["kind"] == "macvtap" and w.row(1, 3)["creator_pid"] == 1
    w.close(1, 3)
    assert w.gone() == []                           # closing it does not delete the link


def test_tunsetiff_on_a_macvtap_fd_sets_flags_and_keeps_its_interface():
    # tap_ioctl(TUNSETIFF) ignores the name: the record carries what was passed in
    w = World(ifindex_name=lambda i: {12: "macvtap0"}.get(i))
    w.open(1, 3, path="/dev/tap12")

    out = w.setiff(1, 3, "", TAP | ev.IFF_VNET_HDR)

    assert [(r["type"], r["ifname"], r["created"], r["kind"]) for r in out] == [
        ("tunsetiff", "macvtap0", False, "macvtap")]
    assert w.table() == {(1, 3): ("macvtap0", False, "opened")}
    assert "vnet_hdr" in w.row(1, 3)["flags"]
    assert w.m.tap_list() == []


# =============================================================================
# lineage and chain
# =============================================================================

def test_the_chain_of_a_tap_opened_forked_execed_sent_and_received():
    w = World().named(libvirtd=100, qemu_system_x86=300)
    w.tap(100, 27, "vnet0", cloexec=True)
    w.fork(100, 200)
    w.setfd(200, 27, False, "FIONCLEX")
    w.exec(200, "tapbroker")
    w.send(200, 4, [27])
    w.close(200, 27)
    w.recv(300, 8, [33], cloexec=True)
    w.close(100, 27)

    [item] = w.m.lineage("vnet0")
    assert (item["creator_pid"], item["open"]) == (100, True)
    assert item["chain"] == [
        {"op": "open", "pid": 100, "comm": "libvirtd", "fd": 27},
        {"op": "fork", "pid": 200, "comm": "libvirtd", "fd": 27},
        {"op": "exec", "pid": 200, "comm": "tapbroker", "fd": 27},
        {"op": "recv", "pid": 300, "comm": "qemu-system-x86", "fd": 33},
    ]
    assert [(s["op"], s["pid"]) for s in item["steps"]] == [
        ("open", 100), ("tunsetiff", 100), ("fork", 200), ("exec", 200), ("send", 200),
        ("close", 200), ("recv", 300), ("close", 100)]
    assert (item["steps"][-2]["from_pid"], item["steps"][-2]["from_fd"]) == (200, 27)

    w.exit(300)
    [item] = w.m.lineage("vnet0")                   # released files are remembered
    assert item["open"] is False and item["steps"][-1]["op"] == "released"


def test_a_file_held_at_two_fds_makes_one_hop_per_fork_and_exec():
    w = World()
    w.tap(1, 3, "a")
    w.dup(1, 3, 4)
    w.fork(1, 2)
    w.exec(2, "child")
    [item] = w.m.lineage("a")
    assert [(h["op"], h["pid"], h["fd"]) for h in item["chain"]] == [
        ("open", 1, 3), ("fork", 2, 3), ("exec", 2, 3)]


def test_the_chain_leaves_out_side_branches():
    """libvirtd forks helpers that get the tap fd and close it; only the fork that
    leads to QEMU is a step of QEMU's chain (seen live with libvirt 9.0)."""
    w = World().named(libvirtd=10)
    w.tap(10, 31, "vnet16")
    w.fork(10, 20)                      # a helper child: closes it and exits
    w.close(20, 31)
    w.exit(20)
    w.fork(10, 21)                      # the daemonizing child
    w.close(10, 31)
    w.fork(21, 22)
    w.exit(21)
    w.exec(22, "qemu-system-x86")
    [item] = w.m.lineage("vnet16")
    assert [(h["op"], h["pid"]) for h in item["chain"]] == [
        ("open", 10), ("fork", 21), ("fork", 22), ("exec", 22)]
    assert [h["pid"] for h in w.m.chain(w.m.procs[22].table.fds[31].file, 21)] == [10, 21]


def test_lineage_lists_each_open_file_of_the_interface():
    w = World()
    w.tap(1, 3, "mq0", MQ)
    w.tap(1, 4, "mq0", MQ)
    w.tap(1, 5, "other")
    assert [(i["file"], i["chain"][0]["fd"]) for i in w.m.lineage("mq0")] == [
        (w.row(1, 3)["file"], 3), (w.row(1, 4)["file"], 4)]
    assert w.m.lineage("nothing") == []


# =============================================================================
# snapshots: load and resync
# =============================================================================

def test_load_builds_the_table_from_a_snapshot():
    snap = snapshot({1: "libvirtd", 2: "qemu", 3: "qemu-thread-pool"},
                    [(1, 27, "vnet0", True), (2, 27, "vnet0", False), (2, 30, "vnet1", True),
                     (3, 30, "vnet1", True), (2, 31, None, False)],
                    {"vnet0": VNET, "vnet1": MQ},
                    files=[[(1, 27), (2, 27)], [(2, 30), (3, 30)], [(2, 31)]],
                    tables=[[1], [2, 3]])
    w = World()
    w.m.load(snap)

    assert w.table() == {(1, 27): ("vnet0", True, "snapshot"),
                         (2, 27): ("vnet0", False, "snapshot"),
                         (2, 30): ("vnet1", True, "snapshot"),
                         (2, 31): (None, False, "snapshot"),
                         (3, 27): ("vnet0", False, "snapshot"),
                         (3, 30): ("vnet1", True, "snapshot"),
                         (3, 31): (None, False, "snapshot")}
    r = w.row(2, 27)
    assert (r["comm"], r["kind"], r["flags"], r["creator_pid"], r["from_pid"]) == (
        "qemu", "tap", ["no_pi", "vnet_hdr"], None, None)
    assert r["shared_with"] == [[1, 27], [3, 27]]
    assert w.row(2, 30)["flags"] == ["multi_queue", "no_pi"]
    assert [(t["ifname"], t["files"], t["created_by"]) for t in w.m.tap_list()] == [
        ("vnet0", 1, None), ("vnet1", 1, None)]
    assert w.m.holders() == {1, 2, 3}

    w.close(3, 30)                                  # pids 2 and 3 share one table
    assert (2, 30) not in w.table() and w.gone() == ["vnet1"]


def test_resync_makes_the_rows_equal_the_snapshot_and_keeps_what_is_still_true():
    w = World().named(libvirtd=1)
    w.m.load(snapshot({1: "libvirtd"}, [(1, 27, "vnet0", True)], {"vnet0": VNET}))
    w.fork(1, 2)
    w.setfd(2, 27, False, "FIONCLEX")
    w.exec(2, "qemu")
    w.close(1, 27)
    w.tap(2, 30, "vnet1")
    w.dup(2, 30, 33)
    before = w.m.lineage("vnet1")[0]
    # what /proc says now: 33 was closed unseen, 40 appeared unseen, 30 is cloexec now
    snap = snapshot({2: "qemu"},
                    [(2, 27, "vnet0", False), (2, 30, "vnet1", True), (2, 40, "vnet2", True)],
                    {"vnet0": VNET, "vnet1": TAP, "vnet2": TAP})

    report = w.m.resync(snap)

    assert report == {"type": "resync", "added": 1, "removed": 1, "rows": 3}
    assert w.table() == {(2, 27): ("vnet0", False, "inherited"),
                         (2, 30): ("vnet1", True, "opened"),
                         (2, 40): ("vnet2", True, "snapshot")}
    assert (w.row(2, 30)["creator_pid"], w.row(2, 30)["creator_comm"]) == (2, "qemu")
    assert (w.row(2, 27)["from_pid"], w.row(2, 27)["from_fd"]) == (1, 27)
    assert w.row(2, 40)["creator_pid"] is None
    assert w.m.lineage("vnet1")[0]["steps"] == before["steps"]
    assert [h["op"] for h in w.m.lineage("vnet0")[0]["chain"]] == ["fork", "exec"]
    assert w.tap_info("vnet1")["created_by"] == 2
    assert w.m.pending == []


def test_a_tap_a_snapshot_caught_dying_goes_when_the_kernel_has_unregistered_it():
    # its last fd closed; /sys still listed it as the snapshot was read: nobody
    # holds it and it is not persistent, so it goes once /sys says so
    w = World()
    w.m.load(snapshot({}, [], {"a": TAP, "p": TAP | ev.IFF_PERSIST}))
    assert w.m.drop_vanished(lambda t: True) == []
    assert [t.ifname for t in w.m.drop_vanished(lambda t: False)] == ["a"]
    assert [t["ifname"] for t in w.m.tap_list()] == ["p"]     # persistent: kept


def test_a_sharer_a_resync_missed_still_names_the_table_for_records_from_before():
    # 1 and 2 share a table; 1 exits before the resync's scan, which lists 2 only.
    # 1's TUNSETIFF, read after the snapshot that already shows its result, still
    # says who made the tap: its table is 2's
    w = World()
    w.m.load(snapshot({1: "a", 2: "b"}, [(1, 3, "t", False), (2, 3, "t", False)],
                      {"t": TAP}, files=[[(1, 3), (2, 3)]], tables=[[1, 2]]))
    w.m.resync(snapshot({2: "b"}, [(2, 3, "t", False)], {"t": TAP}), alive=lambda _p: False)
    assert w.m.table_of(1, 1) is w.m.procs[2].table
    w.m.learn_from_before(ev.TunIoctl(ts=1, pid=1, tid=1, comm="a", fd=3, cmd=ev.TUNSETIFF,
                                      ret=0, ifname="t", value=TAP))
    assert w.row(2, 3)["creator_pid"] == 1


def test_a_tap_made_after_the_snapshot_read_sys_is_learned_from_its_tunsetiff():
    # the fd was read after the tap was made, /sys before: the TUNSETIFF from
    # before the read (not applied again) says what the tap is and who made it
    w = World()
    w.m.load(snapshot({1: "p"}, [(1, 3, "t", False)], {}))
    assert w.m.tap_list() == []
    w.m.learn_from_before(ev.TunIoctl(ts=1, pid=1, tid=1, comm="p", fd=3, cmd=ev.TUNSETIFF,
                                      ret=0, ifname="t", value=TAP))
    assert [(t["ifname"], t["created_by"], t["files"]) for t in w.m.tap_list()] == [
        ("t", 1, 1)]
    w.close(1, 3)
    assert w.gone() == ["t"]


def test_load_gives_a_thread_its_own_table_as_the_snapshot_shows_it():
    # the snapshot lists thread 7's own table under its tid, thread 8 using it too;
    # 7's fd 3 is the leader's fd 3 (kcmp), its fd 4 a tap of its own
    def never(pid, tid, _known):
        raise AssertionError(f"thread {tid} asked of /proc: the snapshot said")
    snap = snapshot({1: "qemu"}, [(1, 3, "a", False), (7, 3, "a", False), (7, 4, "b", True)],
                    {"a": TAP, "b": TAP}, files=[[(1, 3), (7, 3)], [(7, 4)]],
                    tables=[[1], [7, 8]], threads={7: 1, 8: 1})
    w = World()
    w.m = Model(thread_table=never)
    w.m.load(snap)
    assert w.table() == {(1, 3): ("a", False, "snapshot"), (1, 3, 7): ("a", False, "snapshot"),
                         (1, 4, 7): ("b", True, "snapshot")}
    assert w.row(1, 3)["file"] == w.row(1, 3, tid=7)["file"]
    assert w.m.procs[1].thread_tables[8] is w.m.procs[1].thread_tables[7]
    assert w.m.procs[1].threads == {7, 8}
    w.close(1, 4, tid=8)                   # in the threads' table, not the leader's
    assert w.gone() == ["b"]
    w.close(1, 3, tid=7)
    assert w.table() == {(1, 3): ("a", False, "snapshot")}
    # a process whose taps are all in a thread's table is listed for it
    w.m.load(snapshot({2: "worker"}, [(9, 5, "c", False)], {"c": TAP}, threads={9: 2}))
    assert w.table() == {(2, 5, 9): ("c", False, "snapshot")} and w.m.holders() == {2}


def test_resync_keeps_what_a_thread_s_own_table_held():
    w = World()
    w.tap(1, 3, "a")
    w.apply(ev.Unshare, 1, tid=7, flags=ev.CLONE_FILES)
    w.tap(1, 4, "b", tid=7)
    before = {k: w.m.rows()[i]["file"] for i, k in enumerate(w.table())}
    out = w.m.resync(snapshot({1: "proc"}, [(1, 3, "a", False), (7, 3, "a", False),
                                            (7, 4, "b", False)],
                              {"a": TAP, "b": TAP}, files=[[(1, 3), (7, 3)], [(7, 4)]],
                              threads={7: 1}))
    assert (out["added"], out["removed"]) == (0, 0)
    assert w.table() == {(1, 3): ("a", False, "opened"), (1, 3, 7): ("a", False, "opened"),
                         (1, 4, 7): ("b", False, "opened")}
    assert {k: r["file"] for k, r in zip(w.table(), w.m.rows())} == before
    assert w.row(1, 4, tid=7)["creator_pid"] == 1


def test_resync_never_makes_two_snapshot_files_one():
    # the model thinks 1:3 and 2:3 are one file (fork); /proc says two files now
    w = World()
    w.tap(1, 3, "a")
    w.fork(1, 2)
    w.m.resync(snapshot({1: "p", 2: "p"}, [(1, 3, "a", False), (2, 3, "a", False)],
                        {"a": TAP}))
    assert w.row(1, 3)["file"] != w.row(2, 3)["file"]
    assert w.row(1, 3)["shared_with"] == [] and w.row(2, 3)["shared_with"] == []
    assert w.row(1, 3)["creator_pid"] == 1 and w.row(2, 3)["how"] == "snapshot"
    assert w.tap_info("a")["files"] == 2
    w.close(1, 3)
    assert w.gone() == []


def test_resync_finds_a_file_that_was_in_flight_where_it_landed():
    # sent and closed by its maker; the receive was not seen (lost, or too large a
    # message): the file /proc shows in the receiver is the one that was in flight
    w = World().named(maker=1, qemu=2)
    w.tap(1, 3, "a")
    w.tap(1, 4, "b")
    w.tap(1, 5, "b", flags=MQ)
    w.send(1, 9, [3, 4, 5])
    w.close(1, 3)
    w.close(1, 4)
    w.close(1, 5)
    w.m.resync(snapshot({1: "maker", 2: "qemu"},
                        [(2, 7, "a", False), (2, 8, "b", False), (2, 9, "b", False)],
                        {"a": TAP, "b": MQ}))
    assert (w.row(2, 7)["creator_pid"], w.row(2, 7)["creator_comm"]) == (1, "maker")
    assert [h["op"] for h in w.m.lineage("a")[0]["steps"]][:3] == ["open", "tunsetiff", "send"]
    # two files of one name in flight and in the snapshot: which is which is unknown
    assert w.row(2, 8)["creator_pid"] is None and w.row(2, 9)["creator_pid"] is None
    # the message stays in flight until its receive is seen: here, a receive from
    # before the snapshot (which already shows what it installed)
    assert len(w.m.pending) == 1
    w.m.forget_receive(ev.ScmRecv(ts=1, pid=2, tid=2, comm="qemu", sock=4, fds=(7, 8, 9),
                                  cloexec=False))
    assert w.m.pending == []
    w.close(2, 7)
    assert w.gone() == ["a"]


def test_resync_keeps_a_file_that_moved_while_proc_was_read():
    # /proc is read fd by fd while the process goes on: dup2(7, 33) and close(7)
    # happened after the model's last record and before the scan reached them
    w = World().named(maker=1)
    w.tap(1, 7, "a")
    w.m.resync(snapshot({1: "maker"}, [(1, 33, "a", False)], {"a": TAP}))
    assert (w.row(1, 33)["creator_pid"], w.row(1, 33)["creator_comm"]) == (1, "maker")
    assert w.tap_info("a")["files"] == 1


def test_a_send_in_flight_survives_a_resync_and_its_receive_lands():
    w = World().named(maker=1, qemu=2)
    w.tap(1, 3, "a")
    w.send(1, 9, [3])
    w.close(1, 3)
    w.m.resync(snapshot({1: "maker", 2: "qemu"}, [], {"a": TAP}))
    assert w.tap_info("a")["files"] == 1 and w.gone() == []
    w.apply(ev.ScmRecv, 2, sock=4, fds=(7,), cloexec=False)
    assert w.table() == {(2, 7): ("a", False, "received")}
    assert w.row(2, 7)["creator_pid"] == 1
    w.close(2, 7)
    assert w.gone() == ["a"]


def test_a_file_the_model_had_split_is_one_after_a_resync_and_so_is_its_message():
    # records lost: the model took 2:5 for an open file of its own; /proc (kcmp) says
    # it is 1:3's. A message 2 sent from 5 before the resync carries that one file, so
    # its receive lands as another fd of it, not a third file (fuzz seed 20261395)
    w = World().named(a=1, b=2, c=3)
    w.tap(1, 3, "a", flags=MQ)
    w.tap(2, 5, "a", flags=MQ)
    w.send(2, 9, [5])
    assert w.row(1, 3)["file"] != w.row(2, 5)["file"]
    w.m.resync(snapshot({1: "a", 2: "b"}, [(1, 3, "a", False), (2, 5, "a", False)],
                        {"a": MQ}, files=[[(1, 3), (2, 5)]]))
    assert w.row(1, 3)["file"] == w.row(2, 5)["file"]
    w.apply(ev.ScmRecv, 3, sock=4, fds=(7,), cloexec=False)
    assert w.row(3, 7)["file"] == w.row(1, 3)["file"]
    assert sorted(map(tuple, w.row(3, 7)["shared_with"])) == [(1, 3), (2, 5)]
    assert w.tap_info("a")["files"] == 1
    for pid, fd in ((1, 3), (2, 5), (3, 7)):
        w.close(pid, fd)
    assert w.gone() == ["a"]


def test_resync_keeps_a_clone_files_pair_that_holds_no_tap_yet():
    # the snapshot lists holders only: a CLONE_FILES pair still alive keeps sharing
    # its table, so a tap one makes there is the other's too (pasta's shape)
    w = World()
    w.tap(9, 3, "z")
    w.apply(ev.Fork, 1, flags=ev.CLONE_FILES | SIGCHLD, child=2)
    w.m.resync(snapshot({9: "p"}, [(9, 3, "z", False)], {"z": TAP}),
               alive=lambda pid: pid in (1, 2))
    w.tap(1, 5, "a")
    w.exit(1)
    assert w.table()[(2, 5)][0] == "a" and w.gone() == []


def test_resync_keeps_no_sharer_that_parted_before_the_snapshot():
    # 1 and 2 shared a table (CLONE_FILES); 1's close_range(CLOSE_RANGE_UNSHARE) was
    # among the records lost, and the snapshot lists 2 only (1 holds no tun fd):
    # parted (kcmp, with no record of either after the scan) says 1 uses another
    # table, so the tap 2 holds is not 1's (found by the fuzzer: seeds 377596 and
    # 377605 of tiny-paused, every run)
    w = World()
    w.tap(1, 4, "a")
    w.apply(ev.Fork, 1, flags=ev.CLONE_FILES | SIGCHLD, child=2)
    w.m.resync(snapshot({2: "c"}, [(2, 3, "z", False)], {"z": TAP}),
               alive=lambda pid: pid in (1, 2), parted=lambda a, b: {a, b} == {1, 2})
    assert set(w.table()) == {(2, 3)}
    assert 1 not in w.m.procs
    w.tap(1, 5, "b")
    assert set(w.table()) == {(2, 3), (1, 5)}
    assert w.m.procs[1].table is not w.m.procs[2].table


def split_pair(fds2: list[int], alive, one_table=None) -> World:
    """1 and 2 share a table (CLONE_FILES) holding tap a at fd 7; a resync's scan
    read 1's fd 7 and 2's fds2, all one file, and grouped 1 and 2 as two tables."""
    w = World()
    w.tap(1, 7, "a")
    w.apply(ev.Fork, 1, flags=ev.CLONE_FILES | SIGCHLD, child=2)
    w.m.resync(snapshot({1: "p", 2: "c"}, [(1, 7, "a", False)] +
                        [(2, fd, "a", False) for fd in fds2], {"a": TAP},
                        files=[[(1, 7)] + [(2, fd) for fd in fds2]], tables=[[1], [2]]),
               alive=alive, one_table=one_table)
    return w


def test_resync_joins_again_a_shared_table_the_scan_split_at_a_sharer_s_death():
    # 1 and 2 share a table (CLONE_FILES). The scan read both (fd 7, one file), then
    # 1 died before the scan's kcmp grouped tables: grouped alone. What 1 did in
    # its last moments (records after the read) changed 2's table too (found by the
    # fuzzer: seed 20261334 of tiny-paused, 1 run in 2 under load)
    def split(alive):
        w = split_pair([7], alive)
        w.apply(ev.Dup, 1, oldfd=7, newfd=17, how="dup", cloexec=False)
        w.close(1, 7)
        return w
    w = split(alive=lambda pid: pid == 2)
    assert w.m.procs[1].table is w.m.procs[2].table
    assert set(w.table()) == {(1, 17), (2, 17)}
    w.exit(1)
    assert set(w.table()) == {(2, 17)}
    # both alive: kcmp's word stands (one unshared, its record lost)
    w = split(alive=lambda pid: True)
    assert set(w.table()) == {(1, 17), (2, 7)}
    # the files it read differ: not one table when read either
    w = split_pair([8], alive=lambda pid: pid == 2)
    assert w.m.procs[1].table is not w.m.procs[2].table


def test_resync_joins_a_split_table_the_records_to_come_name_for_both():
    # as above, but 2 got fd 9 between the scan's reads of 1 and 2 (a pidfd_getfd
    # by 1): the fds read differ; the records to come name one kernel table for
    # both (seed 617467 of scm, 1 run in 24 under load)
    w = split_pair([7, 9], lambda pid: pid == 2, lambda a, b: {a, b} == {1, 2})
    assert w.m.procs[1].table is w.m.procs[2].table
    assert set(w.table()) == {(1, 7), (1, 9), (2, 7), (2, 9)}
    w = split_pair([7, 9], lambda pid: pid == 2, lambda a, b: False)
    assert w.m.procs[1].table is not w.m.procs[2].table


def test_resync_keeps_the_table_of_a_holder_the_scan_missed_whose_records_still_come():
    # 1 held taps a and b; it died while the scan ran, before the scan came to it,
    # and its records from the scan on (a clone(CLONE_FILES), a dup) still come:
    # its table is the one the model had (found by the fuzzer: seed 617467 of scm,
    # 1 run in 27 under load)
    def missed(acting):
        w = World()
        w.tap(1, 3, "a")
        w.tap(1, 6, "b")
        w.tap(9, 4, "z")
        report = w.m.resync(snapshot({9: "q"}, [(9, 4, "z", False)], {"a": TAP, "z": TAP}),
                            alive=lambda pid: pid == 9, acting=acting)
        return w, report
    w, report = missed(lambda pid: pid == 1)
    assert report["kept"] == [1]
    assert set(w.table()) == {(1, 3), (9, 4)}       # b is gone from the kernel
    w.apply(ev.Fork, 1, flags=ev.CLONE_FILES | SIGCHLD, child=2)
    w.apply(ev.Dup, 1, oldfd=3, newfd=17, how="dup2", cloexec=False)
    w.exit(1)
    assert set(w.table()) == {(2, 3), (2, 17), (9, 4)}
    assert w.table()[(2, 17)][0] == "a"
    w, report = missed(lambda pid: False)           # no record of it to come: gone
    assert "kept" not in report and set(w.table()) == {(9, 4)}


def test_an_fd_first_met_at_its_ioctl_takes_the_close_on_exec_bit_the_record_read():
    w = World()
    w.apply(ev.TunIoctl, 1, fd=7, cmd=ev.TUNSETIFF, ret=0, ifname="a", value=TAP,
            cloexec=True)
    assert w.table() == {(1, 7): ("a", True, "unknown")}


def test_a_dup2_a_snapshot_already_shows_does_not_close_its_result():
    # the snapshot read 33 after dup2(7, 33) and close(7): 7 is unknown, 33 holds the
    # tap; the dup2 record applied after it must not close 33
    names = {(1, 33): "a"}
    w = World(probe=lambda pid, fd: names.get((pid, fd))).named(maker=1)
    w.tap(1, 7, "a")
    w.m.resync(snapshot({1: "maker"}, [(1, 33, "a", False)], {"a": TAP}))
    w.dup(1, 7, 33, how="dup2")
    assert w.table() == {(1, 33): ("a", False, "snapshot")}
    assert w.row(1, 33)["creator_pid"] == 1 and w.gone() == []


def test_a_tunsetiff_from_before_the_snapshot_still_names_the_creator():
    w = World().named(maker=1)
    w.m.resync(snapshot({1: "maker"}, [(1, 7, "a", True)], {"a": TAP}))
    assert w.row(1, 7)["creator_pid"] is None
    w.m.learn_from_before(ev.TunIoctl(ts=1, pid=1, tid=1, comm="maker", fd=7,
                                      cmd=ev.TUNSETIFF, ret=0, ifname="a", value=TAP))
    assert w.row(1, 7)["creator_pid"] == 1 and w.tap_info("a")["created_by"] == 1
    # never over a creator known, nor onto another name
    w.m.learn_from_before(ev.TunIoctl(ts=1, pid=1, tid=1, comm="maker", fd=7,
                                      cmd=ev.TUNSETIFF, ret=0, ifname="b", value=TAP))
    assert w.row(1, 7)["creator_pid"] == 1


def test_a_tunsetiff_whose_file_the_snapshot_found_elsewhere_names_its_creator():
    # 1 made tap a at fd 10 of the table it shared with 2 and 3, then exec'd away from
    # it (fd 10 close-on-exec); the snapshot shows a's one file at 2:10 and 3:10 only
    def world():
        w = World()
        w.m.resync(snapshot({2: "b", 3: "c"}, [(2, 10, "a", True), (3, 10, "a", True)],
                            {"a": TAP, "q": MQ}, files=[[(2, 10), (3, 10)]],
                            tables=[[2, 3]]))
        return w

    def setiff(ifname="a", value=TAP):
        return ev.TunIoctl(ts=1, pid=1, tid=1, comm="maker", fd=10, cmd=ev.TUNSETIFF,
                           ret=0, ifname=ifname, value=value)
    w = world()
    w.m.learn_from_before(setiff(), last=True)
    assert w.row(2, 10)["creator_pid"] == 1 and w.row(3, 10)["creator_pid"] == 1
    assert w.tap_info("a")["created_by"] == 1
    # a later TUNSETIFF on a (from before the snapshot too) may have attached the file
    # the snapshot shows: the earlier one names nobody
    w = world()
    w.m.learn_from_before(setiff(), last=False)
    assert w.row(2, 10)["creator_pid"] is None
    # a multi-queue interface has a file per queue: which one is not known
    w = world()
    w.m.learn_from_before(setiff("q", MQ), last=True)
    assert w.row(2, 10)["creator_pid"] is None


def test_an_fd_read_from_proc_is_the_file_of_its_interface_in_flight():
    # 1 made tap a (single-queue), sent it, closed it, forked 2, whose table is read
    # from /proc (the fork is older than the snapshot's read of 1): fd 5 there is
    # the file in flight (kcmp cannot compare with a file no table holds)
    w = World().named(maker=1)
    w.tap(1, 5, "a")
    w.send(1, 7, [5])
    w.close(1, 5)
    w.fork(1, 2)
    w.m.reload_table(2, [(5, "a", False)], next(w.clock))
    assert w.row(2, 5)["creator_pid"] == 1
    # a multi-queue interface has a file per queue: a new file, maker unknown
    w = World().named(maker=1)
    w.tap(1, 5, "q", MQ)
    w.send(1, 7, [5])
    w.close(1, 5)
    w.fork(1, 2)
    w.m.reload_table(2, [(5, "q", False)], next(w.clock))
    assert w.row(2, 5)["creator_pid"] is None


def test_a_persist_change_the_snapshot_already_shows_leaves_the_tap_as_shown():
    # 1's TUNSETPERSIST on, then 2's off, both before the snapshot read /sys
    # (persist off); 1's record is applied after it (1's table was read before),
    # 2's not (its table was read after): the tap stays as /sys showed it
    w = World()
    w.m.load(snapshot({1: "a", 2: "b"}, [(1, 6, "t", False), (2, 5, "t", True)],
                      {"t": MQ}))
    w.ioctl(1, 6, ev.TUNSETPERSIST, value=1, shown=True)
    assert w.tap_info("t")["persist"] is False
    assert [r["type"] for r in w.reports][-1] == "tunsetpersist"   # still told
    w.ioctl(1, 6, ev.TUNSETPERSIST, value=1)
    assert w.tap_info("t")["persist"] is True


def test_resync_of_an_fd_that_now_holds_another_file():
    w = World()
    w.tap(1, 3, "a")
    w.m.resync(snapshot({1: "p"}, [(1, 3, "b", True)], {"b": TAP}))
    assert w.table() == {(1, 3): ("b", True, "snapshot")}
    assert w.row(1, 3)["creator_pid"] is None


# =============================================================================
# views
# =============================================================================

ROW_KEYS = {"pid", "tid", "comm", "fd", "ifname", "kind", "flags", "cloexec", "path", "file",
            "creator_pid", "creator_comm", "how", "from_pid", "from_fd", "shared_with",
            "shared_count", "queue", "backends", "owner", "group", "netns", "netns_name"}


def test_a_row_has_exactly_these_fields():
    w = World().named(libvirtd=1, qemu=2)
    w.tap(1, 27, "vnet0", VNET, cloexec=True)
    w.send(1, 9, [27])
    w.recv(2, 4, [40], cloexec=True)
    row = w.row(2, 40)
    assert set(row) == ROW_KEYS
    assert row == {"pid": 2, "tid": None, "comm": "qemu", "fd": 40, "ifname": "vnet0", "kind": "tap",
                   "flags": ["no_pi", "vnet_hdr"], "cloexec": True, "path": "/dev/net/tun",
                   "file": w.row(1, 27)["file"], "creator_pid": 1, "creator_comm": "libvirtd",
                   "how": "received", "from_pid": 1, "from_fd": 27, "shared_with": [[1, 27]],
                   "shared_count": 1, "queue": "attached", "backends": [],
                   "owner": None, "group": None, "netns": None, "netns_name": None}


def test_shared_with_is_capped_but_shared_count_is_exact():
    w = World()
    w.tap(1, 3, "vnet0")
    for child in range(100, 150):
        w.m.apply(ev.Fork(ts=1, pid=1, tid=1, comm="p", child=child, flags=17))
    row = w.row(1, 3)
    assert row["shared_count"] == 50 and len(row["shared_with"]) == SHARED_MAX


def test_rows_filter_by_interface_glob():
    w = World()
    w.tap(1, 3, "vnet0")
    w.tap(1, 4, "vnet1")
    w.tap(1, 5, "tap0")
    assert [r["ifname"] for r in w.m.rows("vnet*")] == ["vnet0", "vnet1"]
    assert [r["ifname"] for r in w.m.rows("tap0")] == ["tap0"]


def test_descendants_filter_follows_the_model_then_proc():
    w = World()
    w.tap(10, 3, "a")
    w.fork(10, 20)
    w.fork(20, 30)
    is_mine = descendants_filter(w.m, 10, {40: 30, 50: 1}.get)
    assert [is_mine(p) for p in (10, 20, 30, 40, 50, 60)] == [
        True, True, True, True, False, False]


# =============================================================================
# the JSON field names of every report type
# =============================================================================

COMMON = {"type", "ts_ns", "pid", "tid", "comm"}
NS = {"netns", "netns_name"}               # a report about one file: its tap's namespace
TUN_IOCTL = {"fd", "ioctl", "ret", "error", "ifname"} | NS
REPORT_KEYS = {
    "open": {"fd", "path", "ifname", "cloexec"} | NS,
    "tunsetiff": TUN_IOCTL | {"flags", "created", "kind"},
    "tungetiff": TUN_IOCTL | {"message"},
    "tunsetqueue": TUN_IOCTL | {"op"},
    "tunsetpersist": TUN_IOCTL | {"persist"},
    "tunsetowner": TUN_IOCTL | {"uid"},
    "tunsetgroup": TUN_IOCTL | {"gid"},
    "dup": {"fd", "newfd", "how", "cloexec", "ifname"} | NS,
    "close": {"fd", "ifname", "how"} | NS,
    "cloexec": {"fd", "cloexec", "how", "ifname"} | NS,
    # reports listing fds: `netns` lists each one's namespace, like `ifnames`
    "fork": {"child_pid", "flags", "shared_table", "fds", "ifnames", "netns", "quiet"},
    "exec": {"kept", "closed", "ifnames", "netns", "quiet"},
    "exit": {"closed", "ifnames", "netns", "quiet"},
    "scm_send": {"sock", "fds", "ifnames", "netns"},
    "scm_recv": {"sock", "fds", "from_pid", "from_comm", "from_fds", "ifnames", "netns",
                 "cloexec"},
    "pidfd_getfd": {"fd", "from_pid", "from_fd", "ifname"} | NS,
    "tap_gone": {"ifname"} | NS,
    "lost": {"count"},
}


def test_every_report_type_has_a_fixed_set_of_fields():
    w = World(probe=lambda pid, fd: "a" if fd == 6 else None)
    w.tap(1, 3, "a")
    w.setiff(1, 4, "a", ret=-errno.EBUSY)           # failed tunsetiff: same keys
    w.tap(1, 5, "mq", MQ)
    w.ioctl(1, 3, ev.TUNGETIFF, ifname="a", value=TAP)
    w.ioctl(1, 9, ev.TUNGETIFF, ret=-errno.ENOTTY)
    w.ioctl(1, 5, ev.TUNSETQUEUE, value=ev.IFF_DETACH_QUEUE)
    w.ioctl(1, 3, ev.TUNSETPERSIST, value=0)
    w.ioctl(1, 3, ev.TUNSETOWNER, value=0)
    w.ioctl(1, 3, ev.TUNSETGROUP, value=0)
    w.dup(1, 3, 4)
    w.setfd(1, 4, True, "FIOCLEX")
    w.close(1, 4)
    w.fork(1, 2)
    w.exec(2, "x")
    w.send(1, 9, [3])
    w.recv(2, 7, [6])
    w.apply(ev.PidfdGetfd, 2, pidfd=8, target_fd=3, newfd=11, source_pid=1)
    w.apply(ev.Lost, 0, count=3)
    w.exit(1)
    w.exit(2)

    seen = {}
    for r in w.reports:
        seen.setdefault(r["type"], []).append(set(r))
    assert set(seen) == set(REPORT_KEYS)
    for type_, keysets in seen.items():
        for keys in keysets:
            assert keys == COMMON | REPORT_KEYS[type_], type_
    assert set(w.m.resync(snapshot({}, [], {}))) == {"type", "added", "removed", "rows"}


def test_tap_list_entries_have_a_fixed_set_of_fields():
    w = World()
    w.tap(1, 3, "a")
    assert [set(t) for t in w.m.tap_list()] == [
        {"ifname", "kind", "flags", "persist", "files", "created_by", "created_comm",
         "owner", "group", "persist_by", "ifindex", "netns", "netns_name"}]


def test_lineage_items_and_chain_hops_have_a_fixed_set_of_fields():
    w = World()
    w.tap(1, 3, "a")
    [item] = w.m.lineage("a")
    assert set(item) == {"file", "creator_pid", "open", "steps", "chain", "netns",
                         "netns_name"}
    assert all(set(h) == {"op", "pid", "comm", "fd"} for h in item["chain"])
    assert all({"ts_ns", "op", "pid", "comm", "fd"} <= set(s) for s in item["steps"])


def test_an_open_of_unknown_close_on_exec_is_settled_by_what_the_exec_left():
    """An fd first seen at its TUN ioctl after its opener closed it: /proc could not say
    whether it was close-on-exec. The forked child's exec settles it: what /proc shows
    after the exec (the model's probe) was kept, what is missing was closed."""
    after_exec = {(2, 3): "a"}                     # fd 4 is not there any more
    w = World(probe=lambda pid, fd: after_exec.get((pid, fd))).named(orch=1, qemu=2)
    w.apply(ev.Open, 1, fd=3, path="/dev/net/tun", flags=ev.CLOEXEC_UNKNOWN)
    w.setiff(1, 3, "a")
    w.apply(ev.Open, 1, fd=4, path="/dev/net/tun", flags=ev.CLOEXEC_UNKNOWN)
    w.setiff(1, 4, "b")
    assert (w.row(1, 3)["cloexec"], w.row(1, 4)["cloexec"]) == (None, None)
    w.fork(1, 2)
    w.close(1, 3)
    w.close(1, 4)
    [ex] = w.exec(2, "qemu")[:1]
    assert (ex["kept"], ex["closed"]) == ([3], [4])
    assert w.table() == {(2, 3): ("a", False, "inherited")}
    assert w.gone() == ["b"]


# =============================================================================
# network namespaces: a tap is (namespace, name)
# =============================================================================

HOST_NS, CTR_NS = 4026531840, 4026532300


class NsWorld(World):
    """A World whose NetnsProbe answers from `where`: (pid, fd) -> namespace inode,
    as TUNGETDEVNETNS on the fd would (the namespace the file was opened in)."""

    def __init__(self, **kw) -> None:
        super().__init__(**kw)
        self.where: dict[tuple[int, int], int] = {}
        self.asked: list[tuple[int, int]] = []
        self.m._netns_of = self._answer
        self.m.own_netns = HOST_NS

    def _answer(self, pid, fd):
        self.asked.append((pid, fd))
        ino = self.where.get((pid, fd))
        return None if ino is None else (ino, "ctr" if ino == CTR_NS else None)

    def taps(self) -> list[tuple]:
        return [(t["ifname"], t["netns"], t["persist"], t["files"]) for t in self.m.tap_list()]


def ns_snapshot(fds: list[tuple], taps: list[tuple]) -> Snapshot:
    """fds: (pid, fd, ifname, netns); taps: (ifname, netns, tun_flags)."""
    return Snapshot(
        procs={pid: ProcInfo(pid, 1, "p", ("p",), 0) for pid, *_ in fds},
        fds=[FdInfo(pid, fd, "/dev/net/tun", name, False, 0o2, ns)
             for pid, fd, name, ns in fds],
        taps={(name if ns == HOST_NS else f"{ns}:{name}"): TapInfo(
            name, 10 + i, "tap", fl, bool(fl & ev.IFF_PERSIST), False, False, None, None,
            None, ns) for i, (name, ns, fl) in enumerate(taps)},
        files=[[(pid, fd)] for pid, fd, _n, _ns in fds],
        tables=[[pid] for pid in {pid for pid, *_ in fds}],
        own_netns=HOST_NS, netns_names={CTR_NS: "ctr"})


def test_a_tap_made_in_another_namespace_beside_a_host_namesake_is_a_new_tap():
    # slirp4netns: the host has a persistent tap0 nobody holds; a child opens
    # /dev/net/tun inside the container's namespace and makes tap0 there.
    w = NsWorld()
    w.m.load(ns_snapshot([], [("tap0", HOST_NS, ev.IFF_TAP | ev.IFF_PERSIST)]))
    w.where[(20, 6)] = CTR_NS
    out = w.tap(20, 6, "tap0")
    [made] = [r for r in out if r["type"] == "tunsetiff"]
    assert (made["created"], made["netns"], made["netns_name"]) == (True, CTR_NS, "ctr")
    assert w.asked == [(20, 6)]
    assert sorted(w.taps()) == [("tap0", HOST_NS, True, 0), ("tap0", CTR_NS, False, 1)]
    row = w.row(20, 6)
    assert (row["netns"], row["netns_name"], row["flags"]) == (CTR_NS, "ctr", ["no_pi"])


def test_attaching_in_the_same_namespace_is_still_an_attach():
    w = NsWorld()
    w.where.update({(1, 3): CTR_NS, (2, 4): CTR_NS, (3, 5): HOST_NS})
    w.tap(1, 3, "mq0", MQ)
    second = [r for r in w.tap(2, 4, "mq0", MQ) if r["type"] == "tunsetiff"]
    third = [r for r in w.tap(3, 5, "mq0", MQ) if r["type"] == "tunsetiff"]
    assert [r["created"] for r in second + third] == [False, True]
    assert sorted(w.taps()) == [("mq0", HOST_NS, False, 1), ("mq0", CTR_NS, False, 2)]


def test_each_namesake_goes_on_its_own():
    # The container's tap0 closes: its tap_gone names it; the host's stays (the orphan).
    w = NsWorld()
    w.where.update({(1, 3): HOST_NS, (2, 3): CTR_NS})
    w.tap(1, 3, "tap0")
    w.ioctl(1, 3, ev.TUNSETPERSIST, value=1)
    w.tap(2, 3, "tap0")
    w.ioctl(2, 3, ev.TUNSETPERSIST, value=0)   # the container's: no effect on the host's
    w.close(1, 3)
    assert w.gone() == []
    out = w.close(2, 3)
    [gone] = [r for r in out if r["type"] == "tap_gone"]
    assert (gone["ifname"], gone["netns"], gone["netns_name"]) == ("tap0", CTR_NS, "ctr")
    assert w.taps() == [("tap0", HOST_NS, True, 0)]


def test_reports_carry_the_namespace_of_each_fd():
    w = NsWorld().named(helper=2, parent=1)
    w.where.update({(2, 6): CTR_NS, (1, 3): HOST_NS})
    w.tap(1, 3, "tap0")
    w.tap(2, 6, "tap0")
    sent = w.send(2, 5, [6])
    w.exit(2)
    recv = w.recv(1, 4, [7])
    assert sent[0]["netns"] == [CTR_NS]
    assert (recv[0]["ifnames"], recv[0]["netns"]) == (["tap0"], [CTR_NS])
    fork = w.fork(1, 9)
    assert dict(zip(fork[0]["fds"], fork[0]["netns"])) == {3: HOST_NS, 7: CTR_NS}
    dup = w.dup(1, 7, 8)
    assert (dup[0]["netns"], dup[0]["netns_name"]) == (CTR_NS, "ctr")
    assert {(r["fd"], r["netns"]) for r in w.m.rows() if r["pid"] == 1} == {
        (3, HOST_NS), (7, CTR_NS), (8, CTR_NS)}


def test_a_snapshot_keeps_namesakes_apart_and_a_resync_keeps_them():
    w = NsWorld()
    snap = ns_snapshot([(1, 3, "tap0", HOST_NS), (2, 6, "tap0", CTR_NS)],
                       [("tap0", HOST_NS, TAP), ("tap0", CTR_NS, TAP)])
    w.m.load(snap)
    assert sorted(w.taps()) == [("tap0", HOST_NS, False, 1), ("tap0", CTR_NS, False, 1)]
    assert w.m.netns_names == {CTR_NS: "ctr"} and w.m.own_netns == HOST_NS
    files = {(r["pid"], r["netns"]): r["file"] for r in w.m.rows()}
    assert w.m.resync(snap)["added"] == 0
    assert {(r["pid"], r["netns"]): r["file"] for r in w.m.rows()} == files
    # a namesake's file is never taken for the other's after a resync
    moved = ns_snapshot([(1, 3, "tap0", CTR_NS)], [("tap0", CTR_NS, TAP)])
    w.m.resync(moved)
    assert w.row(1, 3)["file"] != files[(1, HOST_NS)]


def test_a_namespace_that_cannot_be_told_is_taken_as_the_own_one():
    # The maker is gone and nothing else says where its tap lives: as before
    # namespaces, the tap of that name in the tracer's namespace (or the only one).
    w = NsWorld()
    w.m.load(ns_snapshot([], [("tap0", HOST_NS, TAP | ev.IFF_PERSIST)]))
    out = w.tap(1, 3, "tap0")
    assert [r["created"] for r in out if r["type"] == "tunsetiff"] == [False]
    assert w.taps() == [("tap0", HOST_NS, True, 1)]
