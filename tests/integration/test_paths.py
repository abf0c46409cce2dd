"""How taps come to be and go, and the tracer's own guarantees, on the real kernel:
TUNSETIFF created vs attached, templates, EBUSY/EEXIST, threads, exit, the -p/-i/-c
filters, taps held before `watch` started, and lost records -> resync.

Every scenario that needs processes runs them as its own children (Python
scripts written to a temp dir) and ends them and deletes its taps in finally."""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest
import tapkit
from conftest import ROOT, StepReader, end_scenario, events_of, table_triples

TESTS = str(ROOT / "tests")
HELPERS = ROOT / "tests" / "helpers"
TAPWALK = HELPERS / "bin" / "tapwalk"

PRELUDE = textwrap.dedent("""
    import ctypes, json, os, signal, sys, threading
    sys.path.insert(0, {tests!r})
    import tapkit

    def say(step, **kw):
        print(json.dumps(dict(pid=os.getpid(), step=step, **kw)), flush=True)

    def hold(**kw):
        say("hold", **kw)
        sys.stdin.readline()

    def set_comm(name):
        ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)   # PR_SET_NAME
""")


class Script:
    """A Python scenario run as its own process: JSON steps until {"step": "hold"}."""

    def __init__(self, tmp_path, body: str, *args: str, names=(), start: bool = True) -> None:
        self.path = tmp_path / f"scenario{len(list(tmp_path.iterdir()))}.py"
        self.path.write_text(PRELUDE.format(tests=TESTS) + textwrap.dedent(body))
        self.args = [str(a) for a in args]
        self.names = list(names)
        self.steps: list[dict] = []
        self.extra_pids: set[int] = set()
        self.proc = None
        self._reader: StepReader | None = None
        if start:
            self.start()

    def start(self) -> Script:
        self.proc = subprocess.Popen([sys.executable, str(self.path), *self.args],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     start_new_session=True)
        self._reader = StepReader(self.proc, self.steps)
        return self

    def read_until(self, step: str, timeout: float = 15) -> dict:
        got = self._reader.until(step, timeout)
        if got is None:
            raise AssertionError(f"{self.path.name} did not say {step}: {self.steps}")
        return got

    def step(self, name: str) -> dict:
        return next(s for s in self.steps if s["step"] == name)

    @property
    def pids(self) -> set[int]:
        return {s["pid"] for s in self.steps} | {self.proc.pid} | self.extra_pids

    def tell(self, line: str = "go") -> None:
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def end(self) -> None:
        # and the children this scenario made, whatever session they are in
        end_scenario(self.proc, self.names,
                     also_kill=self.extra_pids | {s["pid"] for s in self.steps})


@pytest.fixture
def script(tmp_path):
    started: list[Script] = []

    def make(body: str, *args, names=(), start: bool = True) -> Script:
        s = Script(tmp_path, body, *args, names=names, start=start)
        started.append(s)
        return s

    yield make
    for s in started:
        s.end()


def check_table(table: dict, pids, truth) -> None:
    assert truth, "the scenario should hold taps at this point"
    assert table_triples(table, pids) == truth


def row(table: dict, pid: int, fd: int) -> dict:
    found = [r for r in table["rows"] if r["pid"] == pid and r["fd"] == fd]
    assert len(found) == 1, (pid, fd, found)
    return found[0]


def index(lines, obj) -> int:
    return next(i for i, o in enumerate(lines) if o is obj)


def one(found: list[dict]) -> dict:
    assert len(found) == 1, found
    return found[0]


def in_order(seq: list, want: list) -> bool:
    """`want` is a subsequence of `seq`."""
    it = iter(seq)
    return all(any(x == w for x in it) for w in want)


def ifnames_of(o: dict) -> list[str]:
    out = [o["ifname"]] if o.get("ifname") else []
    v = o.get("ifnames")
    if isinstance(v, dict):
        out += [x for x in v.values() if x]
    elif isinstance(v, list):
        out += [x for x in v if x]
    return out


EVENTS = {"open", "tunsetiff", "tungetiff", "tunsetqueue", "tunsetpersist", "tunsetowner",
          "tunsetgroup", "dup", "cloexec", "close", "fork", "exec", "exit", "scm_send",
          "scm_recv", "pidfd_getfd", "tap_gone"}


