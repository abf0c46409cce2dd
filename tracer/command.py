"""Trace a command: `taptrace watch -- CMD [ARGS...]`, `taptrace audit -- CMD`.

The order, so the trace sees CMD from its first instruction and CMD never runs
untraced: attach the probes (if that fails, CMD is not started); fork CMD's process,
held at a pipe; take the /proc snapshot and say `ready`; put the held pid in the
in-kernel interest set (its children inherit it there) and in the scope (tracer/
scope.py); only then let it exec. taptrace is a child subreaper
(PR_SET_CHILD_SUBREAPER), so a daemon that double-forks stays its descendant in /proc
too, and reaps what is re-parented to it. When CMD exits, the records already in the
buffer are read, the table (or the audit) is written, and taptrace exits with CMD's
status (128+N for a signal, as a shell says it).

CMD gets taptrace's stdin, stdout and stderr and the environment taptrace was
started with (before taptrace set anything for itself), and no other fd: everything
from 3 up is closed in the child before it may go on. taptrace writes to stderr, or
to `-o FILE`. Signals: SIGINT and SIGQUIT come from the terminal to the whole
foreground process group, CMD included (as with strace): taptrace only notes them and
reports when CMD has exited. SIGTERM and SIGHUP are passed on to CMD. The dispositions
CMD gets are the ones taptrace was started with (an ignored SIGINT stays ignored).

Exit status: 127 when CMD is not found, 126 when it is found but cannot be run (as a
shell); 2 for a usage error (no command after `--`, an unknown user).
"""

from __future__ import annotations

import ctypes
import errno
import fnmatch
import os
import pwd
import shlex
import signal
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import click

from . import audit as au
from . import render, unixsock
from .audit_report import AuditError, Reporter, live_emit
from .enrich import enrich_rows, libvirt_nics
from .model import Model
from .scope import CommandScope
from .session import POLL_MS, ppid_of
from .tracing import LostNote, Sink, finish, open_session, warn, write

EXIT_NOT_FOUND = 127
EXIT_CANNOT_RUN = 126
PR_SET_CHILD_SUBREAPER = 36
# what a child gets back before exec: Python ignores SIGPIPE and SIGXFSZ for itself
ALWAYS_DEFAULT = (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGUSR1)
PASSED_ON = (signal.SIGTERM, signal.SIGHUP)
NOTED = (signal.SIGINT, signal.SIGQUIT)


class CommandError(click.ClickException):
    """CMD could not be run: one line, and the status a shell would give."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


@dataclass(frozen=True)
class RunAs:
    """`-u USER`: who CMD runs as (taptrace stays root)."""
    name: str
    uid: int
    gid: int
    home: str
    shell: str


def lookup_user(value: str) -> RunAs:
    """A user name, or a uid that /etc/passwd knows; KeyError if neither."""
    try:
        pw = pwd.getpwnam(value)
    except KeyError:
        if not (value.isascii() and value.isdigit() and len(value) <= 10):
            raise
        pw = pwd.getpwuid(int(value))
    return RunAs(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, pw.pw_shell)


def command_env(env: Mapping[str, str], run_as: RunAs | None) -> dict[str, str]:
    """CMD's environment: taptrace's as it was started; with -u, HOME, SHELL, USER and
    LOGNAME of that user (as `su USER` without `-` sets them)."""
    out = dict(env)
    if run_as is not None:
        out.update(HOME=run_as.home, SHELL=run_as.shell or "/bin/sh", USER=run_as.name,
                   LOGNAME=run_as.name)
    return out


def find_program(name: str, env: Mapping[str, str]) -> str:
    """The file CMD names, looked up in CMD's PATH as a shell does; CommandError with
    127 (not found) or 126 (found, but not an executable file)."""
    shown = render.safe(name)
    if not name:
        raise CommandError("'': command not found", EXIT_NOT_FOUND)
    if "/" in name:
        candidates = [name]
    else:
        path = env.get("PATH", os.defpath)
        candidates = [os.path.join(d or ".", name) for d in path.split(os.pathsep)]
    denied = None
    for c in candidates:
        if os.path.isfile(c):
            if os.access(c, os.X_OK):
                return c
            denied = denied or f"{shown}: permission denied"
        elif os.path.isdir(c) and "/" in name:
            denied = f"{shown}: is a directory"
    if denied:
        raise CommandError(denied, EXIT_CANNOT_RUN)
    if "/" in name:
        raise CommandError(f"{shown}: no such file or directory", EXIT_NOT_FOUND)
    raise CommandError(f"{shown}: command not found", EXIT_NOT_FOUND)


def shell_status(wait_status: int) -> int:
    """A wait status as a shell's $?: the exit code, or 128+N after signal N."""
    code = os.waitstatus_to_exitcode(wait_status)
    return code if code >= 0 else 128 - code


