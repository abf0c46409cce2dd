"""Naming the VM and NIC behind a tap: QEMU's command line, libvirt's live
status XML, and the host side of the tap from /sys.

Pure parsers plus small readers; the rows they decorate come from the model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field

from . import procfs

LIBVIRT_RUN = "/run/libvirt/qemu"
LIBVIRTD_PIDFILE = "/run/libvirtd.pid"


def qemu_opts(text: str, implied: str) -> dict[str, str]:
    """QemuOpts `a,b=c,d=e,,f` -> {implied: a, b: c, d: "e,f"} (",," is a comma)."""
    parts, cur, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == "," and text[i + 1:i + 2] == ",":
            cur.append(",")
            i += 2
            continue
        if ch == ",":
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
        i += 1
    parts.append("".join(cur))
    out: dict[str, str] = {}
    for n, part in enumerate(parts):
        if "=" in part:
            k, v = part.split("=", 1)
            out[k] = v
        elif n == 0 and part:
            out[implied] = part
        elif part:
            out[part] = "on"
    return out


def option_dict(text: str, implied: str) -> dict[str, str]:
    """An option in either syntax: JSON (`{"type":"tap",...}`) or QemuOpts."""
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            return {}
        return {k: ("on" if v is True else "off" if v is False else str(v))
                for k, v in obj.items() if not isinstance(v, (dict, list))}
    return qemu_opts(text, implied)


def _fd_list(value: str | None) -> tuple[int | str, ...]:
    if not value:
        return ()
    out: list[int | str] = []
    for part in value.split(":"):
        out.append(int(part) if part.isdigit() else part)   # a name from QMP getfd
    return tuple(out)


@dataclass(frozen=True)
class Netdev:
    id: str
    type: str
    fds: tuple = ()            # tap fds (fd= or fds=), numbers or getfd names
    vhostfds: tuple = ()
    ifname: str | None = None  # ifname= (QEMU opened the tap itself)
    bridge: str | None = None  # -netdev bridge,br=
    nic_model: str | None = None
    guest_mac: str | None = None
    nic_id: str | None = None


@dataclass(frozen=True)
class QemuInfo:
    vm_name: str | None
    netdevs: tuple[Netdev, ...] = field(default_factory=tuple)

    def by_fd(self, fd: int) -> tuple[Netdev, str] | None:
        """Which netdev uses fd N, and as what ("tap" or "vhost")."""
        for nd in self.netdevs:
            if fd in nd.fds:
                return nd, "tap"
            if fd in nd.vhostfds:
                return nd, "vhost"
        return None

    def by_ifname(self, ifname: str) -> Netdev | None:
        return next((nd for nd in self.netdevs if nd.ifname == ifname), None)


def is_qemu(argv: tuple[str, ...] | list[str]) -> bool:
    return bool(argv) and os.path.basename(argv[0]).startswith("qemu-system")


def parse_qemu_cmdline(argv: tuple[str, ...] | list[str]) -> QemuInfo | None:
    """VM name, tap netdevs and the NICs using them, from QEMU's argv."""
    if not is_qemu(argv):
        return None
    name = None
    netdevs: dict[str, dict[str, str]] = {}
    devices: list[dict[str, str]] = []
    args = list(argv[1:])
    for i, a in enumerate(args[:-1]):
        val = args[i + 1]
        if a == "-name":
            opts = option_dict(val, "guest")
            name = opts.get("guest") or name
        elif a == "-netdev":
            opts = option_dict(val, "type")
            if "id" in opts:
                netdevs[opts["id"]] = opts
        elif a == "-device":
            opts = option_dict(val, "driver")
            if "netdev" in opts:
                devices.append(opts)
        elif a == "-nic":                     # -nic tap,fd=N,model=virtio,mac=...
            opts = option_dict(val, "type")
            nid = opts.get("id") or f"nic{len(netdevs)}"
            netdevs[nid] = {**opts, "id": nid}
            devices.append({"driver": opts.get("model", ""), "netdev": nid,
                            "mac": opts.get("mac", "")})
    out = []
    for nid, o in netdevs.items():
        dev = next((d for d in devices if d.get("netdev") == nid), {})
        out.append(Netdev(
            id=nid, type=o.get("type", ""),
            fds=_fd_list(o.get("fd") or o.get("fds")),
            vhostfds=_fd_list(o.get("vhostfd") or o.get("vhostfds")),
            ifname=o.get("ifname"), bridge=o.get("br"),
            nic_model=dev.get("driver") or None, guest_mac=dev.get("mac") or None,
            nic_id=dev.get("id") or None))
    return QemuInfo(name, tuple(out))


