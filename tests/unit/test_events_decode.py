"""decode(): one raw struct tt_event (packed with RECORD) to its typed record.

Each test packs what the BPF side writes for one syscall and states the record
the model will see.
"""

from __future__ import annotations

import errno

import pytest

from tracer import events as ev

BASE = {"ts": 5_000, "pid": 100, "tid": 101, "comm": "qemu"}


def raw(type_: int, *, fd: int = -1, ret: int = 0, arg: int = 0, arg2: int = 0,
        name: bytes = b"", comm: bytes = b"qemu", tgid: int = 100, tid: int = 101,
        fds: tuple[int, ...] = (), nfds: int | None = None, ts: int = 5_000,
        pad: bytes = b"", fkind: int = 0, file: int = 0, netns: int = 0,
        fdflags: int = 0, table: int = 0) -> bytes:
    """A record as the BPF side submits it (init_event zeroes it, fd = -1)."""
    slots = (list(fds) + [0] * 16)[:16]
    return ev.RECORD.pack(ts, type_, tgid, tid, fd, ret, arg, arg2, comm, name,
                          len(fds) if nfds is None else nfds, *slots, fkind, file, netns,
                          fdflags, table) + pad


# ---- the common header ---------------------------------------------------------

def test_the_header_is_tgid_as_pid_thread_id_and_comm():
    rec = ev.decode(raw(ev.EV_CLOSE, fd=3, tgid=4242, tid=4250, comm=b"CPU 0/KVM", ts=77))
    assert rec == ev.Close(ts=77, pid=4242, tid=4250, comm="CPU 0/KVM", fd=3)


@pytest.mark.parametrize("fdflags, own", [
    (ev.FD_TABLE_KNOWN | ev.FD_OWN_TABLE, True),    # task->files is not its leader's
    (ev.FD_TABLE_KNOWN, False),                     # its leader's
    (0, None),                                      # not known (no BTF layout)
    (ev.FD_OWN_TABLE, None),                        # not said known: not taken
])
def test_a_threads_record_says_whether_it_used_its_leaders_table(fdflags, own):
    rec = ev.decode(raw(ev.EV_CLOSE, fd=3, tgid=4242, tid=4250, fdflags=fdflags))
    assert rec.own_table is own


def test_a_leaders_record_says_nothing_of_tables_whatever_its_flags():
    rec = ev.decode(raw(ev.EV_CLOSE, fd=3, tgid=4242, tid=4242,
                        fdflags=ev.FD_TABLE_KNOWN | ev.FD_OWN_TABLE))
    assert rec.own_table is None


@pytest.mark.parametrize("tid", [4242, 4250])
def test_every_record_names_the_fd_table_its_task_acted_on(tid):
    rec = ev.decode(raw(ev.EV_CLOSE, fd=3, tgid=4242, tid=tid, table=0xffff8880aa55c000))
    assert rec.table == 0xffff8880aa55c000
    assert ev.from_record(ev.to_record(rec)) == rec
    rec = ev.decode(raw(ev.EV_CLOSE, fd=3, tgid=4242, tid=tid))
    assert rec.table == 0 and "table" not in ev.to_record(rec)   # not known: not recorded


def test_the_table_bits_leave_a_tun_ioctls_cloexec_and_a_sends_cut_alone():
    both = ev.FD_TABLE_KNOWN | ev.FD_OWN_TABLE
    rec = ev.decode(raw(ev.EV_TUN_IOCTL, fd=3, arg=ev.TUNSETIFF, file=0xffff0000,
                        fdflags=both | ev.FD_CLOEXEC_BIT))
    assert rec.cloexec is True and rec.own_table is True
    rec = ev.decode(raw(ev.EV_SCM_SEND, fd=5, fds=(3,), fdflags=both))
    assert rec.truncated is False and rec.own_table is True


def test_a_record_with_the_c_tail_padding_decodes_the_same():
    # sizeof(struct tt_event) rounds up to 8; the buffer may carry those bytes
    assert ev.decode(raw(ev.EV_CLOSE, fd=3, pad=b"\0" * 4)) == ev.decode(raw(ev.EV_CLOSE, fd=3))


