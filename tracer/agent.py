"""`taptrace agent`: the live tracer and the audit, run as a service, everything they
see handed to the sinks (tracer/agent_sink.py): the history database, and whatever
SINK_FACTORIES builds from the command's options (metrics, the system log).

The loop: poll the probes; each report goes to every sink; a failed TUNGETIFF is a
finding at once; after changes (at most every `audit_every` seconds, and at least
every AUDIT_IDLE_S) the audit runs over the enriched table and the sinks get what
appeared and what cleared since the pass before. SIGTERM/SIGINT end it: the sinks
are closed (queued rows written) and the agent exits 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from . import agent_outputs, render
from .agent_sink import AgentSink
from .audit import Finding, audit, gather, probe_finding
from .enrich import enrich_rows, libvirt_nics
from .model import Model
from .tracing import LostNote, Stop, open_session, warn

AUDIT_IDLE_S = 60.0          # audit this often even when no record came (bridges, libvirt)
POLL_MS = 100
BUFFER_PAGES = 1024         # 4 MiB: a service rides out bursts a terminal user would not see


@dataclass(frozen=True)
class AgentOptions:
    """What `taptrace agent` was given; a sink factory reads its own part."""
    db: str
    keep_s: float | None
    max_bytes: int | None
    backend: str = "auto"
    audit_every: float = 2.0
    # the options of other sinks, by name (e.g. "metrics": "127.0.0.1:9464"): cli.agent
    # puts them here, their factory in SINK_FACTORIES reads them
    extra: dict = field(default_factory=dict)


SinkFactory = Callable[[AgentOptions], "AgentSink | None"]


def history_sink(opts: AgentOptions) -> AgentSink:
    from .history_sink import HistorySink
    from .history_store import HistoryStore, Retention

    store = HistoryStore(opts.db, Retention(opts.keep_s, opts.max_bytes), on_error=warn)
    return HistorySink(store)


# Each builds one sink from the options (None: not asked for). Part of the agent's
# contract: a new output is one function here and its options in cli.agent.
SINK_FACTORIES: list[SinkFactory] = [history_sink, *agent_outputs.FACTORIES]


def finding_key(f: Finding) -> tuple:
    return (f.kind, f.ifname, f.pid, f.fd, f.comm, f.message)


class Auditor:
    """The continuous audit: each pass over the enriched table, diffed with the last."""

    def __init__(self) -> None:
        self.current: dict[tuple, Finding] = {}

    def run(self, model: Model) -> tuple[list[Finding], list[Finding]]:
        files = model.files

        def chain_of(file: int, pid: int) -> list:
            return Model.chain(files[file], pid) if file in files else []

        nics = libvirt_nics()
        rows = enrich_rows(model.rows(), nics=nics, own_netns=model.own_netns)
        taps = model.tap_list()
        facts = gather(rows, taps, nics, own_netns=model.own_netns)
        found = {finding_key(f): f for f in audit(rows, taps, nics, facts, chain_of=chain_of)}
        appeared = [f for k, f in found.items() if k not in self.current]
        cleared = [f for k, f in self.current.items() if k not in found]
        self.current = found
        return appeared, cleared


def make_sinks(opts: AgentOptions) -> list[AgentSink]:
    """Every sink the options ask for; those made before a failure are closed."""
    sinks: list[AgentSink] = []
    try:
        for make in SINK_FACTORIES:
            sink = make(opts)
            if sink is not None:
                sinks.append(sink)
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks


class Agent:
    """The loop. `run` opens the session (the probes: root, BPF), then makes the sinks
    (so a missing privilege is said before any file is made), runs until `stop`, and
    closes the session and every sink, whatever happened."""

    def __init__(self, opts: AgentOptions,
                 header: Callable[[dict], None] | None = None) -> None:
        self.opts = opts
        self.header = header
        self.sinks: list[AgentSink] = []
        self.auditor = Auditor()
        self.session = None
        self.offset = 0
        self._dirty = True
        self._lost = LostNote()

    def _emit(self, report: dict) -> None:
        model = self.session.model
        t = report["type"]
        if t == "ready":
            for s in self.sinks:
                s.ready(report, model, self.offset)
            if self.header is not None:
                self.header(report)
            return
        if t == "lost":
            self._lost.add(report["count"])
        for s in self.sinks:
            s.report(report, model)
        self._dirty = True
        if t == "tungetiff":
            f = probe_finding(render.public(report, self.offset))
            if f is not None:
                for s in self.sinks:
                    s.findings([f], [], model)

    def _audit(self) -> None:
        appeared, cleared = self.auditor.run(self.session.model)
        if appeared or cleared:
            for s in self.sinks:
                s.findings(appeared, cleared, self.session.model)

    def run(self, stop: Stop) -> None:
        # a live audit: failed TUNGETIFF probes are findings (the kernel backend's
        # ioctl hook, asked for)
        session, _offset = open_session(False, None, None, None, BUFFER_PAGES, False,
                                        emit=self._emit, backend=self.opts.backend,
                                        bad_ioctls=True)
        self.session = session
        self.offset = session.clock_offset_ns
        try:
            self.sinks = make_sinks(self.opts)
            session.start()
            audited = float("-inf")
            while not stop():
                session.step(POLL_MS)
                now = time.monotonic()
                if (self._dirty and now - audited >= self.opts.audit_every) or \
                        now - audited >= AUDIT_IDLE_S:
                    self._dirty = False
                    audited = now
                    self._audit()
                for s in self.sinks:
                    s.tick(session.model)
            session.probes.poll(0)
            session.drain(final=True)
            self._audit()
        finally:
            try:
                session.close()
            finally:
                for s in self.sinks:
                    s.close()