# ---- TUNSETIFF: created, attached, template, failures --------------------------------

CREATE_ATTACH = """
    name = sys.argv[1]
    fd, _ = tapkit.create_tap(name)
    tapkit.set_persist(fd, True)
    os.close(fd)                                   # persistent: stays without a holder
    say("persistent", fd=fd)
    again, got = tapkit.create_tap(name)           # attaches to the existing tap
    say("attached", fd=again, ifname=got)
    try:
        tapkit.set_iff(again, name)                # a second TUNSETIFF on that fd
    except OSError as e:
        say("again", fd=again, errno=e.errno)
    busy = tapkit.open_tun()
    try:
        tapkit.set_iff(busy, name)                 # single-queue tap already attached
    except OSError as e:
        say("busy", fd=busy, errno=e.errno)
    tapkit.set_persist(again, False)
    hold()
"""


def test_tunsetiff_created_then_attached_then_eexist_and_ebusy(tracer, script):
    t = tracer()
    name = tapkit.unique_name("tp")
    s = script(CREATE_ATTACH, name, names=[name])
    s.read_until("hold")
    pid, again, busy = s.proc.pid, s.step("attached")["fd"], s.step("busy")["fd"]
    assert s.step("again")["errno"] == errno.EEXIST and s.step("busy")["errno"] == errno.EBUSY
    truth = tapkit.truth(s.pids)
    lines, table = t.stop()
    check_table(table, s.pids, truth)
    sets = events_of(lines, "tunsetiff", pid=pid)
    assert [(o["fd"], o["ifname"], o["created"], o["error"]) for o in sets] == [
        (s.step("persistent")["fd"], name, True, None), (again, name, False, None),
        (again, name, False, "EEXIST"), (busy, name, False, "EBUSY")]
    assert sets[3]["ret"] == -errno.EBUSY
    assert not events_of(lines, "tap_gone", ifname=name)     # persistent while unheld
    r = row(table, pid, again)
    assert (r["ifname"], r["creator_pid"], r["how"]) == (name, pid, "opened")
    b = row(table, pid, busy)                                # a tun fd with no interface
    assert b["ifname"] is None
    tap = one([x for x in table["taps"] if x["ifname"] == name])
    assert (tap["persist"], tap["files"], tap["created_by"]) == (False, 1, pid)


def test_attach_to_a_persistent_tap_made_before_watch(tracer, script):
    name = tapkit.unique_name("tp")
    try:
        fd, _ = tapkit.create_tap(name)
        tapkit.set_persist(fd, True)
        os.close(fd)                                         # no holder at all
        t = tracer()
        s = script("""
            fd, got = tapkit.create_tap(sys.argv[1])
            say("attached", fd=fd, ifname=got)
            hold()
        """, name, names=[name])
        s.read_until("hold")
        truth = tapkit.truth(s.pids)
        lines, table = t.stop()
        check_table(table, s.pids, truth)
        fd = s.step("attached")["fd"]
        assert one(events_of(lines, "tunsetiff", pid=s.proc.pid))["created"] is False
        r = row(table, s.proc.pid, fd)
        assert (r["ifname"], r["creator_pid"], r["how"]) == (name, s.proc.pid, "opened")
        tap = one([x for x in table["taps"] if x["ifname"] == name])
        assert tap["persist"] is True and tap["created_by"] is None
    finally:
        tapkit.delete_link(name)


def test_template_returns_the_real_name(tracer, script):
    t = tracer()
    prefix = tapkit.unique_name("tp")
    s = script("""
        fd = tapkit.open_tun()
        got = tapkit.set_iff(fd, sys.argv[1] + "%d")
        say("made", fd=fd, ifname=got)
        hold()
    """, prefix)
    made = s.read_until("made")
    s.names.append(made["ifname"])
    s.read_until("hold")
    got = made["ifname"]
    assert got != prefix + "%d" and got.startswith(prefix) and got[len(prefix):].isdigit()
    truth = tapkit.truth(s.pids)
    lines, table = t.stop()
    check_table(table, s.pids, truth)
    ev = one(events_of(lines, "tunsetiff", pid=s.proc.pid))
    assert (ev["ifname"], ev["created"], ev["fd"]) == (got, True, made["fd"])
    assert row(table, s.proc.pid, made["fd"])["ifname"] == got
    assert not [x for x in table["taps"] if "%" in x["ifname"]]


