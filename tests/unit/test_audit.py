"""`taptrace audit` as a specification.

Each scenario drives the real model (records as the BPF side sends them, or a
/proc snapshot), enriches its rows with the real enrich code (fake command lines,
libvirt NICs and /sys), and states the findings: (kind, ifname, pid, fd) and what
each says. Live scenarios also state the creator, the role of the leaking holder
and the chain of holders that took the tap to the VM.
"""

from __future__ import annotations

import errno
import itertools

from tracer import audit as au
from tracer import events as ev
from tracer.enrich import HostSide, LibvirtNic, enrich_rows
from tracer.model import Model
from tracer.procfs import FdInfo, ProcInfo, Snapshot, TapInfo

TAP = ev.IFF_TAP | ev.IFF_NO_PI
MQ = TAP | ev.IFF_MULTI_QUEUE
SIGCHLD = 17
QEMU = "/usr/bin/qemu-system-x86_64"


def qemu_argv(name: str, fd: int | str, netdev: str = "hostnet0") -> tuple[str, ...]:
    return (QEMU, "-name", f"guest={name},debug-threads=on", "-S",
            "-netdev", f"tap,fd={fd},id={netdev}",
            "-device", f"virtio-net-pci,netdev={netdev},mac=52:54:00:00:00:01")


class Host:
    """A model fed with records or a snapshot, plus what /proc and /sys would say."""

    def __init__(self) -> None:
        self.m = Model()
        self.argv: dict[int, tuple[str, ...]] = {}
        self.comm: dict[int, str] = {}
        self.masters: dict[str, str | None] = {}     # taps present in /sys
        self.nics: dict[str, LibvirtNic] = {}
        self.clock = itertools.count(1_000)
        self.reports: list[dict] = []
        self.libvirtd: int | None = None             # /run/libvirtd.pid

    # ---- records ----------------------------------------------------------
    def apply(self, cls, pid: int, **kw) -> list[dict]:
        out = self.m.apply(cls(ts=next(self.clock), pid=pid, tid=pid,
                               comm=self.comm.get(pid, "proc"), **kw))
        self.reports.extend(out)
        return out

    def tap(self, pid: int, fd: int, name: str, flags: int = TAP) -> None:
        self.apply(ev.Open, pid, fd=fd, path="/dev/net/tun", flags=0o2)
        self.apply(ev.TunIoctl, pid, fd=fd, cmd=ev.TUNSETIFF, ret=0, ifname=name, value=flags)
        self.masters.setdefault(name, None)

    def fork(self, pid: int, child: int) -> None:
        self.apply(ev.Fork, pid, child=child, flags=SIGCHLD)
        self.comm[child] = self.comm.get(pid, "proc")
        self.argv[child] = self.argv.get(pid, ("proc",))

    def exec(self, pid: int, comm: str, argv: tuple[str, ...]) -> None:
        self.comm[pid], self.argv[pid] = comm, argv
        self.apply(ev.Exec, pid, old_pid=pid)

    def close(self, pid: int, fd: int) -> None:
        self.apply(ev.Close, pid, fd=fd)

    def send(self, pid: int, fds: list[int]) -> None:
        self.apply(ev.ScmSend, pid, sock=9, fds=tuple(fds))

    def recv(self, pid: int, fds: list[int]) -> None:
        self.apply(ev.ScmRecv, pid, sock=9, fds=tuple(fds), cloexec=False)

    def getiff(self, pid: int, fd: int, ret: int = 0, ifname: str = "") -> list[dict]:
        return self.apply(ev.TunIoctl, pid, fd=fd, cmd=ev.TUNGETIFF, ret=ret, ifname=ifname,
                          value=0)

    # ---- a snapshot --------------------------------------------------------
    def load(self, procs: dict[int, tuple[str, ...]], fds: list[tuple[int, int, str]],
             taps: dict[str, int], files: list[list[tuple[int, int]]],
             owners: dict[str, tuple[int | None, int | None]] | None = None) -> None:
        """procs: pid -> argv; fds: (pid, fd, ifname); files: (pid, fd) groups (kcmp);
        owners: ifname -> (owner, group) as /sys shows them (default: none)."""
        owners = owners or {}
        for pid, argv in procs.items():
            self.argv[pid] = argv
            self.comm[pid] = argv[0].rsplit("/", 1)[-1][:15]
        for name in taps:
            self.masters.setdefault(name, None)
        self.m.load(Snapshot(
            procs={p: ProcInfo(p, 1, self.comm[p], a, 0) for p, a in procs.items()},
            fds=[FdInfo(p, fd, "/dev/net/tun", n, False, 0o2) for p, fd, n in fds],
            taps={n: TapInfo(n, 10 + i, "tap" if fl & ev.IFF_TAP else "tun", fl,
                             bool(fl & ev.IFF_PERSIST), bool(fl & ev.IFF_MULTI_QUEUE), False,
                             *owners.get(n, (None, None)), None)
                  for i, (n, fl) in enumerate(taps.items())},
            files=files, tables=[[p] for p in procs]))

    # ---- the audit -----------------------------------------------------------
    def host_side(self, name: str) -> HostSide | None:
        if name not in self.masters:
            return None
        return HostSide(name, "fe:54:00:00:00:01", self.masters[name], "up", 5)

    def audit(self, live: bool = True, probes=(), strict: bool = False,
              kept: list | None = None) -> list[au.Finding]:
        rows = enrich_rows(self.m.rows(), cmdline_of=self.argv.get, nics=self.nics,
                           host=self.host_side, libvirtd=lambda: self.libvirtd)
        taps = self.m.tap_list()
        facts = au.gather(rows, taps, self.nics, cmdline_of=self.argv.get,
                          host=self.host_side, run_dir="/nonexistent")
        files = self.m.files

        def chain_of(file: int, pid: int) -> list:
            return Model.chain(files[file], pid) if file in files else []

        return au.audit(rows, taps, self.nics, facts, probes=probes,
                        chain_of=chain_of if live else au.no_chain, strict=strict, kept=kept)


