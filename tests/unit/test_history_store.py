"""The history database, written by its own writer thread and read back by
`taptrace history`'s queries: a real SQLite file in a temporary directory."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tracer import history as hi
from tracer.history_store import (
    HistoryError,
    HistoryStore,
    Retention,
    connect_rw,
    create_or_check,
    retain,
)

NOW = time.time()
ROOT = Path(__file__).resolve().parents[2]
KEEP_ALL = Retention(None, None)


def row(pid: int, fd: int, ifname: str, **kw) -> dict:
    return {"pid": pid, "comm": "qemu", "fd": fd, "ifname": ifname, "kind": "tap",
            "flags": [], "cloexec": False, "file": 1, "creator_pid": 10,
            "creator_comm": "libvirtd", "how": "opened", "from_pid": None, "from_fd": None,
            "shared_with": [], "netns": None, "vm": kw.pop("vm", None), **kw}


class Writer:
    """What the agent's sink does, by hand: ids handed out here, rows to the store."""

    def __init__(self, path: str, retention: Retention = KEEP_ALL) -> None:
        self.store = HistoryStore(path, retention)
        self.run = self.store.next_run

    def start(self, t: float) -> None:
        self.store.put("run", (self.run, t, t, 1, "host", "tracepoint", 4026531840, "0"))

    def event(self, t: float, type_: str, pid: int, ifname: str | None, *more: str) -> int:
        eid = self.store.next_event
        self.store.next_event += 1
        data = {"v": 1, "type": type_, "time": t, "pid": pid, "ifname": ifname}
        if more:
            data["ifnames"] = [ifname, *more]
        self.store.put("event", (eid, self.run, t, type_, pid, ifname, None, json.dumps(data)))
        for name in more:
            self.store.put("event_ifname", (name, eid))
        return eid

    def open(self, t: float, r: dict, until: float | None = None) -> int:
        iid = self.store.next_interval
        self.store.next_interval += 1
        self.store.put("open", (iid, self.run, t, until, r["pid"], r["fd"], r["file"],
                                r["ifname"], None, r["comm"], r["kind"], r.get("vm"),
                                r["creator_pid"], r["creator_comm"], json.dumps(r),
                                json.dumps([{"op": "open", "pid": 10, "comm": "libvirtd",
                                             "fd": 3}])))
        return iid

    def close_interval(self, t: float, iid: int) -> None:
        self.store.put("close", (t, iid))

    def seen(self, t: float) -> None:
        self.store.put("seen", (t, self.run))

    def stop(self, t: float | None = None) -> None:
        if t is not None:
            self.store.put("stop", (t, t, self.run))
        self.store.close()


def test_a_new_database_is_0600_in_a_0700_directory(tmp_path):
    path = tmp_path / "var" / "lib" / "taptrace" / "history.db"
    old = os.umask(0)
    try:
        Writer(str(path)).stop()
    finally:
        os.umask(old)
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"


def test_a_planted_symlink_is_refused_and_its_target_untouched(tmp_path):
    target = tmp_path / "victim"
    link = tmp_path / "history.db"
    link.symlink_to(target)
    with pytest.raises(HistoryError, match="symbolic link"):
        create_or_check(str(link))
    assert not target.exists()
    target.write_text("precious")
    with pytest.raises(HistoryError, match="symbolic link"):
        connect_rw(str(link))
    assert target.read_text() == "precious"


def test_a_symlinked_wal_is_refused(tmp_path):
    path = tmp_path / "history.db"
    (tmp_path / "history.db-wal").symlink_to(tmp_path / "victim")
    with pytest.raises(HistoryError, match="history.db-wal is a symbolic link"):
        create_or_check(str(path))


def test_another_programs_database_is_not_written(tmp_path):
    path = tmp_path / "other.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE t(x)")
    con.commit()
    con.close()
    with pytest.raises(HistoryError, match="not a taptrace history database"):
        connect_rw(str(path))
    with pytest.raises(HistoryError, match="not a taptrace history database"):
        hi.open_ro(str(path))


@pytest.mark.parametrize("content", [b"", b"hello\n", b"SQLite format 3\x00" + bytes(200)])
def test_history_refuses_what_is_not_a_history_in_one_line(tmp_path, content):
    path = tmp_path / "x.db"
    path.write_bytes(content)
    with pytest.raises(HistoryError) as info:
        hi.open_ro(str(path))
    assert "\n" not in str(info.value)