@pytest.mark.parametrize("type_", [0, 16, 99, 0xFFFFFFFF])
def test_an_unknown_type_decodes_to_none(type_):
    assert ev.decode(raw(type_)) is None


# ---- strings: kept exactly ------------------------------------------------------

def test_names_with_control_bytes_are_kept_exactly():
    comm = b"q\x1b[31mred\x07"
    name = b"tap\x1b]0;x\x07"
    rec = ev.decode(raw(ev.EV_TUN_IOCTL, fd=3, arg=ev.TUNSETIFF, arg2=ev.IFF_TAP,
                        name=name, comm=comm))
    assert rec.comm == "q\x1b[31mred\x07"
    assert rec.ifname == "tap\x1b]0;x\x07"


def test_names_that_are_not_utf8_round_trip_through_surrogateescape():
    name = b"t\xff\xfe\x80p"
    rec = ev.decode(raw(ev.EV_TUN_IOCTL, fd=3, arg=ev.TUNGETIFF, name=name, comm=b"\xc3("))
    assert rec.ifname == "t\udcff\udcfe\udc80p"
    assert rec.ifname.encode("utf-8", "surrogateescape") == name
    assert rec.comm.encode("utf-8", "surrogateescape") == b"\xc3("


def test_a_name_ends_at_its_first_nul_and_a_full_16_byte_name_is_whole():
    assert ev.decode(raw(ev.EV_TUN_IOCTL, arg=ev.TUNSETIFF, name=b"tap0\0junk")).ifname == "tap0"
    full = b"0123456789abcdef"                      # no NUL at all: every byte counts
    assert ev.decode(raw(ev.EV_TUN_IOCTL, arg=ev.TUNSETIFF, name=full)).ifname == full.decode()
    assert ev.decode(raw(ev.EV_CLOSE, comm=full)).comm == full.decode()


# ---- one test per record type -----------------------------------------------------

def test_open_of_dev_net_tun_with_o_cloexec():
    flags = 0o2 | ev.O_CLOEXEC
    rec = ev.decode(raw(ev.EV_OPEN, fd=7, ret=7, arg=flags, name=b"/dev/net/tun"))
    assert rec == ev.Open(**BASE, fd=7, path="/dev/net/tun", flags=flags)


def test_open_of_a_macvtap_node():
    rec = ev.decode(raw(ev.EV_OPEN, fd=9, ret=9, arg=2, name=b"/dev/tap12"))
    assert rec == ev.Open(**BASE, fd=9, path="/dev/tap12", flags=2)


def test_tunsetiff_success_carries_the_name_the_kernel_copied_back():
    rec = ev.decode(raw(ev.EV_TUN_IOCTL, fd=3, ret=0, arg=ev.TUNSETIFF,
                        arg2=ev.IFF_TAP | ev.IFF_NO_PI, name=b"tap0"))
    assert rec == ev.TunIoctl(**BASE, fd=3, cmd=ev.TUNSETIFF, ret=0, ifname="tap0",
                              value=ev.IFF_TAP | ev.IFF_NO_PI)


def test_a_tun_ioctl_carries_its_file_close_on_exec_bit_and_namespace():
    rec = ev.decode(raw(ev.EV_TUN_IOCTL, fd=3, ret=0, arg=ev.TUNSETIFF, arg2=ev.IFF_TAP,
                        name=b"tap0", file=0xFFFF888012345600, netns=4026532245,
                        fdflags=1))
    assert (rec.file, rec.netns, rec.cloexec) == (0xFFFF888012345600, 4026532245, True)
    rec = ev.decode(raw(ev.EV_TUN_IOCTL, fd=3, ret=0, arg=ev.TUNSETIFF, name=b"tap0",
                        file=0xFFFF888012345600))
    assert (rec.netns, rec.cloexec) == (0, False)
    # no file read (no BTF): the bit is not known, whatever fdflags says
    rec = ev.decode(raw(ev.EV_TUN_IOCTL, fd=3, ret=0, arg=ev.TUNSETIFF, name=b"tap0",
                        fdflags=1))
    assert (rec.file, rec.cloexec) == (0, None)
    # recordings: what was not read is not written
    assert "cloexec" not in ev.to_record(rec) and "netns" not in ev.to_record(rec)


