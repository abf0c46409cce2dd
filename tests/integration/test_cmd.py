"""`taptrace watch -- CMD` and `taptrace audit -- CMD` on the real kernel.

Each test runs taptrace as a person would, with a real command: a Python script
that makes taps with TUNSETIFF and hands them to a real QEMU (pass_fds), a daemon
that double-forks with an inherited copy, `ip tuntap`, `id`, `sh`, a unix-socket
server outside the command that makes a tap on request, and `virsh start`.
Ground truth is the kernel's: /proc/PID/fdinfo `iff:` (tapkit.truth) read while
the processes the command left behind still hold their fds.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import tapkit
import test_libvirt
from conftest import ROOT, events_of, need_root, table_triples
from test_libvirt import MAC1, VIRSH, bridge_nic, domain_xml, virsh

TAPTRACE = [sys.executable, "-m", "tracer"]
# the libvirt test's fixtures: libvirtd (started if it is not running), a Host that
# removes what it made
libvirtd, host = test_libvirt.libvirtd, test_libvirt.host
TESTS = str(ROOT / "tests")
QEMU = shutil.which("qemu-system-x86_64")
QEMU_BASE = [QEMU or "qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-S",
             "-nodefaults", "-display", "none", "-monitor", "none", "-serial", "none"]
need_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86 is not installed")


def taptrace(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([*TAPTRACE, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, check=False, **kw)


def json_lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def kill_all(pids) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, TypeError):
            os.kill(pid, signal.SIGKILL)


def pids_in(path: Path) -> list[int]:
    """The pids a scenario wrote down (for cleaning up whatever it left)."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [v for k, v in rec.items() if k in ("qemu", "daemon", "holder", "vm", "script")]


def ancestors(pid: int) -> list[int]:
    out = []
    while pid > 1:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        pid = int(data[data.rindex(b")") + 2:].split()[1])
        out.append(pid)
    return out


# ---- the scenarios (each its own process; they import tapkit by path) ---------------

DAEMON = textwrap.dedent("""
    # A daemon as they are written: fork, setsid, fork again, then exec. Every fd it
    # was given without close-on-exec goes along.
    import os, sys
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():
        os._exit(0)
    null = os.open(os.devnull, os.O_RDWR)
    for n in (0, 1, 2):
        os.dup2(null, n)
    with open(sys.argv[1] + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(sys.argv[1] + ".tmp", sys.argv[1])
    os.execvp("sleep", ["sleep", "600"])
""")

COMMON = textwrap.dedent("""
    import json, os, socket, subprocess, sys, time
    sys.path.insert(0, {tests!r})
    import tapkit
    NULL = subprocess.DEVNULL

    def wait_comm(pid, prefix):
        for _ in range(3000):
            try:
                with open(f"/proc/{{pid}}/comm") as f:
                    if f.read().startswith(prefix):
                        return
            except OSError:
                pass
            time.sleep(0.01)
        raise SystemExit(f"{{pid}} never became {{prefix}}")

    def daemon(pidfile):
        subprocess.run([sys.executable, {daemon!r}, pidfile], close_fds=False, check=True,
                       stdin=NULL, stdout=NULL, stderr=NULL)
        for _ in range(3000):
            if os.path.exists(pidfile):
                break
            time.sleep(0.01)
        pid = int(open(pidfile).read())
        wait_comm(pid, "sleep")
        return pid
""")

