"""What `taptrace agent` hands its outputs (history database, metrics, system log):
one interface, so the agent's loop knows nothing of where things go.

Every call comes from the agent's main thread, in order, after the model has applied
what is reported. A sink that needs a thread of its own (a database writer, an HTTP
server) owns it: a call here may queue work but must never wait on I/O, since the
kernel's buffer fills while it waits. A sink must not change the model.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .audit import Finding
    from .model import Model


class AgentSink(Protocol):
    def ready(self, report: dict, model: Model, clock_offset_ns: int) -> None:
        """Once, after the /proc snapshot is loaded and the probes are attached:
        the session's `ready` report; `clock_offset_ns` turns a report's monotonic
        `ts_ns` into wall-clock ns (render.public)."""

    def report(self, report: dict, model: Model) -> None:
        """Each report the session emits (events, `lost`, resyncs, failed probes),
        as `watch --json` would print it before render.public."""

    def findings(self, appeared: list[Finding], cleared: list[Finding],
                 model: Model) -> None:
        """After an audit pass that changed something: findings new since the last
        pass, and those no longer found."""

    def tick(self, model: Model) -> None:
        """Once per turn of the agent's loop (at least once a second): flush batches,
        refresh gauges."""

    def close(self) -> None:
        """The agent stops (SIGTERM, SIGINT): write out what is queued, stop threads."""
