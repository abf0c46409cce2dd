"""Taps in other network namespaces, with the real slirp4netns.

slirp4netns makes its tap inside a container's namespace: a child setns()es there,
opens /dev/net/tun, does TUNSETIFF, sends the fd to its parent over SCM_RIGHTS and
exits; the parent (in the host's namespace) holds it. A tap's name is unique only
inside its namespace, so the host may have a `tap0` too. Ground truth: fdinfo
`iff:` for the holder's fds, TUNGETDEVNETNS on a pidfd_getfd copy for the namespace
of each (tests/tapkit.py), and iproute2 inside the namespace (`ip -n NS -d link`)
for the device's flags and MAC.

Each test makes its own `ip netns` namespace and unique names, and removes them."""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time

import pytest
import tapkit
from conftest import ROOT, events_of, need_root

SLIRP = shutil.which("slirp4netns")
needs_slirp = pytest.mark.skipif(SLIRP is None,
                                 reason="slirp4netns is not installed (scripts/setup.sh)")


def taptrace(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tracer", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)


def taptrace_json(*args: str) -> dict:
    r = taptrace(*args, "--json")
    assert r.returncode in (0, 1), r.stderr
    return json.loads(r.stdout.splitlines()[-1])


class Slirp:
    """A real slirp4netns giving namespace NS a tap IFNAME (no traffic is sent)."""

    def __init__(self, netns: str, ifname: str) -> None:
        r, w = os.pipe()
        self.proc = subprocess.Popen(
            [SLIRP, "--netns-type=path", f"--ready-fd={w}", "--disable-host-loopback",
             f"/run/netns/{netns}", ifname],
            pass_fds=(w,), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            start_new_session=True)
        os.close(w)
        try:
            ready, _, _ = select.select([r], [], [], 15)
            said = os.read(r, 1) if ready else b""
        finally:
            os.close(r)
        if said != b"1":
            self.stop()
            raise AssertionError(f"slirp4netns did not get ready: {self.proc.stderr.read()}")
        self.pid = self.proc.pid

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()


def host_tap_left_behind(name: str) -> None:
    """A persistent tap NAME in the host's namespace, pi on, whose maker exits (an
    orphan): made by a traced process, not by this one."""
    subprocess.run([sys.executable, "-c", (
        "import sys, os; sys.path.insert(0, sys.argv[2]); import tapkit; "
        "fd, _ = tapkit.create_tap(sys.argv[1], tapkit.IFF_TAP); "
        "tapkit.set_persist(fd, True)"), name, str(ROOT / "tests")], check=True)


@pytest.fixture
def names():
    """Namespaces and host links a test makes, removed at the end."""
    need_root()
    made: dict[str, list[str]] = {"netns": [], "links": []}
    yield made
    for n in made["links"]:
        tapkit.delete_link(n)
    for n in made["netns"]:
        tapkit.delete_netns(n)


@needs_slirp
def test_a_slirp4netns_tap_is_in_the_container_namespace(tracer, names):
    ns = tapkit.add_netns("ttn")
    names["netns"].append(ns)
    name = tapkit.unique_name("tts")
    ns_ino = tapkit.netns_inode(f"/run/netns/{ns}")
    own = tapkit.own_netns()
    t = tracer()
    slirp = Slirp(ns, name)
    try:
        [(pid, fd, ifname, where)] = truth = tapkit.truth_ns([slirp.pid])
        assert (pid, ifname, where) == (slirp.pid, name, ns_ino)   # the kernel's word
        facts = tapkit.link_facts(name, ns)
        assert facts["pi"] is False and tapkit.link_facts(name) is None

        snap = taptrace_json("ls", "-i", name)
        assert snap["own_netns"] == own
        [row] = snap["rows"]
        assert (row["pid"], row["fd"], row["ifname"], row["netns"], row["netns_name"]) == (
            pid, fd, name, ns_ino, ns)
        assert row["flags"] == ["no_pi"]                 # read in its namespace, not ours
        assert row["host_mac"] == facts["mac"]
        [tap] = snap["taps"]
        assert (tap["netns"], tap["netns_name"], tap["files"], tap["persist"]) == (
            ns_ino, ns, 1, False)
        assert "no_pi" in tap["flags"]
        human = taptrace("ls", "-i", name).stdout
        assert "NETNS" in human and ns in human and "no_pi" in human
        assert taptrace_json("ls", "-i", name, "--netns", str(own))["rows"] == []
        assert [r["fd"] for r in taptrace_json("ls", "--netns", ns)["rows"]] == [fd]

        who = taptrace("who", name)
        assert who.returncode == 0 and "gone" not in who.stdout
        assert f"{name} (netns {ns}): tap" in who.stdout
        assert f"host side: {name} (netns {ns}) mac {facts['mac']}" in who.stdout

        lines, table = t.stop()
    finally:
        slirp.stop()
    [made] = events_of(lines, "tunsetiff", ifname=name)
    assert (made["created"], made["netns"], made["netns_name"]) == (True, ns_ino, ns)
    assert made["flags"] == ["tap", "no_pi"]
    [recv] = events_of(lines, "scm_recv", pid=slirp.pid)
    assert recv["ifnames"] == [name] and recv["netns"] == [ns_ino]
    got = {(r["pid"], r["fd"], r["ifname"], r["netns"]) for r in table["rows"]
           if r["pid"] == slirp.pid}
    assert got == truth
    assert [(tp["netns"], tp["files"]) for tp in table["taps"] if tp["ifname"] == name] == [
        (ns_ino, 1)]


@needs_slirp
def test_slirp4netns_beside_a_host_tap_of_the_same_name(tracer, names, tmp_path):
    """Two devices, one name: neither is merged into the other, the orphan is the
    host's, and each one's facts come from its own namespace."""
    ns = tapkit.add_netns("ttn")
    names["netns"].append(ns)
    name = tapkit.unique_name("tts")
    names["links"].append(name)
    ns_ino = tapkit.netns_inode(f"/run/netns/{ns}")
    own = tapkit.own_netns()
    record = tmp_path / "run.jsonl"
    t = tracer("--record", str(record))
    host_tap_left_behind(name)
    slirp = Slirp(ns, name)
    try:
        truth = tapkit.truth_ns([slirp.pid])
        assert {(n, w) for _p, _f, n, w in truth} == {(name, ns_ino)}
        host, inside = tapkit.link_facts(name), tapkit.link_facts(name, ns)
        assert (host["persist"], host["pi"]) == (True, True)
        assert (inside["persist"], inside["pi"]) == (False, False)
        assert host["mac"] != inside["mac"]

        snap = taptrace_json("ls", "-i", name)
        assert sorted((tp["netns"], tp["persist"], tp["files"], tuple(tp["flags"]))
                      for tp in snap["taps"]) == sorted([
            (own, True, 0, ("tap", "persist")), (ns_ino, False, 1, ("tap", "no_pi"))])
        [row] = snap["rows"]
        assert (row["netns"], row["flags"], row["host_mac"]) == (ns_ino, ["no_pi"],
                                                                 inside["mac"])

        who = taptrace("who", name)
        assert f"{name}: tap tap,persist, 0 open file(s)" in who.stdout
        assert f"{name} (netns {ns}): tap tap,no_pi, 1 open file(s)" in who.stdout
        assert f"host side: {name} (netns {ns}) mac {inside['mac']}" in who.stdout
        assert host["mac"] not in who.stdout
        only_host = taptrace("who", name, "--netns", str(own))
        assert only_host.returncode == 0 and "(netns" not in only_host.stdout

        audit = taptrace("audit", "-i", name, "--json")
        findings = [json.loads(x) for x in audit.stdout.splitlines()]
        assert audit.returncode == 1
        assert [(f["kind"], f["ifname"], f.get("netns")) for f in findings
                if f["type"] == "finding"] == [("orphan", name, None)]   # the host's only

        lines, table = t.stop()
    finally:
        slirp.stop()
    made = events_of(lines, "tunsetiff", ifname=name)
    assert sorted((m["created"], m["netns"], tuple(m["flags"])) for m in made) == sorted([
        (True, own, ("tap",)), (True, ns_ino, ("tap", "no_pi"))])
    assert events_of(lines, "tap_gone", ifname=name) == []
    final = sorted((tp["netns"], tp["persist"], tp["files"]) for tp in table["taps"]
                   if tp["ifname"] == name)
    assert final == sorted([(own, True, 0), (ns_ino, False, 1)])
    got = {(r["pid"], r["fd"], r["ifname"], r["netns"]) for r in table["rows"]
           if r["pid"] == slirp.pid}
    assert got == truth
    [row] = [r for r in table["rows"] if r["pid"] == slirp.pid]
    assert row["flags"] == ["no_pi"] and row["host_mac"] == inside["mac"]

    # the recording replays to the same story without the kernel: what was read of
    # each namespace travels in it
    replayed = taptrace("replay", "--json", str(record))
    objs = [json.loads(x) for x in replayed.stdout.splitlines()]
    assert sorted((m["created"], m["netns"]) for m in objs
                  if m["type"] == "tunsetiff" and m["ifname"] == name) == sorted([
        (True, own), (True, ns_ino)])
    assert sorted((tp["netns"], tp["files"]) for tp in objs[-1]["taps"]
                  if tp["ifname"] == name) == sorted([(own, 0), (ns_ino, 1)])


MAKER_LEAVES = """
import ctypes, json, os, socket, sys
sys.path.insert(0, sys.argv[3])
import tapkit

ns_path, name = sys.argv[1], sys.argv[2]
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
child = os.fork()
if child == 0:              # slirp4netns's way: into the namespace, make, send, leave
    ns = os.open(ns_path, os.O_RDONLY)
    if ctypes.CDLL(None, use_errno=True).setns(ns, 0x40000000) != 0:
        os._exit(3)
    fd, _ = tapkit.create_tap(name)
    tapkit.send_fds(a, [fd])
    os.close(fd)
    os._exit(0)
os.waitpid(child, 0)
print(json.dumps({"step": "sent", "child": child}), flush=True)
sys.stdin.readline()        # the receiver takes its time: the maker is long gone
[fd] = tapkit.recv_fds(b, 1)
print(json.dumps({"step": "hold", "pid": os.getpid(), "fd": fd}), flush=True)
sys.stdin.readline()
"""


def test_the_maker_left_and_its_receiver_took_the_tap_later(tracer, names, tmp_path):
    """When the TUNSETIFF's record is read, the fd it was made on is gone (its maker
    sent it and exited while the tracer was stopped) and the receive has not happened
    yet: the tracer holds the record back until the receive's record comes and reads
    the tap's namespace from the receiver's copy. Guessing instead would take the
    host's namesake for it (`created: false`, one tap)."""
    ns = tapkit.add_netns("ttn")
    names["netns"].append(ns)
    name = tapkit.unique_name("tts")
    names["links"].append(name)
    ns_ino = tapkit.netns_inode(f"/run/netns/{ns}")
    script = tmp_path / "maker_leaves.py"
    script.write_text(MAKER_LEAVES)
    t = tracer()
    host_tap_left_behind(name)
    proc = None
    os.kill(t.proc.pid, signal.SIGSTOP)
    try:
        proc = subprocess.Popen([sys.executable, str(script), f"/run/netns/{ns}", name,
                                 str(ROOT / "tests")], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, start_new_session=True)
        sent = json.loads(proc.stdout.readline())
    finally:
        os.kill(t.proc.pid, signal.SIGCONT)
    try:
        time.sleep(0.05)      # the tracer reads the TUNSETIFF with no receive after it
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        said = json.loads(proc.stdout.readline())
        truth = tapkit.truth_ns([said["pid"]])
        assert truth == {(said["pid"], said["fd"], name, ns_ino)}
        lines, table = t.stop()
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
    [made] = events_of(lines, "tunsetiff", pid=sent["child"])
    assert (made["created"], made["netns"], made["netns_name"]) == (True, ns_ino, ns)
    got = {(r["pid"], r["fd"], r["ifname"], r["netns"]) for r in table["rows"]
           if r["pid"] == said["pid"]}
    assert got == truth
    assert sorted((tp["netns"], tp["persist"], tp["files"]) for tp in table["taps"]
                  if tp["ifname"] == name) == sorted([(tapkit.own_netns(), True, 0),
                                                      (ns_ino, False, 1)])


PASTA = shutil.which("pasta")


def _default_route() -> bool:
    return bool(subprocess.run(["ip", "route", "show", "default"], capture_output=True,
                               text=True, check=False).stdout.strip())


@pytest.mark.skipif(PASTA is None, reason="pasta (passt) is not installed (scripts/setup.sh)")
@pytest.mark.skipif(not _default_route(),
                    reason="pasta copies the host's routable interface, and there is none "
                           "(the test guest has only lo)")
def test_pasta_names_its_tap_after_the_host_nic_and_who_tells_them_apart(names):
    """pasta (passt) copies the name of the host's uplink (here eth0) for the tap it
    makes in the namespace. `who NAME` and `ls` find that tap there, with its own MAC,
    and never describe the host's NIC of that name as its host side. No ports are
    forwarded and nothing is sent (-t/-u/-T/-U none)."""
    ns = tapkit.add_netns("ttn")
    names["netns"].append(ns)
    ns_ino = tapkit.netns_inode(f"/run/netns/{ns}")
    proc = subprocess.Popen([PASTA, "-f", "-q", "--runas", "0", "-t", "none", "-u", "none",
                             "-T", "none", "-U", "none", "--no-map-gw", "--netns-only",
                             "--netns", f"/run/netns/{ns}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        truth: set = set()
        deadline = time.monotonic() + 10
        while not truth and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.1)
            truth = tapkit.truth_ns([proc.pid])
        if not truth:
            err = proc.stderr.read() if proc.poll() is not None else ""
            raise AssertionError(f"pasta made no tap: {proc.poll()} {err}")
        [(pid, fd, name, where)] = truth
        assert where == ns_ino
        inside = tapkit.link_facts(name, ns)
        host = subprocess.run(["ip", "-j", "link", "show", "dev", name], capture_output=True,
                              text=True, check=False)
        host_mac = json.loads(host.stdout)[0]["address"] if host.returncode == 0 else None

        who = taptrace("who", name)
        assert who.returncode == 0 and "gone" not in who.stdout
        assert f"{name} (netns {ns}): tap tap,no_pi, 1 open file(s)" in who.stdout
        assert f"host side: {name} (netns {ns}) mac {inside['mac']}" in who.stdout
        if host_mac is not None:          # the host's NIC of that name is not its host side
            assert host_mac not in who.stdout
        rows = taptrace_json("who", name, "--netns", ns)["rows"]
        assert [(r["pid"], r["fd"], r["netns"], r["host_mac"]) for r in rows] == [
            (pid, fd, ns_ino, inside["mac"])]
        assert taptrace_json("who", name, "--netns", str(tapkit.own_netns()))["rows"] == []
    finally:
        with contextlib.suppress(ProcessLookupError):   # it may have failed already
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


OPENED_HERE = """
import ctypes, json, os, sys
sys.path.insert(0, sys.argv[3])
import tapkit

fd = tapkit.open_tun()      # opened in the host's namespace...
ns = os.open(sys.argv[1], os.O_RDONLY)
if ctypes.CDLL(None, use_errno=True).setns(ns, 0x40000000) != 0:
    sys.exit(3)
tapkit.set_iff(fd, sys.argv[2])    # ...TUNSETIFF from inside the container's
print(json.dumps({"pid": os.getpid(), "fd": fd}), flush=True)
sys.stdin.readline()
"""


def test_a_tap_lives_where_its_file_was_opened_not_where_its_process_is(tracer, names,
                                                                        tmp_path):
    """The kernel makes the device in the namespace of the /dev/net/tun file (its
    open), so a process that opens, setns()es and then does TUNSETIFF makes a tap in
    the namespace it left. The tracer asks the fd, not /proc/PID/ns/net."""
    ns = tapkit.add_netns("ttn")
    names["netns"].append(ns)
    name = tapkit.unique_name("tts")
    names["links"].append(name)
    own = tapkit.own_netns()
    script = tmp_path / "opened_here.py"
    script.write_text(OPENED_HERE)
    t = tracer()
    proc = subprocess.Popen([sys.executable, str(script), f"/run/netns/{ns}", name,
                             str(ROOT / "tests")], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, start_new_session=True)
    try:
        said = json.loads(proc.stdout.readline())
        truth = tapkit.truth_ns([said["pid"]])
        assert truth == {(said["pid"], said["fd"], name, own)}
        assert tapkit.netns_inode(f"/proc/{said['pid']}/ns/net") != own
        assert tapkit.link_facts(name) is not None and tapkit.link_facts(name, ns) is None
        lines, table = t.stop()
    finally:
        proc.stdin.close()
        proc.wait(timeout=10)
    [made] = events_of(lines, "tunsetiff", ifname=name)
    assert (made["created"], made["netns"]) == (True, own)
    assert {(r["pid"], r["fd"], r["ifname"], r["netns"]) for r in table["rows"]
            if r["pid"] == said["pid"]} == truth
