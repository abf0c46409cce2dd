"""Turning reports and rows into terminal lines and JSON lines.

Names, comms and paths come from other users: human output escapes every
control byte (an ESC in a tap name must not drive the terminal); JSON keeps the
exact value (json escapes control characters; undecodable bytes travel as the
surrogateescape code points U+DC80..U+DCFF).
"""

from __future__ import annotations

import grp
import json
import pwd
import time
from collections.abc import Iterable, Mapping

SCHEMA_VERSION = 1


# Characters that change what a terminal shows besides themselves: C0/C1 controls and
# DEL, the bidirectional overrides and isolates (a name could reverse the rest of its
# line), and the line/paragraph separators.
_BIDI = frozenset(range(0x202A, 0x202F)) | frozenset(range(0x2066, 0x206A)) | {
    0x200E, 0x200F, 0x061C, 0x2028, 0x2029}


def _escape(ch: str, backslash: bool) -> str:
    o = ord(ch)
    if 0xDC80 <= o <= 0xDCFF:               # a raw byte kept by surrogateescape
        return f"\\x{o - 0xDC00:02x}"
    if o < 0x20 or 0x7F <= o < 0xA0:
        return f"\\x{o:02x}"
    if 0xD800 <= o <= 0xDFFF or o in _BIDI:   # a lone surrogate cannot even be printed
        return f"\\u{o:04x}"
    if backslash and ch == "\\":
        return "\\\\"
    return ch


def safe(value) -> str:
    """A string that is inert on a terminal: control bytes as \\xNN, backslash doubled."""
    if value is None:
        return "-"
    s = str(value)
    if s.isascii() and s.isprintable() and "\\" not in s:
        return s
    return "".join(_escape(ch, True) for ch in s)


def inert(line: str) -> str:
    """A whole output line made inert as a last defence: what `safe` would escape,
    except the backslash, so fields already escaped read the same (replay prints
    every line through it, a recording being anyone's file). Line breaks stay."""
    return "\n".join(
        part if part.isascii() and part.isprintable() else
        "".join(_escape(ch, False) for ch in part) for part in line.split("\n"))


def json_line(obj: dict) -> str:
    return json.dumps(obj, ensure_ascii=True, separators=(", ", ": "))


def public(report: dict, clock_offset_ns: int) -> dict:
    """The JSON form of a report: schema version, wall-clock time, no internals."""
    out = {"v": SCHEMA_VERSION, "type": report["type"]}
    if "ts_ns" in report:
        out["time"] = round((report["ts_ns"] + clock_offset_ns) / 1e9, 6)
    for k, v in report.items():
        if k not in ("type", "quiet"):
            out[k] = v
    return out


def proc_label(comm, pid) -> str:
    return f"{safe(comm)}[{pid}]"


def chain_text(ifname, hops: list) -> str:
    """`vnet1: libvirtd[812] fd 27 → fork libvirtd[1201] → exec qemu[1201] fd 27`"""
    parts = []
    for i, h in enumerate(hops):
        who = proc_label(h["comm"], h["pid"])
        fd = f" fd {h['fd']}" if h.get("fd") is not None else ""
        if i == 0:
            parts.append(f"{who}{fd}")
        else:
            op = {"fork": "fork", "exec": "exec", "recv": "recv"}.get(h["op"], h["op"])
            if h["op"] == "fork":
                fd = ""
            parts.append(f"{op} {who}{fd}")
    return f"{safe(ifname)}: " + " → ".join(parts)


def _names(v) -> str:
    if isinstance(v, dict):
        v = list(v.values())
    if isinstance(v, list):
        return ",".join(safe(x) for x in v if x) or "-"
    return safe(v)


def _vhost_fds(r: dict) -> str:
    fds = r.get("vhost_fds")
    return f" (vhost fds {' '.join(map(str, fds))})" if fds else ""