def test_history_of_a_missing_file(tmp_path):
    with pytest.raises(HistoryError, match="no history database at"):
        hi.open_ro(str(tmp_path / "none.db"))


def test_at_is_the_holders_of_that_moment(tmp_path):
    path = str(tmp_path / "h.db")
    w = Writer(path)
    w.start(100.0)
    creator = w.open(100.0, row(10, 3, "vnet0", comm="libvirtd"))
    w.close_interval(101.0, creator)
    w.open(100.5, row(20, 27, "vnet0", vm="web1"))
    other = w.open(100.5, row(30, 5, "vnet1"))
    w.close_interval(102.0, other)
    w.seen(200.0)
    w.stop(200.0)
    con = hi.open_ro(path)
    held = lambda t, **kw: [(h.row["pid"], h.row["fd"]) for h in hi.holders_at(
        con, t, **kw)[0]]
    assert held(99.0, ifname="vnet0") == []
    assert held(100.7, ifname="vnet0") == [(10, 3), (20, 27)]
    assert held(101.0, ifname="vnet0") == [(20, 27)]        # until is exclusive
    assert held(150.0) == [(20, 27)]
    assert held(100.7, vm="web1") == [(20, 27)]
    assert held(100.7, pid=30) == [(30, 5)]
    assert hi.holders_at(con, 250.0, ifname="vnet0")[1][0].row["pid"] == 20   # at least


def test_a_killed_run_holds_at_least_until_last_seen_and_a_later_run_takes_over(tmp_path):
    path = str(tmp_path / "h.db")
    w = Writer(path)
    w.start(100.0)
    w.open(100.0, row(20, 27, "vnet0"))
    w.seen(150.0)
    w.stop()                                   # no stop time: killed
    w = Writer(path)
    assert w.run == 2
    w.start(300.0)
    w.open(300.0, row(21, 27, "vnet0"))
    w.seen(400.0)
    w.stop(400.0)
    con = hi.open_ro(path)
    held, stale = hi.holders_at(con, 200.0, ifname="vnet0")
    assert (held, [h.row["pid"] for h in stale]) == ([], [20])
    assert stale[0].last_seen == 150.0
    held, stale = hi.holders_at(con, 350.0, ifname="vnet0")
    assert ([h.row["pid"] for h in held], stale) == ([21], [])
    text = "\n".join(hi.table_lines(*hi.holders_at(con, 200.0, ifname="vnet0"), 200.0,
                                    "vnet0", None, hi.covered(con, 200.0)))
    assert "held at least until" in text


def test_window_filters_by_ifname_including_the_other_names_of_an_event(tmp_path):
    path = str(tmp_path / "h.db")
    w = Writer(path)
    w.start(100.0)
    w.event(100.0, "tunsetiff", 10, "vnet0")
    w.event(101.0, "fork", 10, "vnet1", "vnet0")          # names both
    w.event(102.0, "close", 11, "vnet1")
    w.event(103.0, "close", 10, "vnet0")
    w.stop(110.0)
    con = hi.open_ro(path)
    types = lambda objs: [(o["type"], o["time"]) for o in objs]
    assert types(hi.window(con, 0, 1e12, ifname="vnet0")) == [
        ("tunsetiff", 100.0), ("fork", 101.0), ("close", 103.0)]
    assert types(hi.window(con, 100.5, 102.5, ifname="vnet0")) == [("fork", 101.0)]
    assert types(hi.window(con, 0, 1e12, pid=11)) == [("close", 102.0)]
    assert types(hi.window(con, 0, 1e12, ifname="vnet1", pid=10)) == [("fork", 101.0)]


def test_lineage_joins_the_pieces_a_row_change_split(tmp_path):
    path = str(tmp_path / "h.db")
    w = Writer(path)
    w.start(100.0)
    a = w.open(100.0, row(20, 27, "vnet0", cloexec=True))
    w.close_interval(101.0, a)
    b = w.open(101.0, row(20, 27, "vnet0", cloexec=False))
    w.close_interval(105.0, b)
    w.open(106.0, row(20, 27, "vnet0"))       # a new holding later: another line
    w.stop(110.0)
    con = hi.open_ro(path)
    got = [(h.since, h.until, h.row["cloexec"]) for h in hi.lineage(con, "vnet0", 0, 1e12)]
    assert got == [(100.0, 105.0, False), (106.0, None, False)]