def keys(findings: list[au.Finding]) -> list[tuple]:
    return [(f.kind, f.ifname, f.pid, f.fd) for f in findings]


def hops(chain: list[dict]) -> list[tuple]:
    return [(h["op"], h["pid"], h["fd"]) for h in chain]


def libvirt_start(h: Host, close_after: bool) -> None:
    """libvirtd(100) makes vnet3 at fd 27, forks 101, which execs QEMU keeping it."""
    h.comm[100], h.argv[100] = "libvirtd", ("/usr/sbin/libvirtd",)
    h.tap(100, 27, "vnet3")
    h.fork(100, 101)
    h.exec(101, "qemu-system-x86", qemu_argv("web1", 27))
    if close_after:
        h.close(100, 27)


# =============================================================================
# leak
# =============================================================================

def test_a_creator_that_keeps_the_tap_after_the_handoff_leaks_it():
    h = Host()
    libvirt_start(h, close_after=False)
    [f] = h.audit()
    assert keys([f]) == [("leak", "vnet3", 100, 27)]
    assert f.comm == "libvirtd"
    assert f.message == ("vnet3: libvirtd[100] fd 27 (its creator) still holds the tap that "
                         "qemu-system-x86[101] (VM web1) uses")
    d = f.detail
    assert (d["role"], d["creator_pid"], d["vm"], d["vm_pid"], d["vm_fd"], d["vm_from"]) == (
        "creator", 100, "web1", 101, 27, "cmdline")
    assert hops(d["chain"]) == [("open", 100, 27), ("fork", 101, 27), ("exec", 101, 27)]


def test_the_creator_closing_its_copy_is_clean():
    h = Host()
    libvirt_start(h, close_after=True)
    assert h.audit() == []