@dataclass(frozen=True)
class LibvirtNic:
    domain: str
    uuid: str | None
    target: str                # the host tap's name (vnetN)
    mac: str | None            # the guest's MAC
    alias: str | None          # net0, ua-...
    model: str | None
    type: str | None           # bridge, network, ethernet, direct
    managed: bool = True       # <target managed='no'/>: a tap libvirt was given, not made
    qemu_pid: int | None = None


def parse_libvirt_status(xml_text: str) -> list[LibvirtNic]:
    """The interfaces of a running domain from libvirt's status XML."""
    import xml.etree.ElementTree as ET  # only where libvirt runs: not on every `ls`

    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError:
        return []
    dom = root if root.tag == "domain" else root.find("domain")
    if dom is None:
        return []
    name = dom.findtext("name") or "?"
    uuid = dom.findtext("uuid")
    pid = root.get("pid") if root.tag == "domstatus" else None
    qemu_pid = int(pid) if pid and pid.isdigit() else None
    out = []
    for itf in dom.iterfind("devices/interface"):
        target = itf.find("target")
        if target is None or not target.get("dev"):
            continue
        mac, alias, model = itf.find("mac"), itf.find("alias"), itf.find("model")
        out.append(LibvirtNic(name, uuid, target.get("dev"),
                              mac.get("address") if mac is not None else None,
                              alias.get("name") if alias is not None else None,
                              model.get("type") if model is not None else None,
                              itf.get("type"), target.get("managed") != "no", qemu_pid))
    return out


