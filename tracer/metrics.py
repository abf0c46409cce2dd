"""`taptrace agent --metrics ADDR:PORT`: a Prometheus endpoint (the official
prometheus_client library) with what the agent knows: taps and tap fds now, audit
findings now and since start, events by type, lost records and resyncs, the backend
and the version, and the agent's own memory and CPU (the process collector).

The model is read on the agent's main thread only (tick/report/findings): each tick
builds an immutable `Sample` of every value, and the HTTP server's threads serve the
latest one. A scrape never touches the model, and counting an event is one dict
increment on the main thread.

Labels are bounded: kinds, event types and finding kinds are fixed sets; the holder's
comm (anyone's choice of name) is escaped and capped to the COMMS_MAX commonest,
the rest counted as comm="other". Never a pid, fd or interface name.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from socketserver import ThreadingMixIn
from typing import TYPE_CHECKING
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import click
from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import make_wsgi_app

from . import __version__, render
from .agent_outputs import DEFAULT_HOST, DEFAULT_PORT
from .audit import KINDS as FINDING_KINDS

if TYPE_CHECKING:
    from .audit import Finding
    from .model import Model

COMMS_MAX = 20                 # distinct holder comms as labels; the rest are "other"
TAP_KINDS = ("tap", "tun", "macvtap")
# reports that are no kernel event: the start, and what a loss does
NOT_EVENTS = ("ready", "lost", "resync", "table")
REBUILD_S = 0.2                # the least time between two Samples after changes
# findings of a moment, never cleared (a failed TUNGETIFF): counted, never "present"
MOMENTARY = ("bad_probe",)


# ---- what a scrape shows -----------------------------------------------------

@dataclass(frozen=True)
class Sample:
    """Every value of one moment, built on the main thread, read by scrapes."""
    taps: dict[str, int] = field(default_factory=dict)                  # kind -> n
    tap_fds: dict[tuple[str, str], int] = field(default_factory=dict)   # (kind, comm) -> n
    findings: dict[str, int] = field(default_factory=dict)              # kind -> now
    appeared: dict[str, int] = field(default_factory=dict)              # kind -> total
    cleared: dict[str, int] = field(default_factory=dict)               # kind -> total
    events: dict[str, int] = field(default_factory=dict)                # type -> total
    lost: int = 0
    resyncs: int = 0
    backend: tuple[str, str] | None = None                              # (name, buffer)


def fd_counts(model: Model, comms_max: int = COMMS_MAX) -> dict[tuple[str, str], int]:
    """Tap fds by (kind, holder comm), the comms beyond the commonest `comms_max`
    folded into "other". Counted as the live table counts rows: per (pid, fd), and
    per (pid, tid, fd) of a thread's own table."""
    by: Counter[tuple[str, str]] = Counter()
    per_comm: Counter[str] = Counter()
    for p, _tid, table in model.row_tables():
        if not table.fds:
            continue
        comm = render.safe(p.comm)
        for entry in table.fds.values():
            by[(entry.file.kind, comm)] += 1
            per_comm[comm] += 1
    if len(per_comm) <= comms_max:
        return dict(by)
    keep = {c for c, _ in per_comm.most_common(comms_max)}
    out: Counter[tuple[str, str]] = Counter()
    for (kind, comm), n in by.items():
        out[(kind, comm if comm in keep else "other")] += n
    return dict(out)


def tap_counts(model: Model) -> dict[str, int]:
    counts = dict.fromkeys(TAP_KINDS, 0)
    for t in model.taps.values():
        counts[t.kind] = counts.get(t.kind, 0) + 1
    return counts