def test_a_copy_kept_in_a_thread_s_own_fd_table_is_a_leak_of_that_thread():
    # a libvirtd thread unshared its fd table (a copy with fd 27) before libvirtd
    # closed its own fd 27: the thread's copy still holds the VM's tap
    h = Host()
    h.comm[100], h.argv[100] = "libvirtd", ("/usr/sbin/libvirtd",)
    h.tap(100, 27, "vnet3")
    h.m.apply(ev.Unshare(ts=next(h.clock), pid=100, tid=105, comm="rpc-worker",
                         flags=ev.CLONE_FILES))
    h.fork(100, 101)
    h.exec(101, "qemu-system-x86", qemu_argv("web1", 27))
    h.close(100, 27)
    [f] = h.audit()
    assert keys([f]) == [("leak", "vnet3", 100, 27)]
    assert f.message == ("vnet3: libvirtd[100] thread 105 fd 27 (its creator) still holds "
                         "the tap that qemu-system-x86[101] (VM web1) uses")
    assert (f.detail["tid"], f.detail["role"], f.detail["vm_pid"]) == (105, "creator", 101)
    assert f.fields()["tid"] == 105


def test_an_intermediate_that_passed_the_tap_on_and_kept_it_leaks_it():
    # an orchestrator (100) makes the tap, a helper (101) inherits it and hot-plugs
    # it into a running QEMU (200) over SCM_RIGHTS, but never closes its own copy
    h = Host()
    h.comm[100], h.argv[100] = "orchestrator", ("orchestrator",)
    h.comm[200], h.argv[200] = "qemu-system-x86", qemu_argv("db", "fd-net1", "net1")
    h.apply(ev.Exec, 200, old_pid=200)          # QEMU is known to the model
    h.tap(100, 5, "tap7")
    h.fork(100, 101)
    h.close(100, 5)
    h.send(101, [5])
    h.recv(200, [40])
    [f] = h.audit()
    assert keys([f]) == [("leak", "tap7", 101, 5)]
    assert f.detail["role"] == "intermediate"
    assert f.detail["vm_from"] == "holder"      # QMP getfd: no fd number to match
    assert hops(f.detail["chain"]) == [("open", 100, 5), ("fork", 101, 5), ("recv", 200, 40)]
    assert "(passed it on; created by orchestrator[100])" in f.message


def test_a_side_copy_that_nobody_closed_is_a_leak_off_the_way():
    h = Host()
    h.comm[100], h.argv[100] = "libvirtd", ("/usr/sbin/libvirtd",)
    h.tap(100, 27, "vnet3")
    h.fork(100, 150)                            # a helper child that keeps every fd
    h.fork(100, 101)
    h.exec(101, "qemu-system-x86", qemu_argv("web1", 27))
    h.close(100, 27)
    [f] = h.audit()
    assert keys([f]) == [("leak", "vnet3", 150, 27)]
    assert f.detail["role"] == "copy"
    assert 150 not in {p for _, p, _ in hops(f.detail["chain"])}


def test_from_a_snapshot_a_leak_is_known_by_sharing_alone():
    h = Host()
    h.load({10: ("python3", "run-vm.py"), 11: qemu_argv("web1", 3)},
           [(10, 3, "tt0"), (11, 3, "tt0")], {"tt0": TAP}, [[(10, 3), (11, 3)]])
    [f] = h.audit(live=False)
    assert keys([f]) == [("leak", "tt0", 10, 3)]
    assert f.message == "tt0: python3[10] fd 3 still holds the tap that qemu-system-x86[11] (VM web1) uses"
    assert f.detail["role"] is None and "chain" not in f.detail


def test_libvirt_names_the_vm_process_by_the_domain_pid():
    h = Host()
    libvirt_start(h, close_after=False)
    h.nics["vnet3"] = LibvirtNic("web1", None, "vnet3", "52:54:00:00:00:01", "net0",
                                 "virtio", "bridge", True, qemu_pid=101)
    [f] = h.audit()
    assert (f.kind, f.pid, f.detail["vm_from"], f.detail["vm"]) == ("leak", 100, "libvirt",
                                                                    "web1")


