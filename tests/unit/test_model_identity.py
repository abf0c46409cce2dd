"""The model with the kernel backend's records: each carries the struct file * it is
about (tracer.events: Open/TunIoctl/Dup/Close.file, ScmSend/ScmRecv.files), so an
open file is known by its identity, not inferred. The records are the ones
bpf/kernel.bpf.c makes for each syscall (see its header comment): an open is an
fd_install, a send lists the message's files (not the sender's fds), a receive
lists each installed fd with its file.
"""

from __future__ import annotations

from test_model import TAP, World

from tracer import events as ev

P1, P2, P3 = 0xFFFF888001000000, 0xFFFF888001000100, 0xFFFF888001000200


def k_tap(w: World, pid: int, fd: int, name: str, ptr: int, **kw) -> None:
    w.open(pid, fd, file=ptr, **kw)
    w.setiff(pid, fd, name, file=ptr)


def k_send(w: World, pid: int, sock: int, ptrs) -> list[dict]:
    return w.apply(ev.ScmSend, pid, sock=sock, fds=(), files=tuple(ptrs))


def k_recv(w: World, pid: int, sock: int, fds, ptrs, cloexec=False) -> list[dict]:
    return w.apply(ev.ScmRecv, pid, sock=sock, fds=tuple(fds), files=tuple(ptrs),
                   cloexec=cloexec)


def test_a_send_then_close_keeps_the_tap_for_the_receiver():
    w = World().named(libvirtd=100, qemu=200)
    k_tap(w, 100, 30, "vnet0", P1)
    (snd,) = k_send(w, 100, 9, [P1])
    assert (snd["type"], snd["fds"], snd["ifnames"]) == ("scm_send", [30], ["vnet0"])
    w.close(100, 30, file=P1)
    (rcv,) = k_recv(w, 200, 7, [41], [P1], cloexec=True)
    assert (rcv["from_pid"], rcv["from_fds"], rcv["ifnames"], rcv["cloexec"]) == (
        100, [30], ["vnet0"], True)
    assert w.table() == {(200, 41): ("vnet0", True, "received")}
    assert w.gone() == []
    r = w.row(200, 41)
    assert (r["from_pid"], r["from_fd"], r["creator_pid"]) == (100, 30, 100)


def test_receives_are_matched_by_file_not_by_order():
    w = World().named(a=100, b=200)
    k_tap(w, 100, 3, "t0", P1)
    k_tap(w, 100, 4, "t1", P2)
    k_send(w, 100, 9, [P1])
    k_send(w, 100, 9, [P2])
    k_recv(w, 200, 5, [10], [P2])          # the second message first
    k_recv(w, 200, 5, [11], [P1])
    assert {k: v[0] for k, v in w.table().items() if k[0] == 200} == {
        (200, 10): "t1", (200, 11): "t0"}
    assert w.row(200, 10)["from_fd"] == 4 and w.row(200, 11)["from_fd"] == 3
    assert w.m.pending == []


def test_one_message_with_two_files_received_as_one():
    w = World().named(a=100, b=200)
    k_tap(w, 100, 3, "t0", P1)
    k_tap(w, 100, 4, "t1", P2)
    (snd,) = k_send(w, 100, 9, [P1, P2])
    assert snd["fds"] == [3, 4]
    (rcv,) = k_recv(w, 200, 5, [6, 8], [P1, P2])
    assert (rcv["fds"], rcv["from_fds"], rcv["ifnames"]) == ([6, 8], [3, 4], ["t0", "t1"])


def test_a_receive_whose_send_was_not_seen_is_named_by_file_or_by_proc():
    w = World(probe=lambda pid, fd: "t9" if (pid, fd) == (200, 12) else None).named(a=100,
                                                                                    b=200)
    k_tap(w, 100, 3, "t0", P1)
    k_recv(w, 200, 5, [11], [P1])        # known file: the same open file, shared
    k_recv(w, 200, 5, [12], [P3])        # unknown: /proc names it
    assert w.row(200, 11)["file"] == w.row(100, 3)["file"]
    assert w.row(200, 11)["shared_count"] == 1
    assert w.row(200, 12)["ifname"] == "t9"


