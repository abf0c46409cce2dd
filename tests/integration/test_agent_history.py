"""`taptrace agent` and `taptrace history` on the real kernel: a real agent process
writes its database while a real `watch --json` traces the same scenario; the
history must say what watch said, `--at` must say what /proc said at that moment,
a SIGKILL in a burst must leave a whole database, and a non-root user must be able
to read a copy."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
import tapkit
from conftest import ROOT, spawned

SETTLE = 0.4          # the tracers' poll (100 ms) and the agent's batch (500 ms) apart


class Agent:
    """A running `taptrace agent --db DB`; ready once its header line is on stderr."""

    def __init__(self, db: Path, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tracer", "agent", "--db", str(db), *args],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self.err: list[str] = []
        self._ready = threading.Event()
        threading.Thread(target=self._pump, daemon=True).start()
        if not self._ready.wait(60):
            self.kill()
            raise AssertionError(f"agent not ready: {self.err}")

    def _pump(self) -> None:
        for line in self.proc.stderr:
            self.err.append(line)
            if line.startswith("# taptrace agent:"):
                self._ready.set()

    def stop(self, sig: int = signal.SIGTERM) -> int:
        self.proc.send_signal(sig)
        return self.proc.wait(timeout=60)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def agent():
    with spawned(Agent) as start:      # start(db, *args); each killed at the end
        yield start


def history(db: Path, *args: str, user: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tracer", "history", "--db", str(db), *args]
    if user is not None:
        pw = pwd.getpwnam(user)
        cmd = ["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}", "--clear-groups",
               *cmd]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=False)


def history_json(db: Path, *args: str, user: str | None = None) -> list[dict]:
    out = history(db, *args, "--json", user=user)
    assert out.returncode == 0, out.stderr
    return [json.loads(line) for line in out.stdout.splitlines()]


def at_rows(db: Path, ifname: str, t: float, user: str | None = None) -> set[tuple]:
    (table,) = history_json(db, ifname, "--at", repr(t), user=user)
    assert table["type"] == "table"
    return {(r["pid"], r["fd"], r["ifname"], r["cloexec"]) for r in table["rows"]}


def proc_truth(pids, ifname: str) -> set[tuple]:
    """(pid, fd, ifname, cloexec) of every fd of `ifname` in those processes, from
    /proc (fdinfo iff:, flags:)."""
    return {(pid, fd, name, tapkit.cloexec_of(pid, fd))
            for pid, fd, name in tapkit.truth(pids) if name == ifname}


def public_events(objs: list[dict], keep) -> list[dict]:
    """The event objects kept by `keep`, in the kernel's order, without what differs
    between two tracer processes: each stamps a record in its own BPF program
    (`ts_ns`, `time`), and a report may go out a poll later in one than in the other
    (an SCM_RIGHTS receive waits for its send), so each list is put in the order of
    its own stamps."""
    out = []
    for o in sorted(objs, key=lambda o: o.get("ts_ns", 0)):
        if o["type"] in ("ready", "table", "finding", "lineage", "agent_stop") or not keep(o):
            continue
        out.append({k: v for k, v in o.items() if k not in ("time", "ts_ns")})
    return out


RECEIVER = r"""
import array, os, socket, sys, time
s = socket.socket(fileno=int(sys.argv[1]))
msg, anc, _f, _a = s.recvmsg(1, socket.CMSG_LEN(4))
fd = array.array("i", anc[0][2][:4])[0]
r, w = os.pipe()
try:
    import fcntl
    fcntl.ioctl(r, 0x800454d2, bytes(40))          # TUNGETIFF on a pipe: ENOTTY
except OSError:
    pass