def test_from_a_snapshot_libvirt_names_the_creator_but_not_the_way():
    # libvirtd (812) made vnet3 for domain web1 (QEMU 101); a tool (900) took a copy
    # of QEMU's fd (pidfd_getfd) and kept it, and libvirtd kept its own too
    h = Host()
    h.libvirtd = 812
    h.load({812: ("/usr/sbin/libvirtd",), 101: qemu_argv("web1", 29), 900: ("grab",)},
           [(812, 27, "vnet3"), (101, 29, "vnet3"), (900, 4, "vnet3")], {"vnet3": TAP},
           [[(812, 27), (101, 29), (900, 4)]])
    h.nics["vnet3"] = LibvirtNic("web1", None, "vnet3", None, "net0", "virtio", "bridge",
                                 True, qemu_pid=101)
    found = h.audit(live=False)
    assert keys(found) == [("leak", "vnet3", 812, 27), ("leak", "vnet3", 900, 4)]
    assert [(f.detail["role"], f.detail["creator_from"]) for f in found] == [
        ("creator", "libvirt"), (None, "libvirt")]
    assert found[1].message == ("vnet3: grab[900] fd 4 (created by libvirtd[812]) still holds "
                                "the tap that qemu-system-x86[101] (VM web1) uses")


# =============================================================================
# foreign_holder
# =============================================================================

def test_a_second_queue_attached_by_another_process_is_a_foreign_holder():
    h = Host()
    h.comm[200], h.argv[200] = "qemu-system-x86", ("proc",)
    h.tap(200, 30, "mq0", MQ)
    h.exec(200, "qemu-system-x86", qemu_argv("web1", 30))
    h.comm[300], h.argv[300] = "sniffer", ("/usr/local/bin/sniffer",)
    h.tap(300, 4, "mq0", MQ)                    # TUNSETIFF on an existing multi-queue tap
    [f] = h.audit()
    assert keys([f]) == [("foreign_holder", "mq0", 300, 4)]
    assert f.detail["vm_holds"] is True and f.detail["holder_is_vm"] is False
    assert f.message == ("mq0: sniffer[300] fd 4 holds the tap of qemu-system-x86[200] "
                         "(VM web1), through an open file of its own, not the VM's")
    assert hops(f.detail["chain"]) == [("open", 300, 4)]


def test_another_vms_qemu_holding_a_libvirt_tap_is_a_foreign_holder():
    # libvirt: vnet5 belongs to domain db (QEMU 400); QEMU 500 of VM other holds it
    h = Host()
    h.load({400: qemu_argv("db", 31), 500: qemu_argv("other", 9)},
           [(400, 31, "vnet5"), (500, 9, "vnet5")], {"vnet5": MQ}, [[(400, 31)], [(500, 9)]])
    h.nics["vnet5"] = LibvirtNic("db", None, "vnet5", None, "net0", "virtio", "bridge",
                                 True, qemu_pid=400)
    [f] = h.audit(live=False)
    assert keys([f]) == [("foreign_holder", "vnet5", 500, 9)]
    assert f.detail["holder_vm"] == "other" and f.detail["vm"] == "db"
    assert "(itself a VM other)" in f.message


def test_a_process_holding_a_vms_tap_that_the_vm_does_not_hold_is_a_foreign_holder():
    h = Host()
    h.load({600: ("/usr/sbin/libvirtd",)}, [(600, 28, "vnet5")], {"vnet5": TAP}, [[(600, 28)]])
    h.argv[400] = qemu_argv("db", 31)           # running, holding no fd of vnet5
    h.nics["vnet5"] = LibvirtNic("db", None, "vnet5", None, "net0", "virtio", "bridge",
                                 True, qemu_pid=400)
    [f] = h.audit(live=False)
    assert keys([f]) == [("foreign_holder", "vnet5", 600, 28)]
    assert f.detail["vm_holds"] is False
    assert f.message.endswith("holds the tap of VM db (QEMU pid 400), which does not hold it")


