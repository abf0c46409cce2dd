"""`taptrace agent --log`: each audit finding that appears or clears (with
`--log-events`, each event too) goes to the system log, so the journal, rsyslog
forwarding or any log shipper carries it off the host.

Where journald runs (its socket exists) a message goes to the journal with
structured fields (TAPTRACE_KIND=, TAPTRACE_IFNAME=, TAPTRACE_PID=, ...) through
python3-systemd; elsewhere to syslog (facility daemon, ident taptrace) with the same
fields as key=value in the message. Every string is escaped (render.safe): names are
anyone's choice.

The agent's loop must never wait on a log daemon (a full /dev/log queue blocks a
sender): messages are queued and a thread of this sink sends them; when the queue is
full a message is dropped and counted, and the count said when there is room again.
"""

from __future__ import annotations

import os
import queue
import socket
import threading
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Protocol

from . import render
from .tracing import warn

if TYPE_CHECKING:
    from .audit import Finding
    from .model import Model

IDENT = "taptrace"
JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_SOCKET = "/dev/log"
LOG_DAEMON = 3                 # syslog facility
# priorities (syslog(3))
WARNING, NOTICE, INFO = 4, 5, 6
QUEUE_MAX = 10_000
MESSAGE_MAX = 4096             # bytes of one syslog datagram (rsyslog takes 8k)
LOST_EVERY_S = 1.0
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class LogTarget(Protocol):
    name: str

    def send(self, message: str, priority: int, fields: Mapping[str, str]) -> None:
        """Send one message (may block; raises OSError when it cannot)."""


class JournalTarget:
    """journald's native protocol, through python3-systemd."""
    name = "journal"

    def __init__(self) -> None:
        from systemd import journal  # python3-systemd; only where journald runs
        self._send = journal.send

    def send(self, message: str, priority: int, fields: Mapping[str, str]) -> None:
        self._send(message, PRIORITY=str(priority), SYSLOG_IDENTIFIER=IDENT,
                   SYSLOG_FACILITY=str(LOG_DAEMON), **fields)


def logfmt(fields: Mapping[str, str]) -> str:
    """TAPTRACE_IFNAME=vnet0 ... as `ifname=vnet0 ...`, a value with a space, quote or
    `=` in double quotes (values are escaped already: a backslash is doubled)."""
    out = []
    for k, v in fields.items():
        key = k.removeprefix("TAPTRACE_").lower()
        if v == "" or any(c in v for c in ' "='):
            v = '"' + v.replace('"', '\\"') + '"'
        out.append(f"{key}={v}")
    return " ".join(out)


def syslog_line(message: str, priority: int, fields: Mapping[str, str], pid: int,
                now: float | None = None) -> bytes:
    """One datagram as syslog(3) writes it to /dev/log (RFC 3164, local form):
    `<PRI>Mmm dd hh:mm:ss taptrace[PID]: MESSAGE key=value...`."""
    t = time.localtime(now)
    stamp = f"{MONTHS[t.tm_mon - 1]} {t.tm_mday:2d} {t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}"
    text = f"<{LOG_DAEMON * 8 + priority}>{stamp} {IDENT}[{pid}]: {message}"
    if fields:
        text += " " + logfmt(fields)
    return text.encode("utf-8", "backslashreplace")[:MESSAGE_MAX]


class SyslogTarget:
    """A datagram to the syslog socket (/dev/log, or `path`), in syslog(3)'s format;
    the socket is (re)connected when a send fails."""
    name = "syslog"

    def __init__(self, path: str = SYSLOG_SOCKET) -> None:
        self.path = path
        self._sock: socket.socket | None = None

    def send(self, message: str, priority: int, fields: Mapping[str, str]) -> None:
        data = syslog_line(message, priority, fields, os.getpid())
        for attempt in (1, 2):
            try:
                if self._sock is None:
                    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                    try:
                        s.connect(self.path)
                    except OSError:
                        s.close()
                        raise
                    self._sock = s
                self._sock.send(data)
                return
            except OSError:
                self.close()
                if attempt == 2:
                    raise

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def default_target(syslog_path: str | None = None) -> LogTarget:
    """The journal where journald runs (and python3-systemd is installed), else
    syslog; `syslog_path`: syslog on that socket, whatever runs."""
    if syslog_path is None and os.path.exists(JOURNAL_SOCKET):
        try:
            return JournalTarget()
        except ImportError:
            pass
    return SyslogTarget(syslog_path or SYSLOG_SOCKET)


def _field(v) -> str:
    return render.safe(v)


