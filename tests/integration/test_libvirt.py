"""Real libvirtd starting a real QEMU (TCG, diskless), and what it does with taps.

Each test writes a domain (`<domain type='qemu'>`, no disk), starts it with virsh and
compares the tracer's table with the kernel (tapkit.truth) and its lineage with what
libvirt and QEMU did: the tap libvirtd makes for a bridge or `ethernet` NIC, the
fds of a multi-queue NIC, hot-plug and a real unplug, a macvtap (`direct`) NIC, and
`taptrace ls` naming all of it without BPF.

The daemons are started here when they are not running (no systemd): `virtlogd -d`,
`libvirtd -d`. Every domain, bridge, dummy link and tap made here is removed even on
failure.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import tapkit
from conftest import ROOT, events_of, need_root, table_triples

VIRSH = ["virsh", "-q", "-c", "qemu:///system"]
pytestmark = pytest.mark.skipif(
    shutil.which("libvirtd") is None or shutil.which("qemu-system-x86_64") is None,
    reason="libvirt-daemon-system and qemu-system-x86 are not installed")

MAC1, MAC2 = "52:54:00:7a:00:01", "52:54:00:7a:00:02"


def host_mac(guest_mac: str) -> str:
    """libvirt gives the host side of a tap the guest's MAC with fe: in front."""
    return "fe" + guest_mac[2:]


# ---- domain XML -----------------------------------------------------------------

def domain_xml(name: str, nics: list[str], machine: str = "pc", root_ports: int = 0,
               native_pcie_hotplug: bool = False) -> str:
    """A diskless TCG domain with these NICs and nothing else (no USB, no balloon).

    q35: `root_ports` spare pcie-root-ports; native_pcie_hotplug turns QEMU's ACPI
    hotplug of root ports off, so the ports' own PCIe slot logic handles it."""
    ports = ("<controller type='pci' model='pcie-root'/>"
             + "<controller type='pci' model='pcie-root-port'/>" * root_ports
             if machine == "q35" else "")
    extra = ("<qemu:commandline><qemu:arg value='-global'/>"
             "<qemu:arg value='ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off'/>"
             "</qemu:commandline>") if native_pcie_hotplug else ""
    return f"""<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>64</memory>
  <vcpu>1</vcpu>
  <os><type arch='x86_64' machine='{machine}'>hvm</type></os>
  <features><acpi/></features>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    {ports}
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
    {''.join(nics)}
  </devices>
  {extra}
</domain>"""


def bridge_nic(bridge: str, mac: str, queues: int | None = None) -> str:
    # driver name='qemu': virtio in QEMU itself (this host has no /dev/vhost-net)
    driver = f"<driver name='qemu' queues='{queues}'/>" if queues else ""
    return (f"<interface type='bridge'><source bridge='{bridge}'/><mac address='{mac}'/>"
            f"<model type='virtio'/>{driver}</interface>")


def ethernet_nic(dev: str, mac: str) -> str:
    return (f"<interface type='ethernet'><target dev='{dev}'/><mac address='{mac}'/>"
            "<model type='virtio'/></interface>")


def direct_nic(parent: str, mac: str) -> str:
    return (f"<interface type='direct'><source dev='{parent}' mode='bridge'/>"
            f"<mac address='{mac}'/><model type='virtio'/></interface>")


# ---- the host: daemons, links, domains ------------------------------------------