def test_retention_by_age_deletes_only_what_is_older(tmp_path):
    path = str(tmp_path / "h.db")
    w = Writer(path)
    w.start(NOW - 10 * 86400)
    for i in range(50):
        w.event(NOW - 10 * 86400 + i, "close", 1, "vnet0")
        w.event(NOW - 60 + i, "close", 1, "vnet0")
    old = w.open(NOW - 10 * 86400, row(1, 3, "vnet0"))
    w.close_interval(NOW - 9 * 86400, old)
    w.open(NOW - 9 * 86400, row(2, 3, "vnet0"))           # still held: kept
    w.stop()
    con = sqlite3.connect(path, isolation_level=None)
    gone = retain(con, Retention(keep_s=86400, max_bytes=None), NOW)
    assert gone == {"events": 50, "findings": 0, "intervals": 1}
    assert con.execute("SELECT min(time) FROM events").fetchone()[0] >= NOW - 60
    assert con.execute("SELECT pid FROM intervals").fetchall() == [(2,)]
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_retention_by_size_deletes_the_oldest_until_under(tmp_path):
    path = str(tmp_path / "h.db")
    w = Writer(path)
    w.start(NOW - 1000)
    pad = "x" * 400
    for i in range(20000):
        w.event(NOW - 1000 + i * 0.01, "close", 1, "vnet0", )
    for i in range(2000):
        w.store.put("finding", (w.run, NOW - 1000 + i * 0.1, "appeared", "leak", "vnet0",
                                1, 3, "x", pad, "{}"))
    w.stop()
    size = os.path.getsize(path)
    limit = size // 4
    con = sqlite3.connect(path, isolation_level=None)
    newest = con.execute("SELECT max(time) FROM events").fetchone()[0]
    gone = retain(con, Retention(keep_s=None, max_bytes=limit), NOW)
    con.close()
    assert gone["events"] > 0 and gone["findings"] > 0
    assert os.path.getsize(path) <= limit            # the file itself shrank
    con = sqlite3.connect(path)
    assert con.execute("SELECT max(time) FROM events").fetchone()[0] == newest   # oldest went
    assert con.execute("SELECT count(*) FROM events").fetchone()[0] > 1000
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_batch_is_all_there_or_not(tmp_path):
    """Rows put before close() are all written; reopening continues the ids."""
    path = str(tmp_path / "h.db")
    w = Writer(path)
    w.start(1.0)
    for i in range(12345):
        w.event(1.0 + i, "close", 1, "vnet0")
    w.stop(2.0)
    con = sqlite3.connect(path)
    assert con.execute("SELECT count(*), max(id) FROM events").fetchone() == (12345, 12345)
    con.close()
    w = Writer(path)
    assert (w.store.next_event, w.run) == (12346, 2)
    w.stop()


@pytest.mark.parametrize("text,want", [
    ("1764468600", 1764468600.0), ("1764468600.25", 1764468600.25),
    ("2026-11-30T02:10:00+00:00", 1796004600.0), ("2026-11-30T02:10:00Z", 1796004600.0),
    ("2026-11-30 03:10:00+01:00", 1796004600.0)])
def test_times(text, want):
    assert hi.parse_time(text) == want


@pytest.mark.parametrize("text", ["yesterday", "", "2026-13-01", "1e9", "-5", "nan"])
def test_bad_times(text):
    with pytest.raises(ValueError):
        hi.parse_time(text)


def test_printed_strings_are_escaped():
    line = hi.item_line({"v": 1, "type": "close", "time": 100.0, "pid": 1, "tid": 1,
                         "comm": "ev\x1b[2Jil", "fd": 3, "ifname": "tap\x07", "how": "close"},
                        None)
    assert "\x1b" not in line and "\x07" not in line and "\\x1b" in line
    f = hi.item_line({"type": "finding", "time": 1.0, "state": "appeared", "kind": "leak",
                      "message": "a\nb\x9b"}, None)
    assert "\n" not in f and "\x9b" not in f


