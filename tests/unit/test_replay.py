"""A real kernel recording (`taptrace watch --record` over `python -m tracer.demo`)
replays through the model, with no kernel, to the same story and the same table; a
recording is written only where it is safe to, and a failed write costs only the rest."""

from __future__ import annotations

import itertools
import json
import os
import stat
from pathlib import Path

import pytest

from tracer import events as ev
from tracer.replay import Recorder, RecordError, ReplayError, open_recording, replay

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo.record.jsonl"


def lines_until(kind: str, nth: int = 1) -> list[str]:
    """The recording cut just after the nth record of that kind."""
    out, seen = [], 0
    for line in DEMO.read_text().splitlines():
        out.append(line)
        if json.loads(line).get("kind") == kind:
            seen += 1
            if seen == nth:
                break
    return out


def test_the_demo_replays_to_the_recorded_story():
    model, reports = replay(DEMO.read_text().splitlines())
    story = [(r["type"], r.get("ifname")) for r in reports if not r.get("quiet")]
    assert story[:4] == [("open", None), ("tunsetiff", "ttdemo0"), ("open", None),
                         ("tunsetiff", "ttdemo1")]
    kinds = [t for t, _ in story]
    assert kinds.index("fork") < kinds.index("exec") < kinds.index("scm_recv")
    enotty = [r for r in reports if r["type"] == "tungetiff" and r["error"] == "ENOTTY"]
    assert len(enotty) == 1 and enotty[0]["message"].endswith("is not a tap (ENOTTY)")
    assert sorted(r["ifname"] for r in reports if r["type"] == "tap_gone") == [
        "ttdemo0", "ttdemo1", "ttdemo1"]
    assert model.rows() == [] and model.taps == {}


def test_mid_recording_the_qemu_stand_in_holds_both_taps():
    model, reports = replay(lines_until("ScmRecv"))
    recv = next(r for r in reports if r["type"] == "scm_recv")
    qemu = recv["pid"]
    rows = {r["fd"]: r for r in model.rows() if r["pid"] == qemu}
    inherited = next(r for r in rows.values() if r["ifname"] == "ttdemo0")
    received = next(r for r in rows.values() if r["ifname"] == "ttdemo1")
    assert inherited["how"] == "inherited" and inherited["cloexec"] is False
    assert received["how"] == "received" and received["from_pid"] == recv["from_pid"]
    assert inherited["creator_pid"] == received["creator_pid"] == recv["from_pid"]
    # the hot-plugged file went libvirtd -> qemu: the sender's fd is still open here
    assert any(r["pid"] == recv["from_pid"] and r["ifname"] == "ttdemo1"
               for r in model.rows())


def test_every_recorded_event_round_trips():
    for line in itertools.islice(DEMO.read_text().splitlines(), 1, None):
        rec = json.loads(line)
        rec.pop("probe", None)
        assert json.loads(json.dumps(ev.to_record(ev.from_record(rec)))) == rec


def test_namespace_answers_replay_under_both_keys():
    """A record's own namespace (read in the kernel) and the answers the tracer read
    for it travel apart ("netns", "ns_asked"); recordings made before records had a
    namespace keep the answers under "netns" and still replay."""
    from tracer.replay import parse

    base = {"kind": "TunIoctl", "ts": 1, "pid": 7, "tid": 7, "comm": "slirp4netns",
            "fd": 3, "cmd": ev.TUNSETIFF, "ret": 0, "ifname": "tap0", "value": 2}
    e, _probe, asked = parse({**base, "netns": 4026532245,
                              "ns_asked": [[7, 3, 4026532245, "ctr"]]})
    assert e.netns == 4026532245 and asked == [((7, 3), (4026532245, "ctr"))]
    e, _probe, asked = parse({**base, "netns": [[7, 3, 4026532245, "ctr"]]})
    assert e.netns == 0 and asked == [((7, 3), (4026532245, "ctr"))]


@pytest.mark.parametrize("bad", ["not json", '{"kind": "Nope"}', '{"kind": "Close"}'])
def test_a_bad_recording_is_one_clear_error(bad):
    with pytest.raises(ReplayError):
        replay(lines_until("snapshot") + [bad])


# ---- writing: where a recording may go, and a write that fails ------------------

def test_a_recording_is_created_0600_and_never_replaces_a_file_unasked(tmp_path):
    path = tmp_path / "rec.jsonl"
    old = os.umask(0)
    try:
        os.close(open_recording(str(path)))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.write_text("kept\n")
    with pytest.raises(RecordError, match="exists; --overwrite"):
        open_recording(str(path))
    assert path.read_text() == "kept\n"
    path.chmod(0o644)
    os.close(open_recording(str(path), overwrite=True))
    assert path.read_text() == "" and stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize("kind", ["symlink", "dangling", "fifo", "hardlink", "dir"])