def virsh(*args: str, check: bool = True) -> str:
    out = subprocess.run([*VIRSH, *args], capture_output=True, text=True, timeout=180,
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


@dataclass
class Domain:
    name: str
    qemu: int                  # QEMU's pid
    libvirtd: int
    tmp: Path

    def _file(self, xml: str) -> str:
        path = self.tmp / f"{tapkit.unique_name('dev')}.xml"
        path.write_text(xml)
        return str(path)

    def attach(self, xml: str) -> None:
        virsh("attach-device", self.name, self._file(xml))

    def detach(self, xml: str) -> None:
        virsh("detach-device", self.name, self._file(xml))

    def interfaces(self) -> int:
        return virsh("dumpxml", self.name).count("<interface ")


@dataclass
class Host:
    libvirtd: int
    tmp: Path
    links: list[str] = field(default_factory=list)
    domains: list[str] = field(default_factory=list)

    def link(self, prefix: str, kind: str | None = None) -> str:
        """A unique name, removed at the end; with kind, `ip link add` it and up it
        (veth: with its peer NAMEp, which goes with it)."""
        name = tapkit.unique_name(prefix)
        self.links.append(name)
        if kind is not None:
            peer = ["peer", "name", f"{name}p"] if kind == "veth" else []
            subprocess.run(["ip", "link", "add", name, "type", kind, *peer], check=True)
            subprocess.run(["ip", "link", "set", name, "up"], check=True)
        return name

    def start(self, *nics: str, paused: bool = False, **machine) -> Domain:
        name = tapkit.unique_name("ttvm")
        xml = self.tmp / f"{name}.xml"
        xml.write_text(domain_xml(name, list(nics), **machine))
        self.domains.append(name)
        virsh("create", str(xml), *(["--paused"] if paused else []))
        with open(f"/run/libvirt/qemu/{name}.pid") as f:
            return Domain(name, int(f.read().strip()), self.libvirtd, self.tmp)

    def cleanup(self) -> None:
        for name in self.domains:
            virsh("destroy", name, check=False)
        for name in reversed(self.links):
            tapkit.delete_link(name)


@pytest.fixture
def host(libvirtd, tmp_path):
    h = Host(libvirtd, tmp_path)
    try:
        yield h
    finally:
        h.cleanup()


# ---- reading what happened -------------------------------------------------------

def netdev_fds(pid: int) -> list[int]:
    """The tap fds on QEMU's command line (libvirt's JSON -netdev: fd or fds=a:b)."""
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().decode().split("\0")
    fds = []
    for opt, val in itertools.pairwise(argv):
        if opt == "-netdev" and val.startswith("{"):
            nd = json.loads(val)
            fds += [int(n) for n in (nd.get("fds") or nd.get("fd", "")).split(":") if n]
    return fds


def fork_chain(lines: list[dict], pid: int, ifname: str) -> list[int]:
    """The processes ifname's fd went through by fork to reach pid, oldest first."""
    parent = {o["child_pid"]: o["pid"] for o in events_of(lines, "fork")
              if ifname in o["ifnames"]}
    chain = [pid]
    while chain[0] in parent:
        chain.insert(0, parent[chain[0]])
    return chain


def row_of(table: dict, pid: int, fd: int | None = None) -> dict:
    rows = [r for r in table["rows"] if r["pid"] == pid and fd in (None, r["fd"])]
    assert len(rows) == 1, rows
    return rows[0]


# ---- domain start ----------------------------------------------------------------

def test_domain_start_hands_the_tap_from_libvirtd_to_qemu(tracer, host):
    bridge = host.link("br", "bridge")
    t = tracer("-i", "vnet*")
    vm = host.start(bridge_nic(bridge, MAC1))
    probe = t.wait_for(lambda o: o["type"] == "tungetiff" and o["pid"] == vm.qemu, 60)
    ifname = probe["ifname"]
    truth = tapkit.truth([vm.qemu, vm.libvirtd])
    lines, table = t.stop()
    assert table_triples(table, [vm.qemu, vm.libvirtd]) == truth
    assert {n for _, _, n in truth} == {ifname}            # libvirtd kept no copy
    made = events_of(lines, "tunsetiff", ifname=ifname)
    assert made and made[0]["pid"] == vm.libvirtd and made[0]["created"] is True
    assert "vnet_hdr" in made[0]["flags"]
    # the daemonizing chain: libvirtd forks, the child forks again, the grandchild execs
    assert fork_chain(lines, vm.qemu, ifname)[0] == vm.libvirtd
    assert events_of(lines, "exec", pid=vm.qemu)[0]["kept"] == [probe["fd"]]
    assert events_of(lines, "close", pid=vm.libvirtd, ifname=ifname)
    row = row_of(table, vm.qemu)
    assert row["creator_pid"] == vm.libvirtd and row["how"] == "inherited"
    assert row["vm"] == vm.name and row["netdev"] == "hostnet0"
    assert row["guest_mac"] == MAC1 and row["master"] == bridge
    assert row["host_mac"] == host_mac(MAC1)


def test_ethernet_nic_libvirtd_creates_the_named_tap_for_qemu(tracer, host):
    """<interface type='ethernet'> with <target dev=NAME/>: libvirt (9.0) creates the
    tap NAME itself, with no bridge, and QEMU inherits it as for a bridge NIC."""
    dev = host.link("tteth")
    t = tracer("-i", dev)
    vm = host.start(ethernet_nic(dev, MAC1))
    fd = netdev_fds(vm.qemu)[0]
    t.wait_for(lambda o: o["type"] == "exec" and o["pid"] == vm.qemu, 60)
    truth = tapkit.truth([vm.qemu, vm.libvirtd])
    lines, table = t.stop()
    assert truth == {(vm.qemu, fd, dev)}                   # libvirtd kept no copy
    assert table_triples(table, [vm.qemu, vm.libvirtd]) == truth
    made = events_of(lines, "tunsetiff", ifname=dev)
    assert [(m["pid"], m["created"]) for m in made] == [(vm.libvirtd, True)]
    chain = fork_chain(lines, vm.qemu, dev)
    assert chain[0] == vm.libvirtd and len(chain) >= 2
    assert events_of(lines, "exec", pid=vm.qemu)[0]["kept"] == [fd]
    assert events_of(lines, "close", pid=vm.libvirtd, ifname=dev)
    row = row_of(table, vm.qemu)
    assert (row["creator_pid"], row["creator_comm"]) == (vm.libvirtd, "libvirtd")
    assert row["how"] == "inherited" and row["from_pid"] == chain[-2]
    assert (row["vm"], row["netdev"], row["guest_mac"]) == (vm.name, "hostnet0", MAC1)
    assert row["host_mac"] == host_mac(MAC1) and row["master"] is None


# ---- multi-queue -------------------------------------------------------------------

def test_multiqueue_nic_gives_qemu_one_fd_per_queue_of_one_tap(tracer, host):
    """<driver name='qemu' queues='2'/>: libvirtd opens /dev/net/tun twice, creates the
    IFF_MULTI_QUEUE tap with the first and attaches the second to it; QEMU inherits
    both (`"fds":"a:b"`) and detaches the second queue (TUNSETQUEUE) until the guest's
    driver asks for more than one queue pair, which a diskless guest never does."""
    bridge = host.link("br", "bridge")
    t = tracer("-i", "vnet*")
    vm = host.start(bridge_nic(bridge, MAC1, queues=2))
    fds = netdev_fds(vm.qemu)
    assert len(fds) == 2
    t.wait_for(lambda o: o["type"] == "exec" and o["pid"] == vm.qemu, 60)
    truth = tapkit.truth([vm.qemu, vm.libvirtd])
    lines, table = t.stop()
    ifnames = {n for _, _, n in truth}
    assert len(ifnames) == 1 and {(p, f) for p, f, _ in truth} == {(vm.qemu, f) for f in fds}
    (ifname,) = ifnames
    assert table_triples(table, [vm.qemu, vm.libvirtd]) == truth
    made = events_of(lines, "tunsetiff", pid=vm.libvirtd, ifname=ifname)
    assert [m["created"] for m in made] == [True, False]   # create, then attach a queue
    assert all("multi_queue" in m["flags"] for m in made)
    assert events_of(lines, "exec", pid=vm.qemu)[0]["kept"] == sorted(fds)
    parked = events_of(lines, "tunsetqueue", pid=vm.qemu)
    assert [(q["fd"], q["op"], q["ret"]) for q in parked] == [(fds[1], "detach", 0)]
    rows = [row_of(table, vm.qemu, fd) for fd in fds]
    assert len({r["file"] for r in rows}) == 2            # two open files, one tap
    assert [r["queue"] for r in rows] == ["attached", "detached"]
    for r in rows:
        assert (r["ifname"], r["creator_pid"], r["how"]) == (ifname, vm.libvirtd, "inherited")
        assert "multi_queue" in r["flags"]
        assert (r["netdev"], r["fd_role"], r["vm"]) == ("hostnet0", "tap", vm.name)


# ---- hot-plug and unplug -------------------------------------------------------------

def test_hotplug_then_unplug_on_a_native_pcie_port(tracer, host):
    """attach-device: libvirtd makes a tap and sends its fd to the running QEMU over
    the monitor socket (SCM_RIGHTS); detach-device: QEMU closes it and the tap goes.

    An unplug needs the guest's consent, and a diskless guest runs no OS to give it:
    on `pc` (ACPI hotplug, PIIX4) and on q35 by default (QEMU 7.2 has ACPI hotplug on
    for root ports) the unplug stays a pending request until the domain is destroyed.
    So this guest is q35 with ACPI hotplug of root ports off: the ports' native PCIe
    slot logic (QEMU hw/pci/pcie.c) takes the device out at once when its slot is
    powered off, and a slot that was empty at the last reset is. The guest is started
    paused, so no firmware runs and no reset powers the slot on; the unplug then
    completes with no guest at all."""
    bridge = host.link("br", "bridge")
    vm = host.start(bridge_nic(bridge, MAC1), machine="q35", root_ports=2,
                    native_pcie_hotplug=True, paused=True)
    ((_, first_fd, first),) = tapkit.truth([vm.qemu])
    t = tracer("-i", "vnet*")
    nic = bridge_nic(bridge, MAC2)
    vm.attach(nic)
    recv = t.wait_for(lambda o: o["type"] == "scm_recv" and o["pid"] == vm.qemu, 60)
    (hot,), (hot_fd,) = recv["ifnames"], recv["fds"]
    assert recv["from_pid"] == vm.libvirtd
    assert (vm.qemu, hot_fd, hot) in tapkit.truth([vm.qemu])
    vm.detach(nic)                                  # completes: no pending request
    t.wait_for(lambda o: o["type"] == "tap_gone" and o["ifname"] == hot, 60)
    truth = tapkit.truth([vm.qemu, vm.libvirtd])
    lines, table = t.stop()
    assert truth == {(vm.qemu, first_fd, first)}          # the first NIC stays
    assert table_triples(table, [vm.qemu, vm.libvirtd]) == truth
    assert vm.interfaces() == 1 and not os.path.exists(f"/sys/class/net/{hot}")
    send = events_of(lines, "scm_send", pid=vm.libvirtd)
    assert send and hot in send[0]["ifnames"]
    made = events_of(lines, "tunsetiff", ifname=hot)
    assert [(m["pid"], m["created"]) for m in made] == [(vm.libvirtd, True)]
    assert events_of(lines, "close", pid=vm.qemu, fd=hot_fd, ifname=hot)
    assert hot not in {tap["ifname"] for tap in table["taps"]}
    row = row_of(table, vm.qemu)
    assert (row["fd"], row["ifname"], row["guest_mac"]) == (first_fd, first, MAC1)


# ---- macvtap -------------------------------------------------------------------------

def test_direct_nic_hands_a_macvtap_fd_from_libvirtd_to_qemu(tracer, host):
    """<interface type='direct'> on a veth (this kernel has no dummy links): libvirtd creates macvtapN, opens
    /dev/tapN (the open is the attach: no TUNSETIFF creates anything) and QEMU
    inherits the fd. fdinfo does not name a macvtap: tapkit.truth asks TUNGETIFF on a
    pidfd_getfd copy of QEMU's fd."""
    parent = host.link("ttpar", "veth")
    me = os.getpid()
    t = tracer("-i", "macvtap*")
    vm = host.start(direct_nic(parent, MAC1))
    fd = netdev_fds(vm.qemu)[0]
    t.wait_for(lambda o: o["type"] == "exec" and o["pid"] == vm.qemu, 60)
    truth = tapkit.truth([vm.qemu, vm.libvirtd])
    lines, table = t.stop()
    ((_, _, mv),) = truth
    assert truth == {(vm.qemu, fd, mv)} and mv.startswith("macvtap")
    assert table_triples(table, [vm.qemu, vm.libvirtd, me]) == truth  # our copy closed
    ifindex = int(Path(f"/sys/class/net/{mv}/ifindex").read_text())
    opened = events_of(lines, "open", pid=vm.libvirtd, ifname=mv)
    assert [o["path"] for o in opened] == [f"/dev/tap{ifindex}"]
    assert not [m for m in events_of(lines, "tunsetiff", ifname=mv) if m["created"]]
    assert fork_chain(lines, vm.qemu, mv)[0] == vm.libvirtd
    assert events_of(lines, "exec", pid=vm.qemu)[0]["kept"] == [fd]
    assert events_of(lines, "close", pid=vm.libvirtd, ifname=mv)
    row = row_of(table, vm.qemu)
    assert (row["ifname"], row["kind"], row["path"]) == (mv, "macvtap", f"/dev/tap{ifindex}")
    assert (row["creator_pid"], row["how"]) == (vm.libvirtd, "inherited")
    assert (row["vm"], row["netdev"], row["guest_mac"]) == (vm.name, "hostnet0", MAC1)


# ---- ls ------------------------------------------------------------------------------

def test_ls_names_the_vm_nic_bridge_and_creator_without_bpf(host):
    """`taptrace ls` saw no TUNSETIFF, but the tap is in libvirt's status XML: its
    creator is libvirtd, inferred (`creator_from: "libvirt"`)."""
    bridge = host.link("br", "bridge")
    vm = host.start(bridge_nic(bridge, MAC1))
    out = subprocess.run([sys.executable, "-m", "tracer", "ls", "--json"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True)
    table = json.loads(out.stdout)
    truth = tapkit.truth([vm.qemu])
    assert table_triples(table, [vm.qemu]) == truth and len(truth) == 1
    row = row_of(table, vm.qemu)
    assert (row["vm"], row["netdev"], row["fd_role"]) == (vm.name, "hostnet0", "tap")
    assert (row["nic_model"], row["guest_mac"]) == ("virtio-net-pci", MAC1)
    assert (row["host_mac"], row["master"]) == (host_mac(MAC1), bridge)
    assert row["how"] == "snapshot"
    assert (row["creator_pid"], row["creator_comm"], row["creator_from"]) == (
        vm.libvirtd, "libvirtd", "libvirt")
