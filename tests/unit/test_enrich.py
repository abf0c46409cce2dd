"""Reading QEMU's and libvirt's own words about a tap (the formats they emit)."""

from tracer import enrich, procfs, render

# What libvirt 9.x passes (JSON -netdev/-device), trimmed to the parts that matter.
LIBVIRT_JSON_ARGV = (
    "/usr/bin/qemu-system-x86_64", "-name", "guest=vm1,debug-threads=on", "-S",
    "-netdev", '{"type":"tap","fd":"30","vhost":true,"vhostfd":"32","id":"hostnet0"}',
    "-device", ('{"driver":"virtio-net-pci","netdev":"hostnet0","id":"net0",'
               '"mac":"52:54:00:6b:3c:58","bus":"pci.0","addr":"0x3"}'),
    "-netdev", '{"type":"tap","fds":"33:34","id":"hostnet1"}',
    "-device", ('{"driver":"virtio-net-pci","mq":true,"vectors":6,"netdev":"hostnet1",'
               '"id":"net1","mac":"52:54:00:00:00:02"}'),
)

# The older QemuOpts form, and a ",," inside a value.
OLD_ARGV = (
    "qemu-system-x86_64", "-name", "old,,vm", "-netdev",
    "tap,fd=27,id=hostnet0,vhost=on,vhostfd=28", "-device",
    "e1000,netdev=hostnet0,id=net0,mac=52:54:00:aa:bb:cc",
    "-netdev", "bridge,br=br0,id=n2", "-device", "rtl8139,netdev=n2",
)


def test_qemu_opts_implied_key_and_escaped_commas():
    assert enrich.qemu_opts("tap,fd=27,id=a,,b,vhost", "type") == {
        "type": "tap", "fd": "27", "id": "a,b", "vhost": "on"}


def test_json_syntax_from_libvirt():
    q = enrich.parse_qemu_cmdline(LIBVIRT_JSON_ARGV)
    assert q.vm_name == "vm1"
    nd, role = q.by_fd(30)
    assert (nd.id, role, nd.nic_model, nd.guest_mac) == (
        "hostnet0", "tap", "virtio-net-pci", "52:54:00:6b:3c:58")
    assert q.by_fd(32)[1] == "vhost"
    assert q.by_fd(34)[0].id == "hostnet1" and q.by_fd(33)[0].nic_id == "net1"
    assert q.by_fd(99) is None


def test_qemuopts_syntax_and_bridge_helper():
    q = enrich.parse_qemu_cmdline(OLD_ARGV)
    assert q.vm_name == "old,vm"
    nd, role = q.by_fd(27)
    assert (nd.nic_model, nd.guest_mac, role) == ("e1000", "52:54:00:aa:bb:cc", "tap")
    assert q.by_fd(28)[1] == "vhost"
    br = next(n for n in q.netdevs if n.id == "n2")
    assert br.type == "bridge" and br.bridge == "br0" and br.nic_model == "rtl8139"


def test_not_qemu_and_getfd_names():
    assert enrich.parse_qemu_cmdline(("libvirtd", "--daemon")) is None
    q = enrich.parse_qemu_cmdline(("qemu-system-x86_64", "-netdev", "tap,fd=fdname0,id=x"))
    assert q.netdevs[0].fds == ("fdname0",)


STATUS_XML = """<domstatus state='running' pid='4242'>
  <domain type='qemu' id='3'>
    <name>vm1</name><uuid>0b9c2d5e-1111-2222-3333-444455556666</uuid>
    <devices>
      <interface type='bridge'>
        <mac address='52:54:00:6b:3c:58'/><source bridge='br-test'/>
        <target dev='vnet1'/><model type='virtio'/><alias name='net0'/>
      </interface>
      <interface type='ethernet'>
        <mac address='52:54:00:00:00:09'/><target dev='vnet7' managed='no'/>
        <alias name='ua-hot'/>
      </interface>
      <interface type='network'><mac address='52:54:00:00:00:10'/></interface>
    </devices>
  </domain>
</domstatus>"""


