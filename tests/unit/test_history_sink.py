"""The agent's history sink fed by a real Model (records built as the BPF side builds
them, tests/unit/test_model.py's World), written by the real store, read back by
`history`'s queries: holding intervals equal the model's table at every moment."""

from __future__ import annotations

import itertools
import time

from test_model import TAP, World

from tracer import history as hi
from tracer.history_sink import EXACT_ROWS_MAX, HistorySink
from tracer.history_store import HistoryStore, Retention

OFFSET = 1_700_000_000 * 10**9         # wall clock = record time + OFFSET


def start(tmp_path, world: World) -> tuple[HistorySink, str]:
    path = str(tmp_path / "h.db")
    sink = HistorySink(HistoryStore(path, Retention(None, None)))
    world.clock = itertools.count(10**9, 10**6)          # a record every millisecond
    sink.ready({"type": "ready", "ts_ns": next(world.clock), "backend": "tracepoint",
                "own_netns": None}, world.m, OFFSET)
    return sink, path


def feed(sink: HistorySink, world: World, reports: list[dict]) -> float:
    """Hand the sink what the session would; the moment just after, as wall time."""
    for r in reports:
        sink.report(r, world.m)
    return (next(world.clock) + OFFSET) / 1e9


def table(world: World) -> set[tuple]:
    return {(r["pid"], r["fd"], r["ifname"], r["cloexec"], r["how"]) for r in world.m.rows()}


def at(path: str, t: float, ifname: str | None = None) -> set[tuple]:
    con = hi.open_ro(path)
    held, stale = hi.holders_at(con, t, ifname)
    con.close()
    assert stale == []
    return {(h.row["pid"], h.row["fd"], h.row["ifname"], h.row["cloexec"], h.row["how"])
            for h in held}


def test_intervals_follow_a_libvirt_style_handoff_report_by_report(tmp_path):
    w = World().named(libvirtd=10)
    sink, path = start(tmp_path, w)
    moments = []
    for step in (lambda: w.tap(10, 27, "vnet0", cloexec=True),
                 lambda: w.fork(10, 11),
                 lambda: w.setfd(11, 27, False),
                 lambda: w.exec(11, "qemu-system-x86"),
                 lambda: w.close(10, 27),
                 lambda: w.dup(11, 27, 30),
                 lambda: w.close(11, 27),
                 lambda: w.exit(11)):
        moments.append((feed(sink, w, step()), table(w)))
    sink.close()
    assert [len(truth) for _t, truth in moments] == [1, 2, 2, 2, 1, 2, 1, 0]
    for t, truth in moments:
        assert at(path, t) == truth, t
        assert at(path, t, "vnet0") == {x for x in truth if x[2] == "vnet0"}
    con = hi.open_ro(path)
    lineage = hi.lineage(con, "vnet0", 0, 1e12)
    qemu = [h for h in lineage if h.row["pid"] == 11]
    assert [h.row["comm"] for h in qemu][-1] == "qemu-system-x86"
    assert [hop["op"] for hop in qemu[-1].chain][:2] == ["open", "fork"]


def test_a_large_table_is_compared_once_a_turn(tmp_path):
    """Above EXACT_ROWS_MAX rows a report does not compare the table; the loop's turn
    does (stamped with its own time), and nothing is lost."""
    w = World()
    sink, path = start(tmp_path, w)
    for pid in range(1000, 1000 + EXACT_ROWS_MAX + 10):
        feed(sink, w, w.tap(pid, 3, f"t{pid}"))
    sink.tick(w.m)
    before = time.time()
    feed(sink, w, w.fork(1000, 999))
    assert len(sink._pending) == 0 and sink._behind
    sink.tick(w.m)
    after = time.time()
    sink.close()
    con = hi.open_ro(path)
    (child,) = [h for h in hi.lineage(con, "t1000", 0, 1e12) if h.row["pid"] == 999]
    assert before <= child.since <= after


def test_a_row_that_changes_is_a_new_interval_but_a_fork_elsewhere_is_not(tmp_path):
    w = World()
    sink, _path = start(tmp_path, w)
    feed(sink, w, w.tap(10, 3, "vnet0", TAP, cloexec=True))
    n = sink.store.next_interval
    feed(sink, w, w.fork(10, 11))            # 10's row: only shared_with changed
    assert sink.store.next_interval == n + 1                   # the child's, alone
    feed(sink, w, w.setfd(10, 3, False))     # 10's row: cloexec changed
    assert sink.store.next_interval == n + 2
    sink.close()
