"""vhost-net as a specification: which tap backs which vring of which vhost fd.

libvirt opens /dev/net/tun and /dev/vhost-net (one vhost fd per queue pair) and
hands both to QEMU (`-netdev tap,fd=27,vhost=on,vhostfd=28`, or over SCM_RIGHTS
on hot-plug); QEMU calls ioctl(28, VHOST_NET_SET_BACKEND, {.index = i, .fd = 27})
for vring 0 (rx) and 1 (tx), and {.fd = -1} to detach on stop.

Kernel facts these follow (drivers/vhost/net.c, vhost_net_set_backend/get_socket):
the vring takes its own reference to the backend's file (fget; put when it is
replaced, detached, or the vhost file is released), so a tap whose fds are all
closed lives while a vhost file still uses it. Errors: ENOTSOCK (the backend is no
tap, macvtap or packet socket - a bad fd number too), EPERM (no VHOST_SET_OWNER by
this process), ENOBUFS (index > 1), EFAULT (vring not set up); the ioctl on a
non-vhost fd: ENOTTY (pipe, vhost of another kind), EINVAL (attached tun fd),
EBADFD (tun fd with no interface) - measured on this machine's 6.18 tun driver.
"""

from __future__ import annotations

import errno
import os

import pytest
from test_model import SIGCHLD, VNET, World

from tracer import events as ev
from tracer import procfs, render
from tracer.model import Model
from tracer.procfs import FdInfo, ProcInfo, Snapshot, TapInfo

VHOST = ev.VHOST_PATH


class VWorld(World):
    def vhost(self, pid, fd, *, cloexec=True, **kw):
        return self.open(pid, fd, cloexec=cloexec, path=VHOST, **kw)

    def backend(self, pid, vfd, index, bfd, *, ret=0, **kw):
        return self.apply(ev.VhostBackend, pid, fd=vfd, index=index, backend_fd=bfd,
                          ret=ret, **kw)

    def both(self, pid, vfd, bfd):
        """QEMU's vhost_net_start_one: rx then tx on the same tap."""
        return self.backend(pid, vfd, 0, bfd) + self.backend(pid, vfd, 1, bfd)

    def of(self, type_: str) -> list[dict]:
        return [r for r in self.reports if r["type"] == type_]


def libvirt_vm(w: VWorld) -> VWorld:
    """libvirtd(1): tap vnet0 at fd 27, /dev/vhost-net at 28; fork -> 2, exec qemu."""
    w.named(libvirtd=1)
    w.tap(1, 27, "vnet0", VNET, cloexec=True)
    w.vhost(1, 28)
    w.fork(1, 2)
    w.setfd(2, 27, False, "FIONCLEX")
    w.setfd(2, 28, False, "FIONCLEX")
    w.exec(2, "qemu-system-x86")
    return w


# =============================================================================
# open
# =============================================================================

def test_an_open_of_dev_vhost_net_is_a_vhost_file_with_no_backend_yet():
    w = VWorld().named(libvirtd=1)
    (rep,) = w.vhost(1, 28)
    assert rep == {"type": "open", "ts_ns": rep["ts_ns"], "pid": 1, "tid": 1,
                   "comm": "libvirtd", "fd": 28, "path": VHOST, "ifname": None,
                   "cloexec": True, "netns": None, "netns_name": None}
    row = w.row(1, 28)
    assert (row["kind"], row["ifname"], row["path"], row["backends"]) == (
        "vhost", None, VHOST, [])
    assert (row["creator_pid"], row["creator_comm"], row["how"]) == (1, "libvirtd", "opened")
    assert render.vhost_cell(row) == "→ -"


# =============================================================================
# VHOST_NET_SET_BACKEND
# =============================================================================

