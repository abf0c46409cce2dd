"""taptrace benchmarks: every figure is a ratio measured side by side in one run.

  hooks     what hooking costs by itself: empty programs on syscall tracepoints,
            raw sys_enter/sys_exit tracepoints, taptrace's own program and the
            same hooks with empty programs (its floor)
  overhead  unrelated work (open/close, fork+exec, non-tun ioctl, sendmsg+recvmsg
            of one byte, the same passing an fd, tar, python startups) with no
            tracer, the floor (one empty BPF program on
            sys_enter_ioctl), `taptrace watch` and the bpftrace peer (peer.bt),
            alternating the conditions round by round
  capacity  tap events per second `watch` keeps with zero lost, flat out and
            paced, and whether the table is exact after a loss
  startup   launch to `ready`: taptrace against bpftrace running peer.bt
  memory    RSS of `watch` idle and while 10,000 taps are created and destroyed
            by short-lived processes
  snapshot  `taptrace ls` against `ip -d tuntap show` and `lsof /dev/net/tun` on a
            host with 2,000 processes, 100,000 fds and 200 taps held

Run as root: `make bench` (all) or `.venv/bin/python bench/bench.py overhead`.
Absolute times are context only; the ratios are the result.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
BIN = BENCH / "bin"
PEER = BENCH / "peer.bt"
FLOOR = 'BEGIN { printf("ready\\n"); } tracepoint:syscalls:sys_enter_ioctl { }'
PY = sys.executable
sys.path.insert(0, str(ROOT / "tests"))
import tapkit  # the tests' ground truth (/proc fdinfo)


def say(line: str = "") -> None:
    print(line, flush=True)


def spread(values: list[float]) -> str:
    return (f"median {statistics.median(values):.3f} "
            f"[{min(values):.3f} .. {max(values):.3f}]")


# ---- tracers ----------------------------------------------------------------

class Running:
    """A tracer started and past its ready line; its stdout is drained by a thread
    (lines are counted by type, so a busy tracer never blocks on a full pipe)."""

    def __init__(self, argv: list[str], ready: str, keep: bool = False) -> None:
        self.t0 = time.perf_counter()
        self.proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.counts: dict[str, int] = {}
        self.keep = keep
        self.lines: list[dict] = []
        self._ready: queue.Queue = queue.Queue()
        self._marker = ready
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()
        try:
            self._ready.get(timeout=120)
        except queue.Empty:
            self.stop()
            raise SystemExit(f"bench: {argv[0]} did not become ready")
        self.ready_s = time.perf_counter() - self.t0
        if self.proc.poll() is not None:
            raise SystemExit(f"bench: {' '.join(argv)} failed: {self.proc.stderr.read()}")

    def _pump(self) -> None:
        said = False
        for line in self.proc.stdout:
            if not said and self._marker in line:
                said = True
                self._ready.put(True)
                continue
            if line.startswith("{"):
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError:
                    continue
                self.counts[obj["type"]] = self.counts.get(obj["type"], 0) + 1
                if self.keep or obj["type"] in ("table", "lost", "resync"):
                    self.lines.append(obj)
        if not said:
            self._ready.put(False)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._thread.join(timeout=30)

    def rss_kb(self, field: str = "VmRSS") -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        return 0


def taptrace(*extra: str, keep: bool = False) -> Running:
    return Running([PY, "-m", "tracer", "watch", "--json", *extra], '"type": "ready"', keep)


def bpftrace(program: str | Path) -> Running:
    argv = ["bpftrace", str(program)] if isinstance(program, Path) else ["bpftrace", "-e",
                                                                        program]
    return Running(argv, "ready")


CONDITIONS = {
    "none": None,
    "floor": lambda: bpftrace(FLOOR),
    "taptrace": taptrace,
    "peer": lambda: bpftrace(PEER),
}


# ---- overhead ---------------------------------------------------------------

PIN = ["taskset", "-c", str(os.cpu_count() - 1)] if (os.cpu_count() or 1) > 1 else []


def _c_workload(prog: str, n: int, *extra: str):
    def run() -> float:
        out = subprocess.run([*PIN, str(BIN / prog), str(n), *extra], check=True,
                             capture_output=True, text=True).stdout
        return float(out)                              # ns per operation
    return run


def _timed(argv: list[str], times: int = 1):
    def run() -> float:
        t = time.perf_counter()
        for _ in range(times):
            subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        return (time.perf_counter() - t) / times * 1e9
    return run


def workloads(scale: float) -> dict:
    tar_src = "/usr/share/doc" if os.path.isdir("/usr/share/doc") else "/usr/share"
    return {
        "open/close": _c_workload("openclose", int(200_000 * scale)),
        "fork+exec": _c_workload("forkexec", int(200 * scale)),
        "ioctl FIONREAD": _c_workload("ioctlloop", int(1_000_000 * scale)),
        "msg round trip": _c_workload("msgloop", int(200_000 * scale)),
        "msg + SCM fd": _c_workload("msgloop", int(100_000 * scale), "fd"),
        "tar c | wc": _timed([*PIN, "sh", "-c",
                              f"tar cf - -C {tar_src} . 2>/dev/null | wc -c"]),
        "python startup": _timed([*PIN, "/usr/bin/python3", "-c", "import json, subprocess"],
                                 max(1, int(10 * scale))),
    }


def overhead(args) -> None:
    work = workloads(args.scale)
    tracers = [c for c in CONDITIONS if CONDITIONS[c]]
    base = {c: {w: [] for w in work} for c in tracers}    # "none" right before c
    traced = {c: {w: [] for w in work} for c in tracers}
    for run in work.values():                          # warm caches
        run()
    say(f"overhead: {args.rounds} rounds; in each, for each condition (order rotating): "
        "the workloads with no tracer, then the same with the condition's tracer, so "
        "every ratio pairs two runs seconds apart")
    for r in range(args.rounds):
        order = tracers[r % len(tracers):] + tracers[:r % len(tracers)]
        for c in order:
            for w, run in work.items():
                base[c][w].append(run())
            tracer = CONDITIONS[c]()
            try:
                time.sleep(0.3)
                for w, run in work.items():
                    traced[c][w].append(run())
            finally:
                tracer.stop()
        say(f"  round {r + 1}: open/close ratio " + "  ".join(
            f"{c}={traced[c]['open/close'][-1] / base[c]['open/close'][-1]:.3f}"
            for c in tracers))
    say()
    say(f"{'workload':<16} {'none (ns/op)':>13}  {'floor/none':<28} {'taptrace/none':<28} "
        f"{'peer/none':<28} taptrace overhead / peer's")
    for w in work:
        ratio = {c: [t / b for t, b in zip(traced[c][w], base[c][w])] for c in tracers}
        tt, peer = statistics.median(ratio["taptrace"]), statistics.median(ratio["peer"])
        share = f"{(tt - 1) / (peer - 1):.2f}" if peer > 1.005 else "- (peer within noise)"
        none = statistics.median([x for c in tracers for x in base[c][w]])
        say(f"{w:<16} {none:>13.0f}  {spread(ratio['floor']):<28} "
            f"{spread(ratio['taptrace']):<28} {spread(ratio['peer']):<28} {share}")


# ---- hooks: what a syscall tracepoint costs, by itself -------------------------

HOOKS_SRC = r"""
BPF_PROG_ARRAY(exit_calls, 512);
BPF_PROG_ARRAY(enter_calls, 512);
int empty(void *ctx) { return 0; }
int raw_enter(struct bpf_raw_tracepoint_args *ctx) {
    enter_calls.call(ctx, (u32)ctx->args[1]);
    return 0;
}
int raw_exit(struct bpf_raw_tracepoint_args *ctx) {
    u64 nr = 0;
    bpf_probe_read_kernel(&nr, sizeof(nr), (char *)ctx->args[0] + 120); /* orig_ax */
    exit_calls.call(ctx, (u32)nr);
    return 0;
}
int raw_empty(struct bpf_raw_tracepoint_args *ctx) { return 0; }
"""


def hooks(args) -> None:
    """Programs loaded once, attached and detached between short runs of one
    workload (many rounds, seconds apart at most): what each way of hooking costs,
    apart from what the program does. taptrace's own program is loaded the way
    `watch` loads it, and measured over its floor (the same hooks, empty programs),
    with receives idle and armed (bpf/tracepoint.bpf.c, scm_armed)."""
    import ctypes

    from tracer import kheaders
    from tracer.backends.tracepoint import TracepointBackend as Probes
    kheaders.ensure_tracefs()
    kheaders.prepare_bcc_env()
    import bcc
    b = bcc.BPF(text=HOOKS_SRC)
    for table, nr in (("exit_calls", 257), ("exit_calls", 3), ("enter_calls", 16)):
        fn = b.load_func("raw_empty", bcc.BPF.RAW_TRACEPOINT)
        b[table][ctypes.c_int(nr)] = ctypes.c_int(fn.fd)
    tt = Probes(lambda _e: None)
    tt_points = [k.decode() for k in tt._bpf.tracepoint_fds]

    def tp(*points):
        return (lambda: [b.attach_tracepoint(tp=p, fn_name="empty") for p in points],
                lambda: [b.detach_tracepoint(p) for p in points])

    def raw():
        return (lambda: (b.attach_raw_tracepoint(tp="sys_enter", fn_name="raw_enter"),
                         b.attach_raw_tracepoint(tp="sys_exit", fn_name="raw_exit")),
                lambda: (b.detach_raw_tracepoint(tp="sys_enter"),
                         b.detach_raw_tracepoint(tp="sys_exit")))

    from tracer import events as ev
    armed_runs = [0, 0]                                # idle runs armed by others, of

    def scm_state(until: int) -> None:
        """No SCM_RIGHTS send unsettled, nobody tracked, the lost-send window at
        `until`: 0, receives idle (what `watch` has while no tun fd is in flight);
        never ending, every recvmsg parsed after a clock read (as for 60 s after a
        lost send record). The buffer is drained first: nobody reads it here, and
        other processes' tun fds (other tests on the host) would fill it."""
        tt.poll(0)
        tt._interest.clear()
        tt._counters[ctypes.c_int(ev.C_SCM_SETTLED)] = ctypes.c_ulonglong(
            tt.counter(ev.C_SCM_SENDS))
        tt._counters[ctypes.c_int(ev.C_SCM_LOST_UNTIL)] = ctypes.c_ulonglong(until)

    def taptrace_program(armed: bool = False):
        def on():
            scm_state(2**64 - 1 if armed else 0)
            for p in tt_points:
                tt._bpf.attach_tracepoint(tp=p, fn_name="tracepoint__" + p.replace(":", "__"))

        def off():
            for p in tt_points:
                tt._bpf.detach_tracepoint(p)
            if not armed:
                armed_runs[1] += 1
                armed_runs[0] += (tt.counter(ev.C_SCM_SENDS) != tt.counter(ev.C_SCM_SETTLED)
                                  or tt.counter(ev.C_SCM_LOST_UNTIL) != 0)
        return on, off

    # the floor of each program: the same hooks with empty programs
    twin = _Hooks(tt._bpf, ()).empty_twin()
    for p in tt_points:                                # loaded, attached only below
        tt._bpf.detach_tracepoint(p)
    msg_points = [p for p in tt_points if p.endswith(("_sendmsg", "_recvmsg"))]
    conds = {"none": (lambda: None, lambda: None),
             "floor: empty sys_enter_ioctl": tp("syscalls:sys_enter_ioctl"),
             "empty sys_exit_openat+close": tp("syscalls:sys_enter_ioctl",
                                               "syscalls:sys_exit_openat",
                                               "syscalls:sys_exit_close"),
             "raw sys_enter/exit + tail call": raw(),
             "empty " + "+".join(p.split(":")[1] for p in msg_points): tp(*msg_points),
             "taptrace's hooks, empty programs": (twin.on, twin.off),
             "taptrace's program": taptrace_program(),
             "taptrace's program, receives armed": taptrace_program(armed=True)}
    work = {"open/close": _c_workload("openclose", 20_000),
            "ioctl FIONREAD": _c_workload("ioctlloop", 200_000),
            "msg round trip": _c_workload("msgloop", 20_000),
            "msg + SCM fd": _c_workload("msgloop", 10_000, "fd")}
    res = {c: {w: [] for w in work} for c in conds}
    names = list(conds)
    for r in range(args.rounds):
        for c in names[r % len(names):] + names[:r % len(names)]:
            on, off = conds[c]
            on()
            try:
                for w, run in work.items():
                    res[c][w].append(run())
            finally:
                off()
    say(f"hooks: {args.rounds} rounds, each condition attached around one short run "
        "of each workload (ratio to the round's run with nothing attached)")
    for w in work:
        say(f"  {w}:")
        for c in names[1:]:
            ratio = [t / b for t, b in zip(res[c][w], res["none"][w])]
            say(f"    {c:<42} {spread(ratio)}")
        ratio = [t / b for t, b in zip(res["taptrace's program"][w],
                                        res["taptrace's hooks, empty programs"][w])]
        say(f"    {'taptrace: program / its empty hooks':<42} {spread(ratio)}")
    # another process's SCM_RIGHTS send recorded (or lost) during a run arms every
    # recvmsg on the machine: such a run did not measure the idle path throughout
    say(f"  taptrace's program: {armed_runs[0]} of {armed_runs[1]} idle runs armed by "
        "other processes' SCM_RIGHTS sends before they ended")
    tt.close()


