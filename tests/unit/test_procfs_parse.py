"""Parsing what /proc and /sys say (pure; the real-kernel side is in integration)."""

from __future__ import annotations

import os

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


# ---- the scan split across processes ------------------------------------------

def _fake_fds(pid, _taps):
    """Two fds per pid; names that only survive a byte-exact round trip."""
    if pid % 7 == 0:
        return []                                  # gone, or no tun fd
    return [procfs.FdInfo(pid, 3, procfs.TUN_PATH, f"t\udcff\x1b{pid}", True, 0o2000002),
            procfs.FdInfo(pid, 9, procfs.VHOST_PATH, None, False, 0o2)]


def test_a_scan_in_helper_processes_equals_the_serial_scan(monkeypatch):
    monkeypatch.setattr(procfs, "_tun_fds", _fake_fds)
    pids = [5, 40, 3, 12, 8, 21, 1, 30, 2, 17]
    serial = procfs._scan(pids, procfs._Ifindex())
    for workers in (2, 3, 4):
        assert procfs._scan_parallel(pids, procfs._Ifindex(), workers) == serial


def test_a_helper_that_fails_or_cannot_be_forked_has_its_share_scanned_here(monkeypatch):
    parent = os.getpid()

    def fails_in_helpers(pid, taps):
        if os.getpid() != parent:
            raise RuntimeError("helper dies")
        return _fake_fds(pid, taps)

    monkeypatch.setattr(procfs, "_tun_fds", fails_in_helpers)
    pids = list(range(1, 40))
    serial = procfs._scan(pids, procfs._Ifindex())
    assert procfs._scan_parallel(pids, procfs._Ifindex(), 3) == serial

    def no_fork():
        raise OSError(11, "fork: EAGAIN")

    monkeypatch.setattr(procfs.os, "fork", no_fork)
    assert procfs._scan_parallel(pids, procfs._Ifindex(), 3) == serial


def test_snapshot_forks_only_for_enough_pids(monkeypatch):
    forked = []
    real = procfs._scan_in_child
    monkeypatch.setattr(procfs, "_scan_in_child", lambda pids: forked.append(pids) or real(pids))
    monkeypatch.setattr(procfs, "_tun_fds", lambda pid, taps: [])
    procfs.snapshot(list(range(1, procfs._PIDS_PER_WORKER * 2)), workers=4)
    assert forked == []                                   # fewer than 2 workers' worth
    procfs.snapshot(list(range(1, procfs._PIDS_PER_WORKER * 3 + 1)), workers=4)
    assert len(forked) == 2                               # 3 workers: 2 helpers
    forked.clear()
    procfs.snapshot(list(range(1, procfs._PIDS_PER_WORKER * 9)), workers=1)
    assert forked == []
