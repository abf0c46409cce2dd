"""Real libvirtd starting a real QEMU (TCG, diskless) on a real bridge, and hot-plug.

The daemons are started here when they are not running (no systemd): `virtlogd -d`,
`libvirtd -d`. Every domain, bridge and tap made here is removed even on failure.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest
import tapkit
from conftest import events_of, need_root, table_triples

VIRSH = ["virsh", "-q", "-c", "qemu:///system"]
pytestmark = pytest.mark.skipif(
    shutil.which("libvirtd") is None or shutil.which("qemu-system-x86_64") is None,
    reason="libvirt-daemon-system and qemu-system-x86 are not installed")

DOMAIN = """<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='pc'>hvm</type></os>
  <features><acpi/></features>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <interface type='bridge'>
      <source bridge='{bridge}'/><mac address='{mac}'/><model type='virtio'/>
    </interface>
  </devices>
</domain>"""
HOTPLUG = ("<interface type='bridge'><source bridge='{bridge}'/><mac address='{mac}'/>"
           "<model type='virtio'/></interface>")


def virsh(*args: str, check: bool = True) -> str:
    out = subprocess.run([*VIRSH, *args], capture_output=True, text=True, timeout=120,
                         check=False)
    if check and out.returncode != 0:
        raise AssertionError(f"virsh {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def _running(name: str) -> int | None:
    out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True, check=False)
    return int(out.stdout.split()[0]) if out.stdout.split() else None


@pytest.fixture(scope="module")
def libvirtd():
    need_root()
    if _running("virtlogd") is None:
        subprocess.run(["virtlogd", "-d"], check=True)
    if _running("libvirtd") is None:
        subprocess.run(["libvirtd", "-d"], check=True)
    deadline = time.monotonic() + 30
    while subprocess.run([*VIRSH, "version"], capture_output=True,
                         check=False).returncode != 0:
        if time.monotonic() > deadline:
            pytest.fail("libvirtd did not answer")
        time.sleep(0.5)
    return _running("libvirtd")


@pytest.fixture
def domain(libvirtd, tmp_path):
    """A unique bridge and a domain description on it; torn down whatever happens."""
    bridge = tapkit.unique_name("br")
    name = tapkit.unique_name("ttvm")
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
    xml = tmp_path / "dom.xml"
    xml.write_text(DOMAIN.format(name=name, bridge=bridge, mac="52:54:00:7a:00:01"))
    try:
        yield {"name": name, "bridge": bridge, "xml": str(xml), "libvirtd": libvirtd,
               "mac": "52:54:00:7a:00:01", "tmp": tmp_path}
    finally:
        virsh("destroy", name, check=False)
        subprocess.run(["ip", "link", "del", bridge], check=False, capture_output=True)


def qemu_pid(name: str) -> int:
    with open(f"/run/libvirt/qemu/{name}.pid") as f:
        return int(f.read().strip())


def test_domain_start_hands_the_tap_from_libvirtd_to_qemu(tracer, domain):
    t = tracer("-i", "vnet*")
    virsh("create", domain["xml"])
    qemu = qemu_pid(domain["name"])
    probe = t.wait_for(lambda o: o["type"] == "tungetiff" and o["pid"] == qemu, 60)
    ifname = probe["ifname"]
    truth = tapkit.truth([qemu, domain["libvirtd"]])
    lines, table = t.stop()
    assert table_triples(table, [qemu, domain["libvirtd"]]) == truth
    assert {n for _, _, n in truth} == {ifname}            # libvirtd kept no copy
    made = events_of(lines, "tunsetiff", ifname=ifname)
    assert made and made[0]["pid"] == domain["libvirtd"] and made[0]["created"] is True
    assert "vnet_hdr" in made[0]["flags"]
    # the daemonizing chain: libvirtd forks, the child forks again, the grandchild execs
    assert events_of(lines, "exec", pid=qemu)[0]["kept"] == [probe["fd"]]
    assert events_of(lines, "close", pid=domain["libvirtd"], ifname=ifname)
    row = next(r for r in table["rows"] if r["pid"] == qemu)
    assert row["creator_pid"] == domain["libvirtd"] and row["how"] == "inherited"
    assert row["vm"] == domain["name"] and row["netdev"] == "hostnet0"
    assert row["guest_mac"] == domain["mac"] and row["master"] == domain["bridge"]
    assert row["host_mac"] and row["host_mac"] != domain["mac"]


def test_hotplug_and_unplug_travel_over_scm_rights(tracer, domain):
    virsh("create", domain["xml"])
    qemu = qemu_pid(domain["name"])
    t = tracer("-i", "vnet*")
    nic = domain["tmp"] / "nic.xml"
    nic.write_text(HOTPLUG.format(bridge=domain["bridge"], mac="52:54:00:7a:00:02"))
    virsh("attach-device", domain["name"], str(nic))
    recv = t.wait_for(lambda o: o["type"] == "scm_recv" and o["pid"] == qemu, 60)
    hot = recv["ifnames"][0]
    assert recv["from_pid"] == domain["libvirtd"]
    time.sleep(1)
    truth = tapkit.truth([qemu, domain["libvirtd"]])
    assert (qemu, recv["fds"][0], hot) in truth
    # A diskless guest never acknowledges the PCI unplug (no OS runs the ACPI
    # handler), so detach stays a request: the tap goes with the domain.
    virsh("detach-device", domain["name"], str(nic), check=False)
    virsh("destroy", domain["name"])
    t.wait_for(lambda o: o["type"] == "tap_gone" and o["ifname"] == hot, 60)
    lines, table = t.stop(settle=1.0)
    assert not [r for r in table["rows"] if r["pid"] == qemu]
    send = events_of(lines, "scm_send", pid=domain["libvirtd"])
    assert send and hot in send[0]["ifnames"]
    assert not tapkit.truth([qemu])                             # QEMU is gone
    assert len(events_of(lines, "tap_gone")) >= 2              # both of its taps
    assert os.path.exists(f"/sys/class/net/{domain['bridge']}")
