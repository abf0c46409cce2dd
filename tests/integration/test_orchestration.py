"""An orchestration script, run as a real process, hands taps to a "VM" the way
libvirt does: fds passed at spawn (subprocess.Popen pass_fds: fork, then exec),
adopted with TUNGETIFF, and one more tap hot-plugged later over the VM's unix
monitor socket (SCM_RIGHTS). The tracer must tell the whole story: the lineage
fork -> exec -> recv, each fd's creator (the orchestrator) and how the VM got it,
and a final table equal to /proc while everyone still holds their fds."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import tapkit
from conftest import ROOT, StepReader, end_scenario, events_of, need_root, table_triples

TESTS = str(ROOT / "tests")

ORCHESTRATOR = textwrap.dedent("""
    import json, os, socket, subprocess, sys, time
    sys.path.insert(0, {tests!r})
    import tapkit

    def say(step, **kw):
        print(json.dumps(dict(pid=os.getpid(), step=step, **kw)), flush=True)

    a_name, b_name, c_name, vm_path, mon_path = sys.argv[1:6]
    a, _ = tapkit.create_tap(a_name)       # close-on-exec, as Python makes every fd:
    b, _ = tapkit.create_tap(b_name)       # only pass_fds opens one to the child
    c, _ = tapkit.create_tap(c_name)       # the orchestrator's own, never handed over
    say("made", a=a, b=b, c=c)
    vm = subprocess.Popen([sys.executable, vm_path, str(a), mon_path], pass_fds=[a],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    adopted = vm.stdout.readline()         # the VM ran TUNGETIFF on fd a
    print(adopted, end="", flush=True)
    os.close(a)                            # the VM holds it now
    say("spawned", vm=vm.pid, closed=a)
    mon = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    for _ in range(200):                   # the VM listens before it says "adopted"
        try:
            mon.connect(mon_path)
            break
        except OSError:
            time.sleep(0.01)
    tapkit.send_fds(mon, [b])              # hot-plug: QMP getfd over the monitor
    say("sent", sock=mon.fileno(), fds=[b])
    os.close(b)
    print(vm.stdout.readline(), end="", flush=True)     # "received"
    print(vm.stdout.readline(), end="", flush=True)     # the VM's "hold"
    say("hold")
    sys.stdin.readline()
    vm.stdin.close()
    vm.wait()
""")

VM = textwrap.dedent("""
    import json, os, socket, sys
    sys.path.insert(0, {tests!r})
    import tapkit

    def say(step, **kw):
        print(json.dumps(dict(pid=os.getpid(), step=step, **kw)), flush=True)

    fd, mon_path = int(sys.argv[1]), sys.argv[2]
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(mon_path)
    srv.listen(1)
    say("adopted", fd=fd, ifname=tapkit.get_iff(fd),
        cloexec=tapkit.cloexec_of(os.getpid(), fd))
    conn, _ = srv.accept()
    # recvmsg itself: socket.recv_fds ignores its flags argument on Python 3.11
    _msg, anc, _fl, _ad = conn.recvmsg(16, socket.CMSG_SPACE(4), socket.MSG_CMSG_CLOEXEC)
    (got,) = [int.from_bytes(d[:4], sys.byteorder) for lvl, typ, d in anc
              if (lvl, typ) == (socket.SOL_SOCKET, socket.SCM_RIGHTS)]
    say("received", sock=conn.fileno(), fd=got, ifname=tapkit.get_iff(got),
        cloexec=tapkit.cloexec_of(os.getpid(), got))
    say("vm-hold")
    sys.stdin.read()
""")


class Orchestration:
    """The orchestrator and its VM, run until both hold their taps."""

    def __init__(self, tmp_path) -> None:
        self.names = [tapkit.unique_name("to") for _ in range(3)]
        vm = tmp_path / "vm.py"
        vm.write_text(VM.format(tests=TESTS))
        orch = tmp_path / "orchestrate.py"
        orch.write_text(ORCHESTRATOR.format(tests=TESTS))
        self.steps: list[dict] = []
        self.proc = subprocess.Popen(
            [sys.executable, str(orch), *self.names, str(vm), str(tmp_path / "mon.sock")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)

    def run(self, timeout: float = 15) -> Orchestration:
        if StepReader(self.proc, self.steps).until("hold", timeout) is None:
            raise AssertionError(f"the orchestration did not reach hold: {self.steps}")
        return self

    def step(self, name: str) -> dict:
        return next(s for s in self.steps if s["step"] == name)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def vm(self) -> int:
        return self.step("adopted")["pid"]

    def end(self) -> None:
        end_scenario(self.proc, self.names, b"\n")     # the VM too: same session


@pytest.fixture
def orchestration(tmp_path):
    started: list[Orchestration] = []

    def start() -> Orchestration:
        o = Orchestration(tmp_path)
        started.append(o)
        return o

    yield start
    for o in started:
        o.end()


def one(found: list[dict]) -> dict:
    assert len(found) == 1, found
    return found[0]


def index(lines: list[dict], obj: dict) -> int:
    return next(i for i, o in enumerate(lines) if o is obj)


def row(table: dict, pid: int, fd: int) -> dict:
    found = [r for r in table["rows"] if r["pid"] == pid and r["fd"] == fd]
    assert len(found) == 1, (pid, fd, found)
    return found[0]


def stop_after(t, pred, timeout: float = 10) -> tuple[list[dict], dict]:
    """Stop the tracer once it has printed the scenario's last event (no guessing
    how long it lags behind under load)."""
    t.wait_for(pred, timeout)
    return t.stop(settle=0)


@pytest.mark.smoke
def test_pass_fds_then_hot_plug_over_the_monitor_socket(tracer, orchestration):
    t = tracer()
    o = orchestration().run()
    a_name, b_name, c_name = o.names
    orch, vm = o.pid, o.vm
    made, adopted, got = o.step("made"), o.step("adopted"), o.step("received")
    a, b, c = made["a"], made["b"], made["c"]
    assert adopted["fd"] == a and adopted["ifname"] == a_name and adopted["cloexec"] is False
    assert got["ifname"] == b_name and got["cloexec"] is True
    truth = tapkit.truth([orch, vm])
    lines, table = stop_after(t, lambda x: x["type"] == "scm_recv" and x["pid"] == vm)

    # the table, exactly as /proc has it, and who made and handed each fd
    assert table_triples(table, [orch, vm]) == truth
    assert truth == {(orch, c, c_name), (vm, a, a_name), (vm, got["fd"], b_name)}
    r = row(table, vm, a)
    assert (r["ifname"], r["how"], r["from_pid"], r["from_fd"]) == (a_name, "inherited",
                                                                    orch, a)
    assert (r["creator_pid"], r["cloexec"], r["shared_with"]) == (orch, False, [])
    r = row(table, vm, got["fd"])
    assert (r["ifname"], r["how"], r["from_pid"], r["from_fd"]) == (b_name, "received",
                                                                    orch, b)
    assert (r["creator_pid"], r["cloexec"], r["shared_with"]) == (orch, True, [])
    r = row(table, orch, c)
    assert (r["ifname"], r["how"], r["creator_pid"]) == (c_name, "opened", orch)
    taps = {x["ifname"]: x for x in table["taps"]}
    assert all(taps[n]["created_by"] == orch for n in o.names)

    # the lineage: created by the orchestrator, fork, exec, adopted, then a receive
    sets = [one(events_of(lines, "tunsetiff", pid=orch, ifname=n)) for n in o.names]
    assert [(s["fd"], s["created"]) for s in sets] == [(a, True), (b, True), (c, True)]
    fork = one(events_of(lines, "fork", pid=orch, child_pid=vm))
    assert fork["shared_table"] is False
    assert {a, b, c} <= set(fork["fds"])
    assert {n: fd for fd, n in zip(fork["fds"], fork["ifnames"])} == {
        a_name: a, b_name: b, c_name: c}
    ex = one(events_of(lines, "exec", pid=vm))
    assert ex["kept"] == [a] and ex["ifnames"] == {str(a): a_name}
    # b and c do not reach the VM: closed between fork and exec (close_range or
    # single closes) or by their close-on-exec bit at the exec itself
    before_exec = [x for x in events_of(lines, "close", pid=vm) if index(lines, x) < index(
        lines, ex)]
    assert {x["fd"] for x in before_exec} | set(ex["closed"]) == {b, c}
    adopt = one(events_of(lines, "tungetiff", pid=vm, fd=a))
    assert (adopt["ret"], adopt["ifname"], adopt["message"]) == (0, a_name,
                                                                 f"fd {a} is {a_name}")
    snd = one(events_of(lines, "scm_send", pid=orch))
    assert (snd["fds"], snd["ifnames"]) == ([b], [b_name])
    rcv = one(events_of(lines, "scm_recv", pid=vm))
    assert (rcv["fds"], rcv["from_pid"], rcv["from_fds"], rcv["ifnames"], rcv["cloexec"]) == (
        [got["fd"]], orch, [b], [b_name], True)
    assert rcv["sock"] == got["sock"]
    assert (index(lines, sets[0]) < index(lines, fork) < index(lines, ex)
            < index(lines, adopt) < index(lines, snd) < index(lines, rcv))
    # the orchestrator let go of a and b: each close came with no tap_gone
    assert events_of(lines, "close", pid=orch, fd=a, ifname=a_name, how="close")
    assert events_of(lines, "close", pid=orch, fd=b, ifname=b_name, how="close")
    assert not [x for x in events_of(lines, "tap_gone") if x["ifname"] in o.names]


def read_until(proc, buf: bytearray, pred, timeout: float) -> bool:
    """Read proc's stdout (raw, into buf) until pred(buf) or EOF or timeout."""
    deadline = time.monotonic() + timeout
    while not pred(buf) and time.monotonic() < deadline:
        r, _, _ = select.select([proc.stdout], [], [], 0.2)
        if r:
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                return pred(buf)
            buf += chunk
    return pred(buf)