def describe(r: dict) -> tuple[str, str, str]:
    """(fd, ifname, detail) columns of a human event line."""
    t = r["type"]
    fd = "" if r.get("fd") is None else str(r["fd"])
    ifn = safe(r.get("ifname")) if r.get("ifname") else ""
    # a vhost fd's ifname is the tap backing it: say so
    vhost = " vhost fd" if r.get("kind") == "vhost" and t != "tunsetiff" else ""
    if t == "vhost_backend":
        return fd, ifn, safe(r["message"])
    if t == "open":
        cloexec = " cloexec" if r["cloexec"] else " cloexec=?" if r["cloexec"] is None else ""
        return fd, ifn, f"{safe(r['path'])}{cloexec}"
    if t == "tunsetiff":
        if r.get("error"):
            return fd, ifn, f"failed: {r['error']}"
        what = "created" if r["created"] else "attached to existing"
        return fd, ifn, f"{what} {r.get('kind', '')} flags={','.join(r['flags']) or '-'}"
    if t == "tungetiff":
        return fd, ifn, safe(r["message"])
    if t == "tunsetqueue":
        return fd, ifn, f"queue {r['op']}{' failed: ' + r['error'] if r.get('error') else ''}"
    if t == "tunsetpersist":
        return fd, ifn, f"persist {'on' if r['persist'] else 'off'}"
    if t in ("tunsetowner", "tunsetgroup"):
        key = "uid" if t == "tunsetowner" else "gid"
        return fd, ifn, f"{key}={r.get(key)}"
    if t == "dup":
        return fd, ifn, (f"{safe(r['how'])}{vhost} → fd {r['newfd']}"
                         f"{' cloexec' if r['cloexec'] else ''}")
    if t == "cloexec":
        return fd, ifn, (f"close-on-exec {'set' if r['cloexec'] else 'cleared'} "
                         f"({safe(r['how'])}){vhost}")
    if t == "close":
        how = "" if r["how"] == "close" else f" (by {safe(r['how'])})"
        return fd, ifn, f"closed{vhost}{how}"
    if t == "fork":
        shared = " sharing the fd table" if r["shared_table"] else ""
        fds = " ".join(str(f) for f in r["fds"])
        return "", _names(r["ifnames"]), (f"child {r['child_pid']}{shared} got fds {fds}"
                                          f"{_vhost_fds(r)}")
    if t == "exec":
        kept = " ".join(map(str, r["kept"])) or "none"
        closed = " ".join(map(str, r["closed"])) or "none"
        return "", _names(r["ifnames"]), (f"kept fds {kept}{_vhost_fds(r)}; "
                                          f"close-on-exec closed {closed}")
    if t == "exit":
        return "", _names(r["ifnames"]), (f"exited, closing fds "
                                          f"{' '.join(map(str, r['closed']))}{_vhost_fds(r)}")
    if t == "scm_send":
        fds = " ".join(map(str, r["fds"]))
        return "", _names(r["ifnames"]), (f"SCM_RIGHTS send fds {fds} on socket {r['sock']}"
                                          f"{_vhost_fds(r)}")
    if t == "scm_recv":
        pairs = ", ".join(f"{a}→{b}" for a, b in zip(r["from_fds"], r["fds"]))
        return "", _names(r["ifnames"]), (
            f"SCM_RIGHTS from {proc_label(r['from_comm'], r['from_pid'])} fds {pairs}"
            f"{' cloexec' if r['cloexec'] else ''}{_vhost_fds(r)}")
    if t == "pidfd_getfd":
        return fd, ifn, f"pidfd_getfd{vhost} from pid {r['from_pid']} fd {r['from_fd']}"
    if t == "tap_gone":
        return "", ifn, "interface gone (last open file closed)"
    if t == "lost":
        return "", "", f"{r['count']} records lost; resyncing from /proc"
    if t == "resync":
        why = {"truncated": " (an SCM_RIGHTS message with more fds than a record holds)",
               "raced": " (again: a process left a shared fd table while /proc was read)",
               }.get(r.get("why"), "")
        return "", "", (f"table rebuilt from /proc: {r['rows']} rows "
                         f"(+{r['added']} -{r['removed']}){why}")
    return fd, ifn, ""


def netns_label(netns, name, own) -> str | None:
    """How people see a namespace that is not taptrace's own: its `ip netns` name, else
    its inode; None for taptrace's own (or an unknown) one."""
    if netns is None or netns == own:
        return None
    return safe(name) if name else str(netns)


def _report_netns(r: dict, own, names: Mapping) -> str:
    """` [netns ctr1]` after an event line about a tap of another namespace."""
    ns = r.get("netns")
    if isinstance(ns, dict):
        ns = list(ns.values())
    if isinstance(ns, list):
        labels = [netns_label(n, names.get(n), own) for n in ns]
    else:
        labels = [netns_label(ns, r.get("netns_name") or names.get(ns), own)]
    seen = list(dict.fromkeys(lb for lb in labels if lb))
    return f" [netns {','.join(seen)}]" if seen else ""