def test_set_backend_on_rx_and_tx_names_the_tap_behind_each_vring():
    w = libvirt_vm(VWorld())
    out = w.both(2, 28, 27)
    assert [(r["type"], r["fd"], r["index"], r["vq"], r["backend_fd"], r["ifname"], r["op"],
             r["error"]) for r in out] == [
        ("vhost_backend", 28, 0, "rx", 27, "vnet0", "attach", None),
        ("vhost_backend", 28, 1, "tx", 27, "vnet0", "attach", None)]
    assert out[0]["message"] == "vring 0 (rx) ← fd 27 (tap vnet0)"
    assert out[0]["comm"] == "qemu-system-x86" and out[0]["ret"] == 0
    row = w.row(2, 28)
    tap_file = w.row(2, 27)["file"]
    assert row["kind"] == "vhost" and row["ifname"] == "vnet0"
    assert row["backends"] == [{"index": 0, "vq": "rx", "ifname": "vnet0", "file": tap_file},
                               {"index": 1, "vq": "tx", "ifname": "vnet0", "file": tap_file}]
    assert render.vhost_cell(row) == "→ vnet0 (q0,q1)"
    # the tap's own row is unchanged
    assert (w.row(2, 27)["kind"], w.row(2, 27)["backends"]) == ("tap", [])


def test_the_table_shows_the_vhost_fd_pointing_at_its_tap():
    w = libvirt_vm(VWorld())
    w.both(2, 28, 27)
    text = render.table_text([r for r in w.m.rows() if r["pid"] == 2])
    line = next(x for x in text.splitlines() if x.split()[:3] == ["2", "qemu-system-x86", "28"])
    assert "→ vnet0 (q0,q1)" in line and " vhost " in line


def test_an_ifname_filter_keeps_the_vhost_rows_of_that_tap():
    w = libvirt_vm(VWorld())
    w.both(2, 28, 27)
    assert {(r["pid"], r["fd"]) for r in w.m.rows("vnet0")} == {(1, 27), (1, 28), (2, 27),
                                                                 (2, 28)}
    assert w.m.rows("vnet9") == []


def test_the_vhost_file_keeps_the_tap_alive_after_its_fds_close():
    w = libvirt_vm(VWorld())
    w.both(2, 28, 27)
    w.close(1, 27)
    w.close(1, 28)
    w.close(2, 27)                       # QEMU closing its tap fd: vhost still holds it
    assert w.gone() == []
    assert [t["ifname"] for t in w.m.tap_list()] == ["vnet0"]
    out = w.close(2, 28)                 # vhost_net_release puts both vrings' sockets
    assert [(r["type"], r.get("ifname"), r.get("kind")) for r in out] == [
        ("close", "vnet0", "vhost"), ("tap_gone", "vnet0", None)]


def test_detach_with_minus_one_drops_that_vring_only():
    w = libvirt_vm(VWorld())
    w.both(2, 28, 27)
    (rep,) = w.backend(2, 28, 0, -1)
    assert (rep["op"], rep["ifname"], rep["backend_fd"], rep["error"]) == (
        "detach", "vnet0", -1, None)
    assert rep["message"] == "vring 0 (rx) detached from vnet0"
    assert [b["index"] for b in w.row(2, 28)["backends"]] == [1]
    assert render.vhost_cell(w.row(2, 28)) == "→ vnet0 (q1)"
    w.backend(2, 28, 1, -1)
    row = w.row(2, 28)
    assert (row["ifname"], row["backends"]) == (None, [])
    # nothing holds vnet0 but its fds now: the last close takes it
    for pid, fd in ((1, 27), (1, 28), (2, 28)):
        w.close(pid, fd)
    assert w.gone() == []
    assert [r["type"] for r in w.close(2, 27)] == ["close", "tap_gone"]


def test_detaching_a_vring_with_no_backend_is_a_plain_detach():
    w = libvirt_vm(VWorld())
    (rep,) = w.backend(2, 28, 1, -1)
    assert (rep["op"], rep["ifname"], rep["message"]) == ("detach", None,
                                                          "vring 1 (tx) detached")


def test_a_detach_that_drops_the_last_reference_reports_tap_gone_after_it():
    w = libvirt_vm(VWorld())
    w.both(2, 28, 27)
    w.close(1, 27)
    w.close(2, 27)
    w.backend(2, 28, 0, -1)
    out = w.backend(2, 28, 1, -1)
    assert [r["type"] for r in out] == ["vhost_backend", "tap_gone"]


def test_a_new_backend_replaces_the_old_one_and_releases_it():
    w = VWorld().named(qemu=5)
    w.tap(5, 3, "tapA", VNET)
    w.tap(5, 4, "tapB", VNET)
    w.vhost(5, 6)
    w.backend(5, 6, 0, 3)
    out = w.backend(5, 6, 0, 4)
    assert out[0]["ifname"] == "tapB"
    assert w.row(5, 6)["backends"][0]["ifname"] == "tapB"
    assert [r["type"] for r in w.close(5, 3)] == ["close", "tap_gone"]    # A: nobody left
    assert [r["type"] for r in w.close(5, 4)] == ["close"]                # B: the vring