def test_tunsetiff_failure_keeps_the_negative_errno():
    rec = ev.decode(raw(ev.EV_TUN_IOCTL, fd=3, ret=-errno.EBUSY, arg=ev.TUNSETIFF,
                        arg2=ev.IFF_TAP, name=b"tap%d"))
    assert rec.ret == -errno.EBUSY and rec.ifname == "tap%d"


def test_int_argument_ioctls_carry_the_value():
    rec = ev.decode(raw(ev.EV_TUN_IOCTL, fd=3, arg=ev.TUNSETOWNER, arg2=0xFFFFFFFF))
    assert rec == ev.TunIoctl(**BASE, fd=3, cmd=ev.TUNSETOWNER, ret=0, ifname="",
                              value=0xFFFFFFFF)
    assert ev.decode(raw(ev.EV_TUN_IOCTL, fd=3, arg=ev.TUNSETPERSIST, arg2=1)).value == 1


@pytest.mark.parametrize("arg,how,cloexec", [
    (0, "dup", False),
    (1, "dup2", False),
    (2, "dup3", False),
    (2 | ev.DUP_CLOEXEC, "dup3", True),                # dup3(old, new, O_CLOEXEC)
    (3, "F_DUPFD", False),
    (4, "F_DUPFD_CLOEXEC", True),
])
def test_dup_family(arg, how, cloexec):
    rec = ev.decode(raw(ev.EV_DUP, fd=3, ret=20, arg=arg, arg2=20))
    assert rec == ev.Dup(**BASE, oldfd=3, newfd=20, how=how, cloexec=cloexec)


def test_close():
    assert ev.decode(raw(ev.EV_CLOSE, fd=27)) == ev.Close(**BASE, fd=27)


def test_close_range_reads_first_and_last_as_unsigned():
    rec = ev.decode(raw(ev.EV_CLOSE_RANGE, fd=3, arg=0xFFFFFFFF, arg2=ev.CLOSE_RANGE_CLOEXEC))
    assert rec == ev.CloseRange(**BASE, first=3, last=0xFFFFFFFF,
                                flags=ev.CLOSE_RANGE_CLOEXEC)
    # the BPF side stores first in the int fd field: ~0U comes back as -1
    assert ev.decode(raw(ev.EV_CLOSE_RANGE, fd=-1, arg=0xFFFFFFFF)).first == 0xFFFFFFFF


@pytest.mark.parametrize("arg,arg2,how,cloexec", [
    (0, 1, "F_SETFD", True), (0, 0, "F_SETFD", False),
    (1, 1, "FIOCLEX", True), (2, 0, "FIONCLEX", False),
])
def test_setfd_family(arg, arg2, how, cloexec):
    rec = ev.decode(raw(ev.EV_SETFD, fd=5, arg=arg, arg2=arg2))
    assert rec == ev.SetFd(**BASE, fd=5, cloexec=cloexec, how=how)


def test_fork_carries_the_child_and_the_clone_flags():
    flags = ev.CLONE_FILES | 17
    rec = ev.decode(raw(ev.EV_FORK, arg=flags, arg2=200))
    assert rec == ev.Fork(**BASE, child=200, flags=flags)


def test_exec_and_exit():
    assert ev.decode(raw(ev.EV_EXEC, arg2=101, comm=b"qemu-system-x86")) == ev.Exec(
        **{**BASE, "comm": "qemu-system-x86"}, old_pid=101)
    assert ev.decode(raw(ev.EV_EXIT)) == ev.Exit(**BASE)


