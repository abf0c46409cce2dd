"""Real QEMU (TCG, paused, no disk) given tap fds the way orchestration scripts do."""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
import tapkit
from conftest import events_of, table_triples

QEMU = shutil.which("qemu-system-x86_64")
pytestmark = pytest.mark.skipif(QEMU is None, reason="qemu-system-x86 is not installed")

BASE = [QEMU or "qemu-system-x86_64", "-machine", "pc", "-accel", "tcg", "-S", "-nodefaults",
        "-display", "none", "-monitor", "none", "-serial", "none"]
MAC = "52:54:00:12:34:56"


def test_qemu_netdev_tap_fd_from_pass_fds(tracer):
    t = tracer()
    name = tapkit.unique_name()
    fd, name = tapkit.create_tap(name, tapkit.IFF_TAP | tapkit.IFF_NO_PI | tapkit.IFF_VNET_HDR)
    qemu = subprocess.Popen(
        [*BASE, "-name", "guest=ttvm,debug-threads=on", "-netdev", f"tap,fd={fd},id=hostnet0",
         "-device", f"virtio-net-pci,netdev=hostnet0,id=net0,mac={MAC}"], pass_fds=[fd])
    try:
        os.close(fd)
        probe = t.wait_for(lambda o: o["type"] == "tungetiff" and o["pid"] == qemu.pid, 30)
        assert probe["ifname"] == name and probe["fd"] == fd and probe["error"] is None
        truth = tapkit.truth([qemu.pid])
        lines, table = t.stop()
        assert table_triples(table, [qemu.pid]) == truth == {(qemu.pid, fd, name)}
        row = next(r for r in table["rows"] if r["pid"] == qemu.pid)
        assert row["comm"].startswith("qemu-system")
        assert (row["vm"], row["netdev"], row["nic_model"], row["guest_mac"]) == (
            "ttvm", "hostnet0", "virtio-net-pci", MAC)
        with open(f"/sys/class/net/{name}/address") as f:
            assert row["host_mac"] == f.read().strip() != MAC
        assert row["creator_pid"] == os.getpid() and row["how"] == "inherited"
        assert events_of(lines, "exec", pid=qemu.pid)[0]["kept"] == [fd]
    finally:
        qemu.kill()
        qemu.wait()
        tapkit.delete_link(name)


def test_qemu_given_a_pipe_says_not_a_tap(tracer):
    t = tracer("--bad-ioctls")
    r, w = os.pipe()
    try:
        out = subprocess.run([*BASE, "-netdev", f"tap,fd={r},id=n0"], pass_fds=[r],
                             capture_output=True, text=True, timeout=60, check=False)
        assert out.returncode != 0 and "TUNGETIFF" in out.stderr
        lines, _ = t.stop()
    finally:
        os.close(r)
        os.close(w)
    bad = [o for o in events_of(lines, "tungetiff", error="ENOTTY") if o["fd"] == r]
    assert bad and bad[0]["message"] == f"fd {r} is not a tap (ENOTTY)"
    assert bad[0]["comm"].startswith("qemu-system")


BRIDGE_CONF = "/etc/qemu/bridge.conf"
HELPER = "/usr/lib/qemu/qemu-bridge-helper"


@pytest.fixture
def allowed_bridge():
    """A fresh bridge that qemu-bridge-helper may use (`allow BR` in bridge.conf);
    the bridge and the line go afterwards, whatever happens."""
    if not os.path.exists(HELPER):
        pytest.skip(f"{HELPER} is not installed")
    bridge = tapkit.unique_name("br")
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    made_dir = not os.path.isdir(os.path.dirname(BRIDGE_CONF))
    os.makedirs(os.path.dirname(BRIDGE_CONF), exist_ok=True)
    try:
        with open(BRIDGE_CONF) as f:
            before: str | None = f.read()
    except FileNotFoundError:
        before = None
    with open(BRIDGE_CONF, "a") as f:
        f.write(f"allow {bridge}\n")
    try:
        yield bridge
    finally:
        if before is None:
            os.unlink(BRIDGE_CONF)
            if made_dir:
                os.rmdir(os.path.dirname(BRIDGE_CONF))
        else:
            with open(BRIDGE_CONF, "w") as f:
                f.write(before)
        subprocess.run(["ip", "link", "del", bridge], check=False, capture_output=True)


def test_netdev_bridge_gets_its_tap_from_qemu_bridge_helper(tracer, allowed_bridge):
    """QEMU forks and execs qemu-bridge-helper, which creates tap%d, enslaves it to the
    bridge and sends the fd back over a socketpair (SCM_RIGHTS); the helper exits."""
    t = tracer()
    qemu = subprocess.Popen(
        [*BASE, "-name", "guest=ttbh", "-netdev", f"bridge,br={allowed_bridge},id=n0",
         "-device", f"virtio-net-pci,netdev=n0,mac={MAC}"], stderr=subprocess.PIPE)
    try:
        recv = t.wait_for(lambda o: o["type"] == "scm_recv" and o["pid"] == qemu.pid, 60)
        name = recv["ifnames"][0]
        helper = recv["from_pid"]
        deadline = time.monotonic() + 30          # QEMU reaps the helper
        while os.path.exists(f"/proc/{helper}") and time.monotonic() < deadline:
            time.sleep(0.1)
        truth = tapkit.truth([qemu.pid, helper])
        assert qemu.poll() is None, qemu.stderr.read().decode()
        lines, table = t.stop()
        assert table_triples(table, [qemu.pid, helper]) == truth == {
            (qemu.pid, recv["fds"][0], name)}
        made = events_of(lines, "tunsetiff", pid=helper)
        assert made and made[0]["ifname"] == name and made[0]["created"] is True
        assert made[0]["comm"] == "qemu-bridge-hel"
        assert events_of(lines, "scm_send", pid=helper)[0]["ifnames"] == [name]
        row = next(r for r in table["rows"] if r["pid"] == qemu.pid)
        assert (row["creator_pid"], row["how"], row["from_pid"]) == (helper, "received", helper)
        assert (row["vm"], row["netdev"], row["guest_mac"], row["master"]) == (
            "ttbh", "n0", MAC, allowed_bridge)
    finally:
        qemu.kill()
        qemu.wait()