def test_a_recording_is_never_written_through_what_someone_put_there(tmp_path, kind):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    path = tmp_path / "rec.jsonl"
    if kind == "symlink":
        path.symlink_to(victim)
    elif kind == "dangling":
        path.symlink_to(tmp_path / "created")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "hardlink":
        os.link(victim, path)
    else:
        path.mkdir()
    for overwrite in (False, True):
        with pytest.raises(RecordError):      # and a FIFO does not block it
            open_recording(str(path), overwrite=overwrite)
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "created").exists()


@pytest.mark.parametrize("target", ["/dev/full", "closed-pipe"])
def test_a_failed_write_stops_recording_once_and_keeps_what_was_written(target):
    if target == "/dev/full":
        fd = os.open("/dev/full", os.O_WRONLY)
        why = "No space left on device"
    else:
        r, fd = os.pipe()
        os.close(r)
        why = "Broken pipe"
    said: list[str] = []
    rec = Recorder(fd, "rec\x1b.jsonl", said.append)
    for i in range(3):
        rec({"kind": "Close", "fd": i})
    rec.close()
    assert rec.failed == why and rec.records == 0 and rec.size == 0
    assert len(said) == 1 and why in said[0] and "rec\\x1b.jsonl" in said[0]


def test_every_record_is_one_whole_line_in_the_file_at_once(tmp_path):
    path = tmp_path / "rec.jsonl"
    rec = Recorder(open_recording(str(path)), str(path), pytest.fail)
    lines = DEMO.read_text().splitlines()
    for line in lines:
        rec(json.loads(line))
        assert path.read_text().count("\n") == rec.records   # unbuffered: no loss on kill
    rec.close()
    model, _ = replay(path.read_text().splitlines())
    assert model.rows() == [] and rec.size == os.path.getsize(path)


def test_a_table_read_again_after_a_fork_replays():
    """A fork older than the snapshot's read of its parent's table: the tracer read
    the child's table from /proc ("reread"); a replay puts the same table there,
    not the copy of what the parent did after the fork."""
    snap = {"procs": {"1": {"pid": 1, "ppid": 0, "comm": "p", "cmdline": ["p"], "uid": 0}},
            "fds": [{"pid": 1, "fd": 3, "path": "/dev/net/tun", "ifname": "a",
                     "cloexec": False, "flags": 2, "netns": None},
                    {"pid": 1, "fd": 4, "path": "/dev/net/tun", "ifname": "b",
                     "cloexec": False, "flags": 2, "netns": None}],
            "taps": {}, "files": [[[1, 3]], [[1, 4]]], "tables": [[1]]}
    lines = [json.dumps({"kind": "snapshot", "ts": 1, "snapshot": snap}),
             json.dumps({"kind": "Fork", "ts": 2, "pid": 1, "tid": 1, "comm": "p",
                         "child": 2, "flags": 17}),
             json.dumps({"kind": "reread", "ts": 2, "pid": 2, "fds": [[3, "a", False]]})]
    model, _reports = replay(lines)
    assert sorted((r["pid"], r["fd"], r["ifname"]) for r in model.rows()) == [
        (1, 3, "a"), (1, 4, "b"), (2, 3, "a")]
    rows = {(r["pid"], r["fd"]): r for r in model.rows()}
    assert rows[(2, 3)]["file"] == rows[(1, 3)]["file"]       # the fork's copy
    assert rows[(2, 3)]["how"] == "inherited"
    with pytest.raises(ReplayError, match="line 2: fds"):
        replay([lines[0], lines[2].replace('[[3, "a"', '[["x", "a"')])