def test_at_puts_back_who_shares_the_open_file(tmp_path):
    """shared_with is not stored (a fork would rewrite every holder's row): --at gives
    it from the other holders of the same open file at that moment."""
    path = str(tmp_path / "h.db")
    w = Writer(path)
    w.start(100.0)
    w.open(100.0, row(10, 3, "vnet0", file=7))
    child = w.open(101.0, row(11, 3, "vnet0", file=7, how="inherited"))
    w.open(101.0, row(12, 4, "vnet0", file=8))             # the same tap, another file
    w.close_interval(102.0, child)
    w.seen(200.0)
    w.stop(200.0)
    con = hi.open_ro(path)
    share = lambda t, **kw: {(h.row["pid"], h.row["fd"]): (h.row["shared_with"],
                             h.row["shared_count"]) for h in hi.holders_at(con, t, **kw)[0]}
    assert share(101.5, ifname="vnet0") == {(10, 3): ([[11, 3]], 1), (11, 3): ([[10, 3]], 1),
                                            (12, 4): ([], 0)}
    assert share(101.5, pid=11) == {(11, 3): ([[10, 3]], 1)}
    assert share(103.0) == {(10, 3): ([], 0), (12, 4): ([], 0)}
    keys = list(hi.holders_at(con, 101.5, pid=11)[0][0].row)
    assert keys.index("shared_with") == keys.index("from_fd") + 1     # where ls puts it


def test_at_names_a_thread_s_own_table_among_who_shares_the_file(tmp_path):
    """A row of a thread's own fd table (tid) shares as ls says it: [pid, fd, tid];
    a row written before rows had a tid is the process's table."""
    path = str(tmp_path / "h.db")
    w = Writer(path)
    w.start(100.0)
    w.open(100.0, row(10, 3, "vnet0", file=7))                    # no tid: older rows
    w.open(100.0, row(10, 3, "vnet0", file=7, tid=15, how="snapshot"))
    w.open(100.0, row(11, 5, "vnet0", file=7, tid=None))
    w.seen(200.0)
    w.stop(200.0)
    con = hi.open_ro(path)
    got = {(h.row["pid"], h.row.get("tid"), h.row["fd"]): h.row["shared_with"]
           for h in hi.holders_at(con, 150.0)[0]}
    assert got == {(10, None, 3): [[10, 3, 15], [11, 5]], (10, 15, 3): [[10, 3], [11, 5]],
                   (11, None, 5): [[10, 3], [10, 3, 15]]}
    assert [(h.row["pid"], h.row.get("tid")) for h in hi.holders_at(con, 150.0)[0]] == [
        (10, None), (10, 15), (11, None)]


def test_a_row_sqlite_will_not_take_costs_that_row_only(tmp_path):
    path = str(tmp_path / "h.db")
    said: list[str] = []
    store = HistoryStore(path, KEEP_ALL, on_error=said.append)
    store.put("event", (1, 1, 1.0, "close", 1, "vnet0", None, "{}"))
    store.put("event", (2, 1, 2.0, "close", 1 << 70, "vnet0", None, "{}"))   # too big
    store.put("event", (3, 1, 3.0, "close", 1, "vnet0", None, "{}"))
    store.close()
    assert (store.skipped, len(said)) == (1, 1)
    con = sqlite3.connect(path)
    assert con.execute("SELECT id FROM events").fetchall() == [(1,), (3,)]


def taptrace(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracer", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def test_the_command_escapes_a_hostile_history_and_says_damage_in_one_line(tmp_path):
    path = str(tmp_path / "h.db")
    w = Writer(path)
    w.start(100.0)
    w.open(100.0, {**row(10, 3, "vnet0", comm="evil\x1b]0;pwned\x07"), "kind": "tap",
                   "flags": [], "cloexec": False, "shared_with": [], "owner": None,
                   "group": None})
    w.event(100.0, "close", 10, "vnet0")
    w.seen(200.0)
    w.stop(200.0)
    out = taptrace("history", "vnet0", "--at", "150", "--db", path)
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout and "\x07" not in out.stdout
    assert "evil\\x1b]0;pwned\\x07" in out.stdout
    con = sqlite3.connect(path)
    con.execute("UPDATE intervals SET row = '{\"pid\": 1}'")
    con.commit()
    con.close()
    out = taptrace("history", "vnet0", "--at", "150", "--db", path)
    assert out.returncode == 1 and len(out.stderr.splitlines()) == 1
    assert "damaged row" in out.stderr
    for bad in ("yesterday", "2026-13-01"):
        out = taptrace("history", "--at", bad, "--db", path)
        assert out.returncode == 2 and "is not a time" in out.stderr


def test_one_writer_a_database(tmp_path):
    path = str(tmp_path / "h.db")
    first = HistoryStore(path, KEEP_ALL)
    with pytest.raises(HistoryError, match="another taptrace agent writes"):
        HistoryStore(path, KEEP_ALL)
    first.close()
    HistoryStore(path, KEEP_ALL).close()          # free again once it stopped