# A VM start script: makes a tap, starts QEMU with it (fd=N, pass_fds) and a daemon.
# leaky: the tap fd is inheritable from the start, so the daemon (started with
# close_fds=False, as a shell starts everything) keeps a copy; fixed: close-on-exec,
# opened to QEMU alone by pass_fds.
START_VM = COMMON + textwrap.dedent("""
    name, mode, record = sys.argv[1:4]
    qemu_argv = json.loads(sys.argv[4])
    flags = tapkit.IFF_TAP | tapkit.IFF_NO_PI | tapkit.IFF_VNET_HDR
    fd, name = tapkit.create_tap(name, flags, cloexec=(mode == "fixed"))
    qemu = subprocess.Popen([*qemu_argv, "-netdev", f"tap,fd={{fd}},id=hostnet0",
                             "-device", "virtio-net-pci,netdev=hostnet0"],
                            pass_fds=[fd], stdin=NULL, stdout=NULL, stderr=NULL)
    with open(record, "w") as f:
        json.dump(dict(qemu=qemu.pid), f)
    wait_comm(qemu.pid, "qemu-system")
    pid = daemon(record + ".pid")
    with open(record, "w") as f:
        json.dump(dict(fd=fd, ifname=name, qemu=qemu.pid, daemon=pid, script=os.getpid()), f)
    print("started", name, flush=True)
""")

# A script whose taps outlive it: `a` inherited by a double-forked daemon, `b` sent
# over SCM_RIGHTS to a child that keeps it, `c` made and closed (gone).
TREE = COMMON + textwrap.dedent("""
    name_a, name_b, name_c, record = sys.argv[1:5]
    a, name_a = tapkit.create_tap(name_a, cloexec=False)
    b, name_b = tapkit.create_tap(name_b)
    c, name_c = tapkit.create_tap(name_c)
    os.close(c)
    pid = daemon(record + ".pid")
    os.close(a)
    mine, theirs = socket.socketpair()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import socket, sys, time\\n"
         "s = socket.socket(fileno=int(sys.argv[1]))\\n"
         "_m, fds, _f, _a = socket.recv_fds(s, 16, 4)\\n"
         "s.send(b'got')\\n"
         "time.sleep(600)\\n", str(theirs.fileno())],
        pass_fds=[theirs.fileno()], stdin=NULL, stdout=NULL, stderr=NULL)
    theirs.close()
    tapkit.send_fds(mine, [b])
    assert mine.recv(3) == b"got"
    os.close(b)
    with open(record, "w") as f:
        json.dump(dict(daemon=pid, holder=holder.pid, a=name_a, b=name_b, c=name_c), f)
""")


def write_script(tmp_path: Path, name: str, text: str) -> str:
    daemon = tmp_path / "daemon.py"
    daemon.write_text(DAEMON)
    path = tmp_path / name
    path.write_text(text.format(tests=TESTS, daemon=str(daemon)))
    return str(path)


# ---- audit -- CMD: the CI gate ------------------------------------------------------------