def test_setting_the_same_backend_twice_holds_it_once():
    w = VWorld().named(qemu=5)
    w.tap(5, 3, "tapA", VNET)
    w.vhost(5, 6)
    w.backend(5, 6, 0, 3)
    w.backend(5, 6, 0, 3)
    w.backend(5, 6, 0, -1)
    assert [r["type"] for r in w.close(5, 3)] == ["close", "tap_gone"]


def test_multiqueue_one_vhost_fd_per_tap_queue():
    w = VWorld().named(qemu=5)
    mq = VNET | ev.IFF_MULTI_QUEUE
    w.tap(5, 30, "vnet7", mq)
    w.tap(5, 31, "vnet7", mq)
    w.vhost(5, 32)
    w.vhost(5, 33)
    w.both(5, 32, 30)
    w.both(5, 33, 31)
    rows = {r["fd"]: r for r in w.m.rows()}
    assert rows[32]["backends"][0]["file"] == rows[30]["file"]
    assert rows[33]["backends"][0]["file"] == rows[31]["file"]
    assert rows[32]["ifname"] == rows[33]["ifname"] == "vnet7"


def test_an_untracked_backend_is_a_socket_the_model_does_not_follow():
    # AF_PACKET raw sockets are valid backends too; the model does not track them
    w = VWorld().named(qemu=5)
    w.vhost(5, 6)
    (rep,) = w.backend(5, 6, 0, 9)
    assert (rep["ifname"], rep["message"]) == (None, "vring 0 (rx) ← fd 9 (an untracked socket)")
    row = w.row(5, 6)
    assert row["backends"] == [{"index": 0, "vq": "rx", "ifname": None, "file": None}]
    assert render.vhost_cell(row) == "→ socket (q0)"
    assert [r["type"] for r in w.close(5, 6)] == ["close"]


def test_a_tap_the_model_missed_is_adopted_from_proc_as_the_backend():
    w = VWorld(probe=lambda pid, fd: "vnet4" if (pid, fd) == (5, 3) else None).named(qemu=5)
    w.vhost(5, 6)
    (rep,) = w.backend(5, 6, 0, 3)
    assert rep["ifname"] == "vnet4"
    assert w.row(5, 3)["how"] == "unknown" and w.row(5, 6)["ifname"] == "vnet4"


def test_a_set_backend_on_a_vhost_fd_the_model_missed_adopts_it():
    w = VWorld().named(qemu=5)
    w.tap(5, 3, "vnet0", VNET)
    w.backend(5, 7, 0, 3)                        # fd 7: opened by io_uring, say
    row = w.row(5, 7)
    assert (row["kind"], row["how"], row["ifname"]) == ("vhost", "unknown", "vnet0")


# =============================================================================
# failures: reported with their errno, state unchanged
# =============================================================================

@pytest.mark.parametrize("err,index,bfd,message", [
    (errno.ENOTSOCK, 0, 9, "fd 9 is not a tap, macvtap or packet socket (ENOTSOCK)"),
    (errno.EPERM, 0, 27, "fd 28 has another owner or none yet: VHOST_SET_OWNER first (EPERM)"),
    (errno.ENOBUFS, 2, 27, "no vring 2: vhost-net has 0 (rx) and 1 (tx) (ENOBUFS)"),
    (errno.EFAULT, 1, 27, "vring 1 is not set up, or a bad pointer (EFAULT)"),
    (errno.ENOMEM, 0, 27, "VHOST_NET_SET_BACKEND on fd 28 failed (ENOMEM)"),
])
def test_a_failing_set_backend_is_reported_and_changes_nothing(err, index, bfd, message):
    w = libvirt_vm(VWorld())
    if index != 1:
        w.backend(2, 28, 1, 27)              # a vring already in use stays as it was
    before = w.m.rows()
    (rep,) = w.backend(2, 28, index, bfd, ret=-err)
    assert (rep["type"], rep["ret"], rep["error"], rep["message"]) == (
        "vhost_backend", -err, errno.errorcode[err], message)
    assert rep["vq"] == ev.VHOST_VQ_NAMES.get(index)
    assert rep["ifname"] == ("vnet0" if bfd == 27 else None)   # what it was asked to use
    assert w.m.rows() == before