def libvirt_nics(run_dir: str = LIBVIRT_RUN) -> dict[str, LibvirtNic]:
    """ifname -> the libvirt NIC behind it, for every running domain readable here."""
    out: dict[str, LibvirtNic] = {}
    try:
        names = os.listdir(run_dir)
    except OSError:
        return out
    for n in names:
        if not n.endswith(".xml"):
            continue
        try:
            with open(os.path.join(run_dir, n), encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        for nic in parse_libvirt_status(text):
            out[nic.target] = nic
    return out


@dataclass(frozen=True)
class HostSide:
    ifname: str
    mac: str | None
    master: str | None         # bridge or OVS port's master
    operstate: str | None
    ifindex: int | None


def _read_bytes(path: str) -> bytes | None:
    """A small /proc or /sys file: open, read, close (open() adds an fstat, an ioctl
    and a buffer per file, and this runs per tap and per holder)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def host_side(ifname: str, sysfs: str = "/sys/class/net") -> HostSide | None:
    d = os.path.join(sysfs, ifname)
    if not os.path.isdir(d):
        return None

    def read(name: str) -> str | None:
        raw = _read_bytes(os.path.join(d, name))
        if raw is None:
            return None
        return raw.decode("utf-8", "replace").strip() or None

    try:
        master = os.path.basename(os.readlink(os.path.join(d, "master")))
    except OSError:
        master = None
    idx = read("ifindex")
    return HostSide(ifname, read("address"), master, read("operstate"),
                    int(idx) if idx and idx.isdigit() else None)


def host_side_of_links(ifname: str, links: list[procfs.Link]) -> HostSide | None:
    """The host side of `ifname` among the devices of its namespace (rtnetlink)."""
    link = next((ln for ln in links if ln.ifname == ifname), None)
    if link is None:
        return None
    master = next((ln.ifname for ln in links if ln.ifindex == link.master), None)
    return HostSide(ifname, link.mac, master, link.operstate, link.ifindex)


class NetnsHostSides:
    """host_side() for a tap in another network namespace: that namespace's /sys is
    not the one mounted here (a `tap0` there is not the `tap0` here, and pasta's tap
    may be called `eth0` like the host's NIC), so ask rtnetlink inside it, entered
    through the holder's fd (TUNGETDEVNETNS) or else its /proc/PID/ns/net. One dump
    per namespace per call."""

    def __init__(self) -> None:
        self._links: dict[int, list[procfs.Link] | None] = {}

    def __call__(self, pid: int, fd: int, netns: int, ifname: str) -> HostSide | None:
        if netns not in self._links:
            self._links[netns] = procfs.links_of_netns(
                netns, [(pid, fd), f"/proc/{pid}/ns/net"])
        links = self._links[netns]
        return host_side_of_links(ifname, links) if links is not None else None


def libvirtd_pid(pidfile: str = LIBVIRTD_PIDFILE) -> int | None:
    """The running libvirtd's pid (from its pid file, checked against /proc)."""
    try:
        with open(pidfile) as f:
            pid = int(f.read().strip())
        with open(f"/proc/{pid}/comm") as f:
            return pid if f.read().strip() == "libvirtd" else None
    except (OSError, ValueError):
        return None


def proc_cmdline(pid: int) -> tuple[str, ...] | None:
    raw = _read_bytes(f"/proc/{pid}/cmdline")
    if raw is None:
        return None
    return tuple(a.decode("utf-8", "surrogateescape") for a in raw.split(b"\0")[:-1])


def _bridge_netdev(q: QemuInfo, master: str | None) -> Netdev | None:
    """`-netdev bridge,br=BR` (qemu-bridge-helper made the tap and sent its fd back, so
    no fd number is on the command line): the netdev on the tap's bridge, if only one is."""
    if master is None:
        return None
    hits = [nd for nd in q.netdevs if nd.type == "bridge" and (nd.bridge or "br0") == master]
    return hits[0] if len(hits) == 1 else None


def enrich_rows(rows: list[dict], cmdline_of=proc_cmdline, nics: dict[str, LibvirtNic] | None = None,
                host=host_side, libvirtd=libvirtd_pid, own_netns: int | None = None,
                host_in: Callable[[int, int, int, str], HostSide | None] | None = None,
                ) -> list[dict]:
    """Add VM, netdev, NIC model, both MACs, master to each row (in place; returned).

    `cmdline_of(pid)` gives a process's argv (or None). A row whose creator the trace
    did not see (a snapshot) but whose tap libvirt made for a running domain gets
    libvirtd as its creator, with `creator_from: "libvirt"` saying it is inferred.
    A row whose tap is in another network namespace than `own_netns` gets its host
    side from there (`host_in(pid, fd, netns, ifname)`), never from a namesake here,
    and no libvirt NIC (libvirt's taps are in its own namespace)."""
    nics = libvirt_nics() if nics is None else nics
    host_in = NetnsHostSides() if host_in is None else host_in
    daemon: list[int | None] = []
    qemu_cache: dict[int, QemuInfo | None] = {}
    host_cache: dict[tuple, HostSide | None] = {}
    for r in rows:
        pid, ifname = r["pid"], r.get("ifname")
        ns = r.get("netns")
        foreign = ns is not None and own_netns is not None and ns != own_netns
        if pid not in qemu_cache:
            argv = cmdline_of(pid)
            qemu_cache[pid] = parse_qemu_cmdline(argv) if argv else None
        q = qemu_cache[pid]
        # `-netdev fd=N` names an fd of the table QEMU started with, not a thread's own
        tid = r.get("tid")
        hit = q.by_fd(r["fd"]) if q and tid is None else None
        nd = hit[0] if hit else (q.by_ifname(ifname) if q and ifname else None)
        nic = nics.get(ifname) if ifname and not foreign else None
        key = (ns if foreign else None, ifname)
        if ifname and key not in host_cache:
            # (/proc/TID shows a thread's own table)
            host_cache[key] = (host_in(tid if tid is not None else pid, r["fd"], ns, ifname)
                               if foreign else host(ifname))
        hs = host_cache.get(key) if ifname else None
        if nd is None and q is not None and hs is not None:
            nd = _bridge_netdev(q, hs.master)
        r["creator_from"] = "trace" if r.get("creator_pid") is not None else None
        if r["creator_from"] is None and nic is not None and nic.managed:
            if not daemon:
                daemon.append(libvirtd())
            if daemon[0] is not None:
                r["creator_pid"], r["creator_comm"] = daemon[0], "libvirtd"
                r["creator_from"] = "libvirt"
        r["vm"] = (q.vm_name if q else None) or (nic.domain if nic else None)
        # libvirt names a NIC's netdev "host" + its alias (net1 -> hostnet1), also for a
        # hot-plugged NIC that QEMU's command line never shows
        r["netdev"] = nd.id if nd else (f"host{nic.alias}" if nic and nic.alias else None)
        r["fd_role"] = hit[1] if hit else ("tap" if nd else None)
        r["nic_model"] = (nd.nic_model if nd else None) or (nic.model if nic else None)
        r["guest_mac"] = (nd.guest_mac if nd else None) or (nic.mac if nic else None)
        r["nic_alias"] = nic.alias if nic else (nd.nic_id if nd else None)
        r["host_mac"] = hs.mac if hs else None
        r["master"] = hs.master if hs else None
        r["operstate"] = hs.operstate if hs else None
    return rows