HEADER = f"{'TIME':<12} {'PID':>7} {'COMM':<16} {'EVENT':<13} {'FD':>4} {'IFNAME':<15} DETAIL"


def event_line(r: dict, clock_offset_ns: int, own_netns: int | None = None,
               netns_names: Mapping | None = None) -> str:
    """One human line; a tap in a namespace other than `own_netns` is named."""
    ts = r.get("ts_ns")
    when = "-"
    if ts is not None:
        wall = (ts + clock_offset_ns) / 1e9
        when = time.strftime("%H:%M:%S", time.localtime(wall)) + f".{int(wall * 1000) % 1000:03d}"
    fd, ifn, detail = describe(r)
    detail += _report_netns(r, own_netns, netns_names or {})
    comm = safe(r.get("comm", ""))[:16]
    return (f"{when:<12} {r.get('pid', ''):>7} {comm:<16} {r['type']:<13} {fd:>4} "
            f"{ifn:<15} {detail}")


ROW_COLUMNS = [("pid", "PID"), ("comm", "COMM"), ("fd", "FD"), ("ifname", "IFNAME"),
               ("kind", "KIND"), ("flags", "FLAGS"), ("cloexec", "CLOEXEC"),
               ("creator", "CREATOR"), ("how", "HOW"), ("shared_with", "SHARED WITH")]


def vhost_cell(row: dict) -> str:
    """A vhost fd's interface cell: `→ vnet3 (q0,q1)`, the taps backing its vrings."""
    by_name: dict[str, list[str]] = {}
    for b in row.get("backends") or ():
        name = safe(b["ifname"]) if b.get("ifname") else "socket"
        by_name.setdefault(name, []).append(f"q{b['index']}")
    if not by_name:
        return "→ -"
    return "→ " + ", ".join(f"{n} ({','.join(qs)})" for n, qs in by_name.items())


def _cell(row: dict, key: str) -> str:
    if key == "ifname" and row.get("kind") == "vhost":
        return vhost_cell(row)
    if key == "flags":
        return ",".join(row["flags"]) or "-"
    if key == "cloexec":
        return "?" if row["cloexec"] is None else "yes" if row["cloexec"] else "no"
    if key == "creator":
        if row.get("creator_pid") is None:
            return "-"
        label = proc_label(row.get("creator_comm") or "?", row["creator_pid"])
        # libvirt's word (its status XML), not a traced TUNSETIFF: say so
        return label + " (libvirt)" if row.get("creator_from") == "libvirt" else label
    if key == "how":
        how = row.get("how") or "-"
        if row.get("from_pid") is not None and how in ("inherited", "received"):
            how += f" from {row['from_pid']}"
        return safe(how)
    if key == "nic":
        parts = [row.get("netdev"), row.get("nic_model")]
        if row.get("fd_role") == "vhost":
            parts.append("vhost")
        return safe(" ".join(p for p in parts if p) or None)
    if key == "owner":
        return owner_text(row) or "-"
    if key == "netns":
        return netns_label(row.get("netns"), row.get("netns_name"), row.get("_own")) or "-"
    if key == "tid":
        return "-" if row.get("tid") is None else str(row["tid"])
    if key == "shared_with":
        others = [holder_text(h) for h in row["shared_with"][:4]]
        total = row.get("shared_count", len(row["shared_with"]))
        if total > len(others):
            others.append(f"+{total - len(others)} more")
        return " ".join(others) or "-"
    return safe(row.get(key))


def holder_text(holder) -> str:
    """A `shared_with` item for people: `812/27` (pid/fd), `812:815/27` for the own
    table of thread 815 of process 812."""
    pid, fd, *tid = holder
    return f"{pid}:{tid[0]}/{fd}" if tid and tid[0] is not None else f"{pid}/{fd}"


def owner_text(obj: dict) -> str:
    """A tun/tap's owner and group as `id` writes them (`uid=65534(nobody) gid=100(users)`);
    "" when neither is set (/sys shows -1)."""
    parts = []
    for key, tag, lookup in (("owner", "uid", pwd.getpwuid), ("group", "gid", grp.getgrgid)):
        value = obj.get(key)
        if value is None:
            continue
        try:
            name = f"({safe(lookup(value)[0])})"
        except (KeyError, OverflowError, TypeError):
            name = ""
        parts.append(f"{tag}={value}{name}")
    return " ".join(parts)