def status_text(status: int) -> str:
    if status > 128 and status - 128 < signal.NSIG:
        try:
            return f"was killed by {signal.Signals(status - 128).name} (status {status})"
        except ValueError:
            pass
    return f"exited with status {status}"


def become_subreaper() -> bool:
    """Orphans of CMD's tree are re-parented to taptrace (not init): in /proc they stay
    descendants, and their exits are ours to reap."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class Signals:
    """Until CMD runs, SIGINT/SIGQUIT/SIGTERM/SIGHUP mean "do not start it"; while it
    runs, SIGTERM and SIGHUP go on to it and SIGINT and SIGQUIT (which the terminal
    sends it too) are noted; taptrace reports once CMD has exited."""

    def __init__(self) -> None:
        # as taptrace got them (Python shows an inherited SIG_IGN as SIG_IGN)
        self.inherited = {s: signal.getsignal(s) for s in (*PASSED_ON, *NOTED)}
        self.stopped: int | None = None
        self.pid: int | None = None            # CMD, while it may get signals
        self.interrupts = 0
        for s in (*PASSED_ON, *NOTED):
            signal.signal(s, self._on)

    def _on(self, sig: int, _frame) -> None:
        if self.pid is None:
            self.stopped = self.stopped or sig
            return
        if sig in PASSED_ON:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            return
        self.interrupts += 1
        if self.interrupts == 2:
            warn(f"waiting for the command (pid {self.pid}) to exit: SIGTERM to taptrace "
                 "is passed on to it")

    def for_child(self) -> list[tuple[int, object]]:
        """The dispositions CMD starts with: default, or ignored where taptrace's were."""
        out: list[tuple[int, object]] = [(s, signal.SIG_DFL) for s in ALWAYS_DEFAULT]
        for s, h in self.inherited.items():
            out.append((s, signal.SIG_IGN if h == signal.SIG_IGN else signal.SIG_DFL))
        return out


class Child:
    """CMD's process: forked now, held at a pipe until go() lets it exec."""

    def __init__(self, argv: list[str], path: str, env: Mapping[str, str],
                 run_as: RunAs | None, dispositions: list[tuple[int, object]]) -> None:
        self.argv = argv
        go_r, self._go = os.pipe()
        self._err, err_w = os.pipe()
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            pid = os.fork()
        except OSError as exc:                          # EAGAIN: out of processes
            for fd in (go_r, self._go, self._err, err_w):
                os.close(fd)
            raise CommandError(f"cannot start {render.safe(argv[0])}: "
                               f"{(exc.strerror or str(exc)).lower()}", EXIT_CANNOT_RUN) \
                from None
        if pid == 0:                                    # pragma: no cover - the child
            _child(go_r, err_w, argv, path, dict(env), run_as, dispositions)
        os.close(go_r)
        os.close(err_w)
        self.pid = pid
        self.status: int | None = None

    def go(self) -> None:
        """Let CMD exec; CommandError if it could not (126/127, as a shell)."""
        os.write(self._go, b"x")
        os.close(self._go)
        self._go = -1
        said = b""
        while True:
            chunk = os.read(self._err, 64)     # EOF at the exec (close-on-exec)
            if not chunk:
                break
            said += chunk
        os.close(self._err)
        if not said:
            return
        os.waitpid(self.pid, 0)
        self.status = EXIT_NOT_FOUND
        try:
            err = int(said.split(b":")[0])
        except ValueError:
            err = 0
        name = render.safe(self.argv[0])
        why = os.strerror(err).lower() if err else "could not be run"
        raise CommandError(f"{name}: {why}",
                           EXIT_NOT_FOUND if err == errno.ENOENT else EXIT_CANNOT_RUN)

    def abort(self) -> None:
        """Never let it exec (taptrace could not start): it leaves at once."""
        if self._go >= 0:
            os.close(self._go)
            self._go = -1
            os.close(self._err)
            os.waitpid(self.pid, 0)

    def poll(self) -> int | None:
        """Reap whatever has ended (CMD, and orphans of its tree re-parented to us);
        CMD's status (as a shell's $?) once it has ended."""
        while self.status is None and self._reap_one() is not None:
            pass
        return self.status

    def reap_orphans(self) -> None:
        while self._reap_one() is not None:
            pass

    def _reap_one(self) -> int | None:
        """Reap one child that has ended (None: none has, now), noting CMD's status."""
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return None
        if pid == 0:
            return None
        if pid == self.pid:
            self.status = shell_status(status)
        return pid