def test_scm_send_keeps_the_fds_up_to_nfds_only():
    rec = ev.decode(raw(ev.EV_SCM_SEND, fd=9, fds=(3, 7, 4, 99, 99), nfds=3))
    assert rec == ev.ScmSend(**BASE, sock=9, fds=(3, 7, 4))


def test_scm_nfds_beyond_the_array_is_cut_at_the_array():
    rec = ev.decode(raw(ev.EV_SCM_SEND, fd=9, fds=tuple(range(10, 26)), nfds=1000))
    assert rec.fds == tuple(range(10, 26))


def test_scm_with_no_fds():
    assert ev.decode(raw(ev.EV_SCM_RECV, fd=9, nfds=0)).fds == ()


def test_scm_recv_with_and_without_msg_cmsg_cloexec():
    rec = ev.decode(raw(ev.EV_SCM_RECV, fd=5, ret=1, arg=ev.MSG_CMSG_CLOEXEC | 0x40,
                        fds=(40, 41), nfds=2))
    assert rec == ev.ScmRecv(**BASE, sock=5, fds=(40, 41), cloexec=True)
    assert ev.decode(raw(ev.EV_SCM_RECV, fd=5, arg=0, fds=(40,))).cloexec is False


def test_scm_records_carry_the_queue_they_are_on():
    # tracepoint backend: arg2 is the unix socket whose queue the message is on
    sk = 0xFFFF_8880_1234_5600
    assert ev.decode(raw(ev.EV_SCM_SEND, fd=4, fds=(7,), nfds=1, arg2=sk)).queue == sk
    assert ev.decode(raw(ev.EV_SCM_RECV, fd=3, fds=(9,), nfds=1, arg2=sk)).queue == sk
    assert ev.decode(raw(ev.EV_SCM_RECV, fd=3, fds=(9,), nfds=1)).queue == 0
    # and netns that socket's inode number (the address is a freed socket's too)
    for typ in (ev.EV_SCM_SEND, ev.EV_SCM_RECV):
        rec = ev.decode(raw(typ, fd=3, fds=(9,), nfds=1, arg2=sk, netns=463410))
        assert (rec.queue, rec.queue_ino) == (sk, 463410)
        assert ev.from_record(ev.to_record(rec)) == rec
    assert "queue_ino" not in ev.to_record(ev.decode(raw(ev.EV_SCM_RECV, fd=3, fds=(9,))))


def test_unshare_and_pidfd_getfd():
    assert ev.decode(raw(ev.EV_UNSHARE, arg=ev.CLONE_FILES)) == ev.Unshare(
        **BASE, flags=ev.CLONE_FILES)
    rec = ev.decode(raw(ev.EV_PIDFD_GETFD, fd=6, arg=27, ret=11))
    assert rec == ev.PidfdGetfd(**BASE, pidfd=6, target_fd=27, newfd=11, source_pid=0)


def test_open_of_dev_vhost_net():
    rec = ev.decode(raw(ev.EV_OPEN, fd=28, ret=28, arg=0o2 | ev.O_CLOEXEC,
                        name=b"/dev/vhost-net\0\0"))
    assert rec == ev.Open(**BASE, fd=28, path=ev.VHOST_PATH, flags=0o2 | ev.O_CLOEXEC)


def test_vhost_set_backend_carries_the_vring_and_the_backend_fd():
    # struct vhost_vring_file { unsigned int index; int fd; }: arg = index, arg2 = fd
    rec = ev.decode(raw(ev.EV_VHOST_BACKEND, fd=28, ret=0, arg=1, arg2=27))
    assert rec == ev.VhostBackend(**BASE, fd=28, index=1, backend_fd=27, ret=0)


def test_vhost_detach_is_backend_fd_minus_one_stored_as_u32():
    rec = ev.decode(raw(ev.EV_VHOST_BACKEND, fd=28, arg=0, arg2=0xFFFFFFFF))
    assert rec.backend_fd == -1 and rec.index == 0
    # a negative other than -1 is still what the caller passed (the kernel: ENOTSOCK)
    rec = ev.decode(raw(ev.EV_VHOST_BACKEND, fd=28, ret=-errno.ENOTSOCK, arg=0,
                        arg2=0xFFFFFFFE))
    assert (rec.backend_fd, rec.ret) == (-2, -errno.ENOTSOCK)