def test_libvirt_status_xml():
    nics = {n.target: n for n in enrich.parse_libvirt_status(STATUS_XML)}
    assert set(nics) == {"vnet1", "vnet7"}
    assert nics["vnet1"].domain == "vm1" and nics["vnet1"].mac == "52:54:00:6b:3c:58"
    assert nics["vnet1"].alias == "net0" and nics["vnet1"].model == "virtio"
    assert nics["vnet7"].type == "ethernet" and nics["vnet7"].alias == "ua-hot"
    assert nics["vnet1"].managed and not nics["vnet7"].managed
    assert nics["vnet1"].qemu_pid == 4242
    assert enrich.parse_libvirt_status("<not xml") == []


def test_enrich_rows_combines_cmdline_status_and_host_side():
    rows = [{"pid": 4242, "fd": 30, "ifname": "vnet1", "creator_pid": None},
            {"pid": 4242, "fd": 40, "ifname": "vnet7", "creator_pid": None},
            {"pid": 1, "fd": 3, "ifname": "tap0", "creator_pid": None}]
    nics = {n.target: n for n in enrich.parse_libvirt_status(STATUS_XML)}

    def host(name):
        return enrich.HostSide(name, "fe:54:00:6b:3c:58", "br-test", "up", 9)

    enrich.enrich_rows(rows, {4242: LIBVIRT_JSON_ARGV, 1: ("init",)}.get, nics, host,
                       libvirtd=lambda: 812)
    r = rows[0]
    assert (r["vm"], r["netdev"], r["nic_model"], r["guest_mac"], r["host_mac"],
            r["master"]) == ("vm1", "hostnet0", "virtio-net-pci", "52:54:00:6b:3c:58",
                             "fe:54:00:6b:3c:58", "br-test")
    hot = rows[1]             # hot-plugged: only the status XML knows it
    assert hot["vm"] == "vm1" and hot["guest_mac"] == "52:54:00:00:00:09"
    assert hot["netdev"] == "hostua-hot" and hot["nic_alias"] == "ua-hot"
    assert rows[2]["vm"] is None and rows[2]["netdev"] is None
    # no trace saw the creation: libvirt says it made vnet1 (not vnet7: managed='no')
    assert (r["creator_pid"], r["creator_comm"], r["creator_from"]) == (
        812, "libvirtd", "libvirt")
    assert hot["creator_pid"] is None and hot["creator_from"] is None
    assert rows[2]["creator_from"] is None


def test_a_traced_creator_is_kept_over_libvirts_word():
    rows = [{"pid": 4242, "fd": 30, "ifname": "vnet1", "creator_pid": 700,
             "creator_comm": "libvirtd"}]
    nics = {n.target: n for n in enrich.parse_libvirt_status(STATUS_XML)}
    enrich.enrich_rows(rows, {4242: LIBVIRT_JSON_ARGV}.get, nics, lambda _n: None,
                       libvirtd=lambda: 812)
    assert (rows[0]["creator_pid"], rows[0]["creator_from"]) == (700, "trace")


def test_bridge_helper_netdev_is_found_by_the_taps_bridge():
    """qemu-bridge-helper sends the fd back: no fd number on QEMU's command line."""
    argv = ("qemu-system-x86_64", "-name", "guest=bh", "-netdev", "bridge,br=brA,id=n1",
            "-device", "virtio-net-pci,netdev=n1,mac=52:54:00:00:00:aa",
            "-netdev", "bridge,br=brB,id=n2", "-netdev", "bridge,br=brB,id=n3")
    rows = [{"pid": 9, "fd": 12, "ifname": "tap3", "creator_pid": 10},
            {"pid": 9, "fd": 13, "ifname": "tap4", "creator_pid": 11}]
    masters = {"tap3": "brA", "tap4": "brB"}

    def host(name):
        return enrich.HostSide(name, "fe:00:00:00:00:01", masters[name], "up", 5)

    enrich.enrich_rows(rows, {9: argv}.get, {}, host, libvirtd=lambda: None)
    assert (rows[0]["vm"], rows[0]["netdev"], rows[0]["guest_mac"]) == (
        "bh", "n1", "52:54:00:00:00:aa")
    assert rows[1]["netdev"] is None          # two bridge netdevs on brB: ambiguous


