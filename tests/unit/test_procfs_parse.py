"""Parsing what /proc and /sys say (pure; the real-kernel side is in integration)."""

from __future__ import annotations

import os
import struct

import pytest

from tracer import procfs

# Verbatim from this machine's kernel (6.18): an attached tap, a tun fd with no
# interface yet, a macvtap (/dev/tapN: no iff line) and a pipe.
FDINFO_TAP = "pos:\t0\nflags:\t02100002\nmnt_id:\t24\nino:\t105\niff:\tvnet1\n"
FDINFO_UNATTACHED = "pos:\t0\nflags:\t0100002\nmnt_id:\t24\nino:\t105\niff:\t\n"
FDINFO_MACVTAP = "pos:\t0\nflags:\t02100002\nmnt_id:\t24\nino:\t115\n"
FDINFO_PIPE = "pos:\t0\nflags:\t00\nmnt_id:\t15\nino:\t52343\n"


def test_fdinfo_of_an_attached_tap():
    flags, name = procfs.parse_fdinfo(FDINFO_TAP)
    assert name == "vnet1"
    assert flags == 0o2100002                      # O_CLOEXEC | O_LARGEFILE | O_RDWR
    assert flags & procfs.O_CLOEXEC and flags & 0o3 == 2


def test_fdinfo_of_a_tun_fd_with_no_interface_a_macvtap_and_a_pipe():
    assert procfs.parse_fdinfo(FDINFO_UNATTACHED) == (0o100002, None)
    assert procfs.parse_fdinfo(FDINFO_MACVTAP) == (0o2100002, None)
    assert procfs.parse_fdinfo(FDINFO_PIPE) == (0, None)
    assert procfs.parse_fdinfo("") == (0, None)


@pytest.mark.parametrize("name", [
    "t\x1b[0mx",                 # an ANSI escape
    "a\x1cb\x1dc\x1ed\x85e",     # characters str.splitlines() would break the line at
    "\x01\x7f",
    "t\udcff\udcfe",             # bytes that are not UTF-8, kept by surrogateescape
    "flags:x",                   # not a valid ifname (":"), but must not be read as flags
])
def test_fdinfo_keeps_every_byte_of_a_name(name):
    flags, got = procfs.parse_fdinfo(f"pos:\t0\nflags:\t02\nmnt_id:\t24\nino:\t1\niff:\t{name}\n")
    assert got == name
    assert flags == 0o2


def test_fdinfo_without_a_final_newline():
    assert procfs.parse_fdinfo("flags:\t0100002") == (0o100002, None)
    assert procfs.parse_fdinfo("flags:\t02\niff:\ttap0") == (2, "tap0")


def test_tun_paths():
    assert procfs._is_tun_path("/dev/net/tun")
    assert procfs._is_tun_path("/dev/tap12")
    assert not procfs._is_tun_path("/dev/tap")
    assert not procfs._is_tun_path("/dev/net/tunnel")
    assert not procfs._is_tun_path("/dev/tapx1")
    assert not procfs._is_tun_path("/dev/tap12 (deleted)")
    assert not procfs._is_tun_path("/tmp/dev/tap12")


# ---- /sys/class/net ---------------------------------------------------------

def _netdev(root, name: str, **files: str) -> None:
    d = root / name
    d.mkdir()
    for k, v in files.items():
        (d / k).write_text(v)


def test_list_taps_reads_every_field(tmp_path, monkeypatch):
    # A multi-queue vnet_hdr tap owned by uid 107, a persistent tun (no MAC),
    # and devices that are not tun/tap (no tun_flags) which must be left out.
    _netdev(tmp_path, "vnet3", tun_flags="0x5102\n", ifindex="12\n", owner="107\n",
            group="-1\n", address="fe:54:00:12:34:56\n")
    _netdev(tmp_path, "tun9", tun_flags="0x1801\n", ifindex="13\n", owner="-1\n",
            group="36\n", address="\n")
    _netdev(tmp_path, "eth0", ifindex="2\n", address="52:54:00:00:00:01\n")
    _netdev(tmp_path, "mvtap0", ifindex="14\n", address="52:54:00:00:00:02\n")
    monkeypatch.setattr(procfs, "SYS_NET", str(tmp_path))

    taps = procfs.list_taps()

    assert taps == {
        "vnet3": procfs.TapInfo("vnet3", 12, "tap", 0x5102, persist=False, multi_queue=True,
                                vnet_hdr=True, owner=107, group=None,
                                mac="fe:54:00:12:34:56"),
        "tun9": procfs.TapInfo("tun9", 13, "tun", 0x1801, persist=True, multi_queue=False,
                               vnet_hdr=False, owner=None, group=36, mac=None),
    }
    assert procfs._ifindex_names() == {12: "vnet3", 13: "tun9", 2: "eth0", 14: "mvtap0"}