# ---- threads ----------------------------------------------------------------------

THREADS = """
    name, first = sys.argv[1], sys.argv[2]
    comm = open("/proc/self/comm").read().strip()     # before any tap: not traced
    out = {}
    if first == "main":
        out["fd"], _ = tapkit.create_tap(name)        # the main thread makes the tap

    def worker():
        set_comm("tapworker")                  # this thread's comm, not the process's
        out["tid"] = threading.get_native_id()
        if first == "thread":
            out["fd"], _ = tapkit.create_tap(name)    # the process's first tap fd
        out["dups"] = [os.dup(out["fd"]) for _ in range(3)]
        os.close(out["dups"].pop(0))

    th = threading.Thread(target=worker)
    th.start()
    th.join()
    say("worked", **out)
    hold(comm=comm)
"""


def run_threads(tracer, script, first: str):
    t = tracer()
    name = tapkit.unique_name("tp")
    s = script(THREADS, name, first, names=[name])
    s.read_until("hold")
    pid, w = s.proc.pid, s.step("worked")
    comm = s.step("hold")["comm"]
    assert comm != "tapworker" and w["tid"] != pid
    truth = tapkit.truth(s.pids)
    lines, table = t.stop()
    check_table(table, s.pids, truth)
    mine = [o for o in lines if o.get("pid") == pid]
    by_thread = [o for o in mine if o["type"] in ("dup", "close")]
    assert {o["tid"] for o in by_thread} == {w["tid"]}
    assert len(events_of(mine, "dup", fd=w["fd"], ifname=name)) == 3
    assert len(events_of(mine, "close", ifname=name)) == 1
    rows = [r for r in table["rows"] if r["pid"] == pid]
    assert sorted(r["fd"] for r in rows) == sorted([w["fd"], *w["dups"]])
    assert {r["creator_pid"] for r in rows} == {pid}
    return comm, w, mine, rows


def test_a_thread_dups_and_closes_in_the_process_table(tracer, script):
    comm, _w, mine, rows = run_threads(tracer, script, "main")
    assert one(events_of(mine, "open"))["tid"] == mine[0]["pid"]     # the main thread
    assert {r["comm"] for r in rows} == {comm}               # the process's name stays
    assert {r["creator_comm"] for r in rows} == {comm}
    assert {o["comm"] for o in mine} == {comm}


def test_a_process_first_seen_through_a_thread_keeps_its_own_name(tracer, script):
    comm, w, mine, rows = run_threads(tracer, script, "thread")
    assert one(events_of(mine, "open"))["tid"] == w["tid"]          # the worker thread
    assert {r["comm"] for r in rows} == {comm}
    assert {r["creator_comm"] for r in rows} == {comm}
    assert {o["comm"] for o in mine} == {comm}


THREAD_OWN_TABLE = """
    a_name, b_name = sys.argv[1], sys.argv[2]
    libc = ctypes.CDLL(None, use_errno=True)
    a, _ = tapkit.create_tap(a_name)                 # in the process's table
    out = {"a": a}
    made, go, closed = threading.Event(), threading.Event(), threading.Event()

    def worker():
        out["tid"] = threading.get_native_id()
        if libc.unshare(0x400) != 0:                 # CLONE_FILES: a table of its own
            raise OSError(ctypes.get_errno(), "unshare")
        out["b"], _ = tapkit.create_tap(b_name)      # held in the thread's table only
        out["dup"] = os.dup(a)                       # a's open file, at another fd here
        os.close(a)                                  # in its copy: the process keeps a
        made.set()
        go.wait()
        os.close(out["b"])                           # the last fd of b: it goes
        closed.set()
        threading.Event().wait()

    threading.Thread(target=worker, daemon=True).start()
    made.wait()
    say("made", **out)
    sys.stdin.readline()
    go.set()
    closed.wait()
    hold()
"""


def thread_truth(pid: int, tid: int) -> set[tuple[int, str]]:
    """{(fd, ifname)} of the attached tun fds of thread tid's table, from
    /proc/PID/task/TID/fd and fdinfo `iff:`."""
    out = set()
    base = f"/proc/{pid}/task/{tid}"
    for n in os.listdir(f"{base}/fd"):
        if os.readlink(f"{base}/fd/{n}") != "/dev/net/tun":
            continue
        with open(f"{base}/fdinfo/{n}") as f:
            iff = [ln.split("\t", 1)[1].strip() for ln in f.read().splitlines()
                   if ln.startswith("iff:")]
        if iff and iff[0]:
            out.add((int(n), iff[0]))
    return out


