"""What only the kernel backend sees: an fd on /dev/net/tun is known from its
fd_install, not from its first TUN ioctl, so copies made before that ioctl (dup,
F_DUPFD_CLOEXEC, an SCM_RIGHTS pass) are traced with exact close-on-exec bits and
one open-file identity. Runs where `--backend kernel` loads (the guest matrix with
TAPTRACE_BACKEND=kernel), in either hook mode (TAPTRACE_KERNEL_HOOKS=fentry or
kprobe: the same scenario, the same table, the same /proc truth; conftest checks
the mode loaded is the one asked for); the tracepoint backend cannot pass it by
design (it sees the open at the TUNSETIFF, and none of the copies made before)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import tapkit
from conftest import BACKEND, events_of, need_root, table_triples

pytestmark = [pytest.mark.kernel_backend,
              pytest.mark.skipif(BACKEND != "kernel",
                                 reason="kernel backend only (TAPTRACE_BACKEND=kernel)")]

# open, dup, F_DUPFD_CLOEXEC and a pass to itself over SCM_RIGHTS, all before the
# TUNSETIFF (made on the received copy); then hold until stdin closes
WALK = r"""
import ctypes, fcntl, json, os, socket, sys
sys.path.insert(0, {tests!r})
import tapkit
a = tapkit.open_tun(cloexec=True)
b = ctypes.CDLL(None, use_errno=True).dup(a)   # dup(2) itself: os.dup is F_DUPFD_CLOEXEC
c = fcntl.fcntl(a, fcntl.F_DUPFD_CLOEXEC, 20)
s1, s2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
tapkit.send_fds(s1, [a])
(d,) = tapkit.recv_fds(s2, 1)
tapkit.set_iff(d, {name!r})
print(json.dumps({{"pid": os.getpid(), "a": a, "b": b, "c": c, "d": d}}), flush=True)
sys.stdin.read()
"""


@pytest.mark.smoke
def test_copies_made_before_the_first_tun_ioctl_are_traced_exactly(tracer):
    need_root()
    t = tracer()
    name = tapkit.unique_name("tk")
    code = WALK.format(tests=str(tapkit.__file__).rsplit("/", 1)[0], name=name)
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        got = json.loads(proc.stdout.readline())
        pid, a, b, c, d = got["pid"], got["a"], got["b"], got["c"], got["d"]
        t.wait_for(lambda o: o["type"] == "tunsetiff" and o["pid"] == pid)
        truth = tapkit.truth([pid])
        cloexec = {fd: tapkit.cloexec_of(pid, fd) for fd in (a, b, c, d)}
        lines, table = t.stop()
    finally:
        proc.stdin.close()
        proc.wait(timeout=30)
        tapkit.delete_link(name)
    (op,) = events_of(lines, "open", pid=pid)
    assert (op["fd"], op["cloexec"], op["path"]) == (a, True, "/dev/net/tun")
    dups = [(o["fd"], o["newfd"], o["how"], o["cloexec"]) for o in events_of(lines, "dup",
                                                                           pid=pid)]
    assert dups == [(a, b, "dup", False), (a, c, "F_DUPFD_CLOEXEC", True)]
    (rcv,) = events_of(lines, "scm_recv", pid=pid)
    assert (rcv["fds"], rcv["from_pid"], rcv["from_fds"]) == ([d], pid, [a])
    # the open came before the TUNSETIFF that named it, and every copy is that one file
    assert lines.index(op) < lines.index(events_of(lines, "tunsetiff", pid=pid)[0])
    assert table_triples(table, [pid]) == truth == {(pid, fd, name) for fd in (a, b, c, d)}
    rows = {r["fd"]: r for r in table["rows"] if r["pid"] == pid}
    assert len({rows[fd]["file"] for fd in (a, b, c, d)}) == 1
    assert {fd: rows[fd]["cloexec"] for fd in (a, b, c, d)} == cloexec == {
        a: True, b: False, c: True, d: False}


PROBE_A_PIPE = r"""
import fcntl, json, os, sys
sys.path.insert(0, {tests!r})
import tapkit
r, w = os.pipe()
try:
    fcntl.ioctl(r, tapkit.TUNGETIFF, bytes(40))
except OSError as exc:
    print(json.dumps({{"pid": os.getpid(), "fd": r, "errno": exc.errno}}), flush=True)
"""


@pytest.mark.smoke
def test_a_tungetiff_on_a_pipe_is_seen_only_when_asked(tracer):
    """Every ioctl on the machine pays for the hook that sees a TUN ioctl on an fd
    that is not a tun/tap fd (security_file_ioctl), so the kernel backend hooks it only
    for --bad-ioctls (and audit, demo); then the failed probe is shown as the
    tracepoint backend shows it, with the errno the process got."""
    need_root()
    code = PROBE_A_PIPE.format(tests=str(tapkit.__file__).rsplit("/", 1)[0])
    seen = {}
    for asked in (False, True):
        t = tracer(*(["--bad-ioctls"] if asked else []))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60, check=True)
        got = json.loads(out.stdout)
        assert got["errno"] == 25                        # ENOTTY, as the kernel answered
        if asked:
            t.wait_for(lambda o, p=got["pid"]: o["type"] == "tungetiff" and o["pid"] == p)
        lines, _table = t.stop()
        seen[asked] = events_of(lines, "tungetiff", pid=got["pid"])
    assert seen[False] == []
    (g,) = seen[True]
    assert (g["fd"], g["ret"], g["error"], g["ifname"]) == (got["fd"], -25, "ENOTTY", None)
    assert g["message"] == f"fd {got['fd']} is not a tap (ENOTTY)"