OWNER_COLUMNS = [("owner", "OWNER")]

VM_COLUMNS = [("vm", "VM"), ("nic", "NIC"), ("guest_mac", "GUEST MAC"),
              ("host_mac", "HOST MAC")]


def tap_text(tap: dict, own_netns: int | None = None) -> str:
    """One tun/tap, as `who` and the tap list say it:
    `tap0 (netns ns1): tap tap,no_pi persist uid=65534(nobody)` (no netns: ours)."""
    owner = owner_text(tap)
    ns = netns_label(tap.get("netns"), tap.get("netns_name"), own_netns)
    return (f"{safe(tap['ifname'])}{' (netns ' + ns + ')' if ns else ''}: "
            f"{safe(tap['kind'])} {','.join(tap['flags']) or '-'}"
            f"{' persist' if tap.get('persist') and 'persist' not in tap['flags'] else ''}"
            f"{' ' + owner if owner else ''}")


def kinds_word(kinds: Iterable[str]) -> str:
    """`Taps`, `Tuns` or `Tuns and taps`: a tun is no tap."""
    word = " and ".join(k + "s" for k in sorted(set(kinds), key=lambda k: (k != "tun", k)))
    return (word or "taps").capitalize()


def table_text(rows: list[dict], taps: Iterable[dict] = (), complete: bool = True,
               own_netns: int | None = None) -> str:
    """The table for people; `complete` is False when other users' fds were unreadable.
    VM columns appear when some holder is a VM, OWNER when some tun/tap has an owner or
    a group, NETNS when some tap is in another network namespace than `own_netns`
    (taptrace's), TID (as `lsof -K` has it) when some row is a thread's own fd table
    (`-` on the rows of a process's table)."""
    cols = list(ROW_COLUMNS)
    if any(r.get("tid") is not None for r in rows):
        cols.insert(cols.index(("pid", "PID")) + 1, ("tid", "TID"))
    if any(netns_label(r.get("netns"), None, own_netns) for r in rows):
        cols.insert(cols.index(("ifname", "IFNAME")) + 1, ("netns", "NETNS"))
    if any(r.get("owner") is not None or r.get("group") is not None for r in rows):
        cols += OWNER_COLUMNS
    cols += VM_COLUMNS if any(r.get("vm") for r in rows) else []
    body = [[_cell({**r, "_own": own_netns}, k) for k, _ in cols] for r in rows]
    from tabulate import tabulate  # only tables need it (16 ms to import)

    text = tabulate(body, headers=[h for _, h in cols], tablefmt="simple",
                    disable_numparse=True) if body else "(no process holds a tun/tap fd)"
    orphans = [t for t in taps if not t.get("files")]
    if orphans:
        lines = [f"{tap_text(t, own_netns)} — no process holds it" for t in orphans]
        what = kinds_word(t["kind"] for t in orphans)
        title = (f"{what} with no holder:" if complete else
                 f"{what} with no holder visible to you (root sees every process):")
        text += f"\n\n{title}\n  " + "\n  ".join(lines)
    return text


def mac_story(ifname: str, rows: list[dict], netns: str | None = None) -> list[str]:
    """Why the guest's MAC is not the tap's: the two ends of one link. `netns`: the
    label of the tap's namespace where it is not taptrace's."""
    r = next((r for r in rows if r.get("guest_mac") or r.get("host_mac")), None)
    if r is None or not r.get("host_mac"):
        return []
    where = f" (netns {netns})" if netns else ""
    lines = [(f"host side: {safe(ifname)}{where} mac {safe(r['host_mac'])}"
             f"{' on ' + safe(r['master']) if r.get('master') else ''}"
             f"{', ' + safe(r['operstate']) if r.get('operstate') else ''}")]
    if r.get("guest_mac"):
        lines.append(f"guest side: {safe(r.get('vm'))} NIC {safe(r.get('nic_model'))} "
                     f"mac {safe(r['guest_mac'])}")
        if r["guest_mac"].lower() != r["host_mac"].lower():
            lines.append("  The tap is the host's end of the link and the NIC the guest's: "
                         "each end has its own MAC (libvirt gives the tap fe:… from the "
                         "guest's 52:54:…), so they differ by design.")
    return lines
