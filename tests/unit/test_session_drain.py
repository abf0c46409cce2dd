"""Session.drain's word to the BPF side on receives (scm_settled).

The tracepoint program parses recvmsg only while a send may be in flight; user
space says when none is (Probes.scm_settled). A send older than the last snapshot
but read after it is not kept by the model (the snapshot showed its fds), yet its
message may still be unreceived: /proc cannot show a message in flight, so its
receive must be recorded (it is then taken from /proc as a receive of an unknown
send). Found by the fuzzer: a send read just after a lost-records resync, the peek
that followed it never recorded, its two fds missing for good.

The backend here is a stand-in that delivers crafted records (the thing under
test is the session's decision, not the kernel's); /proc's snapshot is an empty
one, so that the machine's own taps do not enter.
"""

from __future__ import annotations

import time

import pytest

from tracer import events as ev
from tracer import procfs, session
from tracer.probes import BackendInfo


class Probes:
    """What Session asks of a backend; records are delivered from `feed`."""

    info = BackendInfo("fake", "ringbuf", 1, None)

    def __init__(self, on_event) -> None:
        self._on_event = on_event
        self.feed: list[ev.Event] = []
        self.settled = 0

    def poll(self, _timeout_ms: int) -> None:
        feed, self.feed = self.feed, []
        for e in feed:
            self._on_event(e)

    def lost(self) -> int:
        return 0

    def scm_settled(self) -> None:
        self.settled += 1

    def set_interest(self, _pids) -> None:
        pass

    def drop_interest(self, _pid: int) -> None:
        pass

    def close(self) -> None:
        pass


@pytest.fixture
def s(monkeypatch):
    monkeypatch.setattr(session, "open_backend",
                        lambda _choice, on_event, *_a, **_k: (Probes(on_event), None))
    monkeypatch.setattr(procfs, "snapshot", lambda: procfs.Snapshot({}, [], {}, [], []))
    out: list[dict] = []
    sess = session.Session(out.append)
    sess.start()
    return sess


def send(ts: int) -> ev.ScmSend:
    return ev.ScmSend(ts=ts, pid=4242, tid=4242, comm="sender", sock=3, fds=(5,))


def test_nothing_in_flight_settles_receives(s):
    s.probes.feed.append(ev.Close(ts=time.monotonic_ns(), pid=4242, tid=4242, comm="x", fd=9))
    s.step(0)
    assert s.probes.settled == 1


def test_a_send_the_snapshot_came_after_keeps_receives_parsed(s):
    s.probes.feed.append(send(s._times.min_ts - 1))
    s.step(0)
    assert not s.model.pending            # not kept: /proc showed its fds
    assert s.probes.settled == 0          # but its message may be in flight


def test_and_does_so_only_as_long_as_a_send_is_kept(s):
    s.probes.feed.append(send(time.monotonic_ns() - ev.SCM_PENDING_NS - 1))
    s.step(0)
    assert s.probes.settled == 1