def test_a_tap_no_vm_claims_held_by_its_program_is_fine():
    h = Host()
    h.comm[700], h.argv[700] = "openvpn", ("/usr/sbin/openvpn",)
    h.tap(700, 6, "tun0", ev.IFF_TUN | ev.IFF_NO_PI)
    h.fork(700, 701)                            # shared with a child: no VM, no leak
    assert h.audit() == []


# =============================================================================
# orphan and vm_gone
# =============================================================================

def test_a_persistent_tap_nobody_holds_is_an_orphan():
    h = Host()
    h.load({}, [], {"keep0": TAP | ev.IFF_PERSIST}, [])     # no owner, no group, no history
    [f] = h.audit(live=False)
    assert keys([f]) == [("orphan", "keep0", None, None)]
    assert f.message == "keep0: persistent tap, no process holds it"
    assert f.detail == {"persist": True, "owner": None, "group": None, "kept_on_purpose": []}


def test_a_persistent_tun_is_called_a_tun():
    h = Host()
    h.load({}, [], {"tun7": ev.IFF_TUN | ev.IFF_NO_PI | ev.IFF_PERSIST}, [])
    [f] = h.audit(live=False)
    assert f.message == "tun7: persistent tun, no process holds it"


def test_a_tap_made_persistent_by_another_process_than_its_creator_is_an_orphan():
    h = Host()
    h.tap(10, 3, "keep0")
    h.fork(10, 11)
    h.apply(ev.TunIoctl, 11, fd=3, cmd=ev.TUNSETPERSIST, ret=0, ifname="", value=1)
    h.apply(ev.Exit, 11)
    h.close(10, 3)
    [tap] = h.m.tap_list()
    assert (tap["created_by"], tap["persist_by"], tap["persist"]) == (10, 11, True)
    [f] = h.audit()
    assert keys([f]) == [("orphan", "keep0", None, None)]
    assert f.detail["kept_on_purpose"] == []


def test_a_holderless_tap_on_a_bridge_is_vm_gone_not_orphan():
    h = Host()
    h.load({}, [], {"vnet9": TAP | ev.IFF_PERSIST}, [])
    h.masters["vnet9"] = "virbr0"
    [f] = h.audit(live=False)
    assert keys([f]) == [("vm_gone", "vnet9", None, None)]
    assert f.message == "vnet9: a port of virbr0 that no VM holds (no process holds it)"
    assert f.detail == {"master": "virbr0", "holders": [], "persist": True, "owner": None,
                        "group": None, "kept_on_purpose": []}


def test_a_bridged_tap_left_with_libvirtd_after_qemu_exited_is_vm_gone():
    h = Host()
    libvirt_start(h, close_after=False)
    h.masters["vnet3"] = "virbr0"
    assert [f.kind for f in h.audit()] == ["leak"]     # while the VM runs
    h.apply(ev.Exit, 101)
    [f] = h.audit()
    assert keys([f]) == [("vm_gone", "vnet3", None, None)]
    assert f.message == ("vnet3: a port of virbr0 that no VM holds "
                         "(held only by libvirtd[100] fd 27)")
    assert f.detail["holders"] == [[100, 27]]


def test_a_bridged_tap_its_vm_holds_is_fine():
    h = Host()
    libvirt_start(h, close_after=True)
    h.masters["vnet3"] = "virbr0"
    assert h.audit() == []


def test_a_tap_gone_from_sys_is_not_reported():
    h = Host()
    h.tap(10, 3, "keep0")
    h.apply(ev.TunIoctl, 10, fd=3, cmd=ev.TUNSETPERSIST, ret=0, ifname="", value=1)
    h.close(10, 3)
    assert [f.kind for f in h.audit(strict=True)] == ["orphan"]
    del h.masters["keep0"]                       # `ip link del keep0`: no record of it
    assert h.audit(strict=True) == []