def test_ebadf_on_the_vhost_fd_means_the_model_missed_its_close():
    w = libvirt_vm(VWorld())
    (rep,) = w.backend(2, 28, 0, 27, ret=-errno.EBADF)
    assert rep["message"] == "fd 28 is not open (EBADF)"
    assert (2, 28) not in w.table() and (1, 28) in w.table()


def test_enotty_a_pipe_is_not_a_vhost_fd():
    w = VWorld().named(qemu=5)
    (rep,) = w.backend(5, 4, 0, -1, ret=-errno.ENOTTY)
    assert (rep["op"], rep["error"], rep["message"]) == (
        "detach", "ENOTTY", "fd 4 is not a vhost-net fd (ENOTTY)")
    assert w.table() == {}


def test_enotty_on_what_the_model_had_as_vhost_proves_it_was_closed_unseen():
    w = VWorld().named(qemu=5)
    w.vhost(5, 6)
    w.backend(5, 6, 0, -1, ret=-errno.ENOTTY)
    assert w.table() == {}


@pytest.mark.parametrize("err,setiff,message", [
    (errno.EINVAL, True, "fd 3 is a tap fd (vnet0), not vhost-net (EINVAL)"),
    (errno.EBADFD, False, "fd 3 is a tun fd, not vhost-net (EBADFD)"),
])
def test_set_backend_on_a_tun_fd_says_so_and_keeps_the_tun_fd(err, setiff, message):
    # what this machine's tun driver answers: EINVAL attached, EBADFD not yet
    w = VWorld().named(qemu=5)
    w.open(5, 3)
    if setiff:
        w.setiff(5, 3, "vnet0", VNET)
    (rep,) = w.backend(5, 3, 1, 3, ret=-err)
    assert rep["message"] == message
    assert (5, 3) in w.table() and w.row(5, 3)["kind"] == ("tap" if setiff else "tun")


def test_success_on_what_the_model_had_as_a_tap_fd_makes_it_a_vhost_fd():
    w = VWorld().named(qemu=5)
    w.tap(5, 3, "vnet0", VNET)
    w.tap(5, 4, "vnet1", VNET)
    w.backend(5, 3, 0, 4)                        # only vhost-net succeeds at this ioctl
    assert w.row(5, 3)["kind"] == "vhost" and w.row(5, 3)["ifname"] == "vnet1"
    assert w.gone() == ["vnet0"]                 # its tap file went unseen


def test_tun_ioctls_on_a_vhost_fd_fail_with_enotty_and_leave_it_alone():
    w = VWorld().named(qemu=5)
    w.vhost(5, 6)
    (rep,) = w.ioctl(5, 6, ev.TUNGETIFF, ret=-errno.ENOTTY)
    assert rep["message"] == "fd 6 is not a tap (ENOTTY)"
    assert w.row(5, 6)["kind"] == "vhost"
    # but a tun ioctl that works proves fd 6 is a tun fd now
    w.setiff(5, 6, "vnet2", VNET)
    assert (w.row(5, 6)["kind"], w.row(5, 6)["ifname"]) == ("tap", "vnet2")


# =============================================================================
# a vhost fd moves like a tap fd
# =============================================================================

def test_fork_and_exec_carry_the_vhost_fd_and_say_which_fds_are_vhost():
    w = libvirt_vm(VWorld())
    fork = w.of("fork")[0]
    assert (fork["fds"], fork["ifnames"], fork["vhost_fds"]) == ([27, 28], ["vnet0", None], [28])
    exe = w.of("exec")[0]
    assert (exe["kept"], exe["closed"], exe["vhost_fds"]) == ([27, 28], [], [28])
    row = w.row(2, 28)
    assert (row["how"], row["from_pid"], row["from_fd"], row["cloexec"]) == (
        "inherited", 1, 28, False)
    assert row["shared_with"] == [[1, 28]]
    assert "vhost fds 28" in render.describe(fork)[2]


