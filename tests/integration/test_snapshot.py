"""tracer.procfs against the kernel: the snapshot the live table starts from."""

from __future__ import annotations

import os

import tapkit
from conftest import need_root

from tracer import procfs


def test_snapshot_groups_open_files_and_matches_fdinfo_truth():
    need_root()
    name = tapkit.unique_name()
    q1, name = tapkit.create_tap(name, tapkit.IFF_TAP | tapkit.IFF_NO_PI | tapkit.IFF_MULTI_QUEUE)
    q2, _ = tapkit.create_tap(name, tapkit.IFF_TAP | tapkit.IFF_NO_PI | tapkit.IFF_MULTI_QUEUE)
    q1dup = os.dup(q1)
    bare = tapkit.open_tun()                       # no TUNSETIFF: no interface yet
    me = os.getpid()
    try:
        snap = procfs.snapshot([me])
        mine = {(f.pid, f.fd, f.ifname) for f in snap.fds if f.ifname}
        assert mine == tapkit.truth([me])
        groups = [sorted(g) for g in snap.files if g[0][0] == me]
        assert sorted([(me, q1), (me, q1dup)]) in groups       # dup: one open file
        assert [(me, q2)] in groups                             # second queue: its own file
        unattached = next(f for f in snap.fds if f.fd == bare)
        assert unattached.ifname is None and unattached.path == "/dev/net/tun"
        tap = snap.taps[name]
        assert tap.multi_queue and tap.kind == "tap" and not tap.persist
        assert snap.tables == [[me]]
        assert next(f for f in snap.fds if f.fd == q1dup).cloexec is True
    finally:
        for fd in (q1, q2, q1dup, bare):
            os.close(fd)


def test_kcmp_sees_a_forked_copy_as_the_same_file_but_another_table():
    need_root()
    fd, name = tapkit.create_tap(tapkit.unique_name())
    other = tapkit.open_tun()
    try:
        with tapkit.held_by_child() as child:
            me = os.getpid()
            assert procfs.same_file(me, fd, child, fd) is True
            assert procfs.same_fd_table(me, child) is False
            assert procfs.same_file(me, fd, me, other) is False
            snap = procfs.snapshot([me, child])
            assert sorted([(me, fd), (child, fd)]) in [sorted(g) for g in snap.files]
            assert snap.procs[child].ppid == me
    finally:
        os.close(fd)
        os.close(other)
        tapkit.delete_link(name)


def test_read_fdinfo_is_none_for_other_fds_and_gone_processes():
    r, w = os.pipe()
    try:
        assert procfs.read_fdinfo(os.getpid(), r) is None
        assert procfs.read_fdinfo(2**22 + 7, 3) is None
    finally:
        os.close(r)
        os.close(w)