def rows_by_tid(table: dict, pid: int) -> dict:
    """{(tid, fd): row} of one process's rows (tid None: its own table)."""
    return {(r["tid"], r["fd"]): r for r in table["rows"] if r["pid"] == pid}


def test_a_thread_s_own_table_is_rows_of_that_thread(tracer, script):
    """A thread unshares its fd table (unshare(CLONE_FILES)), makes a tap there and
    dups the process's tap into it: traced live, its fds are rows with its tid,
    as /proc/PID/task/TID/fdinfo shows them; `ls` (a snapshot) finds them too."""
    t = tracer()
    a_name, b_name = tapkit.unique_name("tp"), tapkit.unique_name("tp")
    s = script(THREAD_OWN_TABLE, a_name, b_name, names=[a_name, b_name])
    made = s.read_until("made")
    pid, tid = s.proc.pid, made["tid"]
    assert thread_truth(pid, tid) == {(made["b"], b_name), (made["dup"], a_name)}
    assert tapkit.truth([pid]) == {(pid, made["a"], a_name)}
    ls = json.loads(subprocess.run([sys.executable, "-m", "tracer", "ls", "--json"],
                                   cwd=ROOT, capture_output=True, text=True, check=True,
                                   timeout=60).stdout)
    human = subprocess.run([sys.executable, "-m", "tracer", "ls", "-i", b_name], cwd=ROOT,
                           capture_output=True, text=True, check=True, timeout=60).stdout
    lines, table = t.stop()
    for got in (table, ls):
        rows = rows_by_tid(got, pid)
        assert {(k, r["ifname"]) for k, r in rows.items()} == {
            ((None, made["a"]), a_name), ((tid, made["b"]), b_name),
            ((tid, made["dup"]), a_name)}
        mine, its = rows[(None, made["a"])], rows[(tid, made["dup"])]
        assert mine["file"] == its["file"]                       # one open file (kcmp)
        assert mine["shared_with"] == [[pid, made["dup"], tid]]
        assert its["shared_with"] == [[pid, made["a"]]]
        assert rows[(tid, made["b"])]["shared_with"] == []
    rows = rows_by_tid(table, pid)
    assert {r["creator_pid"] for r in rows.values()} == {pid}     # traced: its makers
    assert rows[(tid, made["dup"])]["how"] == "dup"
    assert one(events_of(lines, "tunsetiff", ifname=b_name))["tid"] == tid
    header, _, row = human.splitlines()[:3]
    assert header.split()[:2] == ["PID", "TID"]
    assert row.split()[:2] == [str(pid), str(tid)]


def test_a_thread_s_own_table_from_the_snapshot_goes_on_being_traced(tracer, script):
    """The table is made before the trace starts: the snapshot finds the thread's
    table (kcmp KCMP_FILES against its leader) and lists it from /proc/PID/task/TID;
    the thread's close then applies there, and its tap goes."""
    a_name, b_name = tapkit.unique_name("tp"), tapkit.unique_name("tp")
    s = script(THREAD_OWN_TABLE, a_name, b_name, names=[a_name, b_name])
    made = s.read_until("made")
    pid, tid = s.proc.pid, made["tid"]
    t = tracer()
    s.tell()                                        # the thread closes b in its table
    s.read_until("hold")
    t.wait_for(lambda o: o["type"] == "tap_gone" and o.get("ifname") == b_name)
    assert thread_truth(pid, tid) == {(made["dup"], a_name)}
    lines, table = t.stop()
    rows = rows_by_tid(table, pid)
    assert {(k, r["ifname"], r["how"]) for k, r in rows.items()} == {
        ((None, made["a"]), a_name, "snapshot"), ((tid, made["dup"]), a_name, "snapshot")}
    assert rows[(None, made["a"])]["file"] == rows[(tid, made["dup"])]["file"]
    close = one(events_of(lines, "close", ifname=b_name))
    assert (close["pid"], close["tid"], close["fd"]) == (pid, tid, made["b"])
    assert not events_of(lines, "resync")