def finding_fields(f: Finding, state: str) -> dict[str, str]:
    out = {"TAPTRACE_FINDING": state, "TAPTRACE_KIND": f.kind}
    for key, v in (("IFNAME", f.ifname), ("PID", f.pid), ("TID", f.detail.get("tid")),
                   ("FD", f.fd), ("COMM", f.comm),
                   ("VM", f.detail.get("vm")), ("ROLE", f.detail.get("role"))):
        if v is not None:
            out["TAPTRACE_" + key] = _field(v)
    return out


def event_message(r: dict) -> tuple[str, dict[str, str]]:
    """An event as one message (what `watch` prints, without the time) and its fields."""
    fd, ifn, detail = render.describe(r)
    who = render.proc_label(render.safe(r.get("comm")), r.get("pid", "?"))
    text = " ".join(x for x in (r["type"], who, f"fd {fd}" if fd else "", ifn) if x)
    fields = {"TAPTRACE_EVENT": r["type"]}
    if r.get("pid") is not None:
        fields["TAPTRACE_PID"] = str(r["pid"])
    if r.get("comm") is not None:
        fields["TAPTRACE_COMM"] = _field(r["comm"])
    if fd:
        fields["TAPTRACE_FD"] = fd
    if ifn:
        fields["TAPTRACE_IFNAME"] = ifn
    return f"{text}: {detail}", fields


class LogSink:
    """An AgentSink writing to the system log (see the module's doc)."""

    def __init__(self, target: LogTarget | None = None, events: bool = False,
                 queue_max: int = QUEUE_MAX) -> None:
        self.target = target if target is not None else default_target()
        self.events = events
        self.dropped = 0
        self.failed = 0
        self._queue: queue.Queue = queue.Queue(queue_max)
        self._lost = 0
        self._lost_at = float("-inf")
        self._thread = threading.Thread(target=self._write, name="taptrace-log", daemon=True)
        self._thread.start()

    def _put(self, message: str, priority: int, fields: Mapping[str, str]) -> None:
        try:
            self._queue.put_nowait((message, priority, dict(fields)))
        except queue.Full:
            self.dropped += 1

    def _write(self) -> None:
        said_dropped = 0
        failing = False
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self.target.send(*item)
                if self.dropped != said_dropped:      # a benign race: said next time
                    n, said_dropped = self.dropped - said_dropped, self.dropped
                    self.target.send(f"{n} messages not logged (queue full)", WARNING, {})
                failing = False
            except Exception as exc:  # noqa: BLE001 - the thread outlives any failure
                self.failed += 1
                if not failing:     # once per run of failures, not per message
                    why = exc.strerror if isinstance(exc, OSError) else None
                    warn(f"cannot log to {self.target.name}: {render.safe(why or exc)}")
                failing = True

    # AgentSink

    def ready(self, report: dict, model: Model, clock_offset_ns: int) -> None:
        self._put(f"started: tracing with the {render.safe(report.get('backend'))} backend; "
                  f"{report.get('rows', 0)} tap fds and {report.get('taps', 0)} taps known",
                  INFO, {})

    def report(self, report: dict, model: Model) -> None:
        t = report["type"]
        if t == "lost":
            self._lost += report.get("count", 0)
        elif self.events and t not in ("ready", "table", "resync"):
            message, fields = event_message(report)
            self._put(message, INFO, fields)

    def findings(self, appeared: list[Finding], cleared: list[Finding], model: Model) -> None:
        for f in appeared:
            self._put(f"{f.kind}: {render.safe(f.message)}", WARNING,
                      finding_fields(f, "appeared"))
        for f in cleared:
            self._put(f"cleared {f.kind}: {render.safe(f.message)}", NOTICE,
                      finding_fields(f, "cleared"))

    def tick(self, model: Model) -> None:
        self._say_lost(LOST_EVERY_S)

    def _say_lost(self, every_s: float) -> None:
        """Lost records, summed: at most one message each `every_s`."""
        now = time.monotonic()
        if self._lost and now - self._lost_at >= every_s:
            self._put(f"{self._lost} records lost; resynced from /proc", WARNING,
                      {"TAPTRACE_LOST": str(self._lost)})
            self._lost, self._lost_at = 0, now

    def close(self) -> None:
        self._say_lost(0)
        self._put("stopped", INFO, {})
        try:
            self._queue.put(None, timeout=5)
        except queue.Full:
            pass
        self._thread.join(timeout=5)
        closer = getattr(self.target, "close", None)
        if closer is not None:
            closer()
