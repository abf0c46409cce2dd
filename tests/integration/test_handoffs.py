"""Handoffs the way orchestration scripts do them, plus the tracer's own guarantees:
taps held before it started, lost records, filters, threads, create vs attach."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import tapkit
from conftest import ROOT, events_of, table_triples

ORCHESTRATOR = textwrap.dedent("""
    import os, socket, subprocess, sys
    sys.path.insert(0, {tests!r})
    import tapkit
    first, second = sys.argv[1], sys.argv[2]
    fd, _ = tapkit.create_tap(first)
    parent_sock, child_sock = socket.socketpair()
    vm = subprocess.Popen(
        [sys.executable, "-c", {vm!r}, str(fd), str(child_sock.fileno())],
        pass_fds=[fd, child_sock.fileno()], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True)
    os.close(fd)
    assert vm.stdout.readline().strip() == first
    hot, _ = tapkit.create_tap(second)
    tapkit.send_fds(parent_sock, [hot])
    os.close(hot)
    print("vm", vm.pid, vm.stdout.readline().strip(), flush=True)
    sys.stdin.readline()
    vm.stdin.close()
    vm.wait()
""")

VM = textwrap.dedent("""
    import socket, sys
    sys.path.insert(0, {tests!r})
    import tapkit
    fd, sock = int(sys.argv[1]), socket.socket(fileno=int(sys.argv[2]))
    print(tapkit.get_iff(fd), flush=True)
    got = tapkit.recv_fds(sock, 1)
    print(got[0], tapkit.get_iff(got[0]), flush=True)
    sys.stdin.read()