# ---- backends: the tracepoint backend against the kernel backend ---------------

class _Hooks:
    """A loaded program's hooks, to attach and detach without compiling again."""

    def __init__(self, bpf, kprobes) -> None:
        self.bpf, self.kprobes = bpf, list(kprobes)
        self.tps = [k.decode() for k in bpf.tracepoint_fds]
        self.kin = [k.decode() for k in bpf.kfunc_entry_fds]
        self.kout = [k.decode() for k in bpf.kfunc_exit_fds]

    def on(self) -> None:
        b = self.bpf
        for p in self.tps:
            b.attach_tracepoint(tp=p, fn_name="tracepoint__" + p.replace(":", "__"))
        for f in self.kin:
            b.attach_kfunc(fn_name=f)
        for f in self.kout:
            b.attach_kretfunc(fn_name=f)
        for func, entry, ret in self.kprobes:
            if entry:
                b.attach_kprobe(event=func, fn_name=entry)
            if ret:
                b.attach_kretprobe(event=func, fn_name=ret)

    def off(self, kprobes: bool = True) -> None:
        """Detach; kprobes=False: not the kprobes (bcc attaches the rest at load)."""
        b = self.bpf
        for p in self.tps:
            b.detach_tracepoint(p)
        for f in self.kin:
            b.detach_kfunc(f)
        for f in self.kout:
            b.detach_kretfunc(f)
        for func, entry, ret in self.kprobes if kprobes else ():
            if entry:
                b.detach_kprobe(event=func)
            if ret:
                b.detach_kretprobe(event=func)

    def empty_twin(self) -> _Hooks:
        """The same hook set with empty programs: the floor a backend's programs are
        measured against (what the hooks cost by themselves)."""
        import bcc

        def strip(name: str, *prefixes: str) -> str:
            for p in prefixes:
                name = name.removeprefix(p)
            return name

        src = ["#include <uapi/linux/ptrace.h>"]
        src += [f"TRACEPOINT_PROBE({p.split(':')[0]}, {p.split(':')[1]}) {{ return 0; }}"
                for p in self.tps]
        src += [f"KFUNC_PROBE({strip(f, 'kfunc__', 'vmlinux__')}) {{ return 0; }}"
                for f in self.kin]
        src += [f"KRETFUNC_PROBE({strip(f, 'kretfunc__', 'vmlinux__')}) {{ return 0; }}"
                for f in self.kout]
        src += sorted({f"int {fn}(void *ctx) {{ return 0; }}"
                       for _f, entry, ret in self.kprobes for fn in (entry, ret) if fn})
        twin = _Hooks(bcc.BPF(text="\n".join(src)), self.kprobes)
        twin.off(kprobes=False)               # bcc attached the rest at load
        return twin


