"""The `taptrace` command: ls, watch, top, who, audit, doctor, demo, agent, history."""

from __future__ import annotations

import errno
import fnmatch
import io
import os
import signal
import sqlite3
import sys
import time

import click

# Only what every command needs is imported here: the model, /proc, enrichment and
# the audit come in with the commands that use them (`history` starts in < 0.1 s).
from . import __version__, agent_outputs, render
from .params import BufferPages, Duration, Glob, IfName, Pid, Seconds, Size, User, When
from .tracing import (
    LostNote,
    OutputError,
    Stop,
    finish,
    open_session,
    quiet_stdout,
    trace_for,
    warn,
    write,
)

EXAMPLES_LS = """
\b
Examples:
  taptrace ls                  # every tun/tap fd, who holds it, shared files
  taptrace ls -i 'vnet*'       # only libvirt's taps
  taptrace ls --netns ctr1     # only taps of the `ip netns` namespace ctr1
  taptrace ls --json | jq '.rows[] | select(.comm | test("qemu"))'
"""

EXAMPLES_WATCH = """
\b
Examples:
  taptrace watch -- ./start-vm.sh      # run it, trace it and the taps it touches,
                                       # exit with its status; the trace on stderr
  taptrace watch -u alice -o trace.jsonl --json -- virsh start web1
  taptrace watch                       # everything, live, human columns
  taptrace watch -p $(pidof libvirtd)  # libvirtd and everything it starts
  taptrace watch -c 'qemu*' -i 'vnet*' # QEMU processes, libvirt taps
  taptrace watch --json --duration 30 > trace.jsonl
  taptrace watch | grep TUNGETIFF      # stops quietly when the pipe closes
"""

EXAMPLES_TOP = """
\b
Examples:
  taptrace top                 # live table, redrawn when it changes
  taptrace top -i 'tap*' --duration 60
"""

EXAMPLES_WHO = """
\b
Examples:
  taptrace who vnet1           # who holds vnet1 now
  taptrace who vnet1 --watch 30  # and how its open files move for 30 s
  taptrace who vnet1 --json
  taptrace who tap0 --netns ctr1  # the tap0 of namespace ctr1, not the host's
"""

EXAMPLES_DOCTOR = """
\b
Examples:
  taptrace doctor              # what works here, what to fix
"""

EXAMPLES_DEMO = """
\b
Examples:
  sudo taptrace demo           # trace a built-in libvirt-style handoff
  sudo taptrace demo --json
"""


COMMAND_KEY = "taptrace.command"


