"""The command line on the real kernel: ls against /proc truth, errors, pipes, names."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import tapkit
from conftest import ROOT, events_of, need_root, table_triples

TAPTRACE = [sys.executable, "-m", "tracer"]


def run(*args, user=None, **kw):
    cmd = [*TAPTRACE, *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", *cmd]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False, **kw)


@pytest.fixture
def held_taps():
    """Two taps held by this process and a forked child: one shared by dup+fork."""
    need_root()
    a_name, b_name = tapkit.unique_name(), tapkit.unique_name()
    a, a_name = tapkit.create_tap(a_name)
    a2 = os.dup(a)
    b, b_name = tapkit.create_tap(b_name, cloexec=False)
    try:
        with tapkit.held_by_child() as child:
            yield {"pids": {os.getpid(), child}, "a": (a, a2, a_name), "b": (b, b_name),
                   "child": child}
    finally:
        for fd in (a, a2, b):
            os.close(fd)
        tapkit.delete_link(a_name)
        tapkit.delete_link(b_name)


def test_ls_json_equals_proc_truth_with_sharing(held_taps):
    out = run("ls", "--json")
    assert out.returncode == 0, out.stderr
    table = json.loads(out.stdout)
    assert table["type"] == "table"
    pids = held_taps["pids"]
    assert table_triples(table, pids) == tapkit.truth(pids)
    a, a2, _ = held_taps["a"]
    me, child = os.getpid(), held_taps["child"]
    row = next(r for r in table["rows"] if r["pid"] == me and r["fd"] == a)
    assert sorted(map(tuple, row["shared_with"])) == sorted(
        [(me, a2), (child, a), (child, a2)])
    assert row["cloexec"] is True and row["how"] == "snapshot"
    b, _ = held_taps["b"]
    rowb = next(r for r in table["rows"] if r["pid"] == me and r["fd"] == b)
    assert rowb["cloexec"] is False
    assert rowb["creator_pid"] is None            # created before anything traced it


def test_ls_lists_a_persistent_tap_with_no_holder():
    need_root()
    fd, name = tapkit.create_tap(tapkit.unique_name())
    try:
        tapkit.set_persist(fd, True)
        os.close(fd)
        table = json.loads(run("ls", "--json").stdout)
        tap = next(t for t in table["taps"] if t["ifname"] == name)
        assert tap["persist"] is True and tap["files"] == 0
        human = run("ls").stdout
        assert "Taps with no holder:" in human and name in human
    finally:
        tapkit.delete_link(name)


def test_control_bytes_in_a_tap_name_are_escaped_for_people_kept_in_json():
    need_root()
    name = "t\x1b[1m" + tapkit.unique_name("")[:6]
    fd, got = tapkit.create_tap(name)
    try:
        assert got == name                        # the kernel accepts ESC in names
        human = run("ls", "-i", "t*").stdout
        assert "\x1b" not in human and "t\\x1b[1m" in human
        rows = json.loads(run("ls", "--json").stdout)["rows"]
        assert any(r["ifname"] == name and r["pid"] == os.getpid() for r in rows)
    finally:
        os.close(fd)


def test_not_root_watch_says_what_is_needed_and_ls_still_works():
    need_root()
    out = run("watch", user="nobody")
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "root" in out.stderr and "taptrace ls" in out.stderr
    assert "Traceback" not in out.stderr
    assert run("ls", user="nobody").returncode == 0


@pytest.mark.parametrize("args", [["watch", "--bogus"], ["watch", "--duration", "-1"],
                                  ["watch", "-p", "abc"], ["who"], ["nosuch"]])
def test_bad_arguments_are_usage_errors(args):
    out = run(*args)
    assert out.returncode == 2, (args, out.stderr)
    assert "Traceback" not in out.stderr and "Error" in out.stderr


def test_watch_into_a_closed_pipe_leaves_quietly():
    need_root()
    p = subprocess.run(f"{sys.executable} -m tracer watch --duration 3 | head -1",
                       shell=True, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False)
    assert p.stdout.startswith("# tracing")
    assert p.stderr == ""


def test_sigterm_ends_watch_with_the_table(tracer):
    t = tracer()
    fd, name = tapkit.create_tap(tapkit.unique_name())
    try:
        t.wait_for(lambda o: o["type"] == "tunsetiff" and o.get("ifname") == name)
        _, last = t.stop(settle=0, sig=signal.SIGTERM)
        assert (os.getpid(), fd, name) in table_triples(last, [os.getpid()])
    finally:
        os.close(fd)


def test_sigusr1_prints_the_table_so_far_and_watch_goes_on(tracer):
    """tests/fuzz asks for the table this way at its quiet checkpoints: every record
    already in the buffer is applied first, and the trace goes on."""
    t = tracer()
    fd, name = tapkit.create_tap(tapkit.unique_name("tfu"))
    try:
        t.proc.send_signal(signal.SIGUSR1)      # no waiting for the tunsetiff line
        now = t.wait_for(lambda o: o["type"] == "table")
        assert (os.getpid(), fd, name) in table_triples(now, [os.getpid()])
        os.close(fd)
        fd = -1
        t.wait_for(lambda o: o["type"] == "tap_gone" and o.get("ifname") == name)
        _, last = t.stop(settle=0)
        assert last is not now and not table_triples(last, [os.getpid()])
    finally:
        if fd >= 0:
            os.close(fd)
        tapkit.delete_link(name)


@pytest.mark.smoke
def test_demo_runs_and_shows_the_handoff():
    need_root()
    out = run("demo", "--json")
    assert out.returncode == 0, out.stderr
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert lines[0]["type"] == "ready" and lines[-1]["type"] == "table"
    # the demo's "QEMU" probes a pipe with TUNGETIFF: ENOTTY (a failed probe)
    assert events_of(lines, "tungetiff", error="ENOTTY")
    assert events_of(lines, "tungetiff", error=None)
    assert events_of(lines, "scm_recv")
    assert len(events_of(lines, "tap_gone")) == 3
    assert lines[-1]["rows"] == []


def test_unusable_headers_are_one_line_saying_what_to_do():
    need_root()
    out = run("watch", "--duration", "1", env={**os.environ, "BCC_KERNEL_SOURCE": "/nonexistent"})
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.count("\n") == 1
    assert "could not compile" in out.stderr and "BCC_KERNEL_SOURCE" in out.stderr
