"""The kernel backend's records as the model gets them (tracer/backends/kernel.py,
no bcc): bpf/kernel.bpf.c writes one record per file of an SCM_RIGHTS message and
then a marker with no file; user space makes them one send or one receive at the
marker, whatever else comes between, however the reads are cut."""

from __future__ import annotations

from test_events_decode import raw

from tracer import events as ev
from tracer.backends.kernel import KernelBackend

F1, F2 = 0xFFFF888000001000, 0xFFFF888000002000


def backend() -> tuple[KernelBackend, list]:
    got: list = []
    k = KernelBackend.__new__(KernelBackend)       # no bcc: only the record handling
    k._on_event, k._held = got.append, {}
    return k, got


def test_the_files_of_one_message_are_one_receive_at_its_marker():
    k, got = backend()
    k._record(raw(ev.EV_SCM_RECV, fd=7, fds=(10,), arg2=555, tid=101, file=F1, fkind=1))
    k._flush()                                   # a poll ends between the two: held
    k._record(raw(ev.EV_CLOSE, fd=3, tgid=300, tid=300, file=F2, fkind=1))  # another thread
    k._record(raw(ev.EV_SCM_RECV, fd=7, fds=(12,), arg2=555, tid=101, file=F2, fkind=1))
    assert [type(e).__name__ for e in got] == ["Close"]
    k._record(raw(ev.EV_SCM_RECV, fd=7, fds=(), arg2=555, tid=101))     # the marker
    recv = got[-1]
    assert (type(recv), recv.sock, recv.fds, recv.files) == (ev.ScmRecv, 7, (10, 12), (F1, F2))
    assert recv.queue == 0             # arg2 was the message's id, not a socket


def test_two_messages_of_one_recvmmsg_stay_two():
    k, got = backend()
    for stamp, fd, f in ((1, 10, F1), (2, 11, F2)):
        k._record(raw(ev.EV_SCM_RECV, fd=7, fds=(fd,), arg2=stamp, file=f, fkind=1))
        k._record(raw(ev.EV_SCM_RECV, fd=7, fds=(), arg2=stamp))
    assert [(e.fds, e.files) for e in got] == [((10,), (F1,)), ((11,), (F2,))]


def test_a_send_lists_files_not_fds():
    k, got = backend()
    k._record(raw(ev.EV_SCM_SEND, fd=9, arg2=77, file=F1, fkind=1))
    k._record(raw(ev.EV_SCM_SEND, fd=9, arg2=77, file=F2, fkind=3))
    k._record(raw(ev.EV_SCM_SEND, fd=9, arg2=77))
    (send,) = got
    assert (type(send), send.sock, send.fds, send.files) == (ev.ScmSend, 9, (), (F1, F2))


def test_a_message_whose_marker_was_lost_is_delivered_after_a_while(monkeypatch):
    import tracer.backends.kernel as kb
    k, got = backend()
    k._record(raw(ev.EV_SCM_RECV, fd=7, fds=(10,), arg2=5, file=F1, fkind=1))
    k._flush()
    assert got == []
    monkeypatch.setattr(kb, "HOLD_S", -1.0)
    k._flush()
    assert [e.fds for e in got] == [(10,)]


def test_an_open_is_named_by_the_kind_of_its_file():
    k, got = backend()
    k._record(raw(ev.EV_OPEN, ret=5, arg=ev.O_CLOEXEC, file=F1, fkind=ev.FK_TUN))
    k._record(raw(ev.EV_OPEN, ret=6, file=F2, fkind=ev.FK_VHOST))
    assert [(e.fd, e.path, e.flags, e.file) for e in got] == [
        (5, "/dev/net/tun", ev.O_CLOEXEC, F1), (6, "/dev/vhost-net", 0, F2)]
