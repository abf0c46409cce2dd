"""Real programs that make a tun/tap to outlive them, and `taptrace` on what they leave.

`tunctl -t NAME -u nobody` (Debian package uml-utilities) and `openvpn --mktun --dev
NAME` (package openvpn; only --mktun/--rmtun here: no tunnel, no network) each open
/dev/net/tun, TUNSETIFF, TUNSETPERSIST 1 (tunctl also TUNSETOWNER/TUNSETGROUP) and
exit. Ground truth: /sys/class/net/NAME (tun_flags, owner, group; -1 = none) and /proc
(no fd of any process is attached to NAME: fdinfo `iff:`). Also here: `watch -i` shows
the open line of a matching tap, and SIGINT ends `watch` at once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import tapkit
from conftest import ROOT, Tracer, need_root, spawned
from test_audit_host import LiveAudit, audit_json, taptrace

TUNCTL = shutil.which("tunctl")
OPENVPN = shutil.which("openvpn") or shutil.which("openvpn", path="/usr/sbin:/sbin")
need_tunctl = pytest.mark.skipif(TUNCTL is None, reason="tunctl is not installed "
                                 "(apt-get install uml-utilities)")
need_openvpn = pytest.mark.skipif(OPENVPN is None, reason="openvpn is not installed "
                                  "(apt-get install openvpn)")
NOBODY = 65534


def sys_facts(name: str) -> dict:
    """What the kernel says of NAME: kind, persist, owner and group (None for -1)."""
    def read(attr: str) -> str:
        with open(f"/sys/class/net/{name}/{attr}") as f:
            return f.read().strip()
    flags = int(read("tun_flags"), 16)
    return {"kind": "tap" if flags & tapkit.IFF_TAP else "tun",
            "persist": bool(flags & tapkit.IFF_PERSIST),
            "owner": None if read("owner") == "-1" else int(read("owner")),
            "group": None if read("group") == "-1" else int(read("group"))}


def holders(name: str) -> set[tuple[int, int]]:
    """Every (pid, fd) on the machine attached to NAME, from /proc/PID/fdinfo."""
    out = set()
    for pid in (int(p) for p in os.listdir("/proc") if p.isdigit()):
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            if tapkit.fdinfo_iff(pid, int(fd)) == name:
                out.add((pid, int(fd)))
    return out


def run(*argv: str) -> subprocess.CompletedProcess:
    """A client, run for real; it must succeed."""
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, (argv, out.stdout, out.stderr)
    return out


def mktun(name: str, *extra: str) -> None:
    run(OPENVPN, "--mktun", "--dev", name, "--dev-type", "tun", *extra)


@pytest.fixture
def made():
    """Names of tuns/taps the clients made; deleted afterwards whatever happens."""
    need_root()
    names: list[str] = []
    yield names
    for name in names:
        tapkit.delete_link(name)


def ls_json(glob: str) -> dict:
    out = taptrace("ls", "--json", "-i", glob)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


# ---- tunctl ---------------------------------------------------------------------

@need_tunctl
def test_tunctl_owned_tap_is_kept_on_purpose_not_an_orphan_unless_strict(made):
    name = tapkit.unique_name("tth")
    made.append(name)
    run(TUNCTL, "-t", name, "-u", "nobody")
    assert sys_facts(name) == {"kind": "tap", "persist": True, "owner": NOBODY, "group": None}
    assert holders(name) == set()

    [tap] = ls_json(name)["taps"]
    assert (tap["kind"], tap["persist"], tap["files"], tap["owner"], tap["group"]) == (
        "tap", True, 0, NOBODY, None)
    human = taptrace("ls", "-i", name).stdout
    assert f"Taps with no holder:\n  {name}: tap " in human
    assert f"{name}: tap tap,persist,no_pi uid={NOBODY}(nobody) — no process holds it" in human

    rc, found, summary = audit_json("-i", name)
    assert (rc, found, summary["kept_on_purpose"]) == (0, [], [name])
    out = taptrace("audit", "-i", name)
    assert out.returncode == 0
    assert out.stdout == (f"# audit: no findings; 1 tap, 0 fds checked; kept on purpose, "
                          f"not counted (--strict): {name}\n")

    rc, found, summary = audit_json("-i", name, "--strict")
    assert rc == 1 and summary["kept_on_purpose"] == []
    assert [(f["kind"], f["ifname"], f["owner"], f["group"], f["kept_on_purpose"])
            for f in found] == [("orphan", name, NOBODY, None, ["owner"])]
    assert found[0]["message"] == (f"{name}: persistent tap, no process holds it "
                                   f"(kept on purpose: owner uid {NOBODY})")

    run(TUNCTL, "-d", name)                         # tunctl takes it away again
    assert not os.path.exists(f"/sys/class/net/{name}")
    assert audit_json("-i", name, "--strict")[0] == 0


@need_tunctl
def test_a_tunctl_tap_in_use_shows_its_owner_and_group_in_rows(made):
    me = os.getpid()
    name = tapkit.unique_name("tth")
    made.append(name)
    run(TUNCTL, "-t", name, "-u", "nobody", "-g", "100")
    facts = sys_facts(name)
    assert (facts["owner"], facts["group"]) == (NOBODY, 100)
    fd, _ = tapkit.create_tap(name)                 # attach to it, as its user would
    try:
        assert holders(name) == {(me, fd)}
        table = ls_json(name)
        assert [(r["pid"], r["fd"], r["owner"], r["group"]) for r in table["rows"]] == [
            (me, fd, NOBODY, 100)]
        lines = taptrace("ls", "-i", name).stdout.splitlines()
        assert "OWNER" in lines[0].split()
        mine = next(ln for ln in lines if ln.startswith(f"{me} "))
        assert f"uid={NOBODY}(nobody) gid=100" in mine
        assert audit_json("-i", name, "--strict")[0] == 0     # held: nothing to say
        who = taptrace("who", name).stdout.splitlines()[0]
        assert who.startswith(f"{name}: tap tap,persist,no_pi uid={NOBODY}(nobody) gid=100")
    finally:
        os.close(fd)


@need_tunctl
def test_watch_sees_tunctl_set_the_owner_and_the_table_keeps_it(made, tracer):
    name = tapkit.unique_name("tth")
    made.append(name)
    t = tracer("-i", name)
    made_by = subprocess.Popen([TUNCTL, "-t", name, "-u", "nobody", "-g", "100"],
                               stdout=subprocess.DEVNULL)
    made_by.wait(timeout=60)
    assert made_by.returncode == 0
    t.wait_for(lambda o: o["type"] == "tunsetgroup" and o["pid"] == made_by.pid)
    lines, table = t.stop()
    assert sys_facts(name) == {"kind": "tap", "persist": True, "owner": NOBODY, "group": 100}
    mine = [o for o in lines if o.get("pid") == made_by.pid]
    assert [o["type"] for o in mine] == ["open", "tunsetiff", "tunsetpersist", "tunsetowner",
                                         "tunsetgroup", "exit"]
    assert (mine[3]["uid"], mine[4]["gid"]) == (NOBODY, 100)
    [tap] = [x for x in table["taps"] if x["ifname"] == name]
    assert (tap["owner"], tap["group"], tap["files"], tap["persist"]) == (NOBODY, 100, 0, True)
    assert tap["created_by"] == tap["persist_by"] == made_by.pid


# ---- openvpn --mktun ------------------------------------------------------------

@need_openvpn
def test_openvpn_mktun_seen_live_is_kept_on_purpose(made):
    name = tapkit.unique_name("tth")
    made.append(name)
    with spawned(LiveAudit) as start:
        audit = start("-i", name)
        mktun(name)
        assert sys_facts(name) == {"kind": "tun", "persist": True, "owner": None, "group": None}
        assert holders(name) == set()
        rc, found = audit.finish()
    assert (rc, found, audit.lines[-1]["kept_on_purpose"]) == (0, [], [name])

    # A snapshot cannot see who made it persistent, and it has no owner: an orphan,
    # and a tun is called a tun.
    rc, found, summary = audit_json("-i", name)
    assert rc == 1 and summary["kept_on_purpose"] == []
    assert [(f["kind"], f["persist"], f["kept_on_purpose"]) for f in found] == [
        ("orphan", True, [])]
    assert found[0]["message"] == f"{name}: persistent tun, no process holds it"
    human = taptrace("ls", "-i", name).stdout
    assert f"Tuns with no holder:\n  {name}: tun " in human
    run(OPENVPN, "--rmtun", "--dev", name, "--dev-type", "tun")
    assert not os.path.exists(f"/sys/class/net/{name}")


@need_openvpn
def test_openvpn_mktun_with_a_user_and_group_is_kept_on_purpose_from_a_snapshot(made):
    name = tapkit.unique_name("tth")
    made.append(name)
    mktun(name, "--user", "nobody", "--group", "nogroup")
    assert sys_facts(name) == {"kind": "tun", "persist": True, "owner": NOBODY,
                               "group": NOBODY}
    assert holders(name) == set()
    rc, found, summary = audit_json("-i", name)
    assert (rc, found, summary["kept_on_purpose"]) == (0, [], [name])
    [f] = audit_json("-i", name, "--strict")[1]
    assert f["message"] == (f"{name}: persistent tun, no process holds it (kept on purpose: "
                            f"owner uid {NOBODY}, group gid {NOBODY})")
    [tap] = ls_json(name)["taps"]
    assert (tap["kind"], tap["owner"], tap["group"]) == ("tun", NOBODY, NOBODY)


# ---- watch -i: the open line -----------------------------------------------------

@need_tunctl
def test_watch_i_shows_the_open_line_of_a_matching_tap_and_nothing_of_others(made, tracer):
    stem = tapkit.unique_name("tth")[:10]
    name, other = stem + "a", stem + "b"
    made.extend([name, other])
    t = tracer("-i", stem + "a*")
    kids = []
    for n in (other, name):
        p = subprocess.Popen([TUNCTL, "-t", n], stdout=subprocess.DEVNULL)
        p.wait(timeout=60)
        assert p.returncode == 0
        kids.append(p.pid)
    t.wait_for(lambda o: o["type"] == "exit" and o["pid"] == kids[1])
    lines, _table = t.stop()
    assert sys_facts(name)["persist"] and sys_facts(other)["persist"]
    assert [o for o in lines if o.get("pid") == kids[0]] == []        # not matching
    mine = [o for o in lines if o.get("pid") == kids[1]]
    assert [o["type"] for o in mine][:2] == ["open", "tunsetiff"]
    opened, setiff = mine[:2]
    assert (opened["fd"], opened["path"], opened["ifname"]) == (setiff["fd"], "/dev/net/tun",
                                                                 name)
    assert opened["time"] <= setiff["time"]


@need_tunctl
def test_watch_i_human_lines_show_the_open(made):
    name = tapkit.unique_name("tth")
    made.append(name)
    need_root()
    proc = subprocess.Popen([sys.executable, "-m", "tracer", "watch", "-i", name],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout.readline().startswith("# tracing")
        proc.stdout.readline()                                        # the header
        kid = subprocess.Popen([TUNCTL, "-t", name], stdout=subprocess.DEVNULL)
        assert kid.wait(timeout=60) == 0
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        out = proc.communicate(timeout=60)[0].splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # TIME PID COMM EVENT FD IFNAME DETAIL
    mine = [ln.split() for ln in out if ln[:1].isdigit() and ln.split()[1] == str(kid.pid)]
    assert [(w[3], w[4], w[5]) for w in mine][:3] == [
        ("open", "3", name), ("tunsetiff", "3", name), ("tunsetpersist", "3", name)], out


# ---- SIGINT ------------------------------------------------------------------------

def _helpers_left(marker: str) -> list[int]:
    """Processes whose command line holds `marker` (a tracer or its release helper)."""
    out = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read().split(b"\0"):
                    out.append(int(pid))
        except OSError:
            continue
    return out


def test_sigint_ends_watch_with_its_table_and_leaves_no_process():
    """SIGINT ends `watch`: the probes are released (in parallel: see Session.close),
    the final table is the last line, and no process of the run is left. How long it
    takes is a figure for the benchmarks, not for a test."""
    need_root()
    marker = tapkit.unique_name("tth") + "*"         # names this run's processes
    with spawned(Tracer) as start:
        t = start("-i", marker)
        time.sleep(0.3)
        t.proc.send_signal(signal.SIGINT)
        t.proc.wait(timeout=30)
        t._reader.join(timeout=30)
        assert not t._reader.is_alive()
        assert t.proc.returncode == 0
        assert _helpers_left(marker) == []
        lines = []
        while not t._q.empty():
            obj = t._q.get()
            if obj is not None:
                lines.append(obj)
        assert lines[-1]["type"] == "table"