def test_a_process_adopted_through_its_thread_replays():
    """A process first seen through one of its threads: the tracer named it from
    /proc first ("adopt"), so the thread's record applied to a known process - and
    the thread's own table (kcmp, recorded) is the thread's, not the leader's. A
    replay does the same, not what a process unknown until that record would get."""
    snap = {"procs": {}, "fds": [], "taps": {}, "files": [], "tables": []}
    lines = [json.dumps({"kind": "snapshot", "ts": 1, "snapshot": snap}),
             json.dumps({"kind": "adopt", "pid": 10, "comm": "qemu", "ppid": 1}),
             json.dumps({"kind": "Open", "ts": 2, "pid": 10, "tid": 11, "comm": "worker",
                         "fd": 5, "path": "/dev/net/tun", "flags": 2,
                         "tables_asked": [[11, [[5, "a", False]]]]})]
    model, _reports = replay(lines)
    proc = model.procs[10]
    assert (proc.comm, proc.ppid) == ("qemu", 1)
    assert proc.table.fds == {} and sorted(proc.thread_tables[11].fds) == [5]
    model, _reports = replay([lines[0], lines[2]])   # not adopted: the leader's table
    assert sorted(model.procs[10].table.fds) == [5]
    with pytest.raises(ReplayError, match="line 2: unknown field 'x'"):
        replay([lines[0], lines[1].replace('"ppid"', '"x": 1, "ppid"')])


def test_a_snapshot_with_a_thread_s_own_table_replays():
    """The snapshot's `threads` (a thread whose fd table is not its leader's, its fds
    listed under its tid) round-trips through a recording: the replay has its rows."""
    import dataclasses

    from tracer.procfs import FdInfo, ProcInfo, Snapshot

    snap = Snapshot(procs={1: ProcInfo(1, 0, "p", ("p",), 0)},
                    fds=[FdInfo(1, 3, "/dev/net/tun", "a", False, 2),
                         FdInfo(7, 4, "/dev/net/tun", "b", True, 0o2000002)],
                    taps={}, files=[[(1, 3)], [(7, 4)]], tables=[[1], [7, 8]],
                    read_ns={1: 5, 7: 6}, threads={7: 1, 8: 1})
    line = json.dumps({"kind": "snapshot", "ts": 1, "snapshot": dataclasses.asdict(snap)})
    close = json.dumps({"kind": "Close", "ts": 2, "pid": 1, "tid": 8, "comm": "p", "fd": 4})
    model, _ = replay([line])
    assert [(r["pid"], r["tid"], r["fd"], r["ifname"]) for r in model.rows()] == [
        (1, None, 3, "a"), (1, 7, 4, "b")]
    model, reports = replay([line, close])          # thread 8 uses 7's table
    assert [(r["pid"], r["tid"], r["fd"]) for r in model.rows()] == [(1, None, 3)]
    assert [r["type"] for r in reports] == ["close"]


def test_a_resync_replays_with_the_answers_it_had():
    """A resync keeps a CLONE_FILES sharer the snapshot does not list where it still
    runs (procfs.alive), unless kcmp says it parted; neither can be asked in a
    replay, so the snapshot record carries the answers ("resync_asked"), and the
    replay's table is the live one's."""
    tun = {"path": "/dev/net/tun", "cloexec": False, "flags": 2, "netns": None}
    proc = {"ppid": 0, "comm": "p", "cmdline": ["p"], "uid": 0}
    first = {"procs": {"1": {"pid": 1, **proc}}, "fds": [{"pid": 1, "fd": 3, "ifname": "a",
                                                          **tun}],
             "taps": {}, "files": [[[1, 3]]], "tables": [[1]]}
    # 2 holds no tun fd by then: listed no more
    again = {**first, "procs": {"1": {"pid": 1, **proc}}}
    lines = [json.dumps({"kind": "snapshot", "ts": 1, "snapshot": first}),
             json.dumps({"kind": "Fork", "ts": 2, "pid": 1, "tid": 1, "comm": "p",
                         "child": 2, "flags": ev.CLONE_FILES | 17})]

    def resync(asked=None):
        rec = {"kind": "snapshot", "ts": 3, "snapshot": again}
        if asked is not None:
            rec["resync_asked"] = asked
        return json.dumps(rec)

    def rows(model):
        return sorted((r["pid"], r["fd"]) for r in model.rows())

    model, _ = replay([*lines, resync({"alive": [2]})])
    assert rows(model) == [(1, 3), (2, 3)]              # still sharing
    model, _ = replay([*lines, resync({"alive": [2], "parted": [[2, 1]]})])
    assert rows(model) == [(1, 3)]                      # unshared, its record lost
    model, _ = replay([*lines, resync()])               # recorded without answers
    assert rows(model) == [(1, 3)]
    for bad, says in [([], "resync_asked: a array"),
                      ({"one_table": [1]}, "resync_asked.one_table"), ({"x": []}, "resync_asked: unknown field 'x'"),
                      ({"alive": ["2"]}, "resync_asked.alive"),
                      ({"parted": [[2]]}, "resync_asked.parted")]:
        with pytest.raises(ReplayError, match=f"line 3: {says}"):
            replay([*lines, resync(bad)])