def test_list_taps_of_a_missing_sysfs_is_empty(tmp_path, monkeypatch):
    monkeypatch.setattr(procfs, "SYS_NET", str(tmp_path / "absent"))
    assert procfs.list_taps() == {}


# ---- grouping by kcmp's order ------------------------------------------------

def _kcmp_like(identity: dict, gone: set = frozenset()):
    """An order(a, b) that answers as kcmp does about objects identity[x]."""
    calls = []

    def order(a, b):
        calls.append((a, b))
        if a in gone or b in gone:
            return -1
        x, y = identity[a], identity[b]
        return 0 if x == y else 1 if x < y else 2
    return order, calls


def _canon(groups):
    return sorted(sorted(g) for g in groups)


def test_classes_partition_by_identity():
    identity = {"a": 5, "b": 1, "c": 5, "d": 3, "e": 1, "f": 9}
    order, _ = _kcmp_like(identity)
    assert _canon(procfs._classes(list("abcdef"), order)) == [["a", "c"], ["b", "e"], ["d"], ["f"]]


def test_classes_cost_is_logarithmic_not_quadratic():
    n = 4096
    order, calls = _kcmp_like({i: (i * 7919) % n for i in range(n)})    # all distinct
    assert len(procfs._classes(range(n), order)) == n
    assert len(calls) < n * 16            # pairwise would be ~ n*n/2 = 8M

    order, calls = _kcmp_like({i: i // 100 for i in range(n)})          # runs of copies
    groups = procfs._classes(range(n), order)
    assert len(groups) == (n + 99) // 100 and len(calls) < 2 * n


def test_classes_put_an_item_that_has_gone_in_a_class_of_its_own():
    order, _ = _kcmp_like({"a": 1, "b": 1, "c": 2, "x": 1, "d": 1}, gone={"x"})
    assert _canon(procfs._classes(["x", "c", "a", "b", "d"], order)) == \
        [["a", "b", "d"], ["c"], ["x"]]


def test_classes_replace_a_representative_that_goes_mid_scan():
    identity = {"a": 1, "b": 1, "c": 2, "d": 1}
    gone: set = set()

    def order(p, q):
        if q == "d":
            gone.add("a")          # a's process exits after a, b and c were placed
        if p in gone or q in gone:
            return -1
        x, y = identity[p], identity[q]
        return 0 if x == y else 1 if x < y else 2

    assert _canon(procfs._classes(["a", "b", "c", "d"], order)) == [["a", "b", "d"], ["c"]]


def test_group_files_falls_back_to_one_file_per_fd_without_kcmp(monkeypatch):
    monkeypatch.setattr(procfs, "_syscall", lambda *a: -1)
    assert procfs.group_files([(2, 4), (1, 3), (1, 4)]) == [[(1, 3)], [(1, 4)], [(2, 4)]]
    assert procfs.group_tables([3, 1, 2]) == [[1], [2], [3]]
    assert procfs.kcmp(1, 1, procfs.KCMP_FILES) is None


def test_the_scan_places_each_process_s_fds_by_open_file_as_it_lists_them():
    # kcmp (real, on this process's fds) as each process's tun fds are listed: an
    # fd closed later (before the end of the scan) keeps the file it was
    a = os.open("/dev/null", os.O_RDONLY)
    b = os.dup(a)
    gone = os.dup(a)
    other = os.open("/dev/null", os.O_RDONLY)
    me = os.getpid()
    tun = (procfs.TUN_PATH, "t0")

    def key(n):
        return (me, n)
    try:
        g = procfs._FileGrouper()
        g.listed(me, [a, gone])          # "a process" with two fds of one file
        os.close(gone)                   # closed after it was listed
        g.listed(me, [b, other])         # "another": b placed with a's file
        bucket_of = {key(n): tun for n in (a, gone, b, other)}
        assert sorted(g.groups(bucket_of)[tun]) == sorted([
            sorted([key(a), key(gone), key(b)], key=lambda k: (k[1], k[0])), [key(other)]])
        # an fd whose fdinfo could not be read (not in bucket_of) is left out; one
        # that shows another interface is a group of that interface
        del bucket_of[key(other)]
        bucket_of[key(b)] = (procfs.TUN_PATH, "t1")
        groups = g.groups(bucket_of)
        assert sorted(groups[tun]) == [sorted([key(a), key(gone)],
                                              key=lambda k: (k[1], k[0]))]
        assert groups[(procfs.TUN_PATH, "t1")] == [[key(b)]]
        # the fd a file was placed by is closed before the next process is listed:
        # another of its process's fds stands in
        x = os.open("/dev/null", os.O_RDONLY)
        y, z = os.dup(x), os.dup(x)
        g = procfs._FileGrouper()
        g.listed(me, [x, y])
        os.close(x)
        g.listed(me, [z])
        assert g.groups({key(n): tun for n in (x, y, z)})[tun] == [
            sorted([key(x), key(y), key(z)], key=lambda k: (k[1], k[0]))]
        os.close(y)
        os.close(z)
        # many fds, each its own file: none lost or merged
        many = [os.open("/dev/null", os.O_RDONLY) for _ in range(40)]
        try:
            g = procfs._FileGrouper()
            g.listed(me, many)
            assert sorted(g.groups({key(n): tun for n in many})[tun]) == [
                [key(n)] for n in sorted(many)]
        finally:
            for n in many:
                os.close(n)
    finally:
        for n in (a, b, other):
            os.close(n)


def test_one_fd_of_one_shared_table_read_through_two_users_is_one_file():
    # 1 and 2 share a table: kcmp, after the scan, could not place 2:5 (closed
    # since); 1:5 and 2:5 are one slot. 3 has a table of its own.
    assert procfs._join_slots([[(1, 4), (2, 4)], [(2, 5)], [(1, 5), (1, 21), (2, 21)]],
                              [[1, 2]]) == [[(1, 4), (2, 4)],
                                            [(1, 5), (2, 5), (1, 21), (2, 21)]]
    assert procfs._join_slots([[(1, 5)], [(2, 5)], [(3, 5)]], [[1, 2], [3]]) == [
        [(1, 5), (2, 5)], [(3, 5)]]
    # a group joining two others makes one of the three
    assert procfs._join_slots([[(1, 5)], [(2, 6)], [(1, 6), (2, 5)]], [[1, 2]]) == [
        [(1, 5), (2, 5), (1, 6), (2, 6)]]


def test_an_fd_closed_before_kcmp_joins_the_one_file_of_its_single_queue_tap():
    # kcmp (real: this process's fds) runs after the scan: an fd closed since its
    # read stands alone, unless its interface has one file at a time
    r, w = os.pipe()
    closed = os.open("/dev/null", os.O_RDONLY)
    os.close(closed)
    me = os.getpid()
    try:
        def fd(n, netns=None):
            return procfs.FdInfo(me, n, procfs.TUN_PATH, "t0", False, 2, netns)

        def tap(mq):
            return procfs.TapInfo("t0", 7, "tap", 2, False, mq, False, None, None, None)
        by_key = {(me, n): fd(n) for n in (r, w, closed)}
        groups = procfs.group_files(by_key)
        assert sorted(groups) == [[(me, n)] for n in sorted((r, w, closed))]
        # two live files (kcmp tells them apart) and a gone fd: which one is unknown
        assert len(procfs._join_gone(groups, by_key, {"t0": tap(False)}, None)) == 3
        live = [[(me, r)], [(me, closed)]]
        assert procfs._join_gone(live, by_key, {"t0": tap(False)}, None) == [
            [(me, r), (me, closed)]]
        assert procfs._join_gone(live, by_key, {"t0": tap(True)}, None) == live
        assert procfs._join_gone(live, by_key, {}, None) == live         # tap gone
        other_ns = {**by_key, (me, closed): fd(closed, netns=99)}
        assert procfs._join_gone(live, other_ns, {"t0": tap(False)}, 98) == live
    finally:
        os.close(r)
        os.close(w)


def test_a_thread_with_a_table_of_its_own_is_listed_under_its_tid():
    # real: a thread of this process unshares its fd table and opens /dev/net/tun
    # there; another thread keeps the process's table. The snapshot lists the first
    # under its tid (one kcmp per thread; only a table that differs is listed).
    import ctypes
    import threading

    libc = ctypes.CDLL(None, use_errno=True)
    ready, done = threading.Event(), threading.Event()
    got: dict = {}

    def own() -> None:
        if libc.unshare(0x400) != 0:                 # CLONE_FILES
            got["error"] = ctypes.get_errno()
        else:
            try:
                got["fd"] = os.open(procfs.TUN_PATH, os.O_RDWR | os.O_CLOEXEC)
            except OSError as exc:
                got["error"] = exc.errno
        got["tid"] = threading.get_native_id()
        ready.set()
        done.wait(30)
        if "fd" in got:
            os.close(got["fd"])

    def shared() -> None:
        got["shared"] = threading.get_native_id()
        done.wait(30)

    workers = [threading.Thread(target=f) for f in (shared, own)]
    for t in workers:
        t.start()
    try:
        ready.wait(30)
        if "error" in got:
            pytest.skip(f"no tun fd in a thread's own table here (errno {got['error']})")
        me, tid = os.getpid(), got["tid"]
        assert procfs.own_tables(me) == [[tid]]
        snap = procfs.snapshot([me])
        assert snap.threads == {tid: me} and me in snap.procs
        mine = [f for f in snap.fds if f.pid == tid]
        assert [(f.fd, f.ifname, f.cloexec) for f in mine] == [(got["fd"], None, True)]
        assert [tid] in snap.tables and tid in snap.read_ns
        from tracer.model import Model
        m = Model()
        m.load(snap)
        assert [(r["pid"], r["tid"], r["fd"]) for r in m.rows()
                if r["tid"] is not None] == [(me, tid, got["fd"])]
    finally:
        done.set()
        for t in workers:
            t.join()


# ---- the scan split across processes ------------------------------------------

def _fake_fds(pid, _taps, _units=None):
    """Two fds per pid; names that only survive a byte-exact round trip."""
    if pid % 7 == 0:
        return []                                  # gone, or no tun fd
    return [procfs.FdInfo(pid, 3, procfs.TUN_PATH, f"t\udcff\x1b{pid}", True, 0o2000002),
            procfs.FdInfo(pid, 9, procfs.VHOST_PATH, None, False, 0o2)]


def test_a_scan_in_helper_processes_equals_the_serial_scan(monkeypatch):
    monkeypatch.setattr(procfs, "_tun_fds", _fake_fds)
    pids = [5, 40, 3, 12, 8, 21, 1, 30, 2, 17]
    serial = procfs._scan(pids, procfs._Ifindex(), threads={})
    for workers in (2, 3, 4):
        assert procfs._scan_parallel(pids, procfs._Ifindex(), workers) == serial


def test_a_helper_that_fails_or_cannot_be_forked_has_its_share_scanned_here(monkeypatch):
    parent = os.getpid()

    def fails_in_helpers(pid, taps, _units=None):
        if os.getpid() != parent:
            raise RuntimeError("helper dies")
        return _fake_fds(pid, taps)

    monkeypatch.setattr(procfs, "_tun_fds", fails_in_helpers)
    pids = list(range(1, 40))
    serial = procfs._scan(pids, procfs._Ifindex(), threads={})
    assert procfs._scan_parallel(pids, procfs._Ifindex(), 3) == serial

    def no_fork():
        raise OSError(11, "fork: EAGAIN")

    monkeypatch.setattr(procfs.os, "fork", no_fork)
    assert procfs._scan_parallel(pids, procfs._Ifindex(), 3) == serial


def test_snapshot_forks_only_for_enough_pids(monkeypatch):
    forked = []
    real = procfs._scan_in_child
    monkeypatch.setattr(procfs, "_scan_in_child", lambda pids: forked.append(pids) or real(pids))
    monkeypatch.setattr(procfs, "_tun_fds", lambda pid, taps, units=None: [])
    procfs.snapshot(list(range(1, procfs._PIDS_PER_WORKER * 2)), workers=4)
    assert forked == []                                   # fewer than 2 workers' worth
    procfs.snapshot(list(range(1, procfs._PIDS_PER_WORKER * 3 + 1)), workers=4)
    assert len(forked) == 2                               # 3 workers: 2 helpers
    forked.clear()
    procfs.snapshot(list(range(1, procfs._PIDS_PER_WORKER * 9)), workers=1)
    assert forked == []


# ---- rtnetlink: the devices of another network namespace ----------------------

def _rta(kind: int, payload: bytes) -> bytes:
    raw = struct.pack("=HH", 4 + len(payload), kind) + payload
    return raw + b"\0" * (-len(raw) % 4)


def _newlink(ifindex: int, name: bytes, mac: bytes, *attrs: bytes, seq: int = 1) -> bytes:
    body = struct.pack("=BxHiII", 0, 1, ifindex, 0, 0) + _rta(procfs.IFLA_IFNAME, name + b"\0")
    body += _rta(procfs.IFLA_ADDRESS, mac) + b"".join(attrs)
    return struct.pack("=IHHII", 16 + len(body), procfs.RTM_NEWLINK, 2, seq, 0) + body


def _tun(kind: int, pi: int, vnet: int, persist: int, mq: int, owner=None) -> bytes:
    data = b"".join([
        *([_rta(procfs.IFLA_TUN_OWNER, struct.pack("=I", owner))] if owner is not None
          else []),
        _rta(procfs.IFLA_TUN_TYPE, bytes([kind])), _rta(procfs.IFLA_TUN_PI, bytes([pi])),
        _rta(procfs.IFLA_TUN_VNET_HDR, bytes([vnet])),
        _rta(procfs.IFLA_TUN_PERSIST, bytes([persist])),
        _rta(procfs.IFLA_TUN_MULTI_QUEUE, bytes([mq]))])
    # NLA_F_NESTED (0x8000) on nested attributes, as the kernel sets it
    info = _rta(procfs.IFLA_INFO_KIND, b"tun\0") + _rta(procfs.IFLA_INFO_DATA | 0x8000, data)
    return _rta(procfs.IFLA_LINKINFO | 0x8000, info)


DONE = struct.pack("=IHHIIi", 20, procfs.NLMSG_DONE, 2, 1, 0, 0)


def test_a_link_dump_names_the_tun_devices_with_their_flags_as_sys_shows_them():
    data = (_newlink(1, b"lo", bytes(6), _rta(procfs.IFLA_OPERSTATE, bytes([0])))
            + _newlink(2, b"tap0", bytes.fromhex("66a7eea8db8b"), _tun(2, 0, 0, 0, 0),
                       _rta(procfs.IFLA_MASTER, struct.pack("=I", 3)),
                       _rta(procfs.IFLA_OPERSTATE, bytes([2])))
            + _newlink(4, b"tun\xff9", b"", _tun(1, 1, 1, 1, 1, owner=107))
            + _newlink(3, b"br0", bytes.fromhex("020000000001")))
    links, done = procfs.parse_links(data)
    assert not done
    assert [(ln.ifname, ln.ifindex, ln.mac, ln.master, ln.operstate) for ln in links] == [
        ("lo", 1, "00:00:00:00:00:00", None, "unknown"),
        ("tap0", 2, "66:a7:ee:a8:db:8b", 3, "down"),
        ("tun\udcff9", 4, None, None, None),
        ("br0", 3, "02:00:00:00:00:01", None, None)]
    # pi off is IFF_NO_PI; the rest as /sys/class/net/IF/tun_flags has them
    assert links[1].tun == (0x1002, None, None)
    assert links[2].tun == (0x4901, 107, None)
    assert links[0].tun is None and links[3].tun is None
    taps = procfs.taps_of_links(links, 4026532300)
    assert taps == {
        "tap0": procfs.TapInfo("tap0", 2, "tap", 0x1002, False, False, False, None, None,
                               "66:a7:ee:a8:db:8b", 4026532300),
        "tun\udcff9": procfs.TapInfo("tun\udcff9", 4, "tun", 0x4901, True, True, True, 107,
                                     None, None, 4026532300)}
    assert procfs.parse_links(DONE) == ([], True)


def test_a_link_dump_error_and_truncated_messages():
    err = struct.pack("=IHHIIi", 20, procfs.NLMSG_ERROR, 0, 1, 0, -1)
    with pytest.raises(OSError):
        procfs.parse_links(err)
    whole = _newlink(2, b"tap0", bytes(6), _tun(2, 1, 0, 0, 0))
    assert procfs.parse_links(whole[:-3]) == ([], False)      # cut: nothing made up
    bad_attr = whole[:16 + 16] + struct.pack("=HH", 200, procfs.IFLA_IFNAME) + whole[36:]
    assert procfs.parse_links(bad_attr)[0] == []              # no name: no link


def test_netns_names_are_the_mounted_ones_only(tmp_path):
    (tmp_path / "left").write_text("")            # `ip netns` left it without its mount
    assert procfs.netns_names(str(tmp_path)) == {}
    assert procfs.netns_names(str(tmp_path / "absent")) == {}