def _child(go_r: int, err_w: int, argv: list[str], path: str, env: dict,
           run_as: RunAs | None, dispositions) -> None:  # pragma: no cover - forked
    """In the forked child: drop every fd of taptrace's, wait for the word, become
    the user, exec. Never returns; a failure is its errno on err_w."""
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, set())
        for sig, how in dispositions:
            signal.signal(sig, how)
        low = 3
        for fd in sorted({go_r, err_w}):
            if fd >= low:
                os.closerange(low, fd)
                low = fd + 1
        os.closerange(low, 1 << 30)
        if os.read(go_r, 1) != b"x":
            os._exit(EXIT_CANNOT_RUN)
        os.close(go_r)
        if run_as is not None:
            os.setgroups(os.getgrouplist(run_as.name, run_as.gid))
            os.setgid(run_as.gid)
            os.setuid(run_as.uid)
        os.execve(path, argv, env)
    except OSError as exc:
        os.write(err_w, f"{exc.errno or 0}:".encode())
    except BaseException:  # noqa: BLE001 - nothing may return into taptrace's stack
        os.write(err_w, b"0:")
    finally:
        os._exit(EXIT_CANNOT_RUN)


def open_output(path: str | None) -> Sink:
    """Where a traced command's run writes: stderr, or FILE (created mode 0600 or
    truncated; a symbolic link is refused), or `-` for stdout."""
    if path == "-":
        return Sink(sys.stdout)
    if path is None:
        return Sink(open(2, "w", closefd=False, encoding="utf-8",
                         errors="backslashreplace"))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW
                     | os.O_CLOEXEC | os.O_NOCTTY, 0o600)
    except OSError as exc:
        why = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise click.ClickException(f"-o: cannot write to '{render.safe(path)}': {why}") \
            from None
    return Sink(open(fd, "w", encoding="utf-8", errors="backslashreplace"))


@dataclass
class Run:
    """One traced run of CMD: what the watch and audit front ends share."""
    argv: list[str]
    env: Mapping[str, str]
    run_as: RunAs | None
    show_all: bool
    pid: int | None = None               # CMD's, once it has run

    def describe(self) -> str:
        return render.safe(shlex.join(self.argv))

    def prepare(self) -> str:
        """Checks made before anything is loaded: the file CMD names."""
        return find_program(self.argv[0], command_env(self.env, self.run_as))

    def scope(self) -> CommandScope | None:
        if self.show_all:
            return None
        return CommandScope(os.getpid(), ppid_of, unixsock.talks_to)

    def run(self, session, path: str, signals: Signals,
            on_tick: Callable[[], None] | None = None) -> int:
        """Start CMD in `session` (opened, not started), follow it until it exits;
        its status. The session is left open (the caller writes, then closes it)."""
        if signals.stopped:
            return 128 + signals.stopped
        become_subreaper()
        child = Child(self.argv, path, command_env(self.env, self.run_as), self.run_as,
                      signals.for_child())
        try:
            session.start(extra={"command": {"argv": self.argv, "pid": child.pid}})
            session.track(child.pid)
            if session.scope is not None:
                session.scope.add_root(child.pid)
        except BaseException:
            child.abort()
            raise
        if signals.stopped:
            child.abort()
            return 128 + signals.stopped
        signals.pid = child.pid
        try:
            child.go()
            while child.poll() is None:
                session.step(POLL_MS)
                if on_tick is not None:
                    on_tick()
        finally:
            signals.pid = None
        session.untrack(child.pid)
        # what the kernel recorded up to CMD's exit belongs in the table
        session.probes.poll(0)
        session.drain(final=True)
        child.reap_orphans()
        self.pid = child.pid
        return child.status

    def command_report(self, status: int) -> dict:
        sig = status - 128 if status > 128 and status - 128 < signal.NSIG else None
        try:
            signame = signal.Signals(sig).name if sig else None
        except ValueError:
            signame = None
        return {"v": render.SCHEMA_VERSION, "type": "command", "argv": self.argv,
                "pid": self.pid, "exit_code": status, "signal": signame}


