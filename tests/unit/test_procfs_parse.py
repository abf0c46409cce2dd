"""Parsing what /proc and /sys say (pure; the real-kernel side is in integration)."""

from tracer import procfs

FDINFO_TAP = "pos:\t0\nflags:\t02000002\nmnt_id:\t24\nino:\t1076\niff:\tvnet1\n"
FDINFO_UNATTACHED = "pos:\t0\nflags:\t0100002\nmnt_id:\t24\nino:\t1076\niff:\t\n"
FDINFO_PIPE = "pos:\t0\nflags:\t00\nmnt_id:\t15\nino:\t52343\n"


def test_fdinfo_of_an_attached_tap():
    flags, name = procfs.parse_fdinfo(FDINFO_TAP)
    assert name == "vnet1" and flags & procfs.O_CLOEXEC and flags & 0o3 == 2


def test_fdinfo_of_a_tun_fd_with_no_interface_and_of_a_pipe():
    assert procfs.parse_fdinfo(FDINFO_UNATTACHED) == (0o100002, None)
    assert procfs.parse_fdinfo(FDINFO_PIPE) == (0, None)


def test_fdinfo_keeps_control_bytes_in_names():
    _, name = procfs.parse_fdinfo("flags:\t02\niff:\tt\x1b[0mx\n")
    assert name == "t\x1b[0mx"


def test_tun_paths():
    assert procfs._is_tun_path("/dev/net/tun")
    assert procfs._is_tun_path("/dev/tap12")
    assert not procfs._is_tun_path("/dev/tap")
    assert not procfs._is_tun_path("/dev/net/tunnel")
    assert not procfs._is_tun_path("/dev/tapx1")
