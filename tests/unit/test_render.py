"""Human output is inert on a terminal; JSON keeps the exact value."""

import json

from tracer import render


def test_control_bytes_are_escaped_for_people():
    assert render.safe("tap\x1b[31mred") == "tap\\x1b[31mred"
    assert render.safe("a\nb\tc\x7f") == "a\\x0ab\\x09c\\x7f"
    assert render.safe("\udcff") == "\\xff"          # a raw non-UTF-8 byte
    assert render.safe(None) == "-"


def test_json_keeps_the_exact_name():
    name = "tap\x1b[31m\udcff"
    line = render.json_line({"ifname": name})
    assert "\x1b" not in line                          # valid, inert JSON text
    assert json.loads(line)["ifname"] == name


def test_event_line_escapes_every_untrusted_field():
    r = {"type": "tunsetiff", "ts_ns": 0, "pid": 1, "tid": 1, "comm": "evil\x1b]0;x\x07",
         "fd": 3, "ifname": "t\x1bx", "flags": ["tap"], "created": True, "kind": "tap",
         "error": None}
    line = render.event_line(r, 0)
    assert "\x1b" not in line and "\x07" not in line
    assert "t\\x1bx" in line


def test_chain_text():
    hops = [{"op": "tunsetiff", "pid": 812, "comm": "libvirtd", "fd": 27},
            {"op": "fork", "pid": 1201, "comm": "libvirtd", "fd": 27},
            {"op": "exec", "pid": 1201, "comm": "qemu-system-x86", "fd": 27}]
    assert render.chain_text("vnet1", hops) == (
        "vnet1: libvirtd[812] fd 27 → fork libvirtd[1201] → exec qemu-system-x86[1201] fd 27")


def test_public_adds_version_and_time_and_drops_internals():
    out = render.public({"type": "fork", "ts_ns": 2_000_000_000, "quiet": False, "pid": 5}, 0)
    assert out["v"] == render.SCHEMA_VERSION and out["time"] == 2.0
    assert "quiet" not in out and out["pid"] == 5


def test_table_names_vm_nic_both_macs_and_an_inferred_creator():
    row = {"pid": 4242, "comm": "qemu-system-x86", "fd": 30, "ifname": "vnet1",
           "kind": "tap", "flags": ["vnet_hdr"], "cloexec": False, "how": "inherited",
           "from_pid": None, "shared_with": [], "shared_count": 0,
           "creator_pid": 812, "creator_comm": "libvirtd", "creator_from": "libvirt",
           "vm": "web1", "netdev": "hostnet0", "nic_model": "virtio-net-pci",
           "fd_role": "tap", "guest_mac": "52:54:00:6b:3c:58", "host_mac": "fe:54:00:6b:3c:58"}
    header, _, line = render.table_text([row]).splitlines()
    assert header.split() == ["PID", "COMM", "FD", "IFNAME", "KIND", "FLAGS", "CLOEXEC",
                              "CREATOR", "HOW", "SHARED", "WITH", "VM", "NIC", "GUEST", "MAC",
                              "HOST", "MAC"]
    assert "libvirtd[812] (libvirt)" in line
    assert line.split()[-5:] == ["web1", "hostnet0", "virtio-net-pci", "52:54:00:6b:3c:58",
                                 "fe:54:00:6b:3c:58"]
    traced = dict(row, creator_from="trace")
    assert "(libvirt)" not in render.table_text([traced])


def test_a_thread_s_own_fd_table_shows_its_tid_where_some_row_is_one():
    base = {"comm": "qemu", "kind": "tap", "flags": [], "cloexec": False, "how": "opened",
            "from_pid": None, "creator_pid": None, "ifname": "vnet1", "shared_count": 1}
    rows = [{**base, "pid": 4242, "tid": None, "fd": 30, "shared_with": [[4242, 31, 4250]]},
            {**base, "pid": 4242, "tid": 4250, "fd": 31, "shared_with": [[4242, 30]]}]
    header, _, process, thread = render.table_text(rows).splitlines()
    assert header.split()[:4] == ["PID", "TID", "COMM", "FD"]
    assert process.split()[:4] == ["4242", "-", "qemu", "30"]
    assert process.split()[-1] == "4242:4250/31"         # pid:tid/fd
    assert thread.split()[:4] == ["4242", "4250", "qemu", "31"]
    assert thread.split()[-1] == "4242/30"
    # no TID column when every row is a process's table (as before rows had tids)
    plain = render.table_text([{**rows[0], "shared_with": []}]).splitlines()[0]
    assert "TID" not in plain.split()
    assert json.loads(render.json_line({"rows": rows}))["rows"][1]["tid"] == 4250