def test_vhost_set_backend_failure_keeps_the_errno_and_an_unsigned_index():
    rec = ev.decode(raw(ev.EV_VHOST_BACKEND, fd=5, ret=-errno.ENOTTY, arg=0xFFFFFFFF, arg2=3))
    assert rec == ev.VhostBackend(**BASE, fd=5, index=0xFFFFFFFF, backend_fd=3,
                                  ret=-errno.ENOTTY)


def test_every_decoded_record_survives_the_replay_form():
    records = [
        raw(ev.EV_OPEN, ret=7, arg=ev.O_CLOEXEC, name=b"/dev/net/tun"),
        raw(ev.EV_TUN_IOCTL, fd=3, arg=ev.TUNSETIFF, arg2=2, name=b"t\xff\x1b"),
        raw(ev.EV_DUP, fd=3, ret=20, arg=2 | ev.DUP_CLOEXEC),
        raw(ev.EV_CLOSE, fd=3), raw(ev.EV_CLOSE_RANGE, fd=3, arg=9, arg2=4),
        raw(ev.EV_SETFD, fd=3, arg=1, arg2=1), raw(ev.EV_FORK, arg=17, arg2=9),
        raw(ev.EV_EXEC, arg2=100), raw(ev.EV_EXIT), raw(ev.EV_SCM_SEND, fd=9, fds=(3, 4)),
        raw(ev.EV_SCM_RECV, fd=5, fds=(6,)), raw(ev.EV_UNSHARE, arg=ev.CLONE_FILES),
        raw(ev.EV_PIDFD_GETFD, fd=6, arg=3, ret=8),
        raw(ev.EV_VHOST_BACKEND, fd=28, arg=1, arg2=0xFFFFFFFF, ret=-errno.EFAULT),
    ]
    for buf in records:
        rec = ev.decode(buf)
        assert ev.from_record(ev.to_record(rec)) == rec


# ---- the kernel backend's struct file identity ----------------------------------

FILE = 0xFFFF8880_12345678


def test_the_struct_file_comes_through_on_the_records_about_one_file():
    assert ev.decode(raw(ev.EV_OPEN, ret=5, name=b"/dev/net/tun", file=FILE,
                         fkind=ev.FK_TUN)).file == FILE
    assert ev.decode(raw(ev.EV_CLOSE, fd=5, file=FILE)).file == FILE
    assert ev.decode(raw(ev.EV_DUP, fd=5, ret=6, file=FILE)).file == FILE
    assert ev.decode(raw(ev.EV_TUN_IOCTL, fd=5, arg=ev.TUNSETIFF, file=FILE)).file == FILE
    assert ev.decode(raw(ev.EV_PIDFD_GETFD, fd=3, arg=5, ret=7, file=FILE)).file == FILE
    recv = ev.decode(raw(ev.EV_SCM_RECV, fd=9, fds=(7,), file=FILE))
    assert (recv.fds, recv.files) == ((7,), (FILE,))
    send = ev.decode(raw(ev.EV_SCM_SEND, fd=9, fds=(), file=FILE))
    assert (send.fds, send.files) == ((), (FILE,))


def test_without_a_file_the_records_are_the_tracepoint_backends():
    assert ev.decode(raw(ev.EV_CLOSE, fd=5)).file == 0
    assert ev.decode(raw(ev.EV_SCM_RECV, fd=9, fds=(7, 8))).files == ()
    # and a record made by hand (tests, replays of old recordings) needs none
    assert ev.Close(ts=1, pid=2, tid=2, comm="x", fd=3).file == 0


def test_the_file_survives_a_record_and_its_replay():
    e = ev.ScmRecv(ts=1, pid=2, tid=2, comm="x", sock=4, fds=(5,), cloexec=True,
                   files=(FILE,))
    assert ev.from_record(ev.to_record(e)) == e