def test_a_bridged_tap_used_by_qemu_only_through_vhost_is_fine():
    h = Host()
    h.comm[200], h.argv[200] = "qemu-system-x86", qemu_argv("web1", 30)
    h.tap(200, 30, "vnet4")
    h.apply(ev.Open, 200, fd=31, path="/dev/vhost-net", flags=0o2)
    h.apply(ev.VhostBackend, 200, fd=31, index=0, backend_fd=30, ret=0)
    h.close(200, 30)                             # the vring still holds the tap's file
    h.masters["vnet4"] = "br0"
    assert h.audit() == []


# =============================================================================
# persistent taps kept on purpose (tunctl -u, openvpn --mktun) and --strict
# =============================================================================

TUN = ev.IFF_TUN | ev.IFF_NO_PI
NOBODY = 65534


def tunctl(h: Host, pid: int, name: str, owner: int | None = NOBODY,
           group: int | None = None) -> None:
    """What `tunctl -t NAME -u nobody [-g G]` does (strace): TUNSETIFF, TUNSETPERSIST 1,
    TUNSETOWNER [, TUNSETGROUP], exit."""
    h.comm[pid] = "tunctl"
    h.tap(pid, 3, name, TAP)
    h.apply(ev.TunIoctl, pid, fd=3, cmd=ev.TUNSETPERSIST, ret=0, ifname="", value=1)
    if owner is not None:
        h.apply(ev.TunIoctl, pid, fd=3, cmd=ev.TUNSETOWNER, ret=0, ifname="", value=owner)
    if group is not None:
        h.apply(ev.TunIoctl, pid, fd=3, cmd=ev.TUNSETGROUP, ret=0, ifname="", value=group)
    h.apply(ev.Exit, pid)


def mktun(h: Host, pid: int, name: str) -> None:
    """What `openvpn --mktun --dev NAME` does (strace): a tun, TUNSETPERSIST 1, close."""
    h.comm[pid] = "openvpn"
    h.tap(pid, 3, name, TUN)
    h.apply(ev.TunIoctl, pid, fd=3, cmd=ev.TUNSETPERSIST, ret=0, ifname="", value=1)
    h.close(pid, 3)
    h.apply(ev.Exit, pid)


def test_tunctl_with_an_owner_is_kept_on_purpose_not_an_orphan():
    h = Host()
    tunctl(h, 40, "tap0")
    [tap] = h.m.tap_list()
    assert (tap["kind"], tap["persist"], tap["files"], tap["owner"], tap["group"],
            tap["created_by"], tap["persist_by"]) == ("tap", True, 0, NOBODY, None, 40, 40)
    kept: list = []
    assert h.audit(kept=kept) == [] and kept == ["tap0"]
    [f] = h.audit(strict=True)
    assert keys([f]) == [("orphan", "tap0", None, None)]
    assert f.message == ("tap0: persistent tap, no process holds it (kept on purpose: "
                         "owner uid 65534; made persistent by its creator tunctl[40])")
    assert f.detail == {"persist": True, "owner": NOBODY, "group": None,
                        "kept_on_purpose": ["owner", "persist_by_creator"]}


def test_openvpn_mktun_is_a_tun_its_creator_made_persistent():
    h = Host()
    mktun(h, 50, "tun0")
    [tap] = h.m.tap_list()
    assert (tap["kind"], tap["owner"], tap["group"], tap["persist_by"]) == (
        "tun", None, None, 50)
    assert h.audit() == []
    [f] = h.audit(strict=True)
    assert f.message == ("tun0: persistent tun, no process holds it (kept on purpose: "
                         "made persistent by its creator openvpn[50])")
    assert f.detail["kept_on_purpose"] == ["persist_by_creator"]


