"""The agent's history sink: what the agent sees, as rows for the history database.

Every report goes in as `watch --json` prints it. The holding intervals come from
the model's table (`Model.rows`, the rows `ls --json` prints): after each report
the table is compared with the one before, and a row that appeared opens an
interval (enriched as `ls` enriches it, with the open file's chain), one that went
away closes its interval, both stamped with the report's time. A row whose fields
changed (close-on-exec cleared, another holder forked) closes and reopens, so
`history --at T` gives the rows as they were at T.
"""

from __future__ import annotations

import json
import os
import socket
import time

from . import __version__, render
from .audit import Finding
from .enrich import enrich_rows, libvirt_nics
from .history_store import HistoryStore
from .model import Model, iter_ifnames

NICS_EVERY_S = 2.0
SEEN_EVERY_S = 1.0


def _dump(obj) -> str:
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":"))


def _scalar_netns(report: dict) -> int | None:
    ns = report.get("netns")
    return ns if isinstance(ns, int) else None


class HistorySink:
    """An AgentSink (tracer/agent_sink.py) writing to a HistoryStore."""

    def __init__(self, store: HistoryStore) -> None:
        self.store = store
        self.run = store.next_run
        self.offset = 0
        self._open: dict[str, int] = {}        # row's JSON -> its interval id
        self._nics: dict = {}
        self._nics_at = float("-inf")
        self._seen_at = float("-inf")
        self.diff_ns = 0                       # time spent comparing tables
        self.diffs = 0

    # ---- AgentSink ---------------------------------------------------------

    def ready(self, report: dict, model: Model, clock_offset_ns: int) -> None:
        self.offset = clock_offset_ns
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
        self._diff(model, now)

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
        self._diff(model, now)      # what changed with no report (a quiet record)
        if time.monotonic() - self._seen_at >= SEEN_EVERY_S:
            self._seen_at = time.monotonic()
            self.store.put("seen", (now, self.run))

    def close(self) -> None:
        now = time.time()
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
        rows = {_dump(r): r for r in model.rows()}
        gone = [k for k in self._open if k not in rows]
        new = [k for k in rows if k not in self._open]
        for k in gone:
            self.store.put("close", (now, self._open.pop(k)))
        if new:
            self._open_intervals(model, [rows[k] for k in new], new, now)
        self.diff_ns += time.perf_counter_ns() - t0
        self.diffs += 1

    def _open_intervals(self, model: Model, rows: list[dict], keys: list[str],
                        now: float) -> None:
        if time.monotonic() - self._nics_at >= NICS_EVERY_S:
            self._nics, self._nics_at = libvirt_nics(), time.monotonic()
        chains = []
        for r in rows:
            f = model.files.get(r["file"])
            chains.append(Model.chain(f, r["pid"]) if f is not None else [])
        enrich_rows(rows, nics=self._nics, own_netns=model.own_netns)
        for key, r, chain in zip(keys, rows, chains):
            iid = self.store.next_interval
            self.store.next_interval += 1
            self._open[key] = iid
            self.store.put("open", (
                iid, self.run, now, r["pid"], r["fd"], r.get("file"), r.get("ifname"),
                r.get("netns"), r.get("comm"), r.get("kind"), r.get("vm"),
                r.get("creator_pid"), r.get("creator_comm"), _dump(r), _dump(chain)))
