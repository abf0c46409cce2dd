"""Real QEMU (TCG, paused, no disk) given tap fds the way orchestration scripts do."""

from __future__ import annotations

import os
import shutil
import subprocess

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
    t = tracer()
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