class WithCommand(click.Command):
    """A command that may end with `-- CMD [ARGS...]`: what follows the first `--` is
    the command to run, never taptrace's options (ctx.meta[COMMAND_KEY]; absent: no
    `--`)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            i = args.index("--")
            ctx.meta[COMMAND_KEY] = list(args[i + 1:])
            args = args[:i]
        return super().parse_args(ctx, args)


def _command_options(f):
    f = click.option("--all", "show_all", is_flag=True,
                     help="With -- CMD: everything on the host while CMD runs, not only its "
                          "processes and taps.")(f)
    f = click.option("-o", "--output", metavar="FILE",
                     help="With -- CMD: write taptrace's output to FILE (created mode 0600, or "
                          "truncated; '-': stdout) instead of stderr.")(f)
    return click.option("-u", "--user", type=User(), metavar="USER",
                        help="With -- CMD: run CMD as USER (its uid, gid and groups; HOME, "
                             "SHELL, USER, LOGNAME); taptrace stays root.")(f)


def _command_of(ctx: click.Context, user, output, show_all, **alone) -> list[str] | None:
    """The command after `--` (None: none), checked against the options given:
    -u/-o/--all need one; the options in `alone` (name -> value) do not go with one."""
    argv = ctx.meta.get(COMMAND_KEY)
    if argv is None:
        for name, value in (("-u", user), ("-o", output), ("--all", show_all)):
            if value:
                raise click.UsageError(f"{name} goes with a command: taptrace {ctx.info_name} "
                                       f"{name} ... -- CMD [ARGS...]")
        return None
    if not argv:
        raise click.UsageError("no command after --", ctx)
    for name, value in alone.items():
        if value is not None and value is not False:
            raise click.UsageError(f"{name} does not go with a command (taptrace follows it "
                                   "until it exits)", ctx)
    return argv


def _common_watch_options(f):
    f = click.option("-p", "--pid", type=Pid(),
                     help="Only this process and its descendants.")(f)
    f = click.option("-c", "--comm", metavar="GLOB", type=Glob(),
                     help="Only processes whose name matches (e.g. 'qemu*').")(f)
    f = click.option("-i", "--ifname", metavar="GLOB", type=Glob(),
                     help="Only interfaces whose name matches (e.g. 'vnet*').")(f)
    f = click.option("--duration", type=Seconds(),
                     metavar="S", help="Stop after S seconds.")(f)
    f = click.option("--buffer-pages", type=BufferPages(), default=256,
                     show_default=True, help="Ring buffer size in pages (a power of two).")(f)
    f = click.option("--perf-buffer", is_flag=True,
                     help="Use the perf buffer even where the ring buffer exists.")(f)
    return _backend_option(f)


def _backend_option(f):
    return click.option(
        "--backend", type=click.Choice(["auto", "kernel", "tracepoint"]), default="auto",
        show_default=True, envvar="TAPTRACE_BACKEND",
        help="kernel: fentry/kprobes where files are installed and closed, exact file "
             "identity, no cost to unrelated syscalls; tracepoint: syscall tracepoints, "
             "runs everywhere; auto: kernel where it loads, else tracepoint. "
             "Env: TAPTRACE_BACKEND.")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="taptrace")
def cli() -> None:
    """Live tracer of Linux TUN/TAP fds: who opened which tap, how each fd moved
    (dup, fork, exec, SCM_RIGHTS), and who holds what now."""


def _netns_option(f):
    return click.option(
        "--netns", "netns", metavar="NAME|INODE", callback=_resolve_netns,
        help="Only taps of this network namespace: an `ip netns` name or the inode "
             "(`stat -L -c %i /proc/PID/ns/net`).")(f)


def _resolve_netns(_ctx, _param, value: str | None) -> int | None:
    if value is None:
        return None
    if value.isdigit() and len(value) <= 20:
        return int(value)
    from . import procfs

    ino = next((i for i, n in procfs.netns_names().items() if n == value), None)
    if ino is None:
        raise click.BadParameter(f"no network namespace named {render.safe(value)} "
                                 "(see `ip netns list`; or give its inode)")
    return ino


def _in_netns(item: dict, netns: int | None, own: int | None) -> bool:
    """Is a row or tap in namespace `netns` (None: any)? Unknown counts as own."""
    if netns is None:
        return True
    ns = item.get("netns")
    return ns == netns or (ns is None and netns == own)


def _scan_workers() -> int:
    """Processes for the /proc scan of `ls`: one per CPU we may run on, at most 4."""
    try:
        return min(4, len(os.sched_getaffinity(0)))
    except OSError:
        return 1


@cli.command(epilog=EXAMPLES_LS)
@click.option("--json", "json_out", is_flag=True, help="One {\"type\": \"table\"} JSON line.")
@click.option("-i", "--ifname", metavar="GLOB", type=Glob(),
              help="Only interfaces matching GLOB.")
@_netns_option
def ls(json_out: bool, ifname: str | None, netns: int | None) -> None:
    """Snapshot from /proc (no BPF; any user sees what it may read).

    One row per (pid, fd) holding a tun/tap file, and per (pid, tid, fd) of a
    thread's own fd table (TID column): ifname, its network namespace where not
    taptrace's, kind, flags, close-on-exec, and the other holders sharing the same
    open file (kcmp). Tuns and taps that exist with no holder
    (persistent) are listed too, in every namespace taptrace can enter."""
    from . import procfs
    from .enrich import enrich_rows, proc_cmdline
    from .model import Model

    snap = procfs.snapshot(workers=_scan_workers())
    model = Model()
    model.load(snap)
    own = model.own_netns

    def cmdline_of(pid: int) -> tuple[str, ...] | None:   # the snapshot read it already
        info = snap.procs.get(pid)
        return info.cmdline if info is not None else proc_cmdline(pid)

    rows = enrich_rows([r for r in model.rows(ifname) if _in_netns(r, netns, own)],
                       cmdline_of=cmdline_of, own_netns=own)
    taps = [t for t in model.tap_list()
            if (ifname is None or fnmatch.fnmatchcase(t["ifname"], ifname))
            and _in_netns(t, netns, own)]
    if json_out:
        write(render.json_line({"v": render.SCHEMA_VERSION, "type": "table",
                                "own_netns": own, "rows": rows, "taps": taps}))
    else:
        write(render.table_text(rows, taps, complete=os.geteuid() == 0, own_netns=own))


@cli.command(cls=WithCommand, epilog=EXAMPLES_WATCH,
             options_metavar="[OPTIONS] [-- CMD [ARGS]...]")
@click.option("--json", "json_out", is_flag=True,
              help="One JSON object per line (first: ready, last: table).")
@click.option("--record", "record_path", type=click.Path(), metavar="FILE",
              help="Also write every kernel record and snapshot to FILE (see `replay`): a "
                   "new file, mode 0600.")
@click.option("--overwrite", is_flag=True,
              help="Let --record replace an existing regular file you own.")
@click.option("--bad-ioctls", is_flag=True,
              help="With the kernel backend, also show TUN ioctls on fds that are not "
                   "tun/tap fds (failed TUNGETIFF): every ioctl on the machine then pays "
                   "a hook. The tracepoint backend always shows them.")
@_common_watch_options
@_command_options
@click.pass_context
def watch(ctx, json_out, record_path, overwrite, bad_ioctls, pid, comm, ifname, duration,
          buffer_pages, perf_buffer, backend, user, output, show_all) -> None:
    """Trace tap opens, TUN ioctls and every move of a tap fd, live.

    Starts from a /proc snapshot, so taps opened earlier are known too.
    Ends on --duration, SIGINT or SIGTERM with the final table; SIGUSR1 prints
    the table so far and goes on. If --record cannot write (disk full, I/O error),
    recording stops with one line on stderr, the trace goes on to its table, and
    the exit status is 1.

    With -- CMD [ARGS...]: attach, then run CMD; trace its processes from its first
    instruction and every tap they touch (and taps made for them elsewhere, as
    libvirtd does for virsh), whoever holds them; at CMD's exit write the table and
    exit with CMD's status. The trace goes to stderr (or -o FILE); CMD keeps stdin,
    stdout and stderr. Ctrl-C reaches CMD; SIGTERM is passed on to it. CMD not
    found: 127; not executable: 126."""
    from .replay import Recorder, RecordError, open_recording

    env = dict(os.environ)                # CMD's, before taptrace sets anything
    argv = _command_of(ctx, user, output, show_all, **{"-p": pid, "--duration": duration})
    if argv is not None:
        from . import command
        run = command.Run(argv, env, user, show_all)
        run.prepare()                     # not found (127) before a record file is made
    stop = Stop() if argv is None else None
    recorder = None
    if record_path is not None:
        try:
            fd = open_recording(record_path, overwrite)
        except RecordError as exc:
            raise click.ClickException(f"--record: {exc}") from None
        recorder = Recorder(fd, record_path,
                            warn)
    # SIGUSR1: print the table now and go on (a test compares it with /proc at a quiet
    # moment). The handler only sets a flag; the loop prints between polls. Set before
    # the (slow) load, so that an early signal is kept, not fatal.
    if argv is not None:
        try:
            status = command.watch(run, json_out=json_out, comm=comm, ifname=ifname,
                                   buffer_pages=buffer_pages, perf_buffer=perf_buffer,
                                   backend=backend, recorder=recorder, output=output,
                                   bad_ioctls=bad_ioctls)
        finally:
            if recorder is not None:
                recorder.close()
        sys.exit(status)
    asked = [False]
    signal.signal(signal.SIGUSR1, lambda *_a: asked.__setitem__(0, True))
    try:
        session, offset = open_session(json_out, pid, comm, ifname, buffer_pages,
                                       perf_buffer, record=recorder, backend=backend,
                                       bad_ioctls=bad_ioctls)

        def table_on_request() -> None:
            if asked[0]:
                asked[0] = False
                session.probes.poll(0)          # what the kernel recorded before the signal
                session.drain()
                finish(session, json_out, offset)

        try:
            session.start()
            session.run(duration, stop, on_tick=table_on_request)
            finish(session, json_out, offset)
        finally:
            session.close()
    finally:
        if recorder is not None:
            recorder.close()
    if recorder is not None and recorder.failed is not None:
        sys.exit(1)            # the table is out; the recording is not whole


@cli.command(epilog="""
\b
Examples:
  sudo taptrace watch --record run.jsonl --duration 60
  taptrace replay run.jsonl            # the same events and table, no root needed
  taptrace replay --json run.jsonl | tail -1