def test_a_close_on_exec_vhost_fd_goes_at_exec():
    w = VWorld().named(libvirtd=1)
    w.tap(1, 27, "vnet0", VNET)
    w.vhost(1, 28, cloexec=True)
    w.fork(1, 2)
    w.exec(2, "qemu-system-x86")
    exe = w.of("exec")[0]
    assert (exe["kept"], exe["closed"]) == ([27], [28])
    assert "vhost_fds" not in exe
    assert (2, 28) not in w.table()


def test_a_vhost_fd_and_its_tap_hot_plugged_over_scm_rights():
    # `virsh attach-interface`: libvirtd sends tap + vhost fds on the QMP socket
    w = VWorld().named(libvirtd=1, qemu=2)
    w.apply(ev.Fork, 1, child=2, flags=SIGCHLD)
    w.tap(1, 30, "vnet1", VNET, cloexec=True)
    w.vhost(1, 31)
    (send,) = w.send(1, 9, [30, 31])
    assert (send["fds"], send["ifnames"], send["vhost_fds"]) == ([30, 31], ["vnet1", None], [31])
    w.close(1, 30)
    w.close(1, 31)
    (recv,) = w.recv(2, 4, [40, 41], cloexec=True)
    assert (recv["fds"], recv["from_fds"], recv["vhost_fds"]) == ([40, 41], [30, 31], [41])
    w.both(2, 41, 40)
    row = w.row(2, 41)
    assert (row["kind"], row["how"], row["from_pid"], row["from_fd"], row["ifname"]) == (
        "vhost", "received", 1, 31, "vnet1")
    assert w.m.chain(w.m.procs[2].table.fds[41].file)[-1]["op"] == "recv"


def test_the_receive_matches_with_a_proc_probe_that_sees_vhost_fds_as_no_tap():
    # session.fd_ifname answers "" for a vhost fd (an fd the tracer follows, no iff:)
    names = {(2, 40): "vnet1", (2, 41): ""}
    w = VWorld(probe=lambda pid, fd: names.get((pid, fd))).named(libvirtd=1, qemu=2)
    w.tap(1, 30, "vnet1", VNET)
    w.vhost(1, 31)
    w.send(1, 9, [30, 31])
    (recv,) = w.recv(2, 4, [40, 41])
    assert recv["ifnames"] == ["vnet1", None]
    assert w.row(2, 41)["kind"] == "vhost"


def test_dup_and_cloexec_reports_on_a_vhost_fd_carry_kind_vhost():
    w = libvirt_vm(VWorld())
    w.both(2, 28, 27)
    (dup,) = w.dup(2, 28, 50, "F_DUPFD_CLOEXEC", cloexec=True)
    assert (dup["kind"], dup["ifname"]) == ("vhost", "vnet0")
    (clx,) = w.setfd(2, 50, False)
    assert clx["kind"] == "vhost"
    (close,) = w.close(2, 50)
    assert (close["kind"], close["ifname"]) == ("vhost", "vnet0")
    assert render.describe(close)[2] == "closed vhost fd"
    (tap_close,) = w.close(1, 27)
    assert "kind" not in tap_close               # tap fds' reports are as they were


def test_qemu_exit_closes_tap_then_vhost_and_the_tap_goes_last():
    w = libvirt_vm(VWorld())
    w.close(1, 27)
    w.close(1, 28)
    w.both(2, 28, 27)
    out = w.exit(2)
    assert [r["type"] for r in out] == ["exit", "tap_gone"]
    assert (out[0]["closed"], out[0]["ifnames"], out[0]["vhost_fds"]) == (
        [27, 28], ["vnet0", "vnet0"], [28])
    assert w.m.files == {}


def test_the_tap_lineage_shows_the_vring_that_uses_it():
    w = libvirt_vm(VWorld())
    w.both(2, 28, 27)
    (item,) = [x for x in w.m.lineage("vnet0")]
    ops = [(s["op"], s["pid"], s["fd"]) for s in item["steps"]]
    assert ops[-2:] == [("vhost", 2, 27), ("vhost", 2, 27)]
    assert item["steps"][-1]["vhost_fd"] == 28 and item["steps"][-1]["index"] == 1


# =============================================================================
# snapshots: /proc shows the vhost fds, not their backends
# =============================================================================