def test_host_side_of_loopback():
    hs = enrich.host_side("lo")
    assert hs is not None and hs.ifindex == 1 and hs.master is None
    assert enrich.host_side("no-such-if0") is None


# ---- a tap in another network namespace -------------------------------------

OWN, CTR = 4026531840, 4026532300


def test_a_tap_of_another_namespace_is_described_from_there_not_by_its_namesake_here():
    # pasta names its tap after the host's NIC (eth0); slirp4netns's tap0 may have a
    # host namesake. /sys here shows the host's device: its MAC and bridge are not
    # the container tap's.
    rows = [{"pid": 7, "fd": 5, "ifname": "eth0", "creator_pid": None, "netns": CTR},
            {"pid": 8, "fd": 3, "ifname": "vnet1", "creator_pid": None, "netns": OWN}]
    nics = {n.target: n for n in enrich.parse_libvirt_status(STATUS_XML)}
    nics["eth0"] = nics["vnet1"]           # a libvirt NIC of that name, here

    def host(name):
        return enrich.HostSide(name, "52:54:00:00:00:99", "br-host", "up", 2)

    asked = []

    def host_in(pid, fd, netns, ifname):
        asked.append((pid, fd, netns, ifname))
        return enrich.HostSide(ifname, "9a:00:00:00:00:01", None, "unknown", 2)

    enrich.enrich_rows(rows, {}.get, nics, host, libvirtd=lambda: 812, own_netns=OWN,
                       host_in=host_in)
    ctr, here = rows
    assert asked == [(7, 5, CTR, "eth0")]
    assert (ctr["host_mac"], ctr["master"], ctr["operstate"]) == (
        "9a:00:00:00:00:01", None, "unknown")
    assert ctr["vm"] is None and ctr["creator_from"] is None   # libvirt's eth0 is not it
    assert (here["host_mac"], here["master"], here["vm"]) == ("52:54:00:00:00:99", "br-host",
                                                              "vm1")


def test_the_host_side_of_a_link_list():
    links = [procfs.Link("br0", 3, "02:00:00:00:00:01", None, "up", None),
             procfs.Link("tap0", 2, "66:a7:ee:a8:db:8b", 3, "down", (0x1002, None, None))]
    assert enrich.host_side_of_links("tap0", links) == enrich.HostSide(
        "tap0", "66:a7:ee:a8:db:8b", "br0", "down", 2)
    assert enrich.host_side_of_links("eth0", links) is None


def test_human_output_names_a_namespace_that_is_not_taptraces():
    row = {"pid": 7, "comm": "slirp4netns", "fd": 6, "ifname": "tap0", "kind": "tap",
           "flags": ["no_pi"], "cloexec": False, "creator_pid": None, "how": "snapshot",
           "shared_with": [], "netns": CTR, "netns_name": "ctr"}
    text = render.table_text([row], [
        {"ifname": "tap0", "kind": "tap", "flags": ["tap", "persist"], "persist": True,
         "files": 0, "netns": OWN, "netns_name": None},
        {"ifname": "tap1", "kind": "tap", "flags": ["tap", "persist"], "persist": True,
         "files": 0, "netns": CTR, "netns_name": None}], own_netns=OWN)
    assert "NETNS" in text.splitlines()[0] and " ctr " in text.splitlines()[2]
    assert "tap0: tap tap,persist — no process holds it" in text
    assert f"tap1 (netns {CTR}): tap tap,persist — no process holds it" in text
    here = render.table_text([{**row, "netns": OWN}], own_netns=OWN)
    assert "NETNS" not in here
    line = render.event_line({"type": "tunsetiff", "ts_ns": 0, "pid": 7, "comm": "x",
                              "fd": 6, "ifname": "tap0", "created": True, "kind": "tap",
                              "flags": ["tap"], "netns": CTR, "netns_name": "c\x1b"}, 0, OWN)
    assert line.endswith("created tap flags=tap [netns c\\x1b]")
    line = render.event_line({"type": "exit", "ts_ns": 0, "pid": 7, "comm": "x",
                              "closed": [3, 6], "ifnames": ["tap0", "tap0"],
                              "netns": [OWN, CTR]}, 0, OWN, {CTR: "ctr"})
    assert line.endswith("exited, closing fds 3 6 [netns ctr]")