@need_qemu
@pytest.mark.parametrize("mode", ["leaky", "fixed"])
def test_audit_names_the_daemon_that_kept_a_copy_and_passes_the_fixed_script(tmp_path, mode):
    need_root()
    script = write_script(tmp_path, "start-vm.py", START_VM)
    record, out = tmp_path / "record.json", tmp_path / "audit.jsonl"
    name = tapkit.unique_name("ttc")
    try:
        p = taptrace("audit", "--json", "-o", str(out), "--", sys.executable, script, name,
                     mode, str(record), json.dumps(QEMU_BASE))
        assert "Traceback" not in p.stderr, p.stderr
        assert p.stdout.startswith("started "), (p.stdout, p.stderr)   # CMD's own stdout
        rec = json.loads(record.read_text())
        qemu, daemon, fd = rec["qemu"], rec["daemon"], rec["fd"]
        truth = tapkit.truth([qemu, daemon])
        lines = json_lines(out)
        assert lines[0]["type"] == "ready" and lines[0]["command"]["argv"][1] == script
        summary = lines[-1]
        assert summary["type"] == "audit" and summary["command"]["exit_code"] == 0
        findings = [o for o in lines if o["type"] == "finding"]
        # the daemon double-forked: neither it nor QEMU is the script's child any more
        assert rec["script"] not in ancestors(daemon)
        if mode == "fixed":
            assert truth == {(qemu, fd, name)}
            assert p.returncode == 0, (p.returncode, findings, p.stderr)
            assert findings == [] and summary["findings"] == 0 and summary["rows"] == 1
            return
        assert truth == {(qemu, fd, name), (daemon, fd, name)}
        assert p.returncode == 1, (p.returncode, lines, p.stderr)
        (leak,) = findings
        assert (leak["kind"], leak["ifname"], leak["pid"], leak["fd"], leak["comm"]) == (
            "leak", name, daemon, fd, "sleep")
        assert (leak["role"], leak["vm_pid"], leak["vm_fd"]) == ("copy", qemu, fd)
        assert (leak["creator_pid"], leak["creator_comm"]) == (rec["script"], Path(sys.executable).name[:15])
        # how the copy came to the daemon: the script, forks, the daemon's exec
        hops = leak["holder_chain"]
        assert (hops[0]["pid"], hops[0]["fd"]) == (rec["script"], fd)
        assert (hops[-1]["op"], hops[-1]["pid"], hops[-1]["comm"]) == ("exec", daemon, "sleep")
        assert [h["op"] for h in hops[1:]].count("fork") >= 2       # the double fork
        assert (leak["chain"][-1]["pid"], leak["chain"][-1]["op"]) == (qemu, "exec")
        assert summary["findings"] == 1 and summary["rows"] == 2
        human = taptrace("audit", "-q", "--", "true")           # -q: nothing, only status
        assert human.returncode == 0 and human.stderr == "" and human.stdout == ""
    finally:
        kill_all(pids_in(record))
        tapkit.delete_link(name)


def test_audit_exit_status_orphan_left_by_the_command_and_the_commands_own():
    need_root()
    name = tapkit.unique_name("tto")
    try:
        # `ip tuntap add` makes a persistent tap and leaves: kept on purpose for `audit
        # --watch` (its creator made it persistent), left behind for `audit -- CMD`
        p = taptrace("audit", "--error-exitcode", "9", "--", "ip", "tuntap", "add", "dev",
                     name, "mode", "tap")
        assert p.returncode == 9, p.stderr
        assert os.path.exists(f"/sys/class/net/{name}")
        lines = p.stderr.splitlines()
        assert lines[0].startswith("# auditing ip tuntap add")
        orphan = [x for x in lines if x.startswith(f"orphan {name}:")]
        assert orphan and "while the command ran" in orphan[0], lines
        assert lines[-1].startswith("# audit: 1 finding (orphan 1)")
        assert lines[-1].endswith("exited with status 0")
        # a command that deletes it leaves nothing; a clean command's own status is ours
        clean = taptrace("audit", "--", "ip", "tuntap", "del", "dev", name, "mode", "tap")
        assert clean.returncode == 0, clean.stderr
        assert not os.path.exists(f"/sys/class/net/{name}")
        failed = taptrace("audit", "--", "sh", "-c", "exit 4")
        assert failed.returncode == 4 and "no findings" in failed.stderr
    finally:
        tapkit.delete_link(name)


# ---- watch -- CMD ------------------------------------------------------------------------

def test_watch_exits_with_the_command_status_and_leaves_its_stdout_alone():
    need_root()
    p = taptrace("watch", "--", "sh", "-c", "echo out; echo err >&2; exit 7")
    assert p.returncode == 7, p.stderr
    assert p.stdout == "out\n"                           # CMD's stdout, nothing of ours
    err = p.stderr.splitlines()
    assert err[0].startswith("# tracing sh -c ") and "until it exits" in err[0]
    assert "err" in err
    assert err[-1].endswith("exited with status 7")


def test_watch_runs_the_command_as_another_user():
    need_root()
    p = taptrace("watch", "-u", "nobody", "--", "id", "-u")
    assert (p.returncode, p.stdout) == (0, "65534\n"), p.stderr
    p = taptrace("watch", "-u", "65534", "--", "sh", "-c", 'id -G; echo "$HOME $USER"')
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == ["65534", "/nonexistent nobody"]    # nogroup only