def vsnap(fds: list[tuple[int, int, str, str | None]], taps: tuple[str, ...] = ("vnet0",),
          files: list | None = None) -> Snapshot:
    """fds: (pid, fd, path, ifname)."""
    return Snapshot(
        procs={pid: ProcInfo(pid, 1, "qemu", ("qemu",), 0) for pid, *_ in fds},
        fds=[FdInfo(pid, fd, path, name, False, 0o2) for pid, fd, path, name in fds],
        taps={n: TapInfo(n, 10 + i, "tap", VNET, False, False, True, None, None, None)
              for i, n in enumerate(taps)},
        files=files if files is not None else [[(pid, fd)] for pid, fd, _, _ in fds],
        tables=[[pid] for pid in {pid for pid, *_ in fds}])


def test_a_snapshot_vhost_fd_is_a_vhost_row_with_no_known_backend():
    m = Model()
    m.load(vsnap([(2, 27, "/dev/net/tun", "vnet0"), (2, 28, VHOST, None)]))
    rows = {r["fd"]: r for r in m.rows()}
    assert (rows[28]["kind"], rows[28]["ifname"], rows[28]["how"], rows[28]["backends"]) == (
        "vhost", None, "snapshot", [])


def test_a_resync_keeps_the_backends_the_trace_saw():
    w = libvirt_vm(VWorld())
    w.both(2, 28, 27)
    w.close(1, 27)
    w.close(1, 28)
    rep = w.m.resync(vsnap([(2, 27, "/dev/net/tun", "vnet0"), (2, 28, VHOST, None)]))
    assert (rep["added"], rep["removed"]) == (0, 0)
    assert w.row(2, 28)["backends"][0]["file"] == w.row(2, 27)["file"]
    assert [r["type"] for r in w.close(2, 27)] == ["close"]      # the vrings still hold it
    assert [r["type"] for r in w.close(2, 28)] == ["close", "tap_gone"]


def test_a_resync_keeps_a_tap_only_a_vhost_file_holds():
    w = libvirt_vm(VWorld())
    w.both(2, 28, 27)
    for pid, fd in ((1, 27), (1, 28)):
        w.close(pid, fd)
    # QEMU closed its tap fd while records were lost: /proc shows only the vhost fd
    w.m.resync(vsnap([(2, 28, VHOST, None)]))
    assert w.row(2, 28)["ifname"] == "vnet0"
    assert [r["type"] for r in w.close(2, 28)] == ["close", "tap_gone"]


def test_a_resync_forgets_a_backend_whose_tap_is_gone():
    w = libvirt_vm(VWorld())
    w.both(2, 28, 27)
    w.m.resync(vsnap([(2, 28, VHOST, None)], taps=()))
    assert w.row(2, 28)["backends"] == [] and w.row(2, 28)["ifname"] is None


# =============================================================================
# /proc and the replay form
# =============================================================================

def test_dev_vhost_net_is_a_path_the_snapshot_follows():
    assert procfs._is_tun_path(VHOST)
    for other in ("/dev/vhost-vsock", "/dev/vhost-net2", "/dev/vhost-vdpa-0", "/dev/vhost"):
        assert not procfs._is_tun_path(other)


def test_the_snapshot_scan_reports_a_dev_vhost_net_fd(monkeypatch):
    # The device is absent on this kernel: only the link text is faked, the scan is real.
    r, wfd = os.pipe()
    real = os.readlink

    def readlink(path, *, dir_fd=None):
        if dir_fd is not None and path == str(r):
            return VHOST
        return real(path, dir_fd=dir_fd)

    monkeypatch.setattr(procfs.os, "readlink", readlink)
    try:
        (info,) = procfs.tun_fds(os.getpid())
        assert (info.fd, info.path, info.ifname) == (r, VHOST, None)
    finally:
        os.close(r)
        os.close(wfd)


def test_a_vhost_record_survives_the_replay_form():
    rec = ev.VhostBackend(ts=1, pid=2, tid=3, comm="qemu", fd=28, index=1, backend_fd=-1,
                          ret=-errno.EFAULT)
    assert ev.from_record(ev.to_record(rec)) == rec


def test_the_human_line_of_a_set_backend():
    w = libvirt_vm(VWorld())
    (rep,) = w.backend(2, 28, 0, 27)
    line = render.event_line(rep, 0)
    assert "vhost_backend" in line and "vnet0" in line
    assert line.endswith("vring 0 (rx) ← fd 27 (tap vnet0)")
