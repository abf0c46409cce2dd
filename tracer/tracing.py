"""A traced session as the commands run it: open it (the ready line, one line per
event, the lost-records warning), run it, finish with the table; and the one way
taptrace writes its output (stdout, or where a traced command's run sends it)."""

from __future__ import annotations

import io
import os
import signal
import sys
import time

import click

from . import render


class Stop:
    """SIGINT/SIGTERM set a flag; the loop ends cleanly and prints the table."""

    def __init__(self) -> None:
        self.flag = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._set)

    def _set(self, *_a) -> None:
        self.flag = True

    def __call__(self) -> bool:
        return self.flag


class OutputError(click.ClickException):
    """Standard output cannot be written (closed, /dev/full, EIO): one line, exit 1."""

    def __init__(self, exc: OSError) -> None:
        super().__init__(f"cannot write to standard output: {exc.strerror or exc}")


def write(line: str) -> None:
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # `taptrace watch | head`: the reader left; leave without a word.
        quiet_stdout()
        raise SystemExit(0) from None
    except OSError as exc:
        quiet_stdout()        # the unwritable buffer goes nowhere, not to an exit traceback
        raise OutputError(exc) from None


class Sink(io.TextIOBase):
    """taptrace's output while it runs a command (stderr, or -o FILE): a write that
    fails (the reader left, the disk is full) is remembered, not raised, so the
    command runs on and taptrace still ends with its status."""

    def __init__(self, stream) -> None:
        self.stream = stream
        self.error: OSError | None = None

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if self.error is None:
            try:
                self.stream.write(s)
            except OSError as exc:
                self.error = exc
        return len(s)

    def flush(self) -> None:
        if self.error is None:
            try:
                self.stream.flush()
            except OSError as exc:
                self.error = exc

    def fileno(self) -> int:
        return self.stream.fileno()

    def isatty(self) -> bool:
        try:
            return self.stream.isatty()
        except (OSError, ValueError):
            return False


class LostNote:
    """The "records lost" warning, at most once a second (a 1-page buffer under a
    burst resyncs hundreds of times a second): the count since the last one said."""

    EVERY_S = 1.0

    def __init__(self) -> None:
        self.count, self.at = 0, float("-inf")

    def add(self, count: int) -> None:
        self.count += count
        now = time.monotonic()
        if now - self.at >= self.EVERY_S:
            warn(f"{self.count} records lost; resyncing from /proc")
            self.count, self.at = 0, now


def warn(message: str) -> None:
    """A warning on stderr; a full or closed stderr must not end the trace."""
    try:
        click.echo(f"taptrace: warning: {message}", err=True)
    except OSError:
        pass


class BackendError(click.ClickException):
    """The backend could not start: one line, then its evidence (verifier lines)."""

    def __init__(self, message: str, details: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.details = details

    def show(self, file=None) -> None:
        super().show(file)
        for line in self.details:
            click.echo(f"  {render.safe(line)}", err=True)


def open_session(json_out: bool, pid, comm, ifname, buffer_pages, force_perf,
                 emit=None, quiet_header=False, record=None, backend="auto", scope=None,
                 header=None, bad_ioctls=False):
    """A Session whose reports go to `emit` (default: a line each, through write());
    `header(ready)`: the first line instead of "# tracing with ..."."""
    from .probes import ProbeError
    from .session import Filters, Session

    filters = Filters(pid=pid, comm=comm, ifname=ifname)
    offset = time.time_ns() - time.monotonic_ns()

    lost_note = LostNote()

    def default_emit(report: dict) -> None:
        if report["type"] == "lost":
            lost_note.add(report["count"])
        if json_out:
            write(render.json_line(render.public(report, offset)))
            return
        if report["type"] == "ready":
            if header is not None:
                write(header(report))
            elif not quiet_header:
                write(f"# tracing with the {report['backend']} backend "
                      f"({report['buffer']}); {report['rows']} tap fds and "
                      f"{report['taps']} taps known at start. Ctrl-C to stop.")
            if header is not None or not quiet_header:
                if report.get("backend_note"):
                    write(f"# {render.safe(report['backend_note'])}")
                write(render.HEADER)
            return
        model = session_ref[0].model if session_ref[0] is not None else None
        write(render.event_line(report, offset, model and model.own_netns,
                                model and model.netns_names))
        for line in chain_lines(session_ref[0], report):
            write("    " + line)

    session_ref: list = [None]
    try:
        session = Session(emit or default_emit, filters, buffer_pages=buffer_pages,
                          force_perf=force_perf, record=record, backend=backend, scope=scope,
                          bad_ioctls=bad_ioctls)
    except ProbeError as exc:
        raise BackendError(str(exc), exc.details) from None
    session_ref[0] = session
    return session, offset


def trace_for(session, seconds: float, stop: Stop):
    """Run an opened session for `seconds` (or until `stop`: SIGINT/SIGTERM); its model."""
    try:
        session.start()
        session.run(seconds, stop)
    finally:
        session.close()
    return session.model


def chain_lines(session, report: dict) -> list[str]:
    """The handoff chain of each open file that just changed hands."""
    if session is None or report["type"] not in ("fork", "exec", "scm_recv"):
        return []
    t = report["type"]
    pid = report["child_pid"] if t == "fork" else report["pid"]
    fds = report["fds"] if t != "exec" else report["kept"]
    proc = session.model.procs.get(pid)
    if proc is None:
        return []
    lines = []
    for fd in fds:
        entry = proc.table.fds.get(fd)
        if entry is not None and entry.file.ifname:
            lines.append(render.chain_text(entry.file.ifname,
                                           type(session.model).chain(entry.file, pid)))
    return lines


def finish(session, json_out: bool, offset: int) -> None:
    table = session.table()
    if json_out:
        write(render.json_line(render.public(table, offset)))
    else:
        write("")
        write(render.table_text(table["rows"], table["taps"], own_netns=table["own_netns"]))
        s = session.stats
        write(f"# {s['events']} records, {s['lost']} lost, {s['resyncs']} resyncs")


def quiet_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