def test_an_install_of_a_known_file_is_not_a_new_open():
    w = World().named(a=100)
    k_tap(w, 100, 3, "t0", P1)
    (rep,) = w.open(100, 7, file=P1)      # io_uring: fd_install of the same file
    assert (rep["how"], rep["ifname"]) == ("installed", "t0")
    assert w.row(100, 7)["file"] == w.row(100, 3)["file"]
    w.close(100, 3, file=P1)
    w.close(100, 7, file=P1)
    assert w.gone() == ["t0"]
    assert w.m.by_ptr == {}                # released: the address may be reused


def test_a_tun_ioctl_on_another_file_at_a_known_fd_drops_the_stale_one():
    w = World().named(a=100)
    k_tap(w, 100, 3, "t0", P1)
    # fd 3 was closed and reopened unseen: the ioctl's file says so
    w.setiff(100, 3, "t1", file=P2)
    assert w.table() == {(100, 3): ("t1", False, "unknown")}
    assert w.m.by_ptr[P2].ifname == "t1" and P1 not in w.m.by_ptr
    assert w.gone() == ["t0"]


def test_dup_learns_a_snapshot_files_identity():
    w = World().named(a=100)
    w.open(100, 3)                         # the tracepoint backend's: no file
    w.setiff(100, 3, "t0", TAP)
    w.dup(100, 3, 4, file=P1)
    f = w.m.by_ptr[P1]
    assert f.ifname == "t0" and w.row(100, 4)["file"] == w.row(100, 3)["file"] == f.id


def test_files_of_a_message_that_did_not_fit_the_control_buffer_are_dropped():
    # libvirtd sends [t0, t1, t2] and closes its fds; the receiver's control buffer
    # holds two (MSG_CTRUNC): the kernel drops t2, its last reference
    w = World().named(libvirtd=100, qemu=200)
    for fd, name, ptr in ((3, "t0", P1), (4, "t1", P2), (5, "t2", P3)):
        k_tap(w, 100, fd, name, ptr)
    k_send(w, 100, 9, [P1, P2, P3])
    for fd, ptr in ((3, P1), (4, P2), (5, P3)):
        w.close(100, fd, file=ptr)
    assert w.gone() == []
    out = k_recv(w, 200, 7, [40, 41], [P1, P2])
    assert [(r["type"], r.get("ifname")) for r in out] == [
        ("scm_recv", None), ("tap_gone", "t2")]
    assert w.m.pending == []
    assert {k: v[0] for k, v in w.table().items()} == {(200, 40): "t0", (200, 41): "t1"}


def test_a_receive_reports_the_same_fields_from_either_backend():
    # the kernel backend's receive (files known) says each fd's namespace too
    w = World().named(a=100, b=200)
    k_tap(w, 100, 3, "t0", P1)
    k_send(w, 100, 9, [P1])
    [kernel] = k_recv(w, 200, 7, [40], [P1])
    t = World().named(a=100, b=200)
    t.tap(100, 3, "t0")
    t.send(100, 9, [3])
    [tracepoint] = [r for r in t.recv(200, 7, [40]) if r["type"] == "scm_recv"]
    assert set(kernel) == set(tracepoint)
    assert kernel["netns"] == tracepoint["netns"] == [None]


def test_a_peek_leaves_the_rest_of_the_message_in_flight():
    w = World().named(a=100, b=200)
    k_tap(w, 100, 3, "t0", P1)
    k_tap(w, 100, 4, "t1", P2)
    k_send(w, 100, 9, [P1, P2])
    w.apply(ev.ScmRecv, 200, sock=7, fds=(40,), files=(P1,), cloexec=False, peek=True)
    assert len(w.m.pending) == 1 and w.gone() == []


def test_pidfd_getfd_source_is_the_one_holder_of_the_file_at_that_fd():
    w = World().named(a=100, b=200, c=300)
    k_tap(w, 100, 5, "t0", P1)
    k_tap(w, 200, 5, "t1", P2)
    assert w.m.holder_at(P1, 5, but=300) == 100
    assert w.m.holder_at(P1, 6, but=300) == 0          # not at that fd
    assert w.m.holder_at(P1, 5, but=100) == 0          # the grabber itself is not it
    assert w.m.holder_at(0, 5, but=300) == 0           # no file known
    w.fork(100, 101)                                    # the child holds it at 5 too
    assert w.m.holder_at(P1, 5, but=300) == 0