def test_the_command_gets_no_fd_of_taptrace_and_its_own_environment_and_signals():
    """CMD gets fds 0-2 only (no BPF map, perf event, ring buffer or -o file), the
    environment taptrace was started with (not what it set for bcc), and the signal
    dispositions it would get without taptrace: what taptrace inherited (here an
    ignored SIGINT and SIGUSR2, and whatever the test runner ignores), not what Python
    set for itself (it ignores SIGPIPE and SIGXFSZ). The oracle is the same shell run
    directly."""
    need_root()
    env = {k: v for k, v in os.environ.items() if k != "BCC_KERNEL_SOURCE"}
    env["TT_MARK"] = "here"
    script = ('ls /proc/$$/fd; echo "${BCC_KERNEL_SOURCE-unset} $TT_MARK";'
              # exec: the same process, its mask and ignored set (a child of sh would
              # read sh's while sh blocks signals around a fork)
              ' exec grep -E "^Sig(Ign|Blk)" /proc/self/status')

    def ignoring():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGUSR2, signal.SIG_IGN)

    direct = subprocess.run(["sh", "-c", script], capture_output=True, text=True,
                            env=env, preexec_fn=ignoring, check=True, timeout=30)
    want = direct.stdout.splitlines()[-2:]
    ign = int(want[1].split()[1], 16)
    assert ign & (1 << (signal.SIGINT - 1)) and ign & (1 << (signal.SIGUSR2 - 1)), want
    assert not ign & (1 << (signal.SIGPIPE - 1)), want
    p = taptrace("watch", "-o", os.devnull, "--", "sh", "-c", script, env=env,
                 preexec_fn=ignoring)
    assert p.returncode == 0, p.stderr
    out = p.stdout.splitlines()
    assert out[:3] == ["0", "1", "2"] and out[3] == "unset here", out
    assert want[0] == "SigBlk:\t0000000000000000"
    assert out[4:] == want, out


def test_watch_table_at_the_commands_exit_equals_proc(tmp_path):
    """The script leaves `a` with a double-forked daemon and `b` with a child it sent
    it to; `c` it closed. A tap this test holds, outside the command, is not shown;
    with --all it is."""
    need_root()
    script = write_script(tmp_path, "tree.py", TREE)
    record, out = tmp_path / "record.json", tmp_path / "trace.jsonl"
    names = [tapkit.unique_name("tta"), tapkit.unique_name("ttb"), tapkit.unique_name("ttc")]
    mine, mine_name = tapkit.create_tap(tapkit.unique_name("ttx"))
    try:
        p = taptrace("watch", "--json", "-o", str(out), "--", sys.executable, script, *names,
                     str(record))
        assert p.returncode == 0, p.stderr
        rec = json.loads(record.read_text())
        daemon, holder = rec["daemon"], rec["holder"]
        truth = tapkit.truth([daemon, holder])
        lines = json_lines(out)
        table = lines[-1]
        assert table["type"] == "table"
        assert {n for _, _, n in truth} == {names[0], names[1]}
        assert table_triples(table, [r["pid"] for r in table["rows"]]) == truth
        assert {t["ifname"] for t in table["taps"]} == {names[0], names[1]}
        script_pid = lines[0]["command"]["pid"]
        cmd = lines[-2]
        assert (cmd["type"], cmd["pid"], cmd["exit_code"], cmd["signal"]) == (
            "command", script_pid, 0, None)
        made = {o["ifname"]: o for o in events_of(lines, "tunsetiff")}
        assert {n: made[n]["pid"] for n in names} == dict.fromkeys(names, script_pid)
        assert events_of(lines, "tap_gone", ifname=names[2])
        assert [e["kept"] for e in events_of(lines, "exec", pid=daemon)] == [
            [r[1] for r in truth if r[0] == daemon]]
        recv = events_of(lines, "scm_recv", pid=holder)
        assert recv and recv[0]["ifnames"] == [names[1]] and recv[0]["from_pid"] == script_pid
        assert not [o for o in lines if o.get("pid") == os.getpid()]      # not ours
        assert script_pid not in ancestors(daemon)
        kill_all(pids_in(record))
        # --all: everything on the host while the command runs, our tap too
        every = taptrace("watch", "--all", "--json", "-o", str(out), "--", "true")
        assert every.returncode == 0, every.stderr
        assert (os.getpid(), mine, mine_name) in table_triples(json_lines(out)[-1],
                                                               [os.getpid()])
    finally:
        kill_all(pids_in(record))
        os.close(mine)
        for n in [*names, mine_name]:
            tapkit.delete_link(n)