class SampleCollector:
    """A prometheus_client collector serving the latest Sample (swapped whole, so a
    scrape sees one moment)."""

    def __init__(self) -> None:
        self.sample = Sample()

    def collect(self) -> Iterator:
        s = self.sample
        build = GaugeMetricFamily("taptrace_build_info", "taptrace's version (always 1)",
                                  labels=["version"])
        build.add_metric([__version__], 1)
        yield build
        backend = GaugeMetricFamily("taptrace_backend_info",
                                    "The tracing backend in use (always 1)",
                                    labels=["backend", "buffer"])
        if s.backend is not None:
            backend.add_metric(list(s.backend), 1)
        yield backend
        taps = GaugeMetricFamily("taptrace_taps", "tun/tap devices known now, by kind",
                                 labels=["kind"])
        for kind, n in sorted(s.taps.items()):
            taps.add_metric([kind], n)
        yield taps
        fds = GaugeMetricFamily("taptrace_tap_fds",
                                "Open tun/tap/vhost fds now, by kind and holder comm "
                                f"(the {COMMS_MAX} commonest comms; the rest: other)",
                                labels=["kind", "comm"])
        for (kind, comm), n in sorted(s.tap_fds.items()):
            fds.add_metric([kind, comm], n)
        yield fds
        findings = GaugeMetricFamily("taptrace_audit_findings",
                                     "Audit findings present now, by kind (a failed TUNGETIFF, "
                                     "bad_probe, is of a moment: see _appeared_total)",
                                     labels=["kind"])
        appeared = CounterMetricFamily("taptrace_audit_findings_appeared",
                                       "Audit findings that appeared, by kind",
                                       labels=["kind"])
        cleared = CounterMetricFamily("taptrace_audit_findings_cleared",
                                      "Audit findings that were no longer found, by kind",
                                      labels=["kind"])
        for kind in FINDING_KINDS:
            findings.add_metric([kind], s.findings.get(kind, 0))
            appeared.add_metric([kind], s.appeared.get(kind, 0))
            cleared.add_metric([kind], s.cleared.get(kind, 0))
        yield findings
        yield appeared
        yield cleared
        events = CounterMetricFamily("taptrace_events", "Events reported, by type",
                                     labels=["type"])
        for t, n in sorted(s.events.items()):
            events.add_metric([t], n)
        yield events
        yield CounterMetricFamily("taptrace_lost_records",
                                  "Kernel records lost (buffer full)", value=s.lost)
        yield CounterMetricFamily("taptrace_resyncs",
                                  "Rebuilds of the model from /proc after a loss",
                                  value=s.resyncs)


# ---- the HTTP server -------------------------------------------------------

class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format, *args) -> None:
        pass


def serve(registry: CollectorRegistry, host: str, port: int) -> tuple[WSGIServer, threading.Thread]:
    """The /metrics endpoint on (host, port), served from a daemon thread."""
    cls = type("Server", (_Server,), {
        "address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
    try:
        httpd = make_server(host, port, make_wsgi_app(registry), cls, handler_class=_Quiet)
    except OSError as exc:
        raise click.ClickException(
            f"--metrics {render.safe(host)}:{port}: cannot listen: "
            f"{exc.strerror or exc}") from None
    thread = threading.Thread(target=httpd.serve_forever, name="taptrace-metrics",
                              daemon=True)
    thread.start()
    return httpd, thread


# ---- the sink --------------------------------------------------------------

class MetricsSink:
    """An AgentSink serving Prometheus metrics on (host, port); port 0: any free
    one (see `address`). Listens as soon as it is made, so a port in use fails the
    agent's start (one line), not later."""

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 comms_max: int = COMMS_MAX) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)       # process_resident_memory_bytes, ...
        PlatformCollector(registry=self.registry)
        self.collector = SampleCollector()
        self.registry.register(self.collector)
        self.comms_max = comms_max
        self._events: Counter[str] = Counter()
        self._appeared: Counter[str] = Counter()
        self._cleared: Counter[str] = Counter()
        self._present: dict[str, int] = {}
        self._lost = 0
        self._resyncs = 0
        self._backend: tuple[str, str] | None = None
        self._dirty = True
        self._built = float("-inf")
        self._httpd, self._thread = serve(self.registry, host, port)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._httpd.server_address[:2]
        return host, port

    # AgentSink

    def ready(self, report: dict, model: Model, clock_offset_ns: int) -> None:
        self._backend = (str(report.get("backend")), str(report.get("buffer")))
        self.refresh(model)

    def report(self, report: dict, model: Model) -> None:
        t = report["type"]
        if t == "lost":
            self._lost += report.get("count", 0)
        elif t == "resync":
            self._resyncs += 1
        elif t not in NOT_EVENTS:
            self._events[t] += 1
        self._dirty = True

    def findings(self, appeared: list[Finding], cleared: list[Finding], model: Model) -> None:
        for f in appeared:
            self._appeared[f.kind] += 1
            if f.kind not in MOMENTARY:
                self._present[f.kind] = self._present.get(f.kind, 0) + 1
        for f in cleared:
            self._cleared[f.kind] += 1
            self._present[f.kind] = max(0, self._present.get(f.kind, 0) - 1)
        self._dirty = True

    def tick(self, model: Model) -> None:
        """Build the next Sample: after a change, at most every REBUILD_S; else
        every second (a model may change with nothing reported, e.g. a comm)."""
        now = time.monotonic()
        if now - self._built < (REBUILD_S if self._dirty else 1.0):
            return
        self._built = now
        self.collector.sample = Sample(
            taps=tap_counts(model), tap_fds=fd_counts(model, self.comms_max),
            findings=dict(self._present), appeared=dict(self._appeared),
            cleared=dict(self._cleared), events=dict(self._events), lost=self._lost,
            resyncs=self._resyncs, backend=self._backend)
        self._dirty = False

    def refresh(self, model: Model) -> None:
        """A Sample now, whatever the time since the last."""
        self._built = float("-inf")
        self.tick(model)

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