def test_the_human_watch_prints_each_handoff_chain(orchestration):
    need_root()
    tracer = subprocess.Popen([sys.executable, "-m", "tracer", "watch"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    buf = bytearray()
    try:
        assert read_until(tracer, buf, lambda b: b"\nTIME " in b, 60), (buf, tracer.poll())
        assert buf.startswith(b"# tracing with"), buf
        o = orchestration().run()
        vm, got = o.vm, o.step("received")["fd"]
        # the receive's event line and then its chain line
        recv = re.compile(rf"^.* {vm} .* scm_recv .*\n    .* fd {got}\n".encode(), re.MULTILINE)
        assert read_until(tracer, buf, recv.search, 15), buf.decode()
        tracer.send_signal(signal.SIGINT)
        assert read_until(tracer, buf, lambda b: False, 30) is False
        assert tracer.wait(timeout=30) == 0, tracer.stderr.read()
    finally:
        if tracer.poll() is None:
            tracer.kill()
            tracer.wait()
    out = buf.decode()
    a_name, b_name, _c_name = o.names
    orch, vm, a = o.pid, o.vm, o.step("made")["a"]
    b, got = o.step("made")["b"], o.step("received")["fd"]
    chains = [line.strip() for line in out.splitlines() if line.startswith("    ")]
    with open(f"/proc/{orch}/comm") as f:
        oc = f.read().strip()
    with open(f"/proc/{vm}/comm") as f:
        vc = f.read().strip()
    want_a = f"{a_name}: {oc}[{orch}] fd {a} → fork {oc}[{vm}] → exec {vc}[{vm}] fd {a}"
    assert want_a in chains, chains
    # b was forked into the VM too (then closed before exec): its open file went there
    got_b = [x for x in chains if x.startswith(f"{b_name}: {oc}[{orch}] fd {b} → ")
             and x.endswith(f" → recv {vc}[{vm}] fd {got}")]
    assert got_b, chains
    # and the table the VM holds, from the same run
    assert re.search(rf"^\s*{vm}\s+{re.escape(vc)}\s+{a}\s+{a_name}\s.*inherited from {orch}",
                     out, re.MULTILINE), out
    assert re.search(rf"^\s*{vm}\s+{re.escape(vc)}\s+{got}\s+{b_name}\s.*received from {orch}",
                     out, re.MULTILINE), out


# ---- a variant: the orchestrator keeps what it hot-plugs, the VM renames itself ----

KEEPER = textwrap.dedent("""
    import json, os, socket, subprocess, sys
    sys.path.insert(0, {tests!r})
    import tapkit

    def say(step, **kw):
        print(json.dumps(dict(pid=os.getpid(), step=step, **kw)), flush=True)

    first, hot, monitor, vm_script = sys.argv[1:5]
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(monitor)
    srv.listen(1)
    fd, _ = tapkit.create_tap(first, tapkit.IFF_TAP | tapkit.IFF_NO_PI | tapkit.IFF_VNET_HDR)
    vm = subprocess.Popen([sys.executable, vm_script, str(fd), monitor], pass_fds=[fd],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    os.close(fd)
    say("spawned", vm=vm.pid, fd=fd)
    adopted = json.loads(vm.stdout.readline())
    conn, _ = srv.accept()
    b, _ = tapkit.create_tap(hot)
    socket.send_fds(conn, [b'{{"execute": "getfd"}}'], [b])   # b stays open here
    say("sent", fd=b, sock=conn.fileno())
    plugged = json.loads(vm.stdout.readline())
    say("hold", adopted=adopted, plugged=plugged)
    sys.stdin.readline()
    vm.stdin.close()
    vm.wait()
""")

RENAMED_VM = textwrap.dedent("""
    import ctypes, json, os, socket, sys
    sys.path.insert(0, {tests!r})
    import tapkit

    def say(step, **kw):
        print(json.dumps(dict(pid=os.getpid(), step=step, **kw)), flush=True)

    fd, monitor = int(sys.argv[1]), sys.argv[2]
    ctypes.CDLL(None).prctl(15, b"qemu-fake", 0, 0, 0)     # PR_SET_NAME after exec
    say("adopted", fd=fd, ifname=tapkit.get_iff(fd),
        cloexec=tapkit.cloexec_of(os.getpid(), fd))
    mon = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mon.connect(monitor)
    _msg, fds, _flags, _addr = socket.recv_fds(mon, 4096, 4)    # no MSG_CMSG_CLOEXEC
    say("plugged", fd=fds[0], ifname=tapkit.get_iff(fds[0]), sock=mon.fileno(),
        cloexec=tapkit.cloexec_of(os.getpid(), fds[0]))
    sys.stdin.read()
""")


class Keeper(Orchestration):
    """The variant's orchestrator and VM (same reading and cleanup)."""

    def __init__(self, tmp_path) -> None:
        self.names = [tapkit.unique_name("to") for _ in range(2)]
        (tmp_path / "keeper.py").write_text(KEEPER.format(tests=TESTS))
        (tmp_path / "renamed_vm.py").write_text(RENAMED_VM.format(tests=TESTS))
        self.steps = []
        self.proc = subprocess.Popen(
            [sys.executable, str(tmp_path / "keeper.py"), *self.names,
             str(tmp_path / "keeper.sock"), str(tmp_path / "renamed_vm.py")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True)


@pytest.fixture
def keeper(tmp_path):
    started: list[Keeper] = []

    def start() -> Keeper:
        k = Keeper(tmp_path)
        started.append(k)
        return k

    yield start
    for k in started:
        k.end()


def test_hot_plugged_tap_kept_by_the_orchestrator_and_a_renamed_vm(tracer, keeper):
    t = tracer()
    o = keeper().run()
    first, hot = o.names
    spawned, held, sent = o.step("spawned"), o.step("hold"), o.step("sent")
    orch, vm, afd = o.pid, spawned["vm"], spawned["fd"]
    adopted, plugged = held["adopted"], held["plugged"]
    assert adopted["pid"] == vm and (adopted["ifname"], plugged["ifname"]) == (first, hot)
    truth = tapkit.truth([orch, vm])
    lines, table = stop_after(t, lambda x: x["type"] == "scm_recv" and x["pid"] == vm)
    assert truth == {(vm, afd, first), (vm, plugged["fd"], hot), (orch, sent["fd"], hot)}
    assert table_triples(table, [orch, vm]) == truth

    # fork -> pass_fds clears close-on-exec (F_SETFD, async-signal-safe) -> exec -> adopted
    fork = one(events_of(lines, "fork", pid=orch, child_pid=vm))
    clear = one(events_of(lines, "cloexec", pid=vm, fd=afd))
    assert (clear["cloexec"], clear["ifname"]) == (False, first)
    assert clear["how"] in ("F_SETFD", "FIONCLEX")
    ex = one(events_of(lines, "exec", pid=vm))
    assert ex["kept"] == [afd] and ex["ifnames"] == {str(afd): first}
    adopt = one(events_of(lines, "tungetiff", pid=vm, fd=afd))
    assert index(lines, fork) < index(lines, clear) < index(lines, ex) < index(lines, adopt)
    # the VM renamed itself after exec: its later events and its rows say so
    assert adopt["comm"] == "qemu-fake"
    # sent, received without MSG_CMSG_CLOEXEC, and still held by the orchestrator
    snd = one(events_of(lines, "scm_send", pid=orch))
    rcv = one(events_of(lines, "scm_recv", pid=vm))
    assert (rcv["fds"], rcv["from_pid"], rcv["from_fds"], rcv["cloexec"]) == (
        [plugged["fd"]], orch, [sent["fd"]], False)
    assert index(lines, snd) < index(lines, rcv)
    assert not [x for x in events_of(lines, "tap_gone") if x["ifname"] in o.names]

    ra, rb, ro = row(table, vm, afd), row(table, vm, plugged["fd"]), row(table, orch,
                                                                          sent["fd"])
    assert (ra["how"], ra["from_pid"], ra["creator_pid"]) == ("inherited", orch, orch)
    assert (rb["how"], rb["from_pid"], rb["creator_pid"]) == ("received", orch, orch)
    assert (ro["how"], ro["creator_pid"]) == ("opened", orch)
    assert ra["comm"] == rb["comm"] == "qemu-fake"
    assert (ra["cloexec"], rb["cloexec"]) == (adopted["cloexec"], plugged["cloexec"]) == (
        False, False)
    assert rb["file"] == ro["file"] != ra["file"]
    assert rb["shared_with"] == [[orch, sent["fd"]]] and ro["shared_with"] == [
        [vm, plugged["fd"]]]
    assert "vnet_hdr" in ra["flags"]