def backends(args) -> None:
    """Each backend loaded once, as `watch` loads it (its real programs with their
    filters), and once more as an empty twin (the same hooks, empty programs: its
    floor); then, per workload, one run in each condition back to back, the order
    rotating round by round. Ratios to the same round's run with nothing attached,
    and each backend's to its floor. The kernel backend twice: its vmlinux hooks as
    fentry/fexit ("kernel") and as kprobes/kretprobes ("kernel kprobe", what a
    kernel that refuses fentry gets). Made for the guest (Debian's 6.1/6.12: the
    kernel backend does not load on a kernel without kprobes)."""
    from tracer.backends.kernel import KernelBackend
    from tracer.backends.tracepoint import TracepointBackend

    loaded = {"tracepoint": TracepointBackend(lambda _e: None),
              "kernel": KernelBackend(lambda _e: None, hooks="fentry"),
              "kernel +ioctl": KernelBackend(lambda _e: None, ioctl_check=True, hooks="fentry"),
              "kernel kprobe": KernelBackend(lambda _e: None, hooks="kprobe")}
    # "none again": a second run with nothing attached, so the spread of its ratio
    # is the noise every other ratio carries
    conds = {"none": (lambda: None, lambda: None), "none again": (lambda: None, lambda: None)}
    floors = {}
    for name, backend in loaded.items():
        hooks = _Hooks(backend._bpf, getattr(getattr(backend, "_plan", None), "kprobes", ()))
        hooks.off()                                    # loaded, attached only below
        conds[name] = (hooks.on, hooks.off)
        if name != "kernel +ioctl":
            twin = hooks.empty_twin()
            floors[name] = f"{name} floor"
            conds[floors[name]] = (twin.on, twin.off)
    s = args.scale
    work = {"getpid": _c_workload("getpidloop", int(200_000 * s)),
            "ioctl FIONREAD": _c_workload("ioctlloop", int(200_000 * s)),
            "open/close": _c_workload("openclose", int(50_000 * s)),
            "msg round trip": _c_workload("msgloop", int(50_000 * s)),
            "msg + SCM fd": _c_workload("msgloop", int(25_000 * s), "fd"),
            "fork+exec": _c_workload("forkexec", max(1, int(100 * s)))}
    for run in work.values():                          # warm caches
        run()
    res = {c: {w: [] for w in work} for c in conds}
    names = list(conds)
    for r in range(args.rounds):
        for w, run in work.items():
            # every condition back to back on one workload, order rotating
            for c in names[r % len(names):] + names[:r % len(names)]:
                on, off = conds[c]
                on()
                try:
                    res[c][w].append(run())
                finally:
                    off()
    say(f"backends on {platform.release()}: {args.rounds} rounds; in each, per workload, "
        "one run in each condition back to back (order rotating); ratio to that round's "
        "run with nothing attached; 'kernel': fentry/fexit hooks, 'kernel kprobe': the "
        "same as kprobes/kretprobes; 'kernel +ioctl': with security_file_ioctl "
        "(--bad-ioctls); "
        "'/floor': to the same hooks with empty programs")

    def ratios(a: str, b: str, w: str) -> list[float]:
        return [x / y for x, y in zip(res[a][w], res[b][w])]

    cols = [c for c in names[1:]] + [f"{b}/floor" for b in floors]
    say(f"  {'workload':<16} {'none ns/op':>11}  " + "  ".join(f"{c:<26}" for c in cols))
    for w in work:
        none = statistics.median(res["none"][w])
        cells = [spread(ratios(c, "none", w)) for c in names[1:]]
        cells += [spread(ratios(b, f, w)) for b, f in floors.items()]
        say(f"  {w:<16} {none:>11.0f}  " + "  ".join(f"{c:<26}" for c in cells))
    for backend in loaded.values():
        backend.close()