def test_from_a_snapshot_only_an_owner_or_a_group_tells_intent():
    h = Host()
    h.load({}, [], {"tap0": TAP | ev.IFF_PERSIST, "tap1": TAP | ev.IFF_PERSIST,
                    "tun0": TUN | ev.IFF_PERSIST},
           [], owners={"tap0": (NOBODY, None), "tap1": (None, 100)})
    assert [(t["ifname"], t["owner"], t["group"], t["persist_by"]) for t in h.m.tap_list()] == [
        ("tap0", NOBODY, None, None), ("tap1", None, 100, None), ("tun0", None, None, None)]
    kept: list = []
    assert keys(h.audit(live=False, kept=kept)) == [("orphan", "tun0", None, None)]
    assert kept == ["tap0", "tap1"]
    found = h.audit(live=False, strict=True)
    assert [(f.ifname, f.detail["kept_on_purpose"]) for f in found] == [
        ("tap0", ["owner"]), ("tap1", ["group"]), ("tun0", [])]
    assert found[1].message == ("tap1: persistent tap, no process holds it "
                                "(kept on purpose: group gid 100)")


def test_owner_and_group_follow_the_ioctls_and_show_in_rows():
    h = Host()
    h.tap(10, 3, "tap0")
    assert (h.m.rows()[0]["owner"], h.m.rows()[0]["group"]) == (None, None)
    h.apply(ev.TunIoctl, 10, fd=3, cmd=ev.TUNSETOWNER, ret=0, ifname="", value=1000)
    h.apply(ev.TunIoctl, 10, fd=3, cmd=ev.TUNSETGROUP, ret=-errno.EPERM, ifname="", value=5)
    assert (h.m.rows()[0]["owner"], h.m.rows()[0]["group"]) == (1000, None)  # EPERM: unset
    h.apply(ev.TunIoctl, 10, fd=3, cmd=ev.TUNSETGROUP, ret=0, ifname="", value=5)
    [row] = h.m.rows()
    [tap] = h.m.tap_list()
    assert (row["owner"], row["group"], tap["owner"], tap["group"]) == (1000, 5, 1000, 5)


def test_a_held_tap_with_an_owner_is_no_finding_and_persist_off_forgets_intent():
    h = Host()
    h.tap(10, 3, "tap0")
    h.apply(ev.TunIoctl, 10, fd=3, cmd=ev.TUNSETPERSIST, ret=0, ifname="", value=1)
    assert h.audit(strict=True) == []               # held: nothing to say, strict or not
    h.apply(ev.TunIoctl, 10, fd=3, cmd=ev.TUNSETPERSIST, ret=0, ifname="", value=0)
    assert h.m.tap_list()[0]["persist_by"] is None
    h.fork(10, 11)                                  # a child makes it persistent again
    h.apply(ev.TunIoctl, 11, fd=3, cmd=ev.TUNSETPERSIST, ret=0, ifname="", value=1)
    h.apply(ev.Exit, 11)
    h.close(10, 3)
    assert keys(h.audit()) == [("orphan", "tap0", None, None)]


def test_a_failed_tunsetpersist_is_no_intent():
    h = Host()
    h.tap(10, 3, "tap0")
    h.apply(ev.TunIoctl, 10, fd=3, cmd=ev.TUNSETPERSIST, ret=-errno.EPERM, ifname="", value=1)
    assert h.m.tap_list()[0]["persist_by"] is None
    h.close(10, 3)
    assert h.m.tap_list() == []                     # not persistent: it went with its file


def test_a_holderless_owned_tap_on_a_bridge_is_kept_not_vm_gone_unless_strict():
    h = Host()
    h.load({}, [], {"tap9": TAP | ev.IFF_PERSIST}, [], owners={"tap9": (1000, None)})
    h.masters["tap9"] = "br0"                       # a user's VM tap, waiting for its VM
    kept: list = []
    assert h.audit(live=False, kept=kept) == [] and kept == ["tap9"]
    [f] = h.audit(live=False, strict=True)
    assert keys([f]) == [("vm_gone", "tap9", None, None)]
    assert f.message == ("tap9: a port of br0 that no VM holds (no process holds it) "
                         "(kept on purpose: owner uid 1000)")