""")
@click.argument("recording", type=click.Path(allow_dash=True))
@click.option("--json", "json_out", is_flag=True)
def replay(recording: str, json_out: bool) -> None:
    """Replay a `watch --record` file through the model (no BPF, no root).

    Every line is checked first (a recording is anyone's file): the first bad
    one ends the replay with its number, after the events before it."""
    from .replay import ReplayError, read_lines, recorded_model, replay_iter

    # opened here, not by click.File: its message would print the name raw
    try:
        f = sys.stdin.buffer if recording == "-" else open(recording, "rb")  # noqa: SIM115
    except OSError as exc:
        raise click.BadParameter(f"cannot read '{render.safe(recording)}': {exc.strerror}",
                                 param_hint="'RECORDING'") from None
    answers: dict = {}
    netns: dict = {}
    model = recorded_model(answers, netns)
    # a recording's strings are anyone's: every human line goes through inert()
    show = ((lambda r: render.json_line(render.public(r, 0))) if json_out else
            (lambda r: render.inert(render.event_line(r, 0, model.own_netns,
                                                      model.netns_names))))
    try:
        with f:
            for r in replay_iter(read_lines(f), model, answers, netns):
                if not r.get("quiet"):
                    write(show(r))
    except ReplayError as exc:
        raise click.ClickException(f"replay: {exc}") from None
    table = {"type": "table", "own_netns": model.own_netns, "rows": model.rows(),
             "taps": model.tap_list()}
    if json_out:
        write(render.json_line(render.public(table, 0)))
    else:
        write("")
        write(render.inert(render.table_text(table["rows"], table["taps"],
                                             own_netns=model.own_netns)))


@cli.command(epilog=EXAMPLES_TOP)
@_common_watch_options
def top(pid, comm, ifname, duration, buffer_pages, perf_buffer, backend) -> None:
    """The live pid/fd → ifname table, redrawn as it changes."""
    stop = Stop()
    changed = [True]
    session, _offset = open_session(False, pid, comm, ifname, buffer_pages, perf_buffer,
                                    emit=lambda r: changed.__setitem__(0, True),
                                    backend=backend)
    last = [0.0]

    def redraw() -> None:
        now = time.monotonic()
        if not changed[0] or now - last[0] < 0.5:
            return
        changed[0], last[0] = False, now
        table = session.table()
        tty = sys.stdout.isatty()
        out = ("\x1b[H\x1b[2J" if tty else "") + time.strftime("%H:%M:%S  taptrace top") + \
            f"  ({len(table['rows'])} fds)\n" + render.table_text(
                table["rows"], table["taps"], own_netns=table["own_netns"])
        write(out + ("" if tty else "\n"))

    try:
        session.start()
        redraw()
        session.run(duration, stop, on_tick=redraw)
    finally:
        session.close()


@cli.command(epilog=EXAMPLES_WHO)
@click.argument("ifname_arg", metavar="IFNAME", type=IfName())
@click.option("--watch", "watch_s", type=Seconds(), metavar="S",
              help="Also trace for S seconds and show the lineage of each open file.")
@click.option("--json", "json_out", is_flag=True)
@_netns_option
@_backend_option
def who(ifname_arg: str, watch_s: float | None, json_out: bool, netns: int | None,
        backend: str) -> None:
    """Who holds IFNAME now (and, with --watch, how its open files moved).

    A name is unique only inside a network namespace: without --netns, every
    tap of that name is shown, each with its namespace where not taptrace's."""
    from . import procfs
    from .enrich import enrich_rows
    from .model import Model

    if watch_s is None:
        model = Model()
        model.load(procfs.snapshot())
    else:
        stop = Stop()
        session, _offset = open_session(json_out, None, None, ifname_arg, 256, False,
                                        quiet_header=True, backend=backend)
        model = trace_for(session, watch_s, stop)
    own = model.own_netns
    rows = enrich_rows([r for r in model.rows(ifname_arg) if _in_netns(r, netns, own)],
                       own_netns=own)
    taps = [t for t in model.tap_list()
            if t["ifname"] == ifname_arg and _in_netns(t, netns, own)]
    lineage = [item for item in model.lineage(ifname_arg)
               if _in_netns(item, netns, own)]
    tap = next((t for t in taps if _in_netns(t, own, own)), taps[0] if taps else None)
    if json_out:
        write(render.json_line({"v": render.SCHEMA_VERSION, "type": "who",
                                "ifname": ifname_arg, "own_netns": own, "tap": tap,
                                "taps": taps, "rows": rows, "lineage": lineage}))
        return
    where = ""
    if netns is not None and netns != own:
        where = f" in netns {render.netns_label(netns, model.netns_names.get(netns), own)}"
    if not taps and not rows and not lineage:
        raise click.ClickException(f"no tun/tap interface named {render.safe(ifname_arg)!s}"
                                   f"{where} is known (see `taptrace ls`)")
    if not taps:
        write(f"{render.safe(ifname_arg)}{where}: gone")
    for t in taps:
        write(f"{render.tap_text(t, own)}, {t['files']} open file(s)")
    write(render.table_text(rows, own_netns=own))
    # each tap's host side, read in its own namespace (not a namesake of this one)
    by_ns: dict = {}
    for r in rows:
        by_ns.setdefault(r.get("netns") if r.get("netns") != own else None, []).append(r)
    for ns, ns_rows in sorted(by_ns.items(), key=lambda kv: kv[0] or 0):
        label = render.netns_label(ns, ns_rows[0].get("netns_name"), own)
        for line in render.mac_story(ifname_arg, ns_rows, label):
            write(line)
    if any(item["chain"] for item in lineage):
        write("\nOpen files seen while watching (creator → holders):")
    for item in lineage:
        if item["chain"]:
            state = "" if item["open"] else "  (closed)"
            label = render.netns_label(item["netns"], item["netns_name"], own)
            write("  " + render.chain_text(ifname_arg, item["chain"]) + state
                  + (f"  [netns {label}]" if label else ""))


@cli.command(epilog=EXAMPLES_DOCTOR)
@click.option("--json", "json_out", is_flag=True)
def doctor(json_out: bool) -> None:
    """Check privileges, bcc, kernel headers, tracepoints, tun; say how to fix."""
    from . import doctor as doc

    checks = doc.run_checks()
    if json_out:
        write(render.json_line({"v": render.SCHEMA_VERSION, "type": "doctor",
                                "checks": [c.__dict__ for c in checks]}))
    else:
        write(doc.format_checks(checks))
    if not all(c.ok for c in checks):
        sys.exit(1)


@cli.command(epilog=EXAMPLES_DEMO)
@click.option("--json", "json_out", is_flag=True)
@_backend_option
def demo(json_out: bool, backend: str) -> None:
    """Trace a built-in scenario: a libvirt-style tap created, handed to a
    "QEMU" by fork+exec, probed with TUNGETIFF, a second tap hot-plugged over
    SCM_RIGHTS, then everything closed."""
    import subprocess

    stop = Stop()
    session, offset = open_session(json_out, None, None, None, 256, False, backend=backend,
                                   bad_ioctls=True)      # its "QEMU" probes a pipe
    try:
        session.start()
        child = subprocess.Popen([sys.executable, "-m", "tracer.demo"],
                                 cwd=os.path.dirname(os.path.dirname(__file__)),
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        session.follow(child.pid)
        os.set_blocking(child.stdout.fileno(), False)
        said = b""
        while child.poll() is None and not stop() and b"holding" not in said:
            session.step(50)
            try:
                said += os.read(child.stdout.fileno(), 4096)
            except BlockingIOError:
                pass
        session.run(0.3, stop)
        if not json_out:
            table = session.table()
            write("\n# the table while qemu-system-x86 holds both taps:")
            write(render.table_text(table["rows"], own_netns=table["own_netns"]))
            write("\n# now qemu-system-x86 exits:")
        child.stdin.close()
        while child.poll() is None and not stop():
            session.step(50)
        session.run(0.5, stop)
        finish(session, json_out, offset)
        if child.returncode:
            raise click.ClickException(f"the demo scenario failed (exit {child.returncode})")
    finally:
        session.close()


EXAMPLES_AUDIT = """
\b
Examples:
  taptrace audit -- pytest tests/test_hotplug.py   # the CI gate: run it traced;
                                     # 0 clean, 1 findings, else its own status
  taptrace audit --json -o audit.jsonl -- ./start-vm.sh
  taptrace audit                     # findings now, from /proc; exit 1 if any
  taptrace audit -i 'vnet*' --json   # libvirt's taps, one JSON object per finding
  sudo taptrace audit --watch 60     # trace a minute: failed TUNGETIFF as they
                                     # happen, then the table, leaks with their creator
  taptrace audit -q || alert         # 0 clean, 1 findings, 3 could not audit
  taptrace audit --strict            # also persistent tuns/taps kept on purpose
"""


@cli.command("audit", cls=WithCommand, epilog=EXAMPLES_AUDIT,
             options_metavar="[OPTIONS] [-- CMD [ARGS]...]")
@click.option("--json", "json_out", is_flag=True,
              help='One {"type": "finding"} JSON line per finding, then {"type": "audit"}.')
@click.option("--watch", "watch_s", type=Seconds(), metavar="S",
              help="Trace for S seconds (root, BPF): failed TUNGETIFF probes as they "
                   "happen, then audit the final table with each fd's lineage.")
@click.option("-i", "--ifname", metavar="GLOB", type=Glob(),
              help="Only interfaces matching GLOB (failed probes name none: left out).")
@click.option("-q", "--quiet", is_flag=True, help="Print nothing; only the exit status.")
@click.option("--strict", is_flag=True,
              help="Also report a persistent tun/tap that no process holds when it was kept "
                   "on purpose (owner or group set, or made persistent by its creator).")
@click.option("--error-exitcode", type=click.IntRange(0, 255), default=1, show_default=True,
              metavar="N", help="The exit status when there are findings.")
@_backend_option
@_command_options
@click.pass_context
def audit_cmd(ctx, json_out: bool, watch_s: float | None, ifname: str | None, quiet: bool,
              strict: bool, error_exitcode: int, backend: str, user, output,
              show_all: bool) -> None:
    """Report tap handoff problems; exit 1 when there are any.

    \b
    leak            a non-VM process (creator, intermediate) still holds the
                    open file its VM uses
    foreign_holder  a process that is not the tap's VM holds it another way
    vm_gone         a tap on a bridge/OVS master that no VM holds
    orphan          a tun/tap no process holds (persistent, left behind)
    bad_probe       a failed TUNGETIFF: a process was given a non-tun/tap fd
                    (--watch, -- CMD)

    A persistent tun/tap with an owner or group (tunctl -u), or made persistent
    by its creator while traced (openvpn --mktun), is kept on purpose: not an
    orphan or vm_gone unless --strict.

    The VM of a tap is the QEMU of the libvirt domain that has it as a target,
    else a QEMU whose -netdev names that fd or tap, else any QEMU holding it.

    With -- CMD [ARGS...]: run CMD traced (as `watch -- CMD`) and, when it exits,
    audit what it left: its processes' taps and everyone holding them; a tap it made
    and left persistent is an orphan even if kept on purpose. Exit: N
    (--error-exitcode, 1) on findings, else CMD's status; 3: could not audit;
    127/126: CMD not found / not executable. Output on stderr (or -o FILE)."""
    from . import audit as au
    from . import procfs
    from .audit_report import AuditError, Reporter, live_emit
    from .enrich import enrich_rows, libvirt_nics
    from .model import Model

    env = dict(os.environ)                # CMD's, before taptrace sets anything
    argv = _command_of(ctx, user, output, show_all, **{"--watch": watch_s})
    if argv is not None:
        from . import command
        sys.exit(command.audit(command.Run(argv, env, user, show_all), json_out=json_out,
                               ifname=ifname, quiet=quiet, strict=strict, backend=backend,
                               error_exitcode=error_exitcode, output=output))
    reporter = Reporter(write, json_out, quiet)
    chain_of = None
    if watch_s is None:
        model = Model()
        model.load(procfs.snapshot())
    else:
        offset = time.time_ns() - time.monotonic_ns()

        lost_note = LostNote()
        emit = live_emit(reporter, lost_note, offset, ifname, lambda r: (
            f"# auditing for {watch_s:g} s with the {r['backend']} backend "
            f"({r['buffer']}): failed TUNGETIFF as they happen, the table at the end"))

        stop = Stop()
        try:
            session, _offset = open_session(json_out, None, None, None, 256, False,
                                            emit=emit, backend=backend,
                                            bad_ioctls=True)       # bad_probe
        except click.ClickException as exc:
            raise AuditError(exc.message) from None
        model = trace_for(session, watch_s, stop)
        files = model.files

        def chain_of(file: int, pid: int) -> list:
            return Model.chain(files[file], pid) if file in files else []
    nics = libvirt_nics()
    rows = enrich_rows(model.rows(ifname), nics=nics, own_netns=model.own_netns)
    taps = [t for t in model.tap_list()
            if ifname is None or fnmatch.fnmatchcase(t["ifname"], ifname)]
    facts = au.gather(rows, taps, nics, own_netns=model.own_netns)
    kept: list[str] = []
    for f in au.audit(rows, taps, nics, facts, chain_of=chain_of or au.no_chain,
                      strict=strict, kept=kept):
        reporter.show(f)
    reporter.summarize(rows, taps, kept, complete=os.geteuid() == 0)
    if reporter.found:
        sys.exit(error_exitcode)


EXAMPLES_AGENT = """
\b
Examples:
  sudo taptrace agent          # trace and audit as a service; history in
                               # /var/lib/taptrace/history.db
  sudo taptrace agent --db /srv/tt.db --keep 7d --max-size 200M
  sudo taptrace agent --metrics 127.0.0.1:9979 --log
                               # + Prometheus metrics, findings to the journal
                               # (or syslog): contrib/systemd's unit runs this
"""


@cli.command(epilog=EXAMPLES_AGENT)
@click.option("--db", default=None, metavar="PATH",
              help="The history database (created 0600; its directory 0700). "
                   "Default: /var/lib/taptrace/history.db.")
@click.option("--keep", "keep_s", type=Duration(), default="30d", show_default=True,
              metavar="AGE", help="Delete history older than AGE (s, m, h, d, w).")
@click.option("--max-size", "max_bytes", type=Size(), default="1G", show_default=True,
              metavar="SIZE", help="Then delete the oldest history while the database is "
                                   "larger than SIZE (K, M, G).")
@click.option("--audit-every", type=Seconds(), default=2.0, show_default=True, metavar="S",
              help="After changes, audit at most every S seconds.")
@_backend_option
@agent_outputs.options
def agent(db: str | None, keep_s: float, max_bytes: int, audit_every: float,
          backend: str, **outputs) -> None:
    """Run the tracer and the audit continuously, as a service (root, BPF).

    Every event, finding (as it appears and clears), resync and loss goes into
    the history database, with who held which tap when; `taptrace history`
    reads it. Stops on SIGTERM or SIGINT (exit 0)."""
    from .agent import Agent, AgentOptions
    from .history_store import DEFAULT_DB, HistoryError

    opts = AgentOptions(db=db or DEFAULT_DB, keep_s=keep_s, max_bytes=max_bytes,
                        backend=backend, audit_every=audit_every,
                        extra=agent_outputs.outputs(outputs))
    stop = Stop()

    def header(r: dict) -> None:
        click.echo(f"# taptrace agent: tracing with the {r['backend']} backend "
                   f"({r['buffer']}); {r['rows']} tap fds and {r['taps']} taps known "
                   f"at start; history in {render.safe(opts.db)}", err=True)
        if r.get("backend_note"):
            click.echo(f"# {render.safe(r['backend_note'])}", err=True)

    try:
        Agent(opts, header=header).run(stop)
    except HistoryError as exc:
        raise click.ClickException(str(exc)) from None


EXAMPLES_HISTORY = """
\b
Examples:
  taptrace history vnet3 --at 2026-11-30T02:10   # who held vnet3 then
  taptrace history vnet3 --at 1764468600 --json  # as `ls --json` would have said
  taptrace history vnet3 --since 2026-11-30T00:00 --until 2026-11-30T03:00
  taptrace history --vm web1                      # everything about a domain's taps
  taptrace history --db copy-from-host7.db --pid 4242
"""


@cli.command(epilog=EXAMPLES_HISTORY)
@click.argument("ifname_arg", metavar="[IFNAME]", required=False, type=IfName())
@click.option("--pid", type=click.IntRange(1, (1 << 31) - 1), metavar="PID",
              help="Only this process.")
@click.option("--vm", metavar="NAME", help="Only the taps and processes of this VM "
                                          "(libvirt domain or QEMU -name).")
@click.option("--since", type=When(), metavar="T", help="From T (ISO 8601 or epoch seconds).")
@click.option("--until", type=When(), metavar="T", help="Until T.")
@click.option("--at", "at", type=When(), metavar="T",
              help="The holders at moment T, as `ls` shows them.")
@click.option("--json", "json_out", is_flag=True, help="JSON lines.")
@click.option("--db", default=None, metavar="PATH",
              help="The database (default /var/lib/taptrace/history.db); a copy from "
                   "another host works.")
def history(ifname_arg: str | None, pid: int | None, vm: str | None, since: float | None,
            until: float | None, at: float | None, json_out: bool, db: str | None) -> None:
    """What the agent saw: who held a tap at a moment (--at), the events and
    findings of a window, and a tap's lineage. Read-only; no root, no BPF."""
    from . import history as hi
    from .history_store import DEFAULT_DB, HistoryError

    if at is not None and (since is not None or until is not None):
        raise click.UsageError("--at is a moment: it does not go with --since/--until")
    if since is not None and until is not None and since > until:
        raise click.UsageError("--since is after --until")
    try:
        con = hi.open_ro(db or DEFAULT_DB)
    except HistoryError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        own = hi.own_netns(con, at)
        if at is not None:
            held, stale = hi.holders_at(con, at, ifname_arg, pid, vm)
            if json_out:
                write(hi.table_json(held, stale, at, own))
            else:
                for line in hi.table_lines(held, stale, at, ifname_arg, own,
                                           hi.covered(con, at)):
                    write(line)
            return
        lo = since if since is not None else float("-inf")
        hi_t = until if until is not None else float("inf")
        items = hi.window(con, lo, hi_t, ifname_arg, pid, vm)
        if json_out:
            for o in items:
                write(render.json_line(o))
        else:
            day = None
            for o in items:
                t = o.get("time")
                if isinstance(t, (int, float)) and time.strftime(
                        "%Y-%m-%d", time.localtime(t)) != day:
                    day = time.strftime("%Y-%m-%d", time.localtime(t))
                    write(f"# {day}")
                write(hi.item_line(o, own))
        if ifname_arg is not None:
            holdings = hi.lineage(con, ifname_arg, lo, hi_t, pid, vm)
            if json_out:
                write(hi.lineage_json(ifname_arg, holdings))
            else:
                write("")
                for line in hi.lineage_lines(ifname_arg, holdings):
                    write(line)
    except sqlite3.Error as exc:
        raise click.ClickException(f"cannot read the history database: {exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        # a row that is no row of ours (JSON damaged or written by hand): the file is
        # anyone's; say so in one line
        raise click.ClickException(f"the history database has a damaged row "
                                   f"({type(exc).__name__}: {render.safe(exc)})") from None
    finally:
        con.close()


class _ClosedStdout(io.TextIOBase):
    """sys.stdout when fd 1 was closed at start: a write fails as it would on fd 1."""

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        raise OSError(errno.EBADF, os.strerror(errno.EBADF))


def _guard_std_fds() -> None:
    """Started with fd 0, 1 or 2 closed (`taptrace ls >&-`): put /dev/null there, so no
    file we open (a recording, a BPF map) becomes "standard output"; writing to a
    closed stdout still fails (one line, exit 1), a closed stderr is silent."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        try:
            null = os.open(os.devnull, os.O_RDWR)
        except OSError:
            return
        if null != fd:
            os.dup2(null, fd)
            os.close(null)
        if fd == 1:
            sys.stdout = _ClosedStdout()
        elif fd == 2:
            sys.stderr = open(fd, "w", closefd=False)  # noqa: SIM115 - for the process


# write(2) errors that mean "this output cannot be written", not a bug of ours
OUTPUT_ERRNOS = frozenset({errno.EBADF, errno.ENOSPC, errno.EIO, errno.EDQUOT, errno.EFBIG,
                           errno.EPIPE, errno.EINVAL})


def main() -> None:
    _guard_std_fds()
    try:
        _main()
    finally:
        _settle_stderr()


def _settle_stderr() -> None:
    """What is still buffered for stderr goes now; if stderr cannot take it (full,
    closed), it goes to /dev/null, or the interpreter's last flush would fail and
    turn the exit status into 120."""
    try:
        sys.stderr.flush()
    except OSError:
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stderr.fileno())
            os.close(devnull)
            sys.stderr.flush()
        except (OSError, ValueError):
            pass


def _main() -> None:
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        _show_error(exc)
        sys.exit(exc.exit_code)
    except (click.Abort, KeyboardInterrupt):
        sys.exit(130)
    except BrokenPipeError:
        quiet_stdout()
        sys.exit(0)
    except OSError as exc:
        if exc.errno not in OUTPUT_ERRNOS or exc.filename is not None:
            _internal_error(exc)
        # click's own output (--help, --version) to a full or closed stdout
        quiet_stdout()
        _show_error(OutputError(exc))
        sys.exit(1)
    except Exception as exc:  # noqa: BLE001 - the last defence: one line, no traceback
        _internal_error(exc)
    _quiet_stdout_on_exit()


def _show_error(exc: click.ClickException) -> None:
    try:
        exc.show()
    except OSError:          # stderr too is full or gone: the exit status says it
        pass


def _internal_error(exc: Exception) -> None:
    if os.environ.get("TAPTRACE_DEBUG"):
        raise exc
    try:
        click.echo(f"taptrace: internal error: {type(exc).__name__}: {exc} "
                   "(rerun with TAPTRACE_DEBUG=1 for details)", err=True)
    except OSError:
        pass
    sys.exit(70)


def _quiet_stdout_on_exit() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        quiet_stdout()
    except OSError as exc:
        quiet_stdout()
        _show_error(OutputError(exc))
        sys.exit(1)