def watch(run: Run, *, json_out: bool, comm, ifname, buffer_pages: int, perf_buffer: bool,
          backend: str, recorder, output: str | None, bad_ioctls: bool = False) -> int:
    """`taptrace watch -- CMD`: the trace of CMD's tree and taps; CMD's status."""
    path = run.prepare()
    sink = open_output(output)
    signals = Signals()
    sys.stdout = sink

    def header(ready: dict) -> str:
        return (f"# tracing {run.describe()} (pid {ready['command']['pid']}) and the taps "
                f"it touches with the {ready['backend']} backend ({ready['buffer']}) "
                f"until it exits" + ("; everything on the host (--all)" if run.show_all
                                     else ""))

    session, offset = open_session(json_out, None, comm, ifname, buffer_pages, perf_buffer,
                                   record=recorder, backend=backend, scope=run.scope(),
                                   header=header, bad_ioctls=bad_ioctls)
    asked = [False]
    signal.signal(signal.SIGUSR1, lambda *_a: asked.__setitem__(0, True))

    def table_on_request() -> None:
        if asked[0]:
            asked[0] = False
            session.probes.poll(0)
            session.drain()
            finish(session, json_out, offset)

    try:
        status = run.run(session, path, signals, on_tick=table_on_request)
        if run.pid is not None:
            if json_out:
                write(render.json_line(run.command_report(status)))
            finish(session, json_out, offset)
            if not json_out:
                write(f"# {run.describe()} {status_text(status)}")
    finally:
        session.close()
        sink.flush()
    failed = sink.error is not None or (recorder is not None and recorder.failed is not None)
    if sink.error is not None:
        warn(f"could not write the trace: {sink.error.strerror or sink.error}")
    return status or (1 if failed else 0)


def audit(run: Run, *, json_out: bool, ifname, quiet: bool, strict: bool, backend: str,
          error_exitcode: int, output: str | None) -> int:
    """`taptrace audit -- CMD`: what CMD left when it exited. error_exitcode on
    findings, else CMD's status (0: clean); AuditError (3) when it cannot audit."""
    path = run.prepare()
    try:
        sink = open_output(output)
    except click.ClickException as exc:
        raise AuditError(exc.message) from None
    signals = Signals()
    sys.stdout = sink
    reporter = Reporter(write, json_out, quiet)
    offset = time.time_ns() - time.monotonic_ns()
    lost_note = LostNote()
    emit = live_emit(reporter, lost_note, offset, ifname, lambda r: (
        f"# auditing {run.describe()} (pid {r['command']['pid']}) with the "
        f"{r['backend']} backend ({r['buffer']}): failed TUNGETIFF as they happen, "
        "what it left when it exits"))

    try:
        session, _offset = open_session(json_out, None, None, None, 256, False, emit=emit,
                                        backend=backend, scope=run.scope(),
                                        bad_ioctls=True)            # bad_probe
    except click.ClickException as exc:
        raise AuditError(exc.message) from None
    try:
        status = run.run(session, path, signals)
        if run.pid is None:
            return status
        model = session.model
        scope = session.scope
        if scope is not None:
            scope.absorb()
        files = model.files

        def chain_of(file: int, pid: int) -> list:
            return Model.chain(files[file], pid) if file in files else []

        nics = libvirt_nics()
        rows = enrich_rows([r for r in model.rows(ifname) if scope is None or scope.row_ok(r)],
                           nics=nics, own_netns=model.own_netns)
        taps = [t for t in session.table()["taps"]
                if ifname is None or fnmatch.fnmatchcase(t["ifname"], ifname)]
        facts = au.gather(rows, taps, nics, own_netns=model.own_netns)
        kept: list[str] = []
        for f in au.audit(rows, taps, nics, facts, chain_of=chain_of, strict=strict,
                          kept=kept, command=True):
            reporter.show(f)
        report = run.command_report(status)
        reporter.summarize(rows, taps, kept, complete=True,
                           extra={"command": {k: report[k] for k in
                                              ("argv", "pid", "exit_code", "signal")}},
                           tail=f"; {run.describe()} {status_text(status)}")
    finally:
        session.close()
        sink.flush()
    if reporter.found:
        return error_exitcode
    return status