def test_a_resync_keeps_who_made_a_tap_persistent():
    h = Host()
    tunctl(h, 40, "tap0", owner=None)
    snap = Snapshot(procs={}, fds=[], files=[], tables=[],
                    taps={"tap0": TapInfo("tap0", 12, "tap", TAP | ev.IFF_PERSIST, True, False,
                                          False, None, None, None)})
    h.m.resync(snap)
    [tap] = h.m.tap_list()
    assert (tap["created_by"], tap["persist_by"]) == (40, 40)
    assert h.audit() == []
    assert [f.detail["kept_on_purpose"] for f in h.audit(strict=True)] == [
        ["persist_by_creator"]]


# =============================================================================
# bad_probe
# =============================================================================

def test_a_failed_tungetiff_is_a_bad_probe():
    h = Host()
    h.comm[201] = "qemu-system-x86"
    [report] = h.getiff(201, 9, ret=-errno.ENOTTY)
    f = au.probe_finding(report)
    assert keys([f]) == [("bad_probe", None, 201, 9)]
    assert f.message == "qemu-system-x86[201]: TUNGETIFF fd 9 is not a tap (ENOTTY)"
    assert f.detail["error"] == "ENOTTY"
    assert h.audit(probes=[report]) == [f]


def test_a_tungetiff_that_names_a_tap_is_no_finding():
    h = Host()
    h.comm[201] = "qemu-system-x86"
    h.tap(200, 9, "tt1")
    h.fork(200, 201)
    [report] = h.getiff(201, 9, ifname="tt1")
    assert au.probe_finding(report) is None


# =============================================================================
# the shape of the output
# =============================================================================

def test_findings_come_in_kind_order_with_flat_json_fields():
    h = Host()
    libvirt_start(h, close_after=False)
    h.tap(10, 3, "keep0")
    h.fork(10, 11)                               # not its creator: no sign of intent
    h.apply(ev.TunIoctl, 11, fd=3, cmd=ev.TUNSETPERSIST, ret=0, ifname="", value=1)
    h.apply(ev.Exit, 11)
    h.close(10, 3)
    h.comm[5] = "qemu-system-x86"
    [probe] = h.getiff(5, 7, ret=-errno.EBADF)
    found = h.audit(probes=[probe])
    assert [f.kind for f in found] == ["leak", "orphan", "bad_probe"]
    assert au.summary(found) == {"leak": 1, "orphan": 1, "bad_probe": 1}
    fields = found[0].fields()
    assert list(fields)[:6] == ["kind", "ifname", "pid", "fd", "comm", "message"]
    assert fields["role"] == "creator" and fields["chain"][0]["op"] == "open"
    assert found[2].message == "qemu-system-x86[5]: TUNGETIFF fd 7 is not open (EBADF)"


def test_gather_reads_a_domains_pid_file_and_knows_qemu_by_argv(tmp_path):
    (tmp_path / "web1.pid").write_text("4242\n")
    nic = LibvirtNic("web1", None, "vnet3", None, None, None, "bridge", True, qemu_pid=None)
    argv = {4242: qemu_argv("web1", 27), 100: ("/usr/sbin/libvirtd",)}
    facts = au.gather([{"pid": 100, "ifname": "vnet3"}], [{"ifname": "vnet3"}],
                      {"vnet3": nic}, cmdline_of=argv.get,
                      host=lambda n: HostSide(n, None, "virbr0", "up", 3),
                      run_dir=str(tmp_path))
    assert facts.domain_pids == {"web1": 4242}
    assert facts.qemu == {4242: "web1"}
    assert facts.masters == {"vnet3": "virbr0"}
