"""Randomized differential testing: random multi-process fd programs, run for real,
the live table of `taptrace watch --json` compared with /proc at quiet checkpoints.

A program is a list of steps, one per line: `ACTOR OP key=value ...`. Actors are
processes and threads (A0 is the first; fork, clone(CLONE_FILES), vfork+exec,
clone(CLONE_VM|CLONE_VFORK|CLONE_FILES) and threads make more), each a
tests/helpers/bin/fuzzactor doing the real syscalls on command. Steps of actor `*`
are the coordinator's: `checkpoint`, `tstop`/`tcont` (SIGSTOP/SIGCONT the tracer),
`sleep ms=N`. fd operands are picks (`i=N`: the N-th, modulo, of the actor's tun
fds as /proc shows them when the step runs), so that any subset of a program is a
program too: the shrinker deletes steps freely, a step with nothing to act on is
skipped.

Every step runs to its end before the next starts, so at a checkpoint every actor
is blocked reading its next command: a quiet moment. There the coordinator reads
the truth (tests/tapkit.py's way: /proc/PID/task/TID/fd, fdinfo `iff:` and
`flags:`, kcmp(KCMP_FILE) for shared open files, /sys/class/net for the taps),
sends the tracer SIGUSR1 (it prints its table so far) and compares: each tun fd
(pid, tid, fd) of our processes' fd tables (tid None: the process's own, /proc/PID/fd;
else a thread's own table, under the lowest tid using it, as the rows name it), its
ifname ("" unattached; a detached queue keeps its name),
close-on-exec, which fds share one open file, the creator (the process whose
TUNSETIFF attached the file), and the taps with their persist flag.

    python tests/fuzz/fuzz.py batch --seconds 120 [--seed S] [--shrink]
    python tests/fuzz/fuzz.py replay tests/fuzz/repro/FILE.fz [--times 3]
    python tests/fuzz/fuzz.py gen --seed 7 --profile scm

TAPTRACE_FUZZ_RECORD=DIR keeps each tracer's `--record` in DIR (trace-NS.jsonl): what
the tracer applied, and the snapshots it took, for a mismatch's post-mortem.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import ctypes
import json
import os
import queue
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
import tapkit

ACTOR_BIN = ROOT / "tests" / "helpers" / "bin" / "fuzzactor"
CTL_BASE = 900                     # fuzzactor.c: control sockets live at 900 + id
MAX_ACTORS = 40
FD_TOP = 63                        # dup2/dup3/F_DUPFD targets and close_range bounds
ANSWER_S = 15.0                    # generous: 2 CPUs shared with other work
TABLE_S = 60.0
SYS_KCMP = 312                     # x86-64
KCMP_FILE, KCMP_FILES = 0, 2

IFF_TUN, IFF_TAP, IFF_NO_PI, IFF_MULTI_QUEUE, IFF_PERSIST = 0x1, 0x2, 0x1000, 0x100, 0x800
CLOSE_RANGE_UNSHARE, CLOSE_RANGE_CLOEXEC = 2, 4


# ---- programs -----------------------------------------------------------------

@dataclass
class Step:
    actor: str                      # "A3", or "*" for the coordinator
    op: str
    args: dict = field(default_factory=dict)

    def text(self) -> str:
        kv = " ".join(f"{k}={','.join(map(str, v)) if isinstance(v, list) else v}"
                      for k, v in self.args.items())
        return f"{self.actor} {self.op}{' ' + kv if kv else ''}"

    @classmethod
    def parse(cls, line: str) -> Step:
        toks = line.split()
        args: dict = {}
        for t in toks[2:]:
            k, _, v = t.partition("=")
            if k == "fds":
                args[k] = [int(x) for x in v.split(",") if x]
            else:
                args[k] = int(v) if v.lstrip("-").isdigit() else v
        return cls(toks[0], toks[1], args)


@dataclass
class Program:
    profile: str
    tracer_args: list[str]
    steps: list[Step]
    seed: int | None = None

    def text(self) -> str:
        head = ["# taptrace fuzz program; run it: python tests/fuzz/fuzz.py replay FILE",
                f"profile {self.profile}",
                f"tracer {' '.join(self.tracer_args)}".rstrip()]
        if self.seed is not None:
            head.append(f"seed {self.seed}")
        return "\n".join(head + [s.text() for s in self.steps]) + "\n"

    @classmethod
    def parse(cls, text: str) -> Program:
        prog = cls("replay", [], [])
        for raw in text.splitlines():
            line = raw.split("#", 1)[0].strip()
            if not line:
                continue
            word, _, rest = line.partition(" ")
            if word == "profile":
                prog.profile = rest.strip()
            elif word == "tracer":
                prog.tracer_args = rest.split()
            elif word == "seed":
                prog.seed = int(rest)
            else:
                prog.steps.append(Step.parse(line))
        return prog

    def with_steps(self, steps: list[Step]) -> Program:
        return Program(self.profile, self.tracer_args, steps, self.seed)


# ---- the generator ------------------------------------------------------------

SPAWNS = ("fork", "cfiles", "vfiles", "vexec", "thread")
BASE_WEIGHTS = {
    "create": 10, "setiff": 1, "queue": 2, "persist": 2, "getiff": 1,
    "dup": 4, "dup2": 3, "dup3": 3, "dupfd": 3, "clex": 2, "setfd": 1, "close": 5,
    "crange": 2, "unshare": 1, "sockpair": 2, "send": 5, "smm": 1, "recv": 5, "rmm": 1,
    "getfd": 2, "fork": 3, "cfiles": 3, "vfiles": 2, "vexec": 2, "thread": 2, "exec": 2,
    "exit": 2, "kill": 1, "checkpoint": 2,
}
PROFILES: dict[str, dict] = {
    "ordinary": {"weights": {}, "length": (12, 35), "tracer": []},
    "churn": {"weights": {"dup": 10, "dup2": 8, "dup3": 8, "dupfd": 8, "clex": 6, "setfd": 3,
                          "close": 12, "crange": 6, "create": 6},
              "length": (25, 60), "tracer": []},
    "scm": {"weights": {"send": 14, "recv": 12, "smm": 5, "rmm": 5, "getfd": 4,
                        "sockpair": 3}, "length": (20, 50), "tracer": [], "wide": True},
    "burst": {"weights": {"burst": 6}, "length": (15, 35), "tracer": []},
    "paused": {"weights": {"pause": 5}, "length": (15, 35), "tracer": []},
    "tiny": {"weights": {"burst": 6}, "length": (15, 35), "tracer": ["--buffer-pages", "1"]},
    "tiny-paused": {"weights": {"burst": 4, "pause": 4}, "length": (15, 35),
                    "tracer": ["--buffer-pages", "1"]},
    # threads with tables of their own, traced, and restored by a resync's snapshot
    # (bursts into a one-page buffer). (A profile with "opt_in": True runs only when
    # --profiles names it.)
    "threads": {"weights": {"thread": 8, "unshare": 5, "crange": 4, "pause": 2},
                "length": (15, 40), "tracer": []},
    "threads-tiny": {"weights": {"thread": 8, "unshare": 5, "crange": 4, "burst": 4},
                     "length": (15, 40), "tracer": ["--buffer-pages", "1"]},
}
DEFAULT_PROFILES = [p for p, spec in PROFILES.items() if not spec.get("opt_in")]
NAMES = ("%d", "n0", "n1", "n2")


def generate(seed: int, profile: str, exclude: frozenset = frozenset()) -> Program:
    """A program from (seed, profile); `exclude`: ops never generated (to look past a
    known bug that would otherwise mask the rest)."""
    rnd = random.Random(f"{seed}:{profile}")
    spec = PROFILES[profile]
    weights = {k: v for k, v in {**BASE_WEIGHTS, **spec["weights"]}.items()
               if k not in exclude}
    ops, wts = list(weights), list(weights.values())
    wide = spec.get("wide", False)
    steps: list[Step] = []
    live = ["A0"]
    kinds = {"A0": "proc"}
    nxt = 1
    paused = False

    def pick() -> int:
        return rnd.randrange(100)

    def fds_arg() -> list[int]:
        k = rnd.choice([1, 1, 2, 3]) if not wide or rnd.random() < 0.6 else rnd.randint(4, 20)
        return [pick() for _ in range(k)]

    def one(actor: str, op: str) -> Step | None:
        nonlocal nxt
        if op == "create":
            return Step(actor, op, {"name": rnd.choice(NAMES), "mq": int(rnd.random() < 0.3),
                                    "tun": int(rnd.random() < 0.2),
                                    "cl": int(rnd.random() < 0.5)})
        if op == "setiff":
            return Step(actor, op, {"i": pick(), "name": rnd.choice(NAMES),
                                    "mq": int(rnd.random() < 0.3)})
        if op == "queue":
            return Step(actor, op, {"i": pick(), "att": int(rnd.random() < 0.5)})
        if op == "persist":
            return Step(actor, op, {"i": pick(), "on": int(rnd.random() < 0.6)})
        if op in ("getiff", "dup", "close"):
            return Step(actor, op, {"i": pick()})
        if op == "dup2":
            return Step(actor, op, {"i": pick(), "to": rnd.randint(3, 40)})
        if op in ("dup3", "dupfd"):
            return Step(actor, op, {"i": pick(), "to": rnd.randint(3, 40),
                                    "cl": int(rnd.random() < 0.5)})
        if op in ("clex", "setfd"):
            return Step(actor, op, {"i": pick(), "on": int(rnd.random() < 0.5)})
        if op == "crange":
            lo = rnd.randint(3, 30)
            flags = rnd.choice([0, 0, CLOSE_RANGE_CLOEXEC, CLOSE_RANGE_UNSHARE,
                                CLOSE_RANGE_UNSHARE | CLOSE_RANGE_CLOEXEC])
            return Step(actor, op, {"lo": lo, "hi": min(FD_TOP, lo + rnd.randint(0, 25)),
                                    "flags": flags})
        if op == "sockpair":
            return Step(actor, op, {"seq": int(rnd.random() < 0.7)})
        if op == "send":
            n = rnd.choice([1, 1, 1, 2]) if not wide else rnd.choice([1, 1, 2, 3, 5])
            return Step(actor, op, {"s": pick(), "fds": fds_arg(), "n": n})
        if op == "smm":
            return Step(actor, op, {"s": pick(), "fds": fds_arg(), "n": rnd.randint(1, 5)})
        if op == "recv":
            return Step(actor, op, {"s": pick(), "cl": int(rnd.random() < 0.4),
                                    "peek": int(rnd.random() < 0.15)})
        if op == "rmm":
            return Step(actor, op, {"s": pick(), "vlen": rnd.randint(1, 5),
                                    "cl": int(rnd.random() < 0.4)})
        if op == "getfd":
            return Step(actor, op, {"t": rnd.choice(live), "i": pick()})
        if op == "burst":
            return Step(actor, op, {"i": pick(), "n": rnd.choice([200, 500, 1000, 3000])})
        if op in SPAWNS:
            if nxt >= MAX_ACTORS:
                return None
            new = f"A{nxt}"
            nxt += 1
            return Step(actor, op, {"new": new})
        if op == "kill":
            return Step(actor, op, {"t": rnd.choice(live)})
        if op in ("unshare", "exec", "exit"):
            return Step(actor, op)
        return None

    def after(s: Step) -> None:
        if s.op in SPAWNS:
            new = s.args["new"]
            live.append(new)
            kinds[new] = "thread" if s.op == "thread" else "proc"
        elif s.op in ("exit", "kill"):
            gone = s.actor if s.op == "exit" else s.args["t"]
            if gone in live and len(live) > 1:
                live.remove(gone)

    # most programs open a channel or two first: SCM needs both ends in both processes
    for _ in range(rnd.choice([0, 1, 1, 2]) if "sockpair" not in exclude else 0):
        steps.append(Step("A0", "sockpair", {"seq": int(rnd.random() < 0.7)}))
    length = rnd.randint(*spec["length"])
    while len(steps) < length:
        op = rnd.choices(ops, wts)[0]
        if op == "checkpoint":
            if paused:
                steps.append(Step("*", "tcont"))
                paused = False
            steps.append(Step("*", "checkpoint"))
            continue
        if op == "pause":
            steps.append(Step("*", "tcont" if paused else "tstop"))
            paused = not paused
            if paused and rnd.random() < 0.5:
                steps.append(Step("*", "sleep", {"ms": rnd.choice([300, 1000, 2500])}))
            continue
        actor = rnd.choice(live)
        s = one(actor, op)
        if s is None:
            continue
        steps.append(s)
        after(s)
        if s.op == "vfiles":
            # the pasta shape: the child works in the shared table, then exits or execs
            child = s.args["new"]
            for _ in range(rnd.randint(1, 4)):
                c = one(child, rnd.choice([o for o in ("create", "create", "dup", "close",
                                                       "send", "recv", "clex", "dup3")
                                           if o not in exclude] or ["create"]))
                if c is not None:
                    steps.append(c)
            steps.append(Step(child, rnd.choice(["exit", "exit", "exec"])))
            if steps[-1].op == "exit":
                live.remove(child)
    if paused:
        steps.append(Step("*", "tcont"))
    return Program(profile, list(spec["tracer"]), steps, seed)


# ---- the tracer -----------------------------------------------------------------

class Tracer:
    """A running `taptrace watch --json`; SIGUSR1 asks it for its table."""

    def __init__(self, args: list[str]) -> None:
        keep = os.environ.get("TAPTRACE_FUZZ_RECORD")   # a directory: keep its recording
        if keep:
            args = [*args, "--record",
                    os.path.join(keep, f"trace-{time.monotonic_ns()}.jsonl")]
        self.proc = subprocess.Popen([sys.executable, "-m", "tracer", "watch", "--json", *args],
                                     cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True,
                                     errors="surrogateescape")
        self.q: queue.Queue = queue.Queue()
        self.lines: list[dict] = []
        self.stopped = False
        # stderr is drained too (a warning a resync): a full pipe would block the tracer
        self.err: collections.deque[str] = collections.deque(maxlen=50)
        threading.Thread(target=self._pump, daemon=True).start()
        threading.Thread(target=self._pump_err, daemon=True).start()
        self.ready = self._until(lambda o: o["type"] == "ready", 90)

    def _pump_err(self) -> None:
        for line in self.proc.stderr:
            self.err.append(line)

    def _pump(self) -> None:
        for line in self.proc.stdout:
            try:
                self.q.put(json.loads(line))
            except ValueError:
                self.q.put({"type": "garbage", "line": line})
        self.q.put(None)

    def _until(self, pred, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                obj = self.q.get(timeout=left)
            except queue.Empty:
                break
            if obj is None:
                self.q.put(None)
                break
            self.lines.append(obj)
            if pred(obj):
                return obj
        err = "".join(self.err) if self.proc.poll() is not None else ""
        raise RuntimeError(f"tracer did not answer: {self.lines[-3:]} {err[-500:]}")

    def table(self) -> dict:
        self.cont()
        self.proc.send_signal(signal.SIGUSR1)
        return self._until(lambda o: o["type"] == "table", TABLE_S)

    def stop(self) -> None:
        if not self.stopped:
            self.proc.send_signal(signal.SIGSTOP)
            self.stopped = True

    def cont(self) -> None:
        if self.stopped:
            self.proc.send_signal(signal.SIGCONT)
            self.stopped = False

    def count(self, kind: str, key: str | None = None, since: int = 0) -> int:
        """How many lines of that type (or the sum of their `key`), from line `since`."""
        while True:
            try:
                obj = self.q.get_nowait()
            except queue.Empty:
                break
            if obj is None:
                self.q.put(None)
                break
            self.lines.append(obj)
        return sum((o.get(key, 0) if key else 1) for o in self.lines[since:]
                   if o["type"] == kind)

    def close(self) -> None:
        self.cont()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---- the truth ------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def kcmp_same(p1: int, fd1: int, p2: int, fd2: int) -> bool:
    return _libc.syscall(SYS_KCMP, p1, p2, KCMP_FILE, fd1, fd2) == 0


def same_table(t1: int, t2: int) -> bool:
    return _libc.syscall(SYS_KCMP, t1, t2, KCMP_FILES, 0, 0) == 0


def key_order(k: tuple) -> tuple:
    """A sort key for (pid, tid, fd) truth and table keys (tid None: the process's)."""
    return (k[0], k[1] or 0, k[2])


def key_text(k: tuple) -> str:
    return f"pid {k[0]}{'' if k[1] is None else f' tid {k[1]}'} fd {k[2]}"


def task_fds(pid: int, tid: int) -> dict[int, str]:
    """fd -> link of one thread's table (below the control sockets)."""
    out = {}
    base = f"/proc/{pid}/task/{tid}/fd"
    try:
        names = os.listdir(base)
    except OSError:
        return out
    for n in names:
        fd = int(n)
        if fd < 3 or fd >= CTL_BASE:
            continue
        try:
            out[fd] = os.readlink(f"{base}/{n}")
        except OSError:
            pass
    return out


def fdinfo(pid: int, tid: int, fd: int) -> tuple[str, bool] | None:
    try:
        with open(f"/proc/{pid}/task/{tid}/fdinfo/{fd}", "rb") as f:
            data = f.read().decode("utf-8", "surrogateescape")
    except OSError:
        return None
    iff, flags = "", 0
    for line in data.splitlines():
        if line.startswith("iff:"):
            iff = line[4:].strip()
        elif line.startswith("flags:"):
            flags = int(line.split()[1], 8)
    return iff, bool(flags & tapkit.O_CLOEXEC)


def task_tables(pid: int) -> list[tuple[int | None, int]]:
    """(tid as the table's rows name it, a task that reaches it) for each fd table of
    a process: its leader's (tid None, as /proc/PID/fd shows it), then each table of
    its threads that is not the leader's (kcmp KCMP_FILES), under the lowest tid
    using it, as the model names a thread's own table. A leader that has exited (a
    zombie whose threads go on: no table) leaves each of its threads' tables a
    thread's, as the snapshot says (a trace that saw the leader keeps calling the
    table it left, which some of those threads use, the process's; the programs never
    end a leader alone: `exit` of A0 is the process's)."""
    try:
        tids = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return []
    out: list[tuple[int | None, int]] = [(None, pid)] if pid in tids else []
    reps: list[int] = []
    for tid in tids:
        if tid == pid or same_table(pid, tid) or any(same_table(r, tid) for r in reps):
            continue
        reps.append(tid)
        out.append((tid, tid))
    return out


def read_truth(tgids) -> tuple[dict, list, list[str]]:
    """{(pid, tid, fd): (ifname, cloexec)} of each fd table of each process (see
    task_tables: tid None for the process's own, /proc/PID/fd), the open files as
    lists of those keys (kcmp, through a task of each table), and notes (none now)."""
    where: dict[tuple[int, int | None, int], tuple[int, str, bool]] = {}
    notes = []
    for pid in sorted(tgids):
        for key_tid, task in task_tables(pid):
            for fd, link in task_fds(pid, task).items():
                if link != "/dev/net/tun":
                    continue
                info = fdinfo(pid, task, fd)
                if info is None:
                    continue
                where[(pid, key_tid, fd)] = (task, *info)
    keys = sorted(where, key=key_order)
    groups: list[list] = []
    for k in keys:
        for g in groups:
            g0 = g[0]
            if kcmp_same(where[g0][0], g0[2], where[k][0], k[2]):
                g.append(k)
                break
        else:
            groups.append([k])
    return {k: (v[1], v[2]) for k, v in where.items()}, groups, notes


def read_taps(prefix: str) -> dict[str, bool]:
    out = {}
    try:
        names = os.listdir("/sys/class/net")
    except OSError:
        return out
    for n in names:
        if not n.startswith(prefix):
            continue
        try:
            flags = int(Path(f"/sys/class/net/{n}/tun_flags").read_text(), 16)
        except (OSError, ValueError):
            continue
        out[n] = bool(flags & IFF_PERSIST)
    return out


def _dead(path: str) -> bool:
    try:
        data = Path(path).read_bytes()
    except OSError:
        return True
    return data[data.rindex(b")") + 2:][:1] in (b"Z", b"X")


def gone(pid: int, tid: int | None = None) -> bool:
    """That thread (or, tid None, every thread of the process) has finished exiting:
    its files are released. (A zombie leader is not enough: another thread of an
    exit_group may still be on its way out, holding the shared table.)"""
    if tid:
        return _dead(f"/proc/{pid}/task/{tid}/stat")
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return True
    return all(_dead(f"/proc/{pid}/task/{t}/stat") for t in tids)


# ---- running a program ------------------------------------------------------------

@dataclass
class Actor:
    name: str
    pid: int
    tid: int
    conn: socket.socket
    buf: bytes = b""
    alive: bool = True
    waiting_for: str | None = None      # vfork parent: suspended until that child goes


@dataclass
class Result:
    exact: bool
    checkpoints: int = 0
    categories: set = field(default_factory=set)
    detail: list[str] = field(default_factory=list)
    failed_at: int | None = None        # index of the step (checkpoint) that differed
    lost: int = 0
    resyncs: int = 0
    ran: int = 0
    skipped: int = 0
    skipped_steps: list = field(default_factory=list)    # indices: nothing to act on
    error: str | None = None


class Runner:
    def __init__(self, prog: Program, verbose: bool = False,
                 tracer: Tracer | None = None) -> None:
        """`tracer`: one already running with the program's arguments, shared by a
        batch (left running); else the program starts and stops its own."""
        self.prog = prog
        self.shared = tracer
        self.mark = len(tracer.lines) if tracer is not None else 0
        self.verbose = verbose
        self.prefix = "fz" + secrets.token_hex(2)
        self.sockname = f"taptrace-fuzz-{os.getpid()}-{secrets.token_hex(4)}"
        self.actors: dict[str, Actor] = {}
        self.tgids: set[int] = set()
        self.creators: dict[str, set[int]] = {}
        self.errlog = open(os.devnull, "wb")  # noqa: SIM115
        self.top: subprocess.Popen | None = None
        self.tracer: Tracer | None = None

    # -- actors --
    def _accept(self, name: str) -> Actor:
        deadline = time.monotonic() + ANSWER_S
        while time.monotonic() < deadline:
            self.lsock.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                conn, _ = self.lsock.accept()
            except TimeoutError:
                break
            a = Actor("?", 0, 0, conn)
            hello = self._line(a)
            _, aid, pid, tid = hello.split()
            a.name, a.pid, a.tid = f"A{aid}", int(pid), int(tid)
            self.actors[a.name] = a
            self.tgids.add(a.pid)
            if a.name == name:
                return a
        raise RuntimeError(f"actor {name} did not start")

    def _line(self, a: Actor, timeout: float = ANSWER_S) -> str:
        deadline = time.monotonic() + timeout
        while b"\n" not in a.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(a.name)
            a.conn.settimeout(left)
            try:
                chunk = a.conn.recv(4096)
            except TimeoutError:
                raise TimeoutError(a.name) from None
            if not chunk:
                raise EOFError(a.name)
            a.buf += chunk
        line, a.buf = a.buf.split(b"\n", 1)
        if not line.startswith((b"ok", b"err", b"hello")):
            # every answer is one such line: another means the answers are out of step
            # with the commands (a fuzzactor bug), and what the run knows is wrong
            raise RuntimeError(f"actor {a.name} answered {line[:80]!r}: out of step")
        return line.decode("utf-8", "surrogateescape")   # an ifr_name may be any bytes

    def _kill_group(self, tgid: int) -> None:
        for a in self.actors.values():
            if a.pid == tgid:
                a.alive = False

    def _wait_gone(self, pid: int, tid: int | None = None) -> None:
        deadline = time.monotonic() + ANSWER_S
        while not gone(pid, tid) and time.monotonic() < deadline:
            if self.top is not None and pid == self.top.pid:
                self.top.poll()
            time.sleep(0.005)

    def _sweep(self) -> None:
        """Mark dead every actor whose task is gone (however it went: killed by a
        sibling, by itself, by an exec of another thread), and let its vfork parent go."""
        for a in list(self.actors.values()):
            if a.alive and gone(a.pid, a.tid if a.tid != a.pid else None):
                a.alive = False
        for a in list(self.actors.values()):
            if not a.alive:
                self._release_parents(a.name)

    def _release_parents(self, child: str) -> None:
        """A vfork child exited or exec'd: its parent's answer comes now."""
        for p in self.actors.values():
            if p.waiting_for == child:
                p.waiting_for = None
                if p.alive:
                    try:
                        self._line(p)
                    except (TimeoutError, EOFError, OSError):
                        p.alive = False

    def _fds(self, a: Actor) -> tuple[list[int], list[int]]:
        tun, socks = [], []
        for fd, link in sorted(task_fds(a.pid, a.tid).items()):
            if link == "/dev/net/tun":
                tun.append(fd)
            elif link.startswith("socket:"):
                socks.append(fd)
        return tun, socks

    def _name(self, n: str) -> str:
        return self.prefix + ("%d" if n == "%d" else "abc"[int(n[-1]) % 3])

    def _command(self, a: Actor, s: Step) -> str | None:
        """The concrete command line for a step, or None (nothing to act on)."""
        g = s.args.get
        op = s.op
        if op in ("fork", "cfiles", "vfiles", "vexec", "thread"):
            if s.args["new"] in self.actors:
                return None
            return f"{op} {int(s.args['new'][1:])}"
        if op in ("exec", "exit", "unshare"):
            return op
        if op == "create":
            flags = (IFF_TUN if g("tun") else IFF_TAP) | IFF_NO_PI | \
                (IFF_MULTI_QUEUE if g("mq") else 0)
            return f"create {self._name(g('name'))} {flags} {g('cl', 0)}"
        if op == "sockpair":
            return f"sockpair {g('seq', 1)}"
        if op == "crange":
            return f"crange {g('lo')} {g('hi')} {g('flags', 0)}"
        if op == "kill":
            t = self.actors.get(g("t"))
            # (checked again now: a pid is never signalled once it may be reused)
            return f"kill {t.pid}" if t is not None and t.alive and not gone(t.pid) else None
        tun, socks = self._fds(a)
        if op == "getfd":
            t = self.actors.get(g("t"))
            if t is None or not t.alive:
                return None
            ttun, _ = self._fds(t)
            return f"getfd {t.pid} {ttun[g('i') % len(ttun)]}" if ttun else None
        if op in ("send", "smm", "recv", "rmm"):
            if not socks:
                return None
            sfd = socks[g("s") % len(socks)]
            if op == "recv":
                return f"recv {sfd} {g('cl', 0)} {g('peek', 0)}"
            if op == "rmm":
                return f"rmm {sfd} {g('vlen', 1)} {g('cl', 0)}"
            fds = [tun[i % len(tun)] for i in g("fds", [])] if tun else []
            return f"{op} {sfd} {g('n', 1)} {' '.join(map(str, fds))}".rstrip()
        if not tun:
            return None
        fd = tun[g("i") % len(tun)]
        if op in ("getiff", "dup", "close"):
            return f"{op} {fd}"
        if op == "dup2":
            return f"dup2 {fd} {g('to')}"
        if op in ("dup3", "dupfd"):
            return f"{op} {fd} {g('to')} {g('cl', 0)}"
        if op in ("clex", "setfd"):
            return f"{op} {fd} {g('on', 0)}"
        if op == "queue":
            return f"queue {fd} {g('att', 0)}"
        if op == "persist":
            return f"persist {fd} {g('on', 0)}"
        if op == "setiff":
            flags = IFF_TAP | IFF_NO_PI | (IFF_MULTI_QUEUE if g("mq") else 0)
            return f"setiff {fd} {self._name(g('name'))} {flags}"
        if op == "burst":
            return f"burst {fd} {g('n', 100)}"
        return None

    def _step(self, s: Step) -> bool:
        """Run one step; False: skipped."""
        if s.actor == "*":
            if s.op == "tstop":
                self.tracer.stop()
            elif s.op == "tcont":
                self.tracer.cont()
            elif s.op == "sleep":
                time.sleep(s.args.get("ms", 100) / 1000)
            return True
        a = self.actors.get(s.actor)
        if a is None or not a.alive or a.waiting_for is not None:
            return False
        cmd = self._command(a, s)
        if cmd is None:
            return False
        if self.verbose:
            print(f"  {s.text():40} -> {cmd}", file=sys.stderr)
        op = s.op
        try:
            a.conn.sendall(cmd.encode() + b"\n")
            if op == "vexec":
                self._accept(s.args["new"])
                self._line(a)
            elif op == "vfiles":
                self._accept(s.args["new"])
                a.waiting_for = s.args["new"]
                if gone(a.pid):                # (it cannot be, but never wait forever)
                    a.waiting_for = None
            elif op == "exec":
                reply = self._line(a)
                if reply.startswith("hello"):
                    _, _, pid, tid = reply.split()
                    old_tid = a.tid
                    for b in self.actors.values():
                        if b.pid == a.pid and b is not a and b.alive:
                            b.alive = False
                            self._wait_gone(b.pid, b.tid if b.tid != b.pid else None)
                    a.pid, a.tid = int(pid), int(tid)
                    if old_tid != a.tid:
                        self._wait_gone(a.pid, old_tid)
                    self._release_parents(a.name)
            else:
                reply = self._line(a)
                if op in SPAWNS:
                    if reply.startswith("ok"):
                        self._accept(s.args["new"])
                elif op == "exit":
                    if a.tid == a.pid:
                        self._kill_group(a.pid)
                        self._wait_gone(a.pid)
                    else:
                        a.alive = False
                        self._wait_gone(a.pid, a.tid)
                    self._release_parents(a.name)
                elif op == "kill" and reply.startswith("ok"):
                    tgid = int(cmd.split()[1])
                    victims = [b.name for b in self.actors.values() if b.pid == tgid]
                    self._kill_group(tgid)
                    self._wait_gone(tgid)
                    for v in victims:
                        self._release_parents(v)
                elif op in ("create", "setiff") and reply.startswith("ok"):
                    name = reply.split()[-1]
                    if name.startswith(self.prefix):
                        self.creators.setdefault(name, set()).add(a.pid)
        except (TimeoutError, EOFError, OSError) as exc:
            self._wait_gone(a.pid, a.tid if a.tid != a.pid else None)
            if not gone(a.pid, a.tid if a.tid != a.pid else None):
                raise RuntimeError(f"{s.text()}: actor gave no answer ({exc!r})") from None
            a.alive = False
        self._sweep()
        return True

    # -- checkpoints --
    def _compare(self) -> tuple[set, list[str]]:
        """Compare at a checkpoint; a difference is looked at again after a second
        (the kernel finishes some things after the syscall: a tap's unregistering),
        with the truth and the table both read again."""
        cats, detail = self._compare_once()
        if cats:
            time.sleep(1.0)
            cats, detail = self._compare_once()
        return cats, detail

    def _compare_once(self) -> tuple[set, list[str]]:
        live = {a.pid for a in self.actors.values() if a.alive}
        truth, groups, notes = read_truth(live)
        taps = read_taps(self.prefix)
        table = self.tracer.table()
        lost = self.tracer.count("lost", since=self.mark)
        rows = {}
        for r in table["rows"]:
            name = r.get("ifname") or ""
            if r["pid"] in self.tgids or name.startswith(self.prefix):
                if r.get("kind") == "vhost" or (r.get("path") or "") != "/dev/net/tun":
                    continue
                rows[(r["pid"], r.get("tid"), r["fd"])] = r
        if self.verbose:
            print("  checkpoint: truth " + str(sorted(truth.items(), key=lambda kv: key_order(
                kv[0]))) + f" files {groups} taps {taps}", file=sys.stderr)
            print("  checkpoint: table " + str(sorted(
                ((k, r.get("ifname"), r.get("cloexec"), r.get("file"), r.get("creator_pid"))
                 for k, r in rows.items()), key=lambda x: key_order(x[0]))), file=sys.stderr)
        cats: set = set()
        detail: list[str] = list(notes)

        def bad(cat: str, msg: str) -> None:
            cats.add(cat)
            detail.append(f"{cat}: {msg}")

        for k in sorted(truth.keys() - rows.keys(), key=key_order):
            bad("missing", f"{key_text(k)} ({truth[k][0] or 'unattached'}) "
                "is not in the table")
        for k in sorted(rows.keys() - truth.keys(), key=key_order):
            r = rows[k]
            bad("extra", f"{key_text(k)} ({r.get('ifname')}) is in the table only"
                + ("" if k[0] in live else " (the process is gone)"))
        common = sorted(truth.keys() & rows.keys(), key=key_order)
        for k in common:
            r = rows[k]
            tname, tclo = truth[k]
            # (a detached queue's fdinfo still names its tap: compare the name alone)
            name = r.get("ifname") or ""
            if name != tname:
                bad("ifname", f"{key_text(k)}: {name or '-'} (truth {tname or '-'})")
            if r.get("cloexec") is None:
                bad("cloexec-unknown", f"{key_text(k)}: cloexec unknown (truth {tclo})")
            elif r["cloexec"] != tclo:
                bad("cloexec", f"{key_text(k)}: cloexec {r['cloexec']} (truth {tclo})")
            label = r.get("ifname")
            if label and label.startswith(self.prefix) and tname:
                want = self.creators.get(label, set())
                if r.get("creator_pid") is None:
                    # after lost records, "unknown" is the honest answer where the
                    # TUNSETIFF record was among them (/proc cannot say who made a
                    # tap); a wrong creator is never allowed
                    if not lost:
                        bad("creator-unknown", f"{key_text(k)} ({label}): creator unknown")
                elif r["creator_pid"] not in want:
                    bad("creator", f"{key_text(k)} ({label}): creator "
                        f"{r['creator_pid']} (TUNSETIFF by {sorted(want)})")
        cset = set(common)
        tparts = {frozenset(k for k in g if k in cset) for g in groups} - {frozenset()}
        byfile: dict = {}
        for k in common:
            byfile.setdefault(rows[k]["file"], set()).add(k)
        rparts = {frozenset(v) for v in byfile.values()}
        if tparts != rparts:
            def members(p):
                return sorted(p, key=key_order)
            for p in sorted(rparts - tparts, key=lambda p: [key_order(k) for k in members(p)]):
                bad("sharing", f"table says one open file: {members(p)}")
            for p in sorted(tparts - rparts, key=lambda p: [key_order(k) for k in members(p)]):
                bad("sharing", f"kcmp says one open file: {members(p)}")
        ttaps = {t["ifname"]: t["persist"] for t in table["taps"]
                 if t["ifname"].startswith(self.prefix)}
        for n in sorted(taps.keys() - ttaps.keys()):
            bad("tap-missing", f"tap {n} exists but is not in the tap list")
        for n in sorted(ttaps.keys() - taps.keys()):
            bad("tap-extra", f"tap {n} is in the tap list but is gone")
        for n in sorted(taps.keys() & ttaps.keys()):
            if taps[n] != ttaps[n]:
                bad("persist", f"tap {n}: persist {ttaps[n]} (truth {taps[n]})")
        return cats, detail

    # -- the whole run --
    def run(self) -> Result:
        res = Result(exact=True)
        self.lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.lsock.bind("\0" + self.sockname)
        self.lsock.listen(64)
        try:
            self.tracer = self.shared or Tracer(self.prog.tracer_args)
            self.top = subprocess.Popen([str(ACTOR_BIN), "--sock", self.sockname, "--id", "0"],
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=self.errlog, start_new_session=True)
            self._accept("A0")
            steps = [*self.prog.steps, Step("*", "checkpoint")]
            for idx, s in enumerate(steps):
                if s.actor == "*" and s.op == "checkpoint":
                    cats, detail = self._compare()
                    res.checkpoints += 1
                    if cats:
                        res.exact = False
                        res.categories, res.detail, res.failed_at = cats, detail, idx
                        break
                    continue
                if self._step(s):
                    res.ran += 1
                else:
                    res.skipped += 1
                    res.skipped_steps.append(idx)
            res.lost = self.tracer.count("lost", "count", since=self.mark)
            res.resyncs = self.tracer.count("resync", since=self.mark)
        except (RuntimeError, OSError, ValueError) as exc:
            res.exact = False
            res.error = f"{type(exc).__name__}: {exc}"
            res.categories = {"harness"}
        finally:
            self.cleanup()
        return res

    def cleanup(self) -> None:
        # Every actor is in A0's process group (its own session): kill the group, and
        # never a bare pid, which may be someone else's by now.
        if self.top is not None:
            with contextlib.suppress(OSError):
                os.killpg(self.top.pid, signal.SIGKILL)
            self.top.wait()
        for a in self.actors.values():
            with contextlib.suppress(OSError):
                a.conn.close()
        if self.tracer is not None and self.tracer is not self.shared:
            self.tracer.close()
        elif self.tracer is not None:
            self.tracer.cont()
        for n in read_taps(self.prefix):
            tapkit.delete_link(n)
        self.lsock.close()
        self.errlog.close()


def run_program(prog: Program, verbose: bool = False, tracer: Tracer | None = None) -> Result:
    return Runner(prog, verbose, tracer).run()


# ---- shrinking ------------------------------------------------------------------

def shrink(prog: Program, first: Result, budget_s: float = 240.0,
           log=lambda _m: None) -> tuple[Program, Result]:
    """Delta debugging over steps: the smallest program still failing with the same
    mismatch kinds as the first failure (within the time budget)."""
    want = set(first.categories) - {"harness"}
    deadline = time.monotonic() + budget_s
    best, best_res = prog, first

    def fails(steps: list[Step]) -> Result | None:
        r = run_program(prog.with_steps(steps))
        return r if not r.exact and r.categories == want else None

    steps = list(prog.steps)
    if first.failed_at is not None:                # the failing checkpoint ends it
        cut = steps[:first.failed_at]
        if len(cut) < len(steps) and (r := fails(cut)) is not None:
            steps, best_res = cut, r
    skipped = set(best_res.skipped_steps)          # steps that did nothing
    if skipped:
        cand = [s for i, s in enumerate(steps) if i not in skipped]
        if (r := fails(cand)) is not None:
            steps, best_res = cand, r
    n = 2
    while len(steps) >= 2 and time.monotonic() < deadline:
        chunk = max(1, len(steps) // n)
        reduced = False
        for start in range(0, len(steps), chunk):
            if time.monotonic() >= deadline:
                break
            cand = steps[:start] + steps[start + chunk:]
            r = fails(cand)
            if r is not None:
                steps, best_res = cand, r
                log(f"    shrink: {len(steps)} steps")
                n = max(n - 1, 2)
                reduced = True
                break
        if not reduced:
            if chunk == 1:
                break
            n = min(len(steps), n * 2)
    best = prog.with_steps(steps)
    return best, best_res


# ---- batches --------------------------------------------------------------------

@dataclass
class Batch:
    ran: Counter = field(default_factory=Counter)
    exact: Counter = field(default_factory=Counter)
    cats: Counter = field(default_factory=Counter)
    failures: list = field(default_factory=list)     # (program, result)
    # mismatches that did not recur when the program ran again alone (confirm())
    flaky: list = field(default_factory=list)        # (program, result)
    lost: int = 0
    resyncs: int = 0

    def summary(self) -> str:
        lines = []
        total, ok = sum(self.ran.values()), sum(self.exact.values())
        pct = f" ({100 * ok / total:.0f}%)" if total else ""
        lines.append(f"fuzz: {ok} of {total} programs exact{pct}; "
                     f"{self.lost} records lost, {self.resyncs} resyncs")
        for p in PROFILES:
            if self.ran[p]:
                lines.append(f"  {p:12} {self.exact[p]}/{self.ran[p]}")
        if self.cats:
            lines.append("  mismatch kinds: " + ", ".join(
                f"{k} {v}" for k, v in self.cats.most_common()))
        if self.flaky:
            lines.append(f"  {len(self.flaky)} did not recur when run again alone: " + ", ".join(
                f"seed {p.seed} {p.profile} ({', '.join(sorted(r.categories))})"
                for p, r in self.flaky))
        return "\n".join(lines)


def confirm(res: Batch, tries: int, log=print) -> None:
    """Run each mismatching program of a batch again, alone (its own tracer), up to
    `tries` times: one exact run moves it to res.flaky (a mismatch that depends on
    timing - still a bug, named in the summary); the rest stay failures."""
    confirmed = []
    for prog, fres in res.failures:
        for n in range(tries):
            again = run_program(prog)
            if again.exact:
                log(f"  seed {prog.seed} {prog.profile}: exact when run again alone "
                    f"({n + 1} of {tries})")
                res.flaky.append((prog, fres))
                break
        else:
            confirmed.append((prog, fres))
    res.failures = confirmed


def batch(seed: int, count: int | None = None, seconds: float | None = None,
          profiles: list[str] | None = None, log=print,
          exclude: frozenset = frozenset()) -> Batch:
    """Programs seed, seed+1, ... over the profiles in turn (default: all but the
    opt-in ones), until `count` ran or `seconds` passed."""
    profiles = profiles or DEFAULT_PROFILES
    out = Batch()
    end = None if seconds is None else time.monotonic() + seconds
    i = 0
    # one tracer per set of tracer arguments, shared by the programs that use it (a
    # long-running trace, as users run it); started again if it dies
    tracers: dict[tuple, Tracer] = {}
    try:
        while (count is None or i < count) and (end is None or time.monotonic() < end):
            profile = profiles[i % len(profiles)]
            prog = generate(seed + i, profile, exclude)
            key = tuple(prog.tracer_args)
            if key in tracers and tracers[key].proc.poll() is not None:
                del tracers[key]
            if key not in tracers:
                tracers[key] = Tracer(prog.tracer_args)
            res = run_program(prog, tracer=tracers[key])
            _tally(out, prog, res, seed + i, profile, log)
            i += 1
    finally:
        for t in tracers.values():
            t.close()
    return out


def _tally(out: Batch, prog: Program, res: Result, seed: int, profile: str, log) -> None:
    out.ran[profile] += 1
    out.lost += res.lost
    out.resyncs += res.resyncs
    if res.exact:
        out.exact[profile] += 1
    else:
        out.cats.update(res.categories)
        out.failures.append((prog, res))
        log(f"  seed {seed} {profile}: {', '.join(sorted(res.categories))}"
            f"{' ' + res.error if res.error else ''}")


# Triage: which kind of step a mismatch needs. The first group whose removal makes
# the program exact is named (steps of the removed group's actors stay).
TRIAGE = (("clone-files", {"cfiles", "vfiles"}), ("scm", {"send", "smm"}),
          ("threads/unshare", {"thread", "unshare"}), ("loss", {"burst"}),
          ("pause", {"tstop"}), ("exit/kill", {"exit", "kill"}), ("exec", {"exec", "vexec"}))


def triage(prog: Program) -> str:
    first = run_program(prog)
    if first.exact:
        return "exact now (flaky)"
    for name, ops in TRIAGE:
        if not any(st.op in ops for st in prog.steps):
            continue
        r = run_program(prog.with_steps([st for st in prog.steps if st.op not in ops]))
        if r.exact:
            return f"needs {name} ({', '.join(sorted(first.categories))})"
    return f"other ({', '.join(sorted(first.categories))})"


def describe(res: Result) -> str:
    head = "exact" if res.exact else "MISMATCH " + ", ".join(sorted(res.categories))
    extra = f" ({res.error})" if res.error else ""
    return (f"{head}{extra}: {res.ran} steps ran, {res.skipped} skipped, "
            f"{res.checkpoints} checkpoints, {res.lost} lost, {res.resyncs} resyncs")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="fuzz.py", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("batch", help="run random programs")
    b.add_argument("--seconds", type=float)
    b.add_argument("--count", type=int)
    b.add_argument("--seed", type=int)
    opt_in = [p for p in PROFILES if p not in DEFAULT_PROFILES]
    b.add_argument("--profiles", help="comma-separated: " + ",".join(PROFILES) + " (default: "
                   + (f"all but {', '.join(opt_in)})" if opt_in else "all)"))
    b.add_argument("--exclude", default="", help="ops never generated (comma-separated)")
    b.add_argument("--shrink", action="store_true",
                   help="shrink mismatches (the first of each kind)")
    b.add_argument("--max-shrinks", type=int, default=8)
    b.add_argument("--shrink-s", type=float, default=240.0)
    b.add_argument("--out", default="fuzz-out", help="where mismatches are written")
    b.add_argument("--confirm", type=int, default=0, metavar="N",
                   help="run each mismatch again alone up to N times; only the ones "
                        "that mismatch every time fail the batch")
    r = sub.add_parser("replay", help="run a program file")
    r.add_argument("file")
    r.add_argument("--times", type=int, default=1)
    r.add_argument("-v", "--verbose", action="store_true")
    sh = sub.add_parser("shrink", help="shrink a failing program file")
    sh.add_argument("file")
    sh.add_argument("--seconds", type=float, default=240.0)
    sh.add_argument("-o", "--output", help="where to write it (default: stdout)")
    t = sub.add_parser("triage", help="say what kind of step each failing program needs")
    t.add_argument("files", nargs="+")
    g = sub.add_parser("gen", help="print a generated program")
    g.add_argument("--seed", type=int, required=True)
    g.add_argument("--profile", default="ordinary", choices=list(PROFILES))
    args = ap.parse_args(argv)

    if args.cmd == "gen":
        sys.stdout.write(generate(args.seed, args.profile).text())
        return 0
    if os.geteuid() != 0 or not ACTOR_BIN.exists():
        print("fuzz: needs root and tests/helpers/bin/fuzzactor (make -C tests/helpers)",
              file=sys.stderr)
        return 2
    if args.cmd == "replay":
        prog = Program.parse(Path(args.file).read_text())
        bad = 0
        for _ in range(args.times):
            res = run_program(prog, args.verbose)
            print(describe(res))
            for line in res.detail:
                print("   ", line)
            bad += not res.exact
        return 1 if bad else 0
    if args.cmd == "triage":
        counts: Counter = Counter()
        for f in args.files:
            verdict = triage(Program.parse(Path(f).read_text()))
            counts[verdict.split(" (")[0]] += 1
            print(f"{f}: {verdict}", flush=True)
        print("triage: " + ", ".join(f"{k} {v}" for k, v in counts.most_common()))
        return 0
    if args.cmd == "shrink":
        prog = Program.parse(Path(args.file).read_text())
        first = run_program(prog)
        if first.exact:
            print("shrink: the program is exact here; nothing to shrink", file=sys.stderr)
            return 1
        print(f"shrink: {describe(first)}", file=sys.stderr)
        prog, res = shrink(prog, first, args.seconds,
                           log=lambda m: print(m, file=sys.stderr, flush=True))
        text = prog.text() + "".join(f"# {d}\n" for d in res.detail[:20])
        if args.output:
            Path(args.output).write_text(text)
        else:
            sys.stdout.write(text)
        print(f"shrink: {len(prog.steps)} steps: {describe(res)}", file=sys.stderr)
        return 0
    seed = args.seed if args.seed is not None else secrets.randbelow(10**6)
    profiles = args.profiles.split(",") if args.profiles else None
    if profiles and not set(profiles) <= set(PROFILES):
        print(f"fuzz: unknown profile in {args.profiles}", file=sys.stderr)
        return 2
    if args.seconds is None and args.count is None:
        args.seconds = 120.0
    print(f"fuzz: seed {seed}", flush=True)
    exclude = frozenset(x for x in args.exclude.split(",") if x)
    res = batch(seed, args.count, args.seconds, profiles,
                log=lambda m: print(m, flush=True), exclude=exclude)
    if args.confirm:
        confirm(res, args.confirm, log=lambda m: print(m, flush=True))
    print(res.summary())
    if res.failures or res.flaky:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        kinds: set = set()
        for n, (prog, fres) in enumerate(res.failures + res.flaky):
            kind = frozenset(fres.categories)
            if args.shrink and n < len(res.failures) and kind not in kinds \
                    and len(kinds) < args.max_shrinks:     # flaky ones may not shrink
                kinds.add(kind)
                print(f"  shrinking seed {prog.seed} {prog.profile} "
                      f"({len(prog.steps)} steps)", flush=True)
                prog, fres = shrink(prog, fres, args.shrink_s,
                                    log=lambda m: print(m, flush=True))
                path = out / f"min-seed{prog.seed}-{prog.profile}.fz"
            else:
                path = out / f"seed{prog.seed}-{prog.profile}.fz"
            path.write_text(prog.text() + "".join(f"# {d}\n" for d in fres.detail[:20]))
            print(f"  wrote {path} ({len(prog.steps)} steps)")
    return 1 if res.failures else 0


if __name__ == "__main__":
    sys.exit(main())
