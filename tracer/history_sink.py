"""The agent's history sink: what the agent sees, as rows for the history database.

Every report goes in as `watch --json` prints it. The holding intervals come from
the model's table (`Model.rows`, the rows `ls --json` prints): after each report
the table is compared with the one before, and a row that appeared opens an
interval (enriched as `ls` enriches it, with the open file's chain), one that went
away closes its interval, both stamped with the report's time. A row whose fields
changed (close-on-exec cleared, its comm after an exec) closes and reopens, so
`history --at T` gives the rows as they were at T. (Above EXACT_ROWS_MAX rows the
comparison waits for the loop's turn: see there.) Who else shares the open file
(`shared_with`) is no part of a row's identity: a fork would reopen every holder's
interval; `history` puts it back from the other holders of the same file at T.
A chain longer than CHAIN_KEEP hops (a file passed around thousands of times) keeps
its first and last hops and says how many it left out.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass

from . import __version__, render
from .audit import Finding
from .enrich import enrich_rows, libvirt_nics
from .history_store import HistoryStore
from .model import Model, OpenFile, iter_ifnames

NICS_EVERY_S = 2.0
SEEN_EVERY_S = 1.0
PENDING_MAX = 1000          # intervals opened in one turn before they are written
# Comparing the table costs about 6 µs a row. Up to this many rows it is done after
# every report (holdings exact to the report); above, once per loop turn (stamped
# with the turn's time: up to 100 ms late, and a holding shorter than a turn can be
# missed), so a host with thousands of tap fds keeps up with a burst.
EXACT_ROWS_MAX = 128
QUIET_DIFF_S = 1.0          # a large table with no report: compared once a second
CHAIN_KEEP = (2, 4)         # the first and the last hops of a long chain
# reports after which the table is as it was (a probe, a send: the fds stay where they
# are; a loss is followed by its resync report)
TABLE_KEEPS = frozenset({"tungetiff", "scm_send", "lost", "tap_gone"})
# a row's fields that are not part of its identity (see above)
NOT_IDENTITY = frozenset({"shared_with", "shared_count"})


def _dump(obj) -> str:
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":"))


def identity(row: dict) -> tuple:
    """What makes two rows of the model's table the same holding, unchanged (a list's
    repr stands for it: rows hold lists of numbers, strings and small dicts)."""
    return tuple(repr(v) if isinstance(v, list) else v
                 for k, v in row.items() if k not in NOT_IDENTITY)


def clip_chain(hops: list[dict]) -> list[dict]:
    """A chain as stored: at most CHAIN_KEEP's hops, a `skipped` marker between."""
    first, last = CHAIN_KEEP
    if len(hops) <= first + last + 1:
        return hops
    return [*hops[:first], {"op": "skipped", "count": len(hops) - first - last},
            *hops[-last:]]


def _scalar_netns(report: dict) -> int | None:
    ns = report.get("netns")
    return ns if isinstance(ns, int) else None