SERVER = textwrap.dedent("""
    # A daemon outside the command that makes taps on request (as libvirtd does for
    # virsh): it makes the tap, starts a "VM" with it, waits until the VM has taken it
    # (TUNGETIFF), closes its own copy and answers. Meanwhile an unrelated process
    # (noise) makes a tap of its own.
    import json, os, socket, subprocess, sys
    sys.path.insert(0, {tests!r})
    import tapkit
    path, noise_w, noise_r = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen(1)
    print("listening", flush=True)
    conn, _ = srv.accept()
    name = conn.recv(64).decode()
    fd, name = tapkit.create_tap(name)
    r, w = os.pipe()
    vm = subprocess.Popen(
        [sys.executable, "-c",
         "import os, sys\\n"
         "sys.path.insert(0, sys.argv[3])\\n"
         "import tapkit\\n"
         "tapkit.get_iff(int(sys.argv[1]))\\n"
         "os.write(int(sys.argv[2]), b'up')\\n"
         "os.close(int(sys.argv[2]))\\n"
         "import time; time.sleep(600)\\n", str(fd), str(w), {tests!r}],
        pass_fds=[fd, w], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    os.close(w)
    assert os.read(r, 2) == b"up"
    os.close(fd)
    os.write(noise_w, b"make\\n")
    assert os.read(noise_r, 2) == b"ok"
    conn.send(json.dumps(dict(vm=vm.pid, ifname=name, server=os.getpid())).encode())
    conn.recv(1)
    sys.stdin.read()
""")

NOISE = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {tests!r})
    import tapkit
    name = sys.argv[1]
    sys.stdin.readline()
    fd, name = tapkit.create_tap(name)
    sys.stdout.write("ok")
    sys.stdout.flush()
    sys.stdin.read()
""")

CLIENT = textwrap.dedent("""
    import socket, sys
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    s.send(sys.argv[2].encode())
    print(s.recv(4096).decode(), flush=True)
""")


def test_watch_follows_a_tap_made_elsewhere_at_the_commands_request(tmp_path):
    """CMD asks a daemon over a unix socket for a tap; the daemon (not CMD's
    descendant) makes it and hands it to a VM process (not one either): shown, VM row
    and all. A tap another process makes at the same moment is not."""
    need_root()
    sock = str(tmp_path / "broker.sock")
    want, noise_name = tapkit.unique_name("ttr"), tapkit.unique_name("ttn")
    noise = subprocess.Popen([sys.executable, "-c", NOISE.format(tests=TESTS), noise_name],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER.format(tests=TESTS), sock,
         str(noise.stdin.fileno()), str(noise.stdout.fileno())],
        pass_fds=[noise.stdin.fileno(), noise.stdout.fileno()], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True)
    out = tmp_path / "trace.jsonl"
    vm = None
    try:
        assert server.stdout.readline() == "listening\n"
        p = taptrace("watch", "--json", "-o", str(out), "--", sys.executable, "-c", CLIENT,
                     sock, want)
        assert p.returncode == 0, p.stderr
        said = json.loads(p.stdout)
        vm = said["vm"]
        truth = tapkit.truth([vm])
        assert truth == {(vm, next(iter(truth))[1], want)}
        assert noise_name in {n for _, _, n in tapkit.truth([noise.pid])}   # it was made
        lines = json_lines(out)
        client = lines[0]["command"]["pid"]
        assert client not in ancestors(vm) and client not in ancestors(server.pid)
        made = events_of(lines, "tunsetiff", ifname=want)
        assert [(m["pid"], m["created"]) for m in made] == [(server.pid, True)]
        assert events_of(lines, "exec", pid=vm)
        assert events_of(lines, "close", pid=server.pid, ifname=want)
        table = lines[-1]
        assert table_triples(table, [vm, server.pid, noise.pid]) == truth
        assert want in {t["ifname"] for t in table["taps"]}
        assert not [o for o in lines if noise_name in json.dumps(o)]
    finally:
        kill_all([vm, server.pid, noise.pid])
        for proc in (server, noise):
            proc.wait()
        tapkit.delete_link(want)
        tapkit.delete_link(noise_name)


# ---- signals -------------------------------------------------------------------------

HOLD = textwrap.dedent("""
    import signal, sys, time
    if sys.argv[1] == "trap":
        signal.signal(signal.SIGINT, lambda *_a: sys.exit(5))
    print("running", flush=True)
    time.sleep(60)
    sys.exit(0)