""")


def test_orchestration_script_pass_fds_then_unix_socket(tracer, tmp_path):
    t = tracer()
    tests = str(ROOT / "tests")
    script = tmp_path / "orchestrate.py"
    script.write_text(ORCHESTRATOR.format(tests=tests, vm=VM.format(tests=tests)))
    first, second = tapkit.unique_name(), tapkit.unique_name()
    orch = subprocess.Popen([sys.executable, str(script), first, second],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        words = orch.stdout.readline().split()
        assert words[0] == "vm", words
        vm, hot_fd = int(words[1]), int(words[2])
        truth = tapkit.truth([orch.pid, vm])
        lines, table = t.stop()
        assert table_triples(table, [orch.pid, vm]) == truth
        assert {n for _, _, n in truth} == {first, second}
        rows = {r["ifname"]: r for r in table["rows"] if r["pid"] == vm}
        assert rows[first]["how"] == "inherited" and rows[first]["creator_pid"] == orch.pid
        assert rows[second]["how"] == "received" and rows[second]["from_pid"] == orch.pid
        assert rows[second]["fd"] == hot_fd and rows[second]["creator_pid"] == orch.pid
        # the lineage the human line shows: created, forked, exec'ed into the VM process
        exec_ev = events_of(lines, "exec", pid=vm)
        assert exec_ev and first in exec_ev[0]["ifnames"].values()
        assert events_of(lines, "fork", pid=orch.pid, child_pid=vm)
        assert events_of(lines, "scm_recv", pid=vm, from_pid=orch.pid, ifnames=[second])
        assert not events_of(lines, "tap_gone")
    finally:
        orch.stdin.write("\n")
        orch.stdin.close()
        orch.wait(timeout=20)
        tapkit.delete_link(first)
        tapkit.delete_link(second)


def test_taps_opened_before_watch_are_in_its_table_with_their_sharing(tracer):
    a, _name = tapkit.create_tap(tapkit.unique_name())
    a2 = os.dup(a)
    me = os.getpid()
    try:
        with tapkit.held_by_child() as child:
            t = tracer()
            assert t.ready["rows"] >= 4
            truth = tapkit.truth([me, child])
            _lines, table = t.stop()
        assert table_triples(table, [me, child]) == truth
        r = next(x for x in table["rows"] if x["pid"] == child and x["fd"] == a2)
        assert r["how"] == "snapshot" and r["creator_pid"] is None
        assert sorted(map(tuple, r["shared_with"])) == sorted([(me, a), (me, a2), (child, a)])
    finally:
        os.close(a)
        os.close(a2)


def test_lost_records_lead_to_a_resync_that_restores_an_exact_table(tracer):
    t = tracer("--buffer-pages", "1")
    fd, _name = tapkit.create_tap(tapkit.unique_name())
    me = os.getpid()
    kept = []
    try:
        for _ in range(4000):                     # far more than one page of records
            os.close(os.dup(fd))
        kept = [os.dup(fd) for _ in range(3)]
        t.wait_for(lambda o: o["type"] == "resync", timeout=10)
        for _ in range(3):                        # after the resync, tracking goes on
            kept.append(os.dup(fd))
        os.close(kept.pop(0))
        truth = tapkit.truth([me])
        lines, table = t.stop()
        lost = events_of(lines, "lost")
        assert lost and lost[0]["count"] > 0
        assert table_triples(table, [me]) == truth
        assert len(truth) == 1 + 5
    finally:
        for k in kept:
            os.close(k)
        os.close(fd)


def test_filters_pid_with_descendants_comm_and_ifname(tracer):
    a_name, b_name = tapkit.unique_name("fa"), tapkit.unique_name("fb")
    t_pid = tracer("-p", str(os.getpid()))
    t_if = tracer("-i", "fa*")
    t_comm = tracer("-c", "nomatch*")
    a, _ = tapkit.create_tap(a_name)
    b, _ = tapkit.create_tap(b_name)
    try:
        with tapkit.held_by_child() as child:
            grandchild_cmd = [sys.executable, "-c", (
                "import sys; sys.path.insert(0, sys.argv[1]);"
                "import tapkit, os; fd, n = tapkit.create_tap(sys.argv[2]);"
                "os.close(fd)"), str(ROOT / "tests"), tapkit.unique_name("fc")]
            subprocess.run(grandchild_cmd, check=True)
            by_pid, _ = t_pid.stop()
            by_if, _ = t_if.stop()
            by_comm, table_comm = t_comm.stop()
    finally:
        os.close(a)
        os.close(b)
    created = {o["ifname"] for o in events_of(by_pid, "tunsetiff")}
    assert {a_name, b_name} <= created and any(n.startswith("fc") for n in created)
    assert events_of(by_pid, "fork", child_pid=child)
    names = {o["ifname"] for o in by_if if o.get("ifname")}
    assert names == {a_name}
    assert [o["type"] for o in by_comm[1:-1]] == [] and table_comm["rows"] == []


def test_a_thread_dups_and_closes_in_the_process_table(tracer):
    t = tracer()
    fd, _name = tapkit.create_tap(tapkit.unique_name())
    me = os.getpid()
    out = {}

    def worker():
        out["dup"] = os.dup(fd)
        os.close(os.dup(fd))

    th = threading.Thread(target=worker, name="tap-worker")
    th.start()
    th.join()
    try:
        truth = tapkit.truth([me])
        lines, table = t.stop()
        assert table_triples(table, [me]) == truth
        dups = events_of(lines, "dup", pid=me, newfd=out["dup"])
        assert dups and dups[0]["tid"] != me
        with open(f"/proc/{me}/comm") as f:
            comm = f.read().strip()
        assert {r["comm"] for r in table["rows"] if r["pid"] == me} == {comm}
    finally:
        os.close(out["dup"])
        os.close(fd)


def test_created_then_attached_then_busy(tracer):
    t = tracer()
    name = tapkit.unique_name()
    fd, _ = tapkit.create_tap(name)
    again = busy = tmpl = None
    try:
        tapkit.set_persist(fd, True)
        os.close(fd)
        again, _ = tapkit.create_tap(name)                 # attach to the persistent tap
        busy = tapkit.open_tun()
        with pytest.raises(OSError) as exc:
            tapkit.set_iff(busy, name)
        assert exc.value.errno == errno.EBUSY
        tmpl = tapkit.open_tun()
        got = tapkit.set_iff(tmpl, "ttq%d")
        lines, table = t.stop()
        me = os.getpid()
        sets = events_of(lines, "tunsetiff", pid=me, ifname=name)
        assert [(s["created"], s["error"]) for s in sets] == [
            (True, None), (False, None), (False, "EBUSY")]
        assert events_of(lines, "tunsetiff", pid=me, ifname=got, created=True)
        assert got.startswith("ttq") and got != "ttq%d"
        assert events_of(lines, "tunsetpersist", pid=me, ifname=name, persist=True)
        assert table_triples(table, [me]) == tapkit.truth([me])
    finally:
        for f in (again, busy, tmpl):
            if f is not None:
                os.close(f)
        tapkit.delete_link(name)