# ---- capacity ---------------------------------------------------------------

def _churn(seconds: float, rate: float, hold: int, extra: tuple[str, ...] = ()) -> dict:
    """One generator run under `watch`: events the generator made, what the tracer
    reported, lost records, and whether the final table equals /proc."""
    t = taptrace(*extra)
    gen = subprocess.Popen([str(BIN / "tapchurn"), "moves", str(seconds), str(rate),
                            str(hold)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True)
    made = json.loads(gen.stdout.readline())
    time.sleep(1.0)                                      # let the tracer catch up
    truth = tapkit.truth([gen.pid])
    t.stop()
    gen.stdin.close()
    gen.wait()
    table = next((o for o in reversed(t.lines) if o["type"] == "table"), {"rows": []})
    rows = {(r["pid"], r["fd"], r["ifname"]) for r in table["rows"] if r["pid"] == gen.pid}
    lost = sum(o.get("count") or 1 for o in t.lines if o["type"] == "lost")
    reported = sum(n for k, n in t.counts.items() if k not in ("table", "ready", "lost",
                                                               "resync"))
    return {"rate": made["events"] / made["seconds"], "made": made["events"],
            "reported": reported, "lost": lost, "lost_events": t.counts.get("lost", 0),
            "resyncs": t.counts.get("resync", 0), "exact": rows == truth and bool(truth)}


def capacity(args) -> None:
    say("capacity: tapchurn moves (dup, SCM_RIGHTS, close; forks, tap create/delete) "
        f"for {args.seconds} s per run, `watch --json` reading")
    flat = _churn(args.seconds, 0, 4)
    say(f"  flat out : {flat['rate']:8.0f} events/s made, {flat['reported']} reported, "
        f"lost records {flat['lost']} ({flat['lost_events']} lost events, "
        f"{flat['resyncs']} resyncs), table exact: {flat['exact']}")
    small = _churn(args.seconds, 0, 4, ("--buffer-pages", "1"))
    say(f"  flat out, --buffer-pages 1: {small['rate']:8.0f} events/s, lost records "
        f"{small['lost']}, resyncs {small['resyncs']}, table exact after resync: "
        f"{small['exact']}")
    best = flat["rate"] if flat["lost"] == 0 else None
    if best is None:
        iters = flat["rate"] / 5.2                       # events per iteration ~5.2
        for frac in (0.75, 0.5, 0.25, 0.1):
            r = _churn(args.seconds, iters * frac, 4)
            say(f"  paced {frac:4.0%}: {r['rate']:8.0f} events/s, lost {r['lost']}")
            if r["lost"] == 0:
                best = r["rate"]
                break
    say(f"  highest rate with zero lost: {best:.0f} events/s" if best else
        "  every rate tried lost records")


# ---- start-up -----------------------------------------------------------------

def startup(args) -> None:
    tt, bt = [], []
    for _ in range(args.rounds):
        for name, make, out in (("taptrace", taptrace, tt), ("bpftrace", lambda: bpftrace(PEER),
                                                              bt)):
            r = make()
            out.append(r.ready_s)
            r.stop()
    say("startup: launch to ready (s)")
    say(f"  taptrace watch : {spread(tt)}")
    say(f"  bpftrace peer  : {spread(bt)}")
    say(f"  ratio taptrace/bpftrace: {statistics.median(tt) / statistics.median(bt):.2f}")


# ---- memory -------------------------------------------------------------------

def memory(args) -> None:
    t = taptrace()
    time.sleep(1)
    idle = t.rss_kb()
    say(f"memory: watch RSS idle {idle / 1024:.1f} MiB (anon {t.rss_kb('RssAnon') / 1024:.1f}, "
        f"file {t.rss_kb('RssFile') / 1024:.1f}); {args.taps} taps created and "
        f"destroyed by short-lived processes, in {args.steps} steps")
    samples = []
    per = args.taps // args.steps
    for i in range(args.steps):
        subprocess.run([str(BIN / "tapchurn"), "procs", str(per)], check=True,
                       stdout=subprocess.DEVNULL)
        time.sleep(1)
        samples.append(t.rss_kb())
        say(f"  after {(i + 1) * per:6d} taps: RSS {samples[-1] / 1024:.1f} MiB")
    t.stop()
    opened = t.counts.get("tunsetiff", 0)
    say(f"  tunsetiff events seen {opened}, lost events {t.counts.get('lost', 0)}")
    say(f"  RSS growth first→last step {(samples[-1] - samples[0]) / 1024:+.1f} MiB, "
        f"idle→last {(samples[-1] - idle) / 1024:+.1f} MiB")


# ---- snapshot -----------------------------------------------------------------

def snapshot(args) -> None:
    farm = subprocess.Popen([str(BIN / "fdfarm"), str(args.procs), str(args.fds),
                             str(args.taps)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        if farm.stdout.readline().strip() != "ready":
            raise SystemExit("bench: fdfarm failed")
        nfds = sum(len(os.listdir(f"/proc/{p}/fd")) for p in os.listdir("/proc")
                   if p.isdigit() and os.path.exists(f"/proc/{p}/fd")
                   and os.access(f"/proc/{p}/fd", os.R_OK))
        say(f"snapshot: {len([p for p in os.listdir('/proc') if p.isdigit()])} processes, "
            f"~{nfds} open fds, {args.taps} taps held by fdfarm children")
        cmds = {"taptrace ls": [str(ROOT / ".venv/bin/taptrace"), "ls"],
                "ip -d tuntap show": ["ip", "-d", "tuntap", "show"]}
        if shutil.which("lsof"):
            cmds["lsof /dev/net/tun"] = ["lsof", "-n", "/dev/net/tun"]
        times: dict[str, list[float]] = {k: [] for k in cmds}
        outs: dict[str, str] = {}
        for r in range(args.rounds):
            for k, argv in cmds.items():
                t = time.perf_counter()
                out = subprocess.run(argv, capture_output=True, text=True, check=False)
                times[k].append(time.perf_counter() - t)
                outs[k] = out.stdout
        held = sum(1 for line in outs["taptrace ls"].splitlines() if " ttf" in line)
        say(f"  taptrace ls rows on ttf* taps: {held} (expected {args.taps})")
        for k, v in times.items():
            say(f"  {k:<18}: {spread(v)} s")
        base = times["ip -d tuntap show"]
        say("  ratio taptrace ls / ip -d tuntap show: "
            + spread([a / b for a, b in zip(times["taptrace ls"], base)]))
        if "lsof /dev/net/tun" in times:
            say("  ratio taptrace ls / lsof: " + spread(
                [a / b for a, b in zip(times["taptrace ls"], times["lsof /dev/net/tun"])]))
    finally:
        farm.stdin.close()
        farm.wait()


BENCHES = {"overhead": overhead, "hooks": hooks, "capacity": capacity, "startup": startup, "memory": memory,
           "snapshot": snapshot}
# needs the kernel backend (a guest with Debian's kernels): not part of `all`
EXTRA_BENCHES = {"backends": backends}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="what")
    p = sub.add_parser("overhead")
    p.add_argument("--rounds", type=int, default=11)
    p.add_argument("--scale", type=float, default=1.0, help="workload size factor")
    p = sub.add_parser("hooks")
    p.add_argument("--rounds", type=int, default=40)
    p = sub.add_parser("backends")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--scale", type=float, default=1.0, help="workload size factor")
    p = sub.add_parser("capacity")
    p.add_argument("--seconds", type=float, default=5)
    p = sub.add_parser("startup")
    p.add_argument("--rounds", type=int, default=5)
    p = sub.add_parser("memory")
    p.add_argument("--taps", type=int, default=10_000)
    p.add_argument("--steps", type=int, default=5)
    p = sub.add_parser("snapshot")
    p.add_argument("--procs", type=int, default=2000)
    p.add_argument("--fds", type=int, default=50)
    p.add_argument("--taps", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    sub.add_parser("all")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root (BPF, /dev/net/tun)")
    if shutil.which("bpftrace") is None and args.what != "backends":
        raise SystemExit("bench: bpftrace is not installed (make setup installs it)")
    subprocess.run(["make", "-s", "-C", str(BENCH)], check=True)
    say(f"# {platform.node()} kernel {platform.release()}, {os.cpu_count()} CPUs, "
        f"{time.strftime('%Y-%m-%d %H:%M')}")
    what = args.what or "all"
    for name in (BENCHES if what == "all" else [what]):
        {**BENCHES, **EXTRA_BENCHES}[name](ap.parse_args([name]) if what == "all" else args)
        say()
    return 0


if __name__ == "__main__":
    sys.exit(main())