""")


@pytest.mark.parametrize(("how", "sig", "status"), [
    ("trap", signal.SIGINT, 5),          # Ctrl-C: CMD's handler decides
    ("plain", signal.SIGINT, 130),       # Ctrl-C: CMD dies of it (128 + 2)
    ("plain", signal.SIGTERM, 143),      # SIGTERM to taptrace alone: passed on to CMD
])
def test_interrupt_reaches_the_command_and_taptrace_reports_after_it(tmp_path, how, sig,
                                                                     status):
    need_root()
    out = tmp_path / "trace.jsonl"

    # started as an interactive shell starts a command: SIGINT and SIGTERM at their
    # defaults, whatever the test runner ignores (taptrace passes an inherited SIG_IGN
    # on to CMD, as designed, and CMD would never die of the Ctrl-C)
    as_a_terminal = [sys.executable, "-c", ("import os, signal, sys; "
                     "[signal.signal(s, signal.SIG_DFL) for s in (2, 15)]; "
                     "os.execv(sys.argv[1], sys.argv[1:])")]
    p = subprocess.Popen([*as_a_terminal, *TAPTRACE, "watch", "--json", "-o", str(out), "--",
                          sys.executable, "-c", HOLD, how], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert p.stdout.readline() == "running\n", p.stderr.read() if p.poll() else ""
        if sig == signal.SIGINT:
            os.killpg(p.pid, sig)         # as the terminal does: the whole group
        else:
            p.send_signal(sig)            # taptrace only
        p.wait(timeout=30)
        assert p.returncode == status, p.stderr.read()
        lines = json_lines(out)
        assert lines[-1]["type"] == "table"
        assert lines[-2]["type"] == "command" and lines[-2]["exit_code"] == status
        assert lines[-2]["signal"] == (None if how == "trap" else signal.Signals(sig).name)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()


# ---- libvirt: virsh start, where the tap is made and used outside the command -----------

@pytest.mark.skipif(shutil.which("libvirtd") is None or QEMU is None,
                    reason="libvirt-daemon-system and qemu-system-x86 are not installed")
def test_virsh_start_under_watch_shows_libvirtds_tap_reaching_qemu(tmp_path, host):
    """virsh asks libvirtd (over its unix socket) to start a domain: libvirtd makes
    vnetN and its forked child execs QEMU with it. Neither is virsh's descendant."""
    bridge = host.link("br", "bridge")
    name = tapkit.unique_name("ttvm")
    xml = tmp_path / f"{name}.xml"
    xml.write_text(domain_xml(name, [bridge_nic(bridge, MAC1)]))
    virsh("define", str(xml))
    out = tmp_path / "trace.jsonl"
    try:
        p = taptrace("watch", "--json", "-o", str(out), "--", *VIRSH, "start", name,
                     timeout=300)
        assert p.returncode == 0, p.stderr
        with open(f"/run/libvirt/qemu/{name}.pid") as f:
            qemu = int(f.read().strip())
        lines = json_lines(out)
        virsh_pid = lines[0]["command"]["pid"]
        libvirtd = host.libvirtd
        assert virsh_pid not in ancestors(qemu) and virsh_pid not in ancestors(libvirtd)
        truth = tapkit.truth([qemu, libvirtd])
        ((_, fd, ifname),) = truth
        made = events_of(lines, "tunsetiff", ifname=ifname)
        assert [(m["pid"], m["created"]) for m in made] == [(libvirtd, True)]
        assert events_of(lines, "exec", pid=qemu)[0]["kept"] == [fd]
        assert events_of(lines, "close", pid=libvirtd, ifname=ifname)
        table = lines[-1]
        assert table_triples(table, [qemu, libvirtd]) == truth
        row = next(r for r in table["rows"] if r["pid"] == qemu)
        assert (row["creator_pid"], row["how"], row["vm"]) == (libvirtd, "inherited", name)
    finally:
        virsh("destroy", name, check=False)
        virsh("undefine", name, check=False)