class HistorySink:
    """An AgentSink (tracer/agent_sink.py) writing to a HistoryStore."""

    def __init__(self, store: HistoryStore) -> None:
        self.store = store
        self.run = store.next_run
        self.offset = 0
        self._open: dict[tuple, int] = {}      # row's identity -> its interval id
        self._pending: dict[int, _Pending] = {}
        self._nics: dict = {}
        self._nics_at = float("-inf")
        self._seen_at = float("-inf")
        self._model: Model | None = None
        self._behind = False                   # a report's change not compared yet
        self._diffed_at = float("-inf")
        self.diff_ns = 0                       # time spent comparing tables
        self.diffs = 0

    # ---- AgentSink ---------------------------------------------------------

    def ready(self, report: dict, model: Model, clock_offset_ns: int) -> None:
        self.offset = clock_offset_ns
        self._model = model
        pub = render.public(report, clock_offset_ns)
        now = pub.get("time", time.time())
        self.store.put("run", (self.run, now, now, os.getpid(), socket.gethostname(),
                               report.get("backend"), report.get("own_netns"), __version__))
        self._event({**pub, "time": now})
        self._diff(model, now)          # the snapshot's rows open intervals

    def report(self, report: dict, model: Model) -> None:
        pub = render.public(report, self.offset)
        now = pub.get("time")
        if now is None:
            now = pub["time"] = time.time()
        self._event(pub)
        if report["type"] not in TABLE_KEEPS:
            if len(self._open) <= EXACT_ROWS_MAX:
                self._diff(model, now)
            else:
                self._behind = True

    def findings(self, appeared: list[Finding], cleared: list[Finding],
                 model: Model) -> None:
        now = time.time()
        for state, found in (("appeared", appeared), ("cleared", cleared)):
            for f in found:
                fields = f.fields()
                at = now if state == "cleared" else fields.get("time", now)
                self.store.put("finding", (
                    self.run, at, state, f.kind, f.ifname, f.pid, f.fd, f.comm, f.message,
                    _dump({"v": render.SCHEMA_VERSION, "type": "finding", "state": state,
                           "time": at, **fields})))

    def tick(self, model: Model) -> None:
        now = time.time()
        # what a report left for the turn (a large table), or changed with none (a
        # quiet record): each turn while the table is small, else once a second
        if self._behind or len(self._open) <= EXACT_ROWS_MAX or \
                time.monotonic() - self._diffed_at >= QUIET_DIFF_S:
            self._diff(model, now)
        self._flush(model)
        if time.monotonic() - self._seen_at >= SEEN_EVERY_S:
            self._seen_at = time.monotonic()
            self.store.put("seen", (now, self.run))

    def close(self) -> None:
        now = time.time()
        if self._model is not None:          # the run began (`ready`): say it ended
            self._diff(self._model, now)
            self._flush(self._model)
            self._event({"v": render.SCHEMA_VERSION, "type": "agent_stop", "time": now,
                         "pid": os.getpid()})
            self.store.put("stop", (now, now, self.run))
        self.store.close()

    # ---- rows --------------------------------------------------------------

    def _event(self, pub: dict) -> None:
        eid = self.store.next_event
        self.store.next_event += 1
        names = list(dict.fromkeys(iter_ifnames(pub)))
        pid = pub.get("pid")
        self.store.put("event", (eid, self.run, pub["time"], pub["type"],
                                 pid if isinstance(pid, int) else None,
                                 names[0] if names else None, _scalar_netns(pub),
                                 _dump(pub)))
        for name in names[1:]:
            self.store.put("event_ifname", (name, eid))

    def _diff(self, model: Model, now: float) -> None:
        t0 = time.perf_counter_ns()
        self._behind, self._diffed_at = False, time.monotonic()
        rows = {identity(r): r for r in model.rows()}
        for k in [k for k in self._open if k not in rows]:
            iid = self._open.pop(k)
            entry = self._pending.get(iid)
            if entry is not None:
                entry.until = now            # opened and closed within one turn
            else:
                self.store.put("close", (now, iid))
        for k, r in rows.items():
            if k not in self._open:
                iid = self.store.next_interval
                self.store.next_interval += 1
                self._open[k] = iid
                self._pending[iid] = _Pending(r, model.files.get(r["file"]), now)
        if len(self._pending) >= PENDING_MAX:
            self._flush(model)
        self.diff_ns += time.perf_counter_ns() - t0
        self.diffs += 1

    def _flush(self, model: Model) -> None:
        """Write the intervals opened since the last turn: enriched as `ls` enriches
        (one pass for all: each process's command line and each tap's /sys read once),
        each with its open file's chain to its holder."""
        if not self._pending:
            return
        if time.monotonic() - self._nics_at >= NICS_EVERY_S:
            self._nics, self._nics_at = libvirt_nics(), time.monotonic()
        pending, self._pending = self._pending, {}
        rows = [{k: v for k, v in p.row.items() if k not in NOT_IDENTITY}
                for p in pending.values()]
        enrich_rows(rows, nics=self._nics, own_netns=model.own_netns)
        for (iid, p), r in zip(pending.items(), rows):
            chain = clip_chain(Model.chain(p.file, r["pid"])) if p.file is not None else []
            self.store.put("open", (
                iid, self.run, p.since, p.until, r["pid"], r["fd"], r.get("file"),
                r.get("ifname"), r.get("netns"), r.get("comm"), r.get("kind"), r.get("vm"),
                r.get("creator_pid"), r.get("creator_comm"), _dump(r), _dump(chain)))


@dataclass
class _Pending:
    """An interval opened this turn, written at the turn's end (tick)."""
    row: dict
    file: OpenFile | None
    since: float
    until: float | None = None
