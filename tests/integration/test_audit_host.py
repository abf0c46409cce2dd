"""`taptrace audit` on the real kernel: real taps, a real QEMU (TCG, paused) holding
one, a real bridge; the audit runs as its own process, as a person runs it.

Every scenario first checks its ground truth in /proc (tapkit.truth: fdinfo `iff:`)
or /sys, then the findings and the exit status. `-i` limits each audit to the taps
the test made, so other processes on the machine cannot change the verdict.
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

QEMU = shutil.which("qemu-system-x86_64")
BASE = [QEMU or "qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-S", "-nodefaults",
        "-display", "none", "-monitor", "none", "-serial", "none"]
MAC = "52:54:00:12:34:57"
VNET = tapkit.IFF_TAP | tapkit.IFF_NO_PI | tapkit.IFF_VNET_HDR
need_qemu = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86 is not installed")


def taptrace(*args: str, user: str | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "tracer", *args]
    if user is not None:
        cmd = ["setpriv", f"--reuid={user}", "--regid=nogroup", "--clear-groups", *cmd]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=120,
                          check=False)


def audit_json(*args: str) -> tuple[int, list[dict], dict]:
    """(exit status, findings, the final audit line) of `audit --json ARGS`."""
    out = taptrace("audit", "--json", *args)
    assert "Traceback" not in out.stderr, out.stderr
    lines = [json.loads(x) for x in out.stdout.splitlines()]
    assert lines and lines[-1]["type"] == "audit", (out.stdout, out.stderr)
    assert all(o["v"] == 1 for o in lines)
    return out.returncode, [o for o in lines if o["type"] == "finding"], lines[-1]


def wait_until(pred, timeout: float = 30, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


class VM:
    """A real QEMU given tap fd `fd` with pass_fds; this process keeps its copy."""

    def __init__(self, name: str, guest: str, flags: int = VNET) -> None:
        self.fd, self.name = tapkit.create_tap(name, flags)
        self.guest = guest
        self.mine_open = True
        self.qemu = subprocess.Popen(
            [*BASE, "-name", f"guest={guest}", "-netdev", f"tap,fd={self.fd},id=hostnet0",
             "-device", f"virtio-net-pci,netdev=hostnet0,mac={MAC}"],
            pass_fds=[self.fd], stderr=subprocess.PIPE)
        wait_until(lambda: (self.qemu.pid, self.fd, self.name) in tapkit.truth([self.qemu.pid])
                   or self.qemu.poll() is not None, 60, "QEMU to hold the tap")
        assert self.qemu.poll() is None, self.qemu.stderr.read().decode()

    def close_mine(self) -> None:
        os.close(self.fd)
        self.mine_open = False

    def stop(self) -> None:
        if self.qemu.poll() is None:
            self.qemu.kill()
        self.qemu.wait()
        if self.mine_open:
            self.close_mine()
        tapkit.delete_link(self.name)


@pytest.fixture
def vms():
    need_root()
    started: list[VM] = []

    def start(name: str, guest: str, flags: int = VNET) -> VM:
        vm = VM(name, guest, flags)
        started.append(vm)
        return vm

    yield start
    for vm in started:
        vm.stop()


@pytest.fixture
def links():
    """Names of links (taps, bridges) to delete afterwards, whatever happens."""
    need_root()
    names: list[str] = []
    yield names
    for name in names:
        tapkit.delete_link(name)


def persistent_tap(name: str) -> str:
    fd, name = tapkit.create_tap(name)
    try:
        tapkit.set_persist(fd, True)
    finally:
        os.close(fd)
    return name


# ---- snapshot -------------------------------------------------------------------

@need_qemu
def test_a_tap_kept_after_handing_it_to_qemu_is_a_leak_until_closed(vms):
    me = os.getpid()
    vm = vms(tapkit.unique_name("ta"), "auditvm")
    assert tapkit.truth([me, vm.qemu.pid]) == {(me, vm.fd, vm.name),
                                                (vm.qemu.pid, vm.fd, vm.name)}
    rc, found, summary = audit_json("-i", vm.name)
    assert rc == 1
    assert [(f["kind"], f["ifname"], f["pid"], f["fd"]) for f in found] == [
        ("leak", vm.name, me, vm.fd)]
    f = found[0]
    assert (f["vm"], f["vm_pid"], f["vm_fd"], f["vm_from"]) == (
        "auditvm", vm.qemu.pid, vm.fd, "cmdline")
    assert f["role"] is None and "chain" not in f          # a snapshot has no history
    assert summary["findings"] == 1 and summary["kinds"] == {"leak": 1}
    human = taptrace("audit", "-i", vm.name)
    assert human.returncode == 1
    lines = human.stdout.splitlines()
    assert lines[0].startswith(f"leak {vm.name}: ") and f"[{me}] fd {vm.fd} still holds" in lines[0]
    assert lines[0].endswith(f"qemu-system-x86[{vm.qemu.pid}] (VM auditvm) uses")
    assert lines[-1] == "# audit: 1 finding (leak 1); 1 tap, 2 fds checked"

    vm.close_mine()
    assert tapkit.truth([me, vm.qemu.pid]) == {(vm.qemu.pid, vm.fd, vm.name)}
    rc, found, summary = audit_json("-i", vm.name)
    assert (rc, found, summary["findings"], summary["rows"]) == (0, [], 0, 1)
    human = taptrace("audit", "-i", vm.name)
    assert (human.returncode, human.stdout) == (
        0, "# audit: no findings; 1 tap, 1 fd checked\n")


@need_qemu
def test_a_second_queue_attached_beside_the_vm_is_a_foreign_holder(vms):
    me = os.getpid()
    vm = vms(tapkit.unique_name("ta"), "mqvm", VNET | tapkit.IFF_MULTI_QUEUE)
    vm.close_mine()
    fd, _ = tapkit.create_tap(vm.name, VNET | tapkit.IFF_MULTI_QUEUE)   # its own open file
    try:
        assert tapkit.truth([me, vm.qemu.pid]) == {(me, fd, vm.name),
                                                    (vm.qemu.pid, vm.fd, vm.name)}
        rc, found, _ = audit_json("-i", vm.name)
        assert rc == 1
        assert [(f["kind"], f["pid"], f["fd"], f["vm_pids"], f["vm_holds"]) for f in found] == [
            ("foreign_holder", me, fd, [vm.qemu.pid], True)]
    finally:
        os.close(fd)
    assert audit_json("-i", vm.name)[0] == 0


def test_a_persistent_tap_nobody_holds_is_an_orphan(links):
    name = persistent_tap(tapkit.unique_name("ta"))
    links.append(name)
    with open(f"/sys/class/net/{name}/tun_flags") as f:
        assert int(f.read(), 16) & tapkit.IFF_PERSIST
    rc, found, _ = audit_json("-i", name)
    assert rc == 1
    assert [(f["kind"], f["ifname"], f["pid"], f["persist"]) for f in found] == [
        ("orphan", name, None, True)]
    assert found[0]["message"] == f"{name}: persistent tap, no process holds it"
    quiet = taptrace("audit", "-q", "-i", name)
    assert (quiet.returncode, quiet.stdout, quiet.stderr) == (1, "", "")
    tapkit.delete_link(name)
    assert audit_json("-i", name)[0] == 0                  # gone: nothing to say


@need_qemu
def test_a_tap_left_on_a_bridge_without_its_vm_is_vm_gone(links, vms):
    me = os.getpid()
    stem = tapkit.unique_name("ta")[:8]
    bridge = tapkit.unique_name("tb")
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    links.append(bridge)
    left = persistent_tap(stem + "a")                    # persistent, nobody holds it
    links.append(left)
    fine = vms(stem + "b", "bridged")                    # the control: a VM on the bridge
    fine.close_mine()
    kept = vms(stem + "c", "leaky")                      # this process keeps its copy
    for name in (left, fine.name, kept.name):
        subprocess.run(["ip", "link", "set", name, "master", bridge], check=True)
        assert os.path.basename(os.readlink(f"/sys/class/net/{name}/master")) == bridge
    rc, found, summary = audit_json("-i", stem + "*")
    assert rc == 1 and summary["taps"] == 3
    assert [(f["kind"], f["ifname"], f["pid"]) for f in found] == [
        ("leak", kept.name, me), ("vm_gone", left, None)]
    assert (found[1]["master"], found[1]["holders"], found[1]["persist"]) == (bridge, [], True)
    assert found[1]["message"] == (f"{left}: a port of {bridge} that no VM holds "
                                   "(no process holds it)")

    kept.qemu.kill()                                     # the VM goes; our copy stays
    kept.qemu.wait()
    assert tapkit.truth([me]) >= {(me, kept.fd, kept.name)}
    rc, found, _ = audit_json("-i", stem + "*")
    assert rc == 1
    assert [(f["kind"], f["ifname"], f["holders"]) for f in found] == [
        ("vm_gone", left, []), ("vm_gone", kept.name, [[me, kept.fd]])]
    with open("/proc/self/comm") as f:
        comm = f.read().strip()
    assert found[1]["message"] == (f"{kept.name}: a port of {bridge} that no VM holds "
                                   f"(held only by {comm}[{me}] fd {kept.fd})")


def test_control_bytes_in_a_finding_are_escaped_for_people_kept_in_json(links):
    name = persistent_tap("t\x1b[1m" + tapkit.unique_name("")[:6])
    links.append(name)
    human = taptrace("audit", "-i", "t\x1b*")
    assert human.returncode == 1
    assert "\x1b" not in human.stdout and f"orphan t\\x1b[1m{name[5:]}: " in human.stdout
    _, found, _ = audit_json("-i", "t\x1b*")
    assert [f["ifname"] for f in found] == [name]


# ---- live -------------------------------------------------------------------------

class LiveAudit(Tracer):
    """`audit --watch 120 --json ARGS` running; lines arrive through a reader thread."""

    COMMAND = ("audit", "--json", "--watch", "120")

    def next(self, pred, timeout: float = 30) -> dict:
        """The next line (not one already read) that satisfies pred."""
        return self._read_until(pred, timeout)

    def finish(self) -> tuple[int, list[dict]]:
        """SIGINT: the audit ends early, audits the table and exits."""
        time.sleep(0.5)                          # let the last records reach it
        self.proc.send_signal(signal.SIGINT)
        self.next(lambda o: o["type"] == "audit", 60)
        self.proc.wait(timeout=30)
        return self.proc.returncode, [o for o in self.lines if o["type"] == "finding"]


@pytest.fixture
def live():
    with spawned(LiveAudit) as start:
        yield start


@need_qemu
def test_live_a_leak_names_its_creator_and_the_way_to_the_vm(live, vms):
    me = os.getpid()
    name = tapkit.unique_name("ta")
    audit = live("-i", name)
    vm = vms(name, "livevm")                              # made while traced
    assert tapkit.truth([me, vm.qemu.pid]) == {(me, vm.fd, name), (vm.qemu.pid, vm.fd, name)}
    rc, found = audit.finish()
    assert rc == 1
    assert [(f["kind"], f["pid"], f["fd"]) for f in found] == [("leak", me, vm.fd)]
    f = found[0]
    assert (f["role"], f["creator_pid"], f["creator_from"], f["how"]) == (
        "creator", me, "trace", "opened")
    assert [(h["op"], h["pid"], h["fd"]) for h in f["chain"]] == [
        ("open", me, vm.fd), ("fork", vm.qemu.pid, vm.fd), ("exec", vm.qemu.pid, vm.fd)]
    assert f["chain"][-1]["comm"] == "qemu-system-x86"
    assert "(its creator) still holds" in f["message"]


@need_qemu
def test_live_qemu_given_a_pipe_is_a_bad_probe_as_it_happens(live):
    audit = live()
    r, w = os.pipe()
    try:
        qemu = subprocess.Popen([*BASE, "-netdev", f"tap,fd={r},id=n0"], pass_fds=[r],
                                stderr=subprocess.PIPE, text=True)
        err = qemu.communicate(timeout=60)[1]
        assert qemu.returncode != 0 and "TUNGETIFF" in err      # QEMU's own word for it
        bad = audit.next(lambda o: o["type"] == "finding" and o["kind"] == "bad_probe"
                         and o["pid"] == qemu.pid)             # before the audit ends
        assert audit.proc.poll() is None
    finally:
        os.close(r)
        os.close(w)
    assert (bad["fd"], bad["error"], bad["ifname"]) == (r, "ENOTTY", None)
    assert bad["comm"].startswith("qemu-system")
    assert bad["message"] == f"qemu-system-x86[{qemu.pid}]: TUNGETIFF fd {r} is not a tap (ENOTTY)"
    rc, found = audit.finish()
    assert rc == 1 and bad in found
    assert audit.lines[-1]["findings"] == len(found)


# ---- the command line -----------------------------------------------------------

@pytest.mark.parametrize("args", [["--watch", "0"], ["--watch", "soon"], ["--bogus"],
                                  ["-i"]])
def test_bad_arguments_are_usage_errors(args):
    out = taptrace("audit", *args)
    assert out.returncode == 2, (args, out.stderr)
    assert "Traceback" not in out.stderr and "Error" in out.stderr


def test_not_root_live_audit_cannot_run_and_says_why_in_one_line():
    need_root()
    out = taptrace("audit", "--watch", "1", user="nobody")
    assert out.returncode == 3 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "root" in out.stderr
    assert "Traceback" not in out.stderr


def test_not_root_snapshot_audit_runs_and_says_it_may_be_incomplete(links):
    name = persistent_tap(tapkit.unique_name("ta"))
    links.append(name)
    out = taptrace("audit", "-i", name, user="nobody")
    assert out.returncode == 1, out.stderr
    assert out.stdout.splitlines()[0].startswith(f"orphan {name}: ")
    assert "not root" in out.stdout.splitlines()[-1]
    last = taptrace("audit", "--json", "-i", name, user="nobody").stdout.splitlines()[-1]
    assert json.loads(last)["complete"] is False


# ---- a real libvirt domain --------------------------------------------------------

VIRSH = ["virsh", "-q", "-c", "qemu:///system"]
need_libvirt = pytest.mark.skipif(
    shutil.which("libvirtd") is None or shutil.which("virsh") is None or QEMU is None,
    reason="libvirt-daemon-system and qemu-system-x86 are not installed")


def _libvirtd_up() -> None:
    """Start the daemons when nothing runs them (no systemd here); wait for an answer."""
    for daemon in ("virtlogd", "libvirtd"):
        if subprocess.run(["pgrep", "-x", daemon], capture_output=True,
                          check=False).returncode != 0:
            subprocess.run([daemon, "-d"], check=True)
    wait_until(lambda: subprocess.run([*VIRSH, "version"], capture_output=True,
                                      check=False).returncode == 0, 30, "libvirtd")


@need_libvirt
def test_libvirt_a_clean_start_then_a_kept_copy_then_the_domain_gone(links, tmp_path):
    """libvirtd hands the tap to QEMU and closes its copy: clean. A tool that takes
    a copy of QEMU's fd (pidfd_getfd) and keeps it leaks it; once the domain is
    destroyed that copy keeps the tap on the bridge without its VM."""
    _libvirtd_up()
    me = os.getpid()
    bridge = tapkit.unique_name("tb")
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    links.append(bridge)
    dom = tapkit.unique_name("ttaudit")
    xml = tmp_path / "dom.xml"
    xml.write_text(f"""<domain type='qemu'><name>{dom}</name><memory unit='MiB'>64</memory>
  <vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os>
  <devices><emulator>{QEMU}</emulator><controller type='usb' model='none'/>
    <memballoon model='none'/>
    <interface type='bridge'><source bridge='{bridge}'/><mac address='{MAC}'/>
      <model type='virtio'/><driver name='qemu'/></interface></devices></domain>""")
    copy = None
    try:
        subprocess.run([*VIRSH, "create", str(xml), "--paused"], check=True,
                       capture_output=True, timeout=180)
        with open(f"/run/libvirt/qemu/{dom}.pid") as f:
            qemu = int(f.read())
        [(_, qfd, tap)] = tapkit.truth([qemu])     # libvirt's vnetN: not ours to delete
        assert os.path.basename(os.readlink(f"/sys/class/net/{tap}/master")) == bridge
        assert audit_json("-i", tap)[0] == 0                # libvirtd closed its copy

        copy = tapkit.pidfd_getfd(qemu, qfd)
        assert tapkit.truth([me, qemu]) == {(me, copy, tap), (qemu, qfd, tap)}
        rc, found, _ = audit_json("-i", tap)
        assert rc == 1
        assert [(f["kind"], f["pid"], f["fd"]) for f in found] == [("leak", me, copy)]
        f = found[0]
        assert (f["vm"], f["vm_from"], f["vm_pid"], f["vm_fd"]) == (dom, "libvirt", qemu, qfd)
        assert (f["creator_comm"], f["creator_from"], f["role"]) == (
            "libvirtd", "libvirt", None)

        subprocess.run([*VIRSH, "destroy", dom], check=True, capture_output=True, timeout=120)
        wait_until(lambda: not os.path.exists(f"/proc/{qemu}"), 30, "QEMU to exit")
        assert tapkit.truth([me]) >= {(me, copy, tap)}      # our copy keeps the tap alive
        rc, found, _ = audit_json("-i", tap)
        assert rc == 1
        assert [(f["kind"], f["ifname"], f["master"], f["holders"]) for f in found] == [
            ("vm_gone", tap, bridge, [[me, copy]])]
        os.close(copy)
        copy = None
        assert not os.path.exists(f"/sys/class/net/{tap}")  # its last file went
        assert audit_json("-i", tap)[0] == 0
    finally:
        if copy is not None:
            os.close(copy)
        subprocess.run([*VIRSH, "destroy", dom], capture_output=True, check=False)