print(fd, flush=True)
sys.stdin.read()
"""


def test_history_says_what_watch_said_and_at_what_proc_said(agent, tracer, tmp_path):
    """A tap made, forked to a child, passed over SCM_RIGHTS to another program, then
    let go: the agent's history equals `watch --json`, and `history --at` at three
    moments equals the /proc truth taken at those moments, once every holder is gone."""
    db = tmp_path / "h.db"
    a = agent(db, "--audit-every", "0.5")
    name = tapkit.unique_name("tth")
    w = tracer("-i", name)
    me = os.getpid()
    moments: list[tuple[float, set]] = []
    pids = {me}

    def moment() -> None:
        time.sleep(SETTLE)
        t = time.time()
        moments.append((t, proc_truth(pids, name)))
        time.sleep(SETTLE)

    fd, _ = tapkit.create_tap(name)
    try:
        moment()                                            # T1: we hold it (cloexec)
        with tapkit.held_by_child() as child:
            pids.add(child)
            os.set_inheritable(fd, True)                    # close-on-exec cleared
            moment()                                        # T2: we and the child
        parent_sock, child_sock = socket.socketpair()
        recv = subprocess.Popen([sys.executable, "-c", RECEIVER, str(child_sock.fileno())],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                pass_fds=[child_sock.fileno()])
        child_sock.close()
        pids.add(recv.pid)
        tapkit.send_fds(parent_sock, [fd])
        assert recv.stdout.readline().strip().isdigit()
        os.close(fd)
        fd = -1
        moment()                                            # T3: only the receiver
        recv.stdin.close()
        recv.wait(timeout=10)
        parent_sock.close()
    finally:
        if fd >= 0:
            os.close(fd)
    time.sleep(SETTLE)
    watched, _table = w.stop()
    assert a.stop() == 0, a.err

    # every holder is gone: the history still knows
    assert all(truth for _t, truth in moments), moments
    for t, truth in moments:
        assert at_rows(db, name, t) == truth, (t, truth)

    # the same events, in the same order, as watch printed them
    hist = history_json(db, name)
    # `watch -i NAME` holds an open back until its fd has an interface, and then
    # prints it named; history keeps it as it came (unnamed), and gives it with the
    # holding it began
    def named(objs: list[dict]) -> list[dict]:
        return [{**o, "ifname": name} if o["type"] == "open" else o
                for o in public_events(objs, lambda o: True)]
    assert named(hist) == named(watched)
    types = [o["type"] for o in named(hist)]
    assert types[:2] == ["open", "tunsetiff"] and types[-2:] == ["exit", "tap_gone"]
    assert {"fork", "cloexec", "scm_send", "scm_recv", "close"} <= set(types)
    lineage = hist[-1]
    assert lineage["type"] == "lineage"
    # (a fork of this test process, such as a subprocess before its exec, held it too)
    assert pids <= {h["row"]["pid"] for h in lineage["holdings"]}
    assert all(h["until"] is not None for h in lineage["holdings"])
    # (Popen's fork copied our fd, close-on-exec cleared, before its exec closed it)
    got = [h for h in lineage["holdings"] if h["row"]["pid"] == recv.pid]
    assert [h["chain"][-1]["op"] for h in got] == ["fork", "recv"][-len(got):]

    # the receiver's failed TUNGETIFF is a finding of its own, from the live trace
    found = [o for o in history_json(db, "--pid", str(recv.pid)) if o["type"] == "finding"]
    assert [(o["kind"], o["state"]) for o in found] == [("bad_probe", "appeared")]

    # a copy of the file, read by a user who is not root and owns nothing of it
    copy_dir = Path(tempfile_dir())
    try:
        copy = copy_dir / "copy.db"
        shutil.copyfile(db, copy)
        os.chmod(copy, 0o644)
        assert not (copy_dir / "copy.db-wal").exists()     # checkpointed at stop
        for t, truth in moments:
            assert at_rows(copy, name, t, user="nobody") == truth
        text = history(copy, name, user="nobody")
        assert text.returncode == 0 and f"lineage of {name}" in text.stdout, text.stderr
        os.chmod(copy, 0o600)
        denied = history(copy, name, user="nobody")
        assert denied.returncode == 1 and len(denied.stderr.splitlines()) == 1
        assert "Permission denied" in denied.stderr
    finally:
        shutil.rmtree(copy_dir)


def tempfile_dir() -> str:
    import tempfile
    d = tempfile.mkdtemp(prefix="tthist")
    os.chmod(d, 0o755)
    return d


# A tracer that falls behind a burst (here the agent, which does more per report than
# watch; equally a `watch` whose reader is slow) now and then reports an SCM_RIGHTS
# receive of tapchurn's without its sender, or one close fewer, where a prompt
# tracer does not: the session's, not the history's (two plain `watch`, one with a
# slow reader, differ the same way). A burst may differ by that much.
RACE = 4


def bag(objs: list[dict]) -> Counter:
    return Counter(json.dumps(o, sort_keys=True) for o in objs)


def test_sigkill_in_a_burst_leaves_a_whole_database(agent, tracer, tmp_path):
    """tapchurn moves taps in two bursts; the agent is killed (-9) in the middle of
    the second: the database passes integrity_check, holds all of the first burst
    (committed in the pause), and of the second a prefix of what watch saw, in the
    same order: nothing torn, only the batch being gathered lost."""
    churn = tmp_path / "tapchurn"
    subprocess.run(["cc", "-O2", "-o", str(churn), str(ROOT / "bench" / "tapchurn.c")],
                   check=True)
    db = tmp_path / "h.db"
    a = agent(db)
    w = tracer()
    first = subprocess.Popen([str(churn), "moves", "1.5", str(int(600 / tapkit.SLOWDOWN)), "0"],
                             stdout=subprocess.DEVNULL)
    assert first.wait(timeout=30) == 0
    first_pid = first.pid
    time.sleep(2.0)                       # the agent catches up; its batch commits
    second = subprocess.Popen([str(churn), "moves", "3", str(int(600 / tapkit.SLOWDOWN)), "0"],
                              stdout=subprocess.DEVNULL)
    time.sleep(1.0)
    a.proc.kill()
    a.proc.wait()
    second.wait(timeout=30)
    watched, _table = w.stop()
    assert not any(o["type"] == "lost" for o in watched), "watch lost records"

    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    stopped, last_seen = con.execute("SELECT stopped, last_seen FROM runs").fetchone()
    con.close()
    assert stopped is None                     # killed: its intervals stay open
    everything = history_json(db)
    assert not any(o["type"] == "lost" for o in everything), "the agent lost records"
    for pid, whole in ((first_pid, True), (second.pid, False)):
        keep = (lambda o, pid=pid: o.get("pid") == pid)
        got = bag(public_events(history_json(db, "--pid", str(pid)), keep))
        want = bag(public_events(watched, keep))
        assert want.total() > 1000
        if whole:
            assert (got - want).total() + (want - got).total() <= RACE, (got - want, want - got)
        else:
            assert 0 < got.total() < want.total()
            assert (got - want).total() <= RACE, got - want      # nothing torn or made up
    assert last_seen >= max(o["time"] for o in everything if o["type"] != "ready") - 1.0


def test_agent_refuses_a_planted_symlink_and_trims_by_age_and_size(agent, tmp_path):
    target = tmp_path / "elsewhere"
    link = tmp_path / "h.db"
    link.symlink_to(target)
    out = subprocess.run([sys.executable, "-m", "tracer", "agent", "--db", str(link)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"Error: cannot open {link}: a symbolic link (not followed)"]
    assert not target.exists()

    # not root: the missing privilege is said before any file is made
    open_dir = Path(tempfile_dir())
    try:
        pw = pwd.getpwnam("nobody")
        out = subprocess.run(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}",
                              "--clear-groups", sys.executable, "-m", "tracer", "agent",
                              "--db", str(open_dir / "h.db")],
                             cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode == 1 and "needs root" in out.stderr, out.stderr
        assert len(out.stderr.splitlines()) == 1 and os.listdir(open_dir) == []
    finally:
        shutil.rmtree(open_dir)

    # a database with history older than --keep: the agent deletes it as it starts
    sys.path.insert(0, str(ROOT))
    from tracer.history_store import HistoryStore, Retention
    db = tmp_path / "fresh" / "h.db"
    store = HistoryStore(str(db), Retention(None, None))
    old = time.time() - 3 * 86400
    store.put("run", (1, old, old, 1, "h", "tracepoint", None, "0"))
    for i in range(100):
        store.put("event", (i + 1, 1, old + i, "close", 1, "tt0", None, "{}"))
    recent = time.time() - 3600                # and 20,000 of the last hour: 6 MB
    for i in range(20000):
        store.put("event", (i + 101, 1, recent + i * 0.1, "close", 1, "tt0", None,
                            "{" + " " * 250 + "}"))
    store.close()
    assert oct(db.stat().st_mode & 0o777) == "0o600"
    assert oct(db.parent.stat().st_mode & 0o777) == "0o700"
    assert db.stat().st_size > 5 << 20
    a = agent(db, "--keep", "2d", "--max-size", "1M")
    time.sleep(1.0)                  # its first batch, then retention
    assert a.stop() == 0
    assert db.stat().st_size <= 1 << 20                    # the file itself shrank
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert con.execute("SELECT count(*) FROM events WHERE time < ?",
                       (time.time() - 86400,)).fetchone() == (0,)       # by age
    kept = con.execute("SELECT count(*) FROM events WHERE time < ?",
                       (time.time() - 60,)).fetchone()[0]
    assert 0 < kept < 20000                                             # by size: oldest
    assert con.execute("SELECT max(time) FROM events WHERE time < ?",
                       (time.time() - 60,)).fetchone()[0] == recent + 19999 * 0.1
    assert {r[0] for r in con.execute("SELECT type FROM events WHERE time > ?",
                                      (time.time() - 60,))} >= {"ready", "agent_stop"}
    con.close()


QEMU = shutil.which("qemu-system-x86_64")


@pytest.mark.skipif(QEMU is None, reason="qemu-system-x86 is not installed")
def test_a_vm_its_leak_and_history_while_the_agent_writes(agent, tmp_path):
    """QEMU given a tap by fd (-netdev tap,fd=N) while this test keeps its own copy: a
    leak, which `history --vm` shows while the agent runs, then cleared when the copy
    is closed; after QEMU is gone, `--at` says who held it at each moment, as /proc
    said then, with the VM's name and NIC."""
    db = tmp_path / "h.db"
    a = agent(db, "--audit-every", "0.3")
    vm = tapkit.unique_name("ttvm")
    name = tapkit.unique_name("ttq")
    fd, name = tapkit.create_tap(name, tapkit.IFF_TAP | tapkit.IFF_NO_PI | tapkit.IFF_VNET_HDR)
    qemu = subprocess.Popen(
        [QEMU, "-machine", "pc", "-accel", "tcg", "-S", "-nodefaults", "-display", "none",
         "-monitor", "none", "-serial", "none", "-name", f"guest={vm}",
         "-netdev", f"tap,fd={fd},id=hostnet0",
         "-device", "virtio-net-pci,netdev=hostnet0,id=net0,mac=52:54:00:12:34:56"],
        pass_fds=[fd])
    pids = [os.getpid(), qemu.pid]
    moments: list[tuple[float, set]] = []

    def moment() -> None:
        time.sleep(SETTLE)
        moments.append((time.time(), proc_truth(pids, name)))
        time.sleep(SETTLE)

    def leak(state: str) -> dict:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            for o in history_json(db, "--vm", vm):       # read while the agent writes
                if o["type"] == "finding" and o["kind"] == "leak" and o["state"] == state:
                    return o
            time.sleep(0.3)
        raise AssertionError(f"no leak {state} in the history")

    try:
        deadline = time.monotonic() + 20
        while (qemu.pid, fd, name) not in tapkit.truth([qemu.pid]):
            assert time.monotonic() < deadline and qemu.poll() is None
            time.sleep(0.1)
        moment()                                           # T1: the test and QEMU
        found = leak("appeared")
        assert (found["pid"], found["ifname"]) == (os.getpid(), name)
        os.close(fd)
        fd = -1
        moment()                                           # T2: QEMU alone
        leak("cleared")
        qemu.kill()
        qemu.wait()
        moment()                                           # T3: nobody, the tap gone
    finally:
        if fd >= 0:
            os.close(fd)
        if qemu.poll() is None:
            qemu.kill()
            qemu.wait()
        tapkit.delete_link(name)
    assert a.stop() == 0, a.err

    assert [len(truth) for _t, truth in moments] == [2, 1, 0]
    for t, truth in moments:
        assert at_rows(db, name, t) == truth
    (table,) = history_json(db, "--vm", vm, "--at", repr(moments[0][0]))
    (row,) = table["rows"]                                 # the VM's, not the leaker's
    assert (row["pid"], row["vm"], row["netdev"], row["nic_model"], row["guest_mac"]) == (
        qemu.pid, vm, "hostnet0", "virtio-net-pci", "52:54:00:12:34:56")
    assert row["shared_with"] == [[os.getpid(), row["fd"]]]
    text = history(db, name, "--at", repr(moments[2][0]))
    assert text.returncode == 0 and "(no process holds a tun/tap fd)" in text.stdout