def test_ifname_filter_shows_the_open_of_a_thread_s_own_table(tracer, script):
    """With -i, an `open` waits for its file's interface (the TUNSETIFF after it):
    an open by a thread with a table of its own is looked up in that table, not
    the process's (where that fd number is another file, or none), and shown."""
    a_name, b_name = tapkit.unique_name("tp"), tapkit.unique_name("tp")
    t = tracer("-i", b_name)
    s = script(THREAD_OWN_TABLE, a_name, b_name, names=[a_name, b_name])
    made = s.read_until("made")
    pid, tid = s.proc.pid, made["tid"]
    assert thread_truth(pid, tid) >= {(made["b"], b_name)}
    lines, table = t.stop()
    opened = one(events_of(lines, "open", ifname=b_name))
    assert (opened["pid"], opened["tid"], opened["fd"]) == (pid, tid, made["b"])
    assert not events_of(lines, "open", ifname=a_name)
    assert {(r["tid"], r["fd"], r["ifname"]) for r in table["rows"] if r["pid"] == pid} \
        == {(tid, made["b"], b_name)}


# ---- exit --------------------------------------------------------------------------

LEADEREXIT = HELPERS / "bin" / "leaderexit"


@pytest.mark.smoke
def test_a_leader_that_leaves_first_leaves_the_process_and_its_taps(tracer):
    """pthread_exit() in the leader while another thread holds a tap: the process
    lives on (its leader a zombie, /proc/PID/fd empty; the truth is the thread's
    /proc/PID/task/TID/fdinfo) until that thread's exit() ends the group. Before
    6.16 sched_process_exit does not say which exit is the group's last: taken from
    signal->live (BTF), not from "the leader exits"."""
    t = tracer()
    name = tapkit.unique_name("le")
    proc = subprocess.Popen([str(LEADEREXIT), name], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        got = json.loads(proc.stdout.readline())
        pid, tid, fd = got["pid"], got["tid"], got["fd"]
        with open(f"/proc/{pid}/task/{tid}/fdinfo/{fd}") as f:
            assert f"iff:\t{name}\n" in f.read()             # held, by the thread
        assert os.listdir(f"/proc/{pid}/fd") == []            # the zombie leader's view
        t.wait_for(lambda o: o["type"] == "tunsetiff" and o["pid"] == pid)
        t.proc.send_signal(signal.SIGUSR1)                   # the table now
        now = t.wait_for(lambda o: o["type"] == "table")
        assert table_triples(now, [pid]) == {(pid, fd, name)}
        assert not events_of(t.lines, "exit", pid=pid)
        proc.stdin.close()                                   # the thread ends the group
        assert proc.wait(timeout=30) == 0
        ex = t.wait_for(lambda o: o["type"] == "exit" and o["pid"] == pid)
        lines, table = t.stop()
    finally:
        proc.kill()
        proc.wait()
        tapkit.delete_link(name)
    assert (ex["tid"], ex["closed"], ex["ifnames"]) == (tid, [fd], [name])
    assert table_triples(table, [pid]) == set()
    assert len(events_of(lines, "tap_gone", ifname=name)) == 1


EXIT = """
    a_name, b_name = sys.argv[1], sys.argv[2]
    a, _ = tapkit.create_tap(a_name)
    b, _ = tapkit.create_tap(b_name)
    a2 = os.dup(a)
    kid = os.fork()
    if kid == 0:                       # keeps A (both fds) alive after the parent exits
        os.close(b)
        signal.pause()
        os._exit(0)
    say("made", a=a, a2=a2, b=b, kid=kid)
    hold()
    os._exit(0)                        # with every fd open: the kernel closes them
"""


def test_exit_closes_every_fd_and_the_unshared_tap_goes(tracer, script):
    live = tracer()
    a_name, b_name = tapkit.unique_name("tp"), tapkit.unique_name("tp")
    s = script(EXIT, a_name, b_name, names=[a_name, b_name])
    made = s.read_until("made")
    s.extra_pids.add(made["kid"])
    s.read_until("hold")
    pid, kid = s.proc.pid, made["kid"]
    held = tapkit.truth(s.pids)
    assert {n for _, _, n in held} == {a_name, b_name}
    s.tell()
    s.proc.wait(timeout=10)
    live.wait_for(lambda o: o["type"] == "tap_gone" and o.get("ifname") == b_name)
    truth = tapkit.truth(s.pids)
    lines, table = live.stop()
    check_table(table, s.pids, truth)
    ex = one(events_of(lines, "exit", pid=pid))
    assert ex["closed"] == sorted([made["a"], made["a2"], made["b"]])
    assert sorted(ex["ifnames"]) == sorted([a_name, a_name, b_name])
    gone = one(events_of(lines, "tap_gone", ifname=b_name))
    assert index(lines, ex) < index(lines, gone)
    assert not events_of(lines, "tap_gone", ifname=a_name)   # the child still holds it
    assert not [r for r in table["rows"] if r["pid"] == pid]
    assert {x["ifname"] for x in table["taps"]} & {a_name, b_name} == {a_name}
    for fd in (made["a"], made["a2"]):
        r = row(table, kid, fd)
        assert (r["how"], r["from_pid"], r["creator_pid"]) == ("inherited", pid, pid)
    assert not os.path.exists(f"/sys/class/net/{b_name}")


# ---- filters -----------------------------------------------------------------------

MAKER = """
    # make one tap (and a dup), fork a grandchild that holds a copy, hold
    name = sys.argv[1]
    fd, _ = tapkit.create_tap(name, cloexec=False)
    d = os.dup(fd)
    kid = os.fork()
    if kid == 0:
        signal.pause()
        os._exit(0)
    say("made", fd=fd, dup=d, kid=kid)
    hold()
"""

ROOT_SCRIPT = """
    # holds no tap itself: starts a maker (a descendant) when told, then holds
    import subprocess
    sys.stdin.readline()
    child = subprocess.Popen([sys.executable, sys.argv[1], sys.argv[2]],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    made = json.loads(child.stdout.readline())
    say("child", child=child.pid, made=made)
    hold()
    child.stdin.close()
    os.kill(made["kid"], signal.SIGKILL)
    child.wait()
"""


def test_pid_filter_follows_descendants_and_leaves_others_out(tracer, script, tmp_path):
    inside, outside = tapkit.unique_name("tp"), tapkit.unique_name("tp")
    maker = script(MAKER, start=False)
    root = script(ROOT_SCRIPT, maker.path, inside, names=[inside])
    t = tracer("-p", str(root.proc.pid))
    other = script(MAKER, outside, names=[outside])         # not a descendant of root
    omade = other.read_until("made")
    other.extra_pids.add(omade["kid"])
    other.read_until("hold")
    root.tell()
    got = root.read_until("child")
    child, made = got["child"], got["made"]
    root.extra_pids |= {child, made["kid"]}
    root.read_until("hold")
    family = {root.proc.pid, child, made["kid"]}
    truth = tapkit.truth(family)
    lines, table = t.stop()
    check_table(table, family, truth)
    events = [o for o in lines if o["type"] in EVENTS]
    assert events and {o["pid"] for o in events} <= family
    assert one(events_of(events, "tunsetiff", ifname=inside))["pid"] == child
    fork = one(events_of(events, "fork", pid=child))
    assert fork["child_pid"] == made["kid"] and fork["ifnames"] == [inside, inside]
    assert not [o for o in events if outside in ifnames_of(o)]
    assert {r["pid"] for r in table["rows"]} == {child, made["kid"]}
    r = row(table, made["kid"], made["dup"])
    assert (r["how"], r["from_pid"], r["creator_pid"]) == ("inherited", child, child)


SHORT_ROOT = """
    # holds no tap; when told, runs a descendant that lives a few hundred microseconds
    import subprocess
    sys.stdin.readline()
    out = subprocess.run(sys.argv[1:], check=True, stdout=subprocess.PIPE, text=True).stdout
    say("ran", steps=[json.loads(x) for x in out.splitlines()])
    hold()
"""


def test_pid_filter_keeps_a_short_lived_descendant(tracer, script):
    subprocess.run(["make", "-s", "-C", str(HELPERS)], check=True)
    name = tapkit.unique_name("tp")
    root = script(SHORT_ROOT, TAPWALK, "blink", name, names=[name])
    t = tracer("-p", str(root.proc.pid))
    # The tracer lags (as under load): the child has exited and been reaped before
    # user space sees its records. They wait in the ring buffer meanwhile.
    t.proc.send_signal(signal.SIGSTOP)
    try:
        root.tell()
        ran = root.read_until("ran")
        root.read_until("hold")
    finally:
        t.proc.send_signal(signal.SIGCONT)
    lines, _table = t.stop(settle=0.6)
    pid = ran["steps"][0]["pid"]
    assert events_of(lines, "tunsetiff", pid=pid, ifname=name, created=True)
    types = [o["type"] for o in lines if o.get("pid") == pid and o["type"] in EVENTS]
    assert in_order(types, ["open", "tunsetiff", "dup", "close", "exit", "tap_gone"]), types


def test_ifname_glob_filter(tracer, script):
    prefix = tapkit.unique_name("ti")
    mine = [prefix + "a", prefix + "b"]
    other = tapkit.unique_name("to")
    t = tracer("-i", prefix + "*")
    s = script("""
        fds = {}
        for name in sys.argv[1:]:
            fds[name], _ = tapkit.create_tap(name)
            os.close(os.dup(fds[name]))
        say("made", fds=fds)
        hold()
    """, *mine, other, names=[*mine, other])
    s.read_until("hold")
    fds = s.step("made")["fds"]
    truth = {x for x in tapkit.truth(s.pids) if fnmatch.fnmatchcase(x[2], prefix + "*")}
    lines, table = t.stop()
    check_table(table, s.pids, truth)
    events = [o for o in lines if o["type"] in EVENTS]
    assert events and all(any(fnmatch.fnmatchcase(n, prefix + "*") for n in ifnames_of(o))
                          for o in events)
    assert {o["ifname"] for o in events_of(events, "tunsetiff")} == set(mine)
    assert {(o["ifname"], o["fd"]) for o in events_of(events, "dup")} == {
        (n, fds[n]) for n in mine}
    assert {r["ifname"] for r in table["rows"]} == set(mine)
    assert other in {x for _, _, x in tapkit.truth(s.pids)}    # it was there all along


COMM = """
    set_comm(sys.argv[1])
    fd, _ = tapkit.create_tap(sys.argv[2])
    d = os.dup(fd)
    say("made", fd=fd, dup=d)
    hold()
"""


def test_comm_glob_filter(tracer, script):
    tag = tapkit.unique_name("cm")
    a, b = tapkit.unique_name("tp"), tapkit.unique_name("tp")
    t = tracer("-c", tag + "*")
    yes = script(COMM, tag + "-x", a, names=[a])
    no = script(COMM, "plain-" + tag[2:], b, names=[b])
    yes.read_until("hold")
    no.read_until("hold")
    truth = tapkit.truth(yes.pids)
    lines, table = t.stop()
    check_table(table, yes.pids, truth)
    events = [o for o in lines if o["type"] in EVENTS]
    assert events and {o["comm"] for o in events} == {tag + "-x"}
    assert {o["type"] for o in events} >= {"open", "tunsetiff", "dup"}
    assert {o["pid"] for o in events} == {yes.proc.pid}
    assert {r["pid"] for r in table["rows"]} == {yes.proc.pid}
    assert {r["comm"] for r in table["rows"]} == {tag + "-x"}


# ---- taps held before watch started -------------------------------------------------

BEFORE = """
    a_name, q_name = sys.argv[1], sys.argv[2]
    a, _ = tapkit.create_tap(a_name)
    a2 = os.dup(a)
    mq = tapkit.IFF_TAP | tapkit.IFF_NO_PI | tapkit.IFF_MULTI_QUEUE
    q1, _ = tapkit.create_tap(q_name, mq)
    q2, _ = tapkit.create_tap(q_name, mq)        # another open file of the same tap
    kid = os.fork()
    if kid == 0:                                  # shares every open file above
        signal.pause()
        os._exit(0)
    say("made", a=a, a2=a2, q1=q1, q2=q2, kid=kid)
    sys.stdin.readline()
    os.close(a2)                                  # after watch started
    b = os.dup(a)
    say("moved", closed=a2, dup=b)
    hold()
"""


def test_taps_opened_before_watch_are_in_the_table_with_their_sharing(tracer, script):
    a_name, q_name = tapkit.unique_name("tp"), tapkit.unique_name("tp")
    s = script(BEFORE, a_name, q_name, names=[a_name, q_name])
    made = s.read_until("made")
    s.extra_pids.add(made["kid"])
    pid, kid = s.proc.pid, made["kid"]
    t = tracer()
    s.tell()
    moved = s.read_until("moved")
    s.read_until("hold")
    truth = tapkit.truth(s.pids)
    lines, table = t.stop()
    check_table(table, s.pids, truth)
    a, a2, q1, q2 = made["a"], made["a2"], made["q1"], made["q2"]
    mine = [o for o in lines if o.get("pid") == pid]
    assert one(events_of(mine, "close", fd=a2))["ifname"] == a_name
    assert one(events_of(mine, "dup", fd=a, newfd=moved["dup"]))["ifname"] == a_name

    def shared(p, fd):
        return sorted(map(tuple, row(table, p, fd)["shared_with"]))

    b = moved["dup"]
    assert shared(kid, a) == sorted([(pid, a), (pid, b), (kid, a2)])
    assert shared(kid, a2) == sorted([(pid, a), (pid, b), (kid, a)])
    assert shared(pid, q1) == [(kid, q1)] and shared(kid, q2) == [(pid, q2)]
    for p, fd in ((pid, a), (kid, a), (kid, a2), (pid, q1), (kid, q2)):
        r = row(table, p, fd)
        assert (r["how"], r["creator_pid"]) == ("snapshot", None), r
    assert row(table, pid, q1)["file"] != row(table, pid, q2)["file"]
    assert row(table, pid, b)["how"] == "dup"
    assert "multi_queue" in row(table, pid, q1)["flags"]


# ---- lost records -> resync ---------------------------------------------------------

BURST = """
    name = sys.argv[1]
    fd, _ = tapkit.create_tap(name)
    say("made", fd=fd)
    sys.stdin.readline()
    for i in range(6000):                 # far more records than one page holds
        os.close(os.dup(fd))
        if i == 3000:
            for n in range(50, 56):
                os.dup2(fd, n)            # changes made while records are being lost
            os.close(52)
    say("burst")
    sys.stdin.readline()
    kept = [os.dup(fd) for _ in range(2)] # after the resync, tracking goes on
    os.close(54)
    say("after", kept=kept)
    hold()
"""


def test_lost_records_lead_to_a_resync_that_restores_an_exact_table(tracer, script):
    name = tapkit.unique_name("tp")
    t = tracer("--buffer-pages", "1")
    assert t.ready["buffer_pages"] == 1
    live = t
    s = script(BURST, name, names=[name])
    made = s.read_until("made")
    pid = s.proc.pid
    s.tell()
    s.read_until("burst")
    live.wait_for(lambda o: o["type"] == "resync", timeout=10)
    # and any later resync of the same burst (records lost while /proc was read make
    # another): settled when a second passes without one
    live.wait_quiet(lambda o: o["type"] == "resync", quiet=1.0)
    s.tell()
    after = s.read_until("after")
    s.read_until("hold")
    truth = tapkit.truth(s.pids)
    lines, table = live.stop()
    check_table(table, s.pids, truth)
    assert {fd for _, fd, _ in truth} == {made["fd"], 50, 51, 53, 55, *after["kept"]}
    lost = events_of(lines, "lost")
    resync = events_of(lines, "resync")
    assert lost and all(o["count"] > 0 for o in lost) and resync
    assert index(lines, lost[0]) < index(lines, resync[0])
    # the events after the resync are exact again
    tail = lines[index(lines, resync[0]):]
    assert {o["newfd"] for o in events_of(tail, "dup", pid=pid, fd=made["fd"])} >= set(
        after["kept"])
    assert events_of(tail, "close", pid=pid, fd=54, ifname=name)
    # what the tracer knew before the loss survives the resync (on a busy machine the
    # loss can begin before this tap's TUNSETIFF reached user space: then it cannot)
    r = row(table, pid, made["fd"])
    known = events_of(lines, "tunsetiff", pid=pid, ifname=name)
    if known and index(lines, known[0]) < index(lines, resync[0]):
        assert (r["creator_pid"], r["how"]) == (pid, "opened")
    else:   # its TUNSETIFF record, read after the loss, names the maker if it came
        assert (r["creator_pid"], r["how"]) in ((pid, "opened"), (pid, "snapshot"),
                                                 (None, "snapshot"))
