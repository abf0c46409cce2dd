"""tracer.procfs against the kernel: the snapshot the live table starts from.

Each test builds a sharing pattern with real syscalls (fork, dup, CLONE_FILES,
exec, TUNSETIFF on a multi-queue tap, macvtap), takes a snapshot of the
processes involved and checks it against /proc fdinfo read by tapkit.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import tapkit
from conftest import need_root

from tracer import procfs

MQ = tapkit.IFF_TAP | tapkit.IFF_NO_PI | tapkit.IFF_MULTI_QUEUE


@pytest.fixture(autouse=True)
def _root():
    need_root()


@pytest.fixture
def kit():
    """Open fds and made links, closed and deleted whatever the test does."""
    class Kit:
        def __init__(self) -> None:
            self.fds: list[int] = []
            self.links: list[str] = []

        def tap(self, name: str | None = None, flags: int = tapkit.IFF_TAP | tapkit.IFF_NO_PI,
                cloexec: bool = True) -> tuple[int, str]:
            fd, got = tapkit.create_tap(name or tapkit.unique_name(), flags, cloexec)
            self.fds.append(fd)
            self.links.append(got)
            return fd, got

        def own(self, fd: int) -> int:
            self.fds.append(fd)
            return fd

    k = Kit()
    try:
        yield k
    finally:
        for fd in k.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        for name in k.links:
            tapkit.delete_link(name)


def triples(snap: procfs.Snapshot, pids) -> set[tuple[int, int, str]]:
    """The snapshot as tapkit.truth() states it: attached /dev/net/tun fds."""
    return {(f.pid, f.fd, f.ifname) for f in snap.fds
            if f.pid in set(pids) and f.ifname and f.path == procfs.TUN_PATH}


def groups(snap: procfs.Snapshot) -> list[list[tuple[int, int]]]:
    return sorted(sorted(g) for g in snap.files)


def by_fd(snap: procfs.Snapshot, pid: int, fd: int) -> procfs.FdInfo:
    (info,) = [f for f in snap.fds if (f.pid, f.fd) == (pid, fd)]
    return info


def assert_consistent(snap: procfs.Snapshot) -> None:
    """Every fd in exactly one file group, every pid in exactly one table."""
    keys = [(f.pid, f.fd) for f in snap.fds]
    grouped = [k for g in snap.files for k in g]
    assert sorted(grouped) == sorted(keys) and len(set(keys)) == len(keys)
    tabled = [p for t in snap.tables for p in t]
    assert sorted(tabled) == sorted([*snap.procs, *snap.threads])
    for g in snap.files:
        assert len({by_fd(snap, *k).ifname for k in g}) == 1


# ---- one process -------------------------------------------------------------

def test_a_dup_is_one_file_and_a_second_queue_is_another(kit):
    me = os.getpid()
    q1, name = kit.tap(flags=MQ)
    q2 = kit.own(tapkit.open_tun())
    assert tapkit.set_iff(q2, name, MQ) == name            # second TUNSETIFF: a new queue
    q1dup = kit.own(os.dup(q1))

    snap = procfs.snapshot([me])

    assert triples(snap, [me]) == tapkit.truth([me]) == {
        (me, q1, name), (me, q2, name), (me, q1dup, name)}
    mine = [g for g in groups(snap) if by_fd(snap, *g[0]).ifname == name]
    assert mine == sorted([sorted([(me, q1), (me, q1dup)]), [(me, q2)]])
    assert snap.tables == [[me]]
    assert (snap.procs[me].ppid, snap.procs[me].uid) == (os.getppid(), os.getuid())
    assert_consistent(snap)


def test_taps_come_from_sysfs_with_their_flags(kit):
    _, name = kit.tap(flags=MQ | tapkit.IFF_VNET_HDR)
    _, tun = kit.tap(flags=tapkit.IFF_TUN | tapkit.IFF_NO_PI)
    sysfs = Path("/sys/class/net", name)

    taps = procfs.snapshot([os.getpid()]).taps

    tap = taps[name]
    assert (tap.kind, tap.multi_queue, tap.vnet_hdr, tap.persist) == ("tap", True, True, False)
    assert tap.tun_flags & 0xFFFF == MQ | tapkit.IFF_VNET_HDR
    assert tap.ifindex == int((sysfs / "ifindex").read_text())
    assert tap.owner is None and tap.group is None
    assert tap.mac == (sysfs / "address").read_text().strip()
    assert (taps[tun].kind, taps[tun].mac, taps[tun].multi_queue) == ("tun", None, False)


def test_the_cloexec_bit_is_per_fd(kit):
    me = os.getpid()
    a, _ = kit.tap(cloexec=True)
    b, _ = kit.tap(cloexec=False)
    a_inh = kit.own(os.dup2(a, 1000 + a, inheritable=True))   # same file, no cloexec

    snap = procfs.snapshot([me])

    assert by_fd(snap, me, a).cloexec is True
    assert by_fd(snap, me, b).cloexec is False
    assert by_fd(snap, me, a_inh).cloexec is False
    for fd in (a, b, a_inh):
        info = by_fd(snap, me, fd)
        assert info.cloexec == tapkit.cloexec_of(me, fd)
        assert info.flags & 0o3 == os.O_RDWR
        assert bool(info.flags & procfs.O_CLOEXEC) == info.cloexec
    assert sorted([(me, a), (me, a_inh)]) in groups(snap)


def test_an_unattached_tun_fd_has_no_interface(kit):
    me = os.getpid()
    bare = kit.own(tapkit.open_tun())
    snap = procfs.snapshot([me])
    info = by_fd(snap, me, bare)
    assert (info.path, info.ifname) == ("/dev/net/tun", None)
    assert tapkit.fdinfo_iff(me, bare) is None
    assert [(me, bare)] in groups(snap)
    with pytest.raises(OSError):
        tapkit.get_iff(bare)                               # EBADFD before TUNSETIFF


def test_a_template_name_and_a_name_with_control_characters(kit):
    me = os.getpid()
    prefix = tapkit.unique_name("t")
    fd, got = kit.tap(prefix + "%d")
    assert got.startswith(prefix) and got != prefix + "%d" and tapkit.get_iff(fd) == got
    weird = "t\x1b[1m\x1c" + tapkit.unique_name("")[:5]
    wfd, wgot = kit.tap(weird)
    assert wgot == weird

    snap = procfs.snapshot([me])

    assert by_fd(snap, me, fd).ifname == got
    assert by_fd(snap, me, wfd).ifname == weird == tapkit.fdinfo_iff(me, wfd)
    assert weird in snap.taps and got in snap.taps


def test_a_persistent_tap_with_no_holder_is_in_taps_only(kit):
    fd, name = kit.tap()
    tapkit.set_persist(fd, True)
    kit.fds.remove(fd)
    os.close(fd)

    snap = procfs.snapshot()

    assert snap.taps[name].persist is True
    assert snap.taps[name].tun_flags & tapkit.IFF_PERSIST
    assert not [f for f in snap.fds if f.ifname == name]


def test_a_detached_queue_matches_the_kernel(kit):
    me = os.getpid()
    _, name = kit.tap(flags=MQ)
    q2 = kit.own(tapkit.open_tun())
    tapkit.set_iff(q2, name, MQ)
    tapkit.set_queue(q2, attach=False)

    snap = procfs.snapshot([me])

    assert by_fd(snap, me, q2).ifname == tapkit.fdinfo_iff(me, q2)
    assert triples(snap, [me]) == tapkit.truth([me])
    assert_consistent(snap)


# ---- several processes -------------------------------------------------------

def test_a_forked_copy_is_the_same_file_in_another_table(kit):
    me = os.getpid()
    fd, name = kit.tap()
    other = kit.own(tapkit.open_tun())
    with tapkit.held_by_child() as child:
        assert procfs.same_file(me, fd, child, fd) is True
        assert procfs.same_fd_table(me, child) is False
        assert procfs.same_file(me, fd, me, other) is False

        snap = procfs.snapshot([me, child])

        assert triples(snap, [me, child]) == tapkit.truth([me, child])
        assert (child, fd, name) in triples(snap, [child])
        assert sorted([(me, fd), (child, fd)]) in groups(snap)
        assert sorted([(me, other), (child, other)]) in groups(snap)
        assert sorted(sorted(t) for t in snap.tables) == sorted([[me], [child]])
        assert snap.procs[child].ppid == me
        assert snap.procs[child].uid == os.getuid()
        assert_consistent(snap)


def test_clone_files_shares_one_table(kit):
    me = os.getpid()
    fd, _ = kit.tap()
    with tapkit.held_by_child(share_table=True) as child:
        late, late_name = kit.tap()                 # opened after the clone: child sees it
        assert procfs.same_fd_table(me, child) is True

        snap = procfs.snapshot([me, child])

        assert (child, late, late_name) in tapkit.truth([child])
        assert triples(snap, [me, child]) == tapkit.truth([me, child])
        assert sorted(sorted(t) for t in snap.tables) == [sorted([me, child])]
        assert sorted([(me, fd), (child, fd)]) in groups(snap)
        assert sorted([(me, late), (child, late)]) in groups(snap)
        assert_consistent(snap)


def test_threads_with_a_table_of_their_own_are_listed_under_a_tid(kit):
    """Thread T unshares its fd table (a copy: the tap at fd is in both), makes a tap
    there and starts thread U, which uses T's table; another thread keeps the
    process's. The snapshot lists T's table once, under T (kcmp KCMP_FILES against
    the leader, then against T for U), groups U with T, and knows fd in both tables
    as one open file."""
    import ctypes
    import threading

    me = os.getpid()
    fd, name = kit.tap()
    libc = ctypes.CDLL(None, use_errno=True)
    ready, done = threading.Event(), threading.Event()
    got: dict = {}

    def inner() -> None:
        got["u"] = threading.get_native_id()
        ready.set()
        done.wait(30)

    def own() -> None:
        got["t"] = threading.get_native_id()
        assert libc.unshare(0x400) == 0                  # CLONE_FILES
        got["fd"], got["name"] = tapkit.create_tap(tapkit.unique_name())
        u = threading.Thread(target=inner)
        u.start()
        u.join()
        os.close(got["fd"])

    def bystander() -> None:
        done.wait(30)

    workers = [threading.Thread(target=f) for f in (bystander, own)]
    for w in workers:
        w.start()
    try:
        assert ready.wait(30)
        kit.links.append(got["name"])
        t, u = got["t"], got["u"]
        assert procfs.own_tables(me) == [sorted([t, u])]
        snap = procfs.snapshot([me])
        assert snap.threads == {t: me, u: me}
        first = min(t, u)                                 # listed under the lowest tid
        assert triples(snap, [first]) == {(first, got["fd"], got["name"]),
                                          (first, fd, name)}
        assert not [f for f in snap.fds if f.pid == max(t, u)]
        assert sorted([(me, fd), (first, fd)]) in groups(snap)
        assert sorted(sorted(x) for x in snap.tables) == sorted([[me], sorted([t, u])])
        assert snap.read_ns[t] == snap.read_ns[u] >= snap.read_ns[me]
        assert_consistent(snap)
    finally:
        done.set()
        for w in workers:
            w.join()


def test_exec_keeps_only_inheritable_fds(kit):
    me = os.getpid()
    keep, keep_name = kit.tap(cloexec=False)
    drop, _ = kit.tap(cloexec=True)
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE, close_fds=False)
    try:
        snap = procfs.snapshot([me, child.pid])
        assert triples(snap, [child.pid]) == tapkit.truth([child.pid]) == \
            {(child.pid, keep, keep_name)}
        assert by_fd(snap, child.pid, keep).cloexec is False
        assert sorted([(me, keep), (child.pid, keep)]) in groups(snap)
        assert [(me, drop)] in groups(snap)
        assert snap.procs[child.pid].cmdline[:2] == (sys.executable, "-c")
        assert snap.procs[child.pid].comm == os.path.basename(sys.executable)[:15]
    finally:
        child.communicate(b"")


def test_an_fd_passed_over_a_socket_is_the_same_file(kit):
    import socket

    me = os.getpid()
    fd, name = kit.tap()
    a, b = socket.socketpair()
    try:
        tapkit.send_fds(a, [fd])
        (got,) = tapkit.recv_fds(b, 1)
        kit.own(got)
    finally:
        a.close()
        b.close()
    snap = procfs.snapshot([me])
    assert by_fd(snap, me, got).ifname == name
    assert sorted([(me, fd), (me, got)]) in groups(snap)


def test_a_full_scan_finds_ours_among_everything(kit):
    me = os.getpid()
    fd, _ = kit.tap()
    bare = kit.own(tapkit.open_tun())
    with tapkit.held_by_child() as child:
        snap = procfs.snapshot()
        assert triples(snap, [me, child]) == tapkit.truth([me, child])
        assert {(me, bare), (child, bare)} <= {(f.pid, f.fd) for f in snap.fds}
        assert sorted([(me, fd), (child, fd)]) in groups(snap)
        assert_consistent(snap)


def test_a_scan_split_across_processes_is_the_serial_scan(kit, monkeypatch):
    """`taptrace ls` scans /proc in forked helpers: the same fds, files and tables."""
    me = os.getpid()
    fd, name = kit.tap()
    bare = kit.own(tapkit.open_tun())
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)                             # a pid that has gone
    monkeypatch.setattr(procfs, "_PIDS_PER_WORKER", 1)
    with tapkit.held_by_child() as child:
        pids = [child, pid, *[p for p in procfs._pids() if p not in (me, child)], me]
        split = procfs.snapshot(pids, workers=3)
        serial = procfs.snapshot(pids)

        assert triples(split, [me, child]) == tapkit.truth([me, child])
        assert (child, fd, name) in triples(split, [child])
        assert {(me, bare), (child, bare)} <= {(f.pid, f.fd) for f in split.fds}
        assert sorted([(me, fd), (child, fd)]) in groups(split)
        mine = [f for f in split.fds if f.pid in (me, child)]
        assert mine == [f for f in serial.fds if f.pid in (me, child)]   # same order too
        assert mine[0].pid == child                      # pids order: child first
        assert_consistent(split)


def test_a_comm_with_parentheses_and_spaces():
    child = subprocess.Popen(
        [sys.executable, "-c",
         "open('/proc/self/comm', 'w').write('a) (b ) c'); print(flush=True); input()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        child.stdout.readline()
        info = procfs.proc_info(child.pid)
        assert info is not None
        assert (info.comm, info.ppid) == ("a) (b ) c", os.getpid())
        assert info.cmdline[1:3] == ("-c", child.args[2])
    finally:
        child.communicate(b"\n")


# ---- macvtap -----------------------------------------------------------------

def test_a_macvtap_fd_is_named_by_its_ifindex():
    me = os.getpid()
    name = tapkit.unique_name("mv")
    try:
        node = tapkit.add_macvtap(name)
    except (OSError, subprocess.CalledProcessError) as e:
        pytest.skip(f"no macvtap here: {e}")
    try:
        fd = os.open(node, os.O_RDWR | os.O_CLOEXEC)
        try:
            snap = procfs.snapshot([me])
            info = by_fd(snap, me, fd)
            assert (info.path, info.ifname, info.cloexec) == (node, name, True)
            assert procfs.read_fdinfo(me, fd) == info
            assert [(me, fd)] in groups(snap)
            assert name not in snap.taps                # macvtap has no tun_flags
        finally:
            os.close(fd)
    finally:
        tapkit.delete_macvtap(name)


# ---- going away --------------------------------------------------------------

def test_pipes_and_gone_processes_are_not_tun_fds():
    r, w = os.pipe()
    try:
        assert procfs.read_fdinfo(os.getpid(), r) is None
        assert procfs.read_fdinfo(2**22 + 7, 3) is None
        assert procfs.tun_fds(2**22 + 7) == []
        assert procfs.proc_info(2**22 + 7) is None
    finally:
        os.close(r)
        os.close(w)
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    snap = procfs.snapshot([pid])
    assert (snap.procs, snap.fds, snap.files, snap.tables) == ({}, [], [], [])


def test_an_fd_closed_after_the_scan_still_gets_a_group(kit, monkeypatch):
    """A fd that went after it was read keeps the file it was then: the scan compares
    (kcmp) a process's fds as soon as it lists them, not at its end."""
    me = os.getpid()
    fd, _ = kit.tap()
    dup = kit.own(os.dup(fd))
    gone = kit.own(os.dup(fd))
    real = procfs._tun_fds

    def scan_then_close(pid, taps, listed=None):
        out = real(pid, taps, listed)
        if pid == me:
            os.close(gone)
            kit.fds.remove(gone)
        return out

    monkeypatch.setattr(procfs, "_tun_fds", scan_then_close)
    snap = procfs.snapshot([me])
    assert sorted([(me, fd), (me, dup), (me, gone)]) in groups(snap)
    assert_consistent(snap)


def test_alive_is_false_for_a_zombie_and_a_gone_pid():
    """The session applies an exit stamped before a resync's snapshot when the process
    is no longer alive (the snapshot may have listed its fds while it was exiting)."""
    child = os.fork()
    if child == 0:
        os._exit(0)
    deadline = time.monotonic() + 10
    while procfs.alive(child) and time.monotonic() < deadline:
        time.sleep(0.01)                          # exiting, then a zombie: not alive
    assert not procfs.alive(child)
    assert os.path.exists(f"/proc/{child}")       # still there, as a zombie
    os.waitpid(child, 0)
    assert not procfs.alive(child)
    assert procfs.alive(os.getpid())