# ---- bad input -------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "status", "says"), [
    (["watch", "--"], 2, "no command after --"),
    (["audit", "--"], 2, "no command after --"),
    (["watch", "--", "tt-no-such-command"], 127, "tt-no-such-command: command not found"),
    (["audit", "--", "/nonexistent/cmd"], 127, "/nonexistent/cmd: no such file or directory"),
    (["watch", "--", "/etc/passwd"], 126, "/etc/passwd: permission denied"),
    (["watch", "--", "/tmp"], 126, "/tmp: is a directory"),
    (["watch", "-u", "tt-no-such-user", "--", "true"], 2, "no user 'tt-no-such-user'"),
    (["watch", "-u", "nobody"], 2, "-u goes with a command"),
    (["audit", "-o", "x"], 2, "-o goes with a command"),
    (["watch", "--all"], 2, "--all goes with a command"),
    (["watch", "-p", "1", "--", "true"], 2, "-p does not go with a command"),
    (["watch", "--duration", "3", "--", "true"], 2, "--duration does not go with a command"),
    (["audit", "--watch", "3", "--", "true"], 2, "--watch does not go with a command"),
    (["watch", "true"], 2, "unexpected extra argument"),
])
def test_bad_command_lines_are_one_line_and_a_status(args, status, says):
    need_root()
    t0 = time.monotonic()
    p = taptrace(*args)
    assert p.returncode == status, (args, p.stderr)
    assert "Traceback" not in p.stderr and p.stdout == ""
    last = p.stderr.strip().splitlines()[-1]           # a usage error: click's usage first
    assert last.startswith("Error: ") and says in last, p.stderr
    assert time.monotonic() - t0 < 10                    # refused before loading BPF


def test_when_taptrace_cannot_attach_the_command_is_not_started(tmp_path):
    need_root()
    marker = tmp_path / "ran"
    os.chmod(tmp_path, 0o777)
    for cmd, status in (("watch", 1), ("audit", 3)):
        p = subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                            *TAPTRACE, cmd, "--", "touch", str(marker)], cwd=ROOT,
                           capture_output=True, text=True, timeout=60, check=False)
        assert p.returncode == status, p.stderr
        assert "root" in p.stderr and p.stderr.count("\n") == 1
        assert not marker.exists()


def test_output_file_refuses_a_symlink(tmp_path):
    need_root()
    target, link = tmp_path / "target", tmp_path / "link"
    target.write_text("keep")
    link.symlink_to(target)
    p = taptrace("watch", "-o", str(link), "--", "true")
    assert p.returncode == 1 and "symbolic link" in p.stderr
    assert target.read_text() == "keep"
