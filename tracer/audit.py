"""`taptrace audit`: what is wrong with who holds which tap.

A pure judgement over the model's rows (already enriched: vm, netdev, master…),
its taps, libvirt's NICs and, live, the failed TUNGETIFF reports. `gather()` is
the one reader: which holders are QEMU processes, which QEMU runs each libvirt
domain, and which taps still exist in /sys and on what master.

Which process is "the VM" of a tap, strongest word first:
  1. libvirt: the tap is a `<target dev=>` of a running domain; its QEMU is the
     domain's pid (status XML, else /run/libvirt/qemu/NAME.pid).
  2. QEMU's command line: a QEMU holding the tap whose `-netdev` names that fd
     (`fd=`/`fds=`), that `ifname=`, or the tap's bridge (`-netdev bridge`).
  3. Any QEMU holding it (hot-plugged by QMP `getfd`: no number to match).

Kinds, one finding per holder (pid, fd; a thread's own fd table: pid, tid, fd) or per tap:
  leak            a process that is not the VM holds the same open file as the VM:
                  the copy the creator (libvirtd) or an intermediate kept after
                  handing the fd over. From a snapshot only the sharing is known;
                  live, the creator, the holder's role (creator, intermediate on
                  the way to the VM, or a side copy) and the chain to the VM.
  foreign_holder  the tap has a VM and a process that is not that VM holds it
                  through an open file the VM does not hold (a second queue
                  attached by TUNSETIFF, another VM's QEMU), or while the VM holds
                  none of it. Not a leftover of a handoff: someone else's use.
  orphan          a tun/tap no process holds (a persistent one left behind), on no
                  bridge.
  vm_gone         a tap on a bridge/OVS master that no QEMU holds (by a tap fd or a
                  vhost vring: a vhost fd is no tap holder, but its QEMU uses the
                  tap): the port stays
                  on the bridge without its VM (held by nobody, or only by e.g. a
                  leaking libvirtd). A holderless bridged tap is this, not orphan.
  bad_probe       a failed TUNGETIFF (`fd 9 is not a tap (ENOTTY)`): the process
                  was given something that is not a tap. Live only.

A persistent tun/tap that no process holds was made to outlive its creator when
it has an owner or group (`tunctl -u`, `ip tuntap add … user`, `openvpn --mktun
--user`) or when its creator itself made it persistent while traced (TUNSETPERSIST
by the process whose TUNSETIFF created it: `openvpn --mktun`, `tunctl`). Such a
one is no orphan (nor vm_gone) unless `strict`: it is kept on purpose. A snapshot
cannot see who set persist, so there only an owner or group tells.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from .enrich import (
    LIBVIRT_RUN,
    LibvirtNic,
    host_side,
    is_qemu,
    parse_qemu_cmdline,
    proc_cmdline,
)
from .model import row_key

KINDS = ("leak", "foreign_holder", "vm_gone", "orphan", "bad_probe")


@dataclass(frozen=True)
class Finding:
    kind: str                   # one of KINDS
    ifname: str | None          # None: bad_probe (no tap involved)
    pid: int | None             # the holder / prober; None: a tap-wide finding
    fd: int | None
    comm: str | None
    message: str                # raw (exact names); escape before a terminal
    detail: dict = field(default_factory=dict, compare=False, hash=False)

    def fields(self) -> dict:
        """Flat JSON fields (detail keys never clash with these)."""
        return {"kind": self.kind, "ifname": self.ifname, "pid": self.pid, "fd": self.fd,
                "comm": self.comm, "message": self.message, **self.detail}


class ChainOf(Protocol):
    def __call__(self, file: int, pid: int) -> list[dict]:
        """The hops by which open file `file` came to `pid` (Model.chain); [] unknown."""


def no_chain(_file: int, _pid: int) -> list[dict]:
    return []


@dataclass(frozen=True)
class HostFacts:
    """What the audit needs besides the rows, read once by gather()."""
    qemu: Mapping[int, str | None]           # pid of each QEMU process -> its -name guest=
    domain_pids: Mapping[str, int]           # libvirt domain -> its QEMU's pid
    masters: Mapping[str, str | None]        # every tap that exists in /sys -> its master
    own_netns: int | None = None             # taptrace's network namespace


def _label(comm, pid) -> str:
    return f"{comm or '?'}[{pid}]"


def _holder(r: dict) -> str:
    """`qemu[42] fd 27`; `qemu[42] thread 45 fd 27` for a thread's own fd table."""
    thread = f" thread {r['tid']}" if r.get("tid") is not None else ""
    return f"{_label(r['comm'], r['pid'])}{thread} fd {r['fd']}"


def _vm_label(pid: int, comm, vm) -> str:
    return _label(comm, pid) + (f" (VM {vm})" if vm else "")


def _kind(row_or_tap: dict | None) -> str:
    """The word for the interface: tap, tun or macvtap (a tun is no tap)."""
    kind = (row_or_tap or {}).get("kind")
    return kind if kind in ("tap", "tun", "macvtap") else "tap"


def kept_on_purpose(tap: dict | None) -> list[str]:
    """Why a persistent tun/tap is meant to outlive its creator ([]: no sign of it):
    `owner` / `group` set, `persist_by_creator` (its creator made it persistent,
    seen live)."""
    if not tap or not tap.get("persist"):
        return []
    why = [k for k in ("owner", "group") if tap.get(k) is not None]
    if tap.get("persist_by") is not None and tap.get("persist_by") == tap.get("created_by"):
        why.append("persist_by_creator")
    return why


def kept_text(tap: dict) -> str:
    """`owner uid 65534, group gid 100; made persistent by its creator tunctl[42]`"""
    parts = []
    if tap.get("owner") is not None:
        parts.append(f"owner uid {tap['owner']}")
    if tap.get("group") is not None:
        parts.append(f"group gid {tap['group']}")
    text = ", ".join(parts)
    if "persist_by_creator" in kept_on_purpose(tap):
        text += ("; " if text else "") + (f"made persistent by its creator "
                                          f"{_label(tap.get('created_comm'), tap['created_by'])}")
    return text


def _ns_key(item: dict, own: int | None) -> int | None:
    """The namespace part of a tap's identity: None for taptrace's own (or unknown)."""
    ns = item.get("netns")
    return None if ns is None or ns == own else ns


def gather(rows: list[dict], taps: Iterable[dict], nics: Mapping[str, LibvirtNic],
           cmdline_of: Callable[[int], tuple[str, ...] | None] = proc_cmdline,
           host=host_side, run_dir: str = LIBVIRT_RUN,
           own_netns: int | None = None) -> HostFacts:
    domain_pids: dict[str, int] = {}
    for nic in nics.values():
        pid = nic.qemu_pid or _pidfile(os.path.join(run_dir, f"{nic.domain}.pid"))
        if pid is not None:
            domain_pids[nic.domain] = pid
    qemu: dict[int, str | None] = {}
    for pid in {r["pid"] for r in rows} | set(domain_pids.values()):
        argv = cmdline_of(pid)
        if argv and is_qemu(argv):
            q = parse_qemu_cmdline(argv)
            qemu[pid] = q.vm_name if q else None
    masters: dict = {}
    # /sys shows taptrace's namespace only: a tap of another namespace is no tap here
    # (its rows' `master` was read in its own namespace)
    own = [t for t in taps if _ns_key(t, own_netns) is None]
    for name in {t["ifname"] for t in own} | {r["ifname"] for r in rows if r.get("ifname")
                                              and _ns_key(r, own_netns) is None}:
        hs = host(name)
        if hs is not None:
            masters[name] = hs.master
    return HostFacts(qemu, domain_pids, masters, own_netns)


def _pidfile(path: str) -> int | None:
    try:
        with open(path) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def _owners(ifname: str, holders: list[dict], nics: Mapping[str, LibvirtNic],
            facts: HostFacts) -> tuple[set[int], str | None, str | None]:
    """(pids that are the VM of this tap, the VM's name, where that came from)."""
    nic = nics.get(ifname)
    if nic is not None:
        pid = facts.domain_pids.get(nic.domain)
        if pid is not None and pid in facts.qemu:
            return {pid}, nic.domain, "libvirt"
    qemu_rows = [r for r in holders if r["pid"] in facts.qemu]
    named = [r for r in qemu_rows if r.get("netdev")]
    chosen, source = (named, "cmdline") if named else (qemu_rows, "holder")
    if not chosen:
        return set(), None, None
    pids = {r["pid"] for r in chosen}
    vm = next((facts.qemu.get(p) for p in sorted(pids) if facts.qemu.get(p)), None)
    return pids, vm or (nic.domain if nic else None), source


def audit(rows: list[dict], taps: Iterable[dict], nics: Mapping[str, LibvirtNic],
          facts: HostFacts, probes: Iterable[dict] = (),
          chain_of: ChainOf = no_chain, strict: bool = False,
          kept: list[str] | None = None, command: bool = False) -> list[Finding]:
    """Every finding about these rows and taps (and failed TUNGETIFF reports).

    chain_of(file, pid): how an open file came to a process, known when traced live.
    A vhost-net fd (kind "vhost") holds no tap fd: it is no holder that can leak,
    but a QEMU whose vhost vrings use a tap is using that tap.
    strict: a holderless persistent tun/tap kept on purpose is a finding too; if not,
    its name goes to `kept` (when given) instead.
    command: auditing what a traced command left (`audit -- CMD`): a tun/tap made
    while it ran (its creating TUNSETIFF was traced) is judged as if strict: a
    command that leaves a persistent tap behind is what the audit is for."""
    taps = list(taps)
    own = facts.own_netns
    # A tap is (namespace, name): the `tap0` of a container is not the host's `tap0`.
    by_tap: dict[tuple, list[dict]] = {}
    vhost_users: dict[tuple, set[int]] = {}
    for r in rows:
        ns = _ns_key(r, own)
        if r.get("kind") == "vhost":
            for name in {b.get("ifname") for b in r.get("backends") or []} | {r.get("ifname")}:
                if name:
                    vhost_users.setdefault((ns, name), set()).add(r["pid"])
        elif r.get("ifname"):
            by_tap.setdefault((ns, r["ifname"]), []).append(r)
    tap_info = {(_ns_key(t, own), t["ifname"]): t for t in taps}
    out: list[Finding] = []
    for key in sorted(set(by_tap) | set(tap_info), key=lambda k: (k[1], k[0] or 0)):
        ns, ifname = key
        holders = by_tap.get(key, [])
        if not holders and ns is None and ifname not in facts.masters:
            continue                  # gone from /sys since the model last saw it
        tap = tap_info.get(key)
        made_here = command and tap is not None and tap.get("created_by") is not None
        if not holders and not vhost_users.get(key) and not strict and not made_here \
                and kept_on_purpose(tap):
            if kept is not None:
                kept.append(ifname)
            continue
        if ns is None:
            out.extend(_tap_findings(ifname, holders, vhost_users.get(key, set()),
                                     tap, nics, facts, chain_of, made_here))
            continue
        # another namespace: its master comes with its rows; libvirt's names are not its
        t = tap_info.get(key) or {}
        label = t.get("netns_name") or next((r.get("netns_name") for r in holders
                                             if r.get("netns_name")), None) or str(ns)
        found = _tap_findings(ifname, holders, vhost_users.get(key, set()), t or None, {},
                              HostFacts(facts.qemu, facts.domain_pids, {}, own), chain_of,
                              made_here)
        for f in found:
            out.append(Finding(f.kind, f.ifname, f.pid, f.fd, f.comm,
                               f.message.replace(f"{ifname}: ", f"{ifname} (netns {label}): ",
                                                 1),
                               {**f.detail, "netns": ns, "netns_name": t.get("netns_name")}))
    out.extend(f for f in map(probe_finding, probes) if f is not None)
    order = {k: i for i, k in enumerate(KINDS)}
    out.sort(key=lambda f: (order[f.kind], f.ifname or "", f.pid or 0, f.fd or 0))
    return out


def _tap_findings(ifname: str, holders: list[dict], vhost: set[int], tap: dict | None,
                  nics: Mapping[str, LibvirtNic], facts: HostFacts,
                  chain_of: ChainOf, made_here: bool = False) -> list[Finding]:
    out: list[Finding] = []
    owners, vm, source = _owners(ifname, holders, nics, facts)
    vm_rows = [r for r in holders if r["pid"] in owners]
    vm_files = {r["file"]: r for r in vm_rows}
    if owners:
        for r in holders:
            if r["pid"] in owners:
                continue
            out.append(_holder_finding(ifname, r, vm_files, owners, vm, source, facts,
                                       chain_of))
    master = facts.masters.get(ifname)
    if master is None and holders:
        master = next((r.get("master") for r in holders if r.get("master")), None)
    in_use = any(r["pid"] in facts.qemu for r in holders) or any(p in facts.qemu for p in vhost)
    kind = _kind(tap or (holders[0] if holders else None))
    persist = bool(tap and tap.get("persist"))
    intent = {"owner": (tap or {}).get("owner"), "group": (tap or {}).get("group"),
              "kept_on_purpose": kept_on_purpose(tap)}
    # only with strict does a tap kept on purpose get here: say why it could have been left out
    on_purpose = f" (kept on purpose: {kept_text(tap)})" if tap and intent["kept_on_purpose"] \
        else ""
    if made_here:            # the traced command made it and left it so
        maker = _label(tap.get("created_comm"), tap["created_by"])
        on_purpose = f" (made by {maker} while the command ran" + (
            f"; {kept_text(tap)}" if intent["kept_on_purpose"] else "") + ")"
        intent["left_by_command"] = True
    if master and not in_use:
        held = ", ".join(_holder(r) for r in holders)
        why = f"held only by {held}" if holders else "no process holds it"
        out.append(Finding("vm_gone", ifname, None, None, None,
                           f"{ifname}: a port of {master} that no VM holds ({why})"
                           + ("" if holders else on_purpose),
                           {"master": master, "holders": [list(row_key(r)) for r in holders],
                            "persist": persist, **intent}))
    elif not holders and not vhost:
        what = f"persistent {kind}" if persist else kind
        out.append(Finding("orphan", ifname, None, None, None,
                           f"{ifname}: {what}, no process holds it{on_purpose}",
                           {"persist": persist, **intent}))
    return out


def _holder_finding(ifname: str, r: dict, vm_files: dict, owners: set[int], vm, source,
                    facts: HostFacts, chain_of: ChainOf) -> Finding:
    who = _holder(r)
    detail: dict = {"vm": vm, "vm_pids": sorted(owners), "vm_from": source,
                    "file": r["file"], "how": r.get("how"), "from_pid": r.get("from_pid"),
                    "creator_pid": r.get("creator_pid"), "creator_comm": r.get("creator_comm"),
                    "creator_from": r.get("creator_from")}
    if r.get("tid") is not None:
        detail["tid"] = r["tid"]      # the holder is that thread's own fd table
    vm_row = vm_files.get(r["file"])
    # live: the way the file went to the VM (a leak), or to this holder (foreign)
    chain = chain_of(r["file"], vm_row["pid"] if vm_row is not None else r["pid"])
    if chain:
        detail["chain"] = chain
        if vm_row is not None and not any(h["pid"] == r["pid"] for h in chain):
            # a side copy: how it came to this holder, too
            mine = chain_of(r["file"], r["pid"])
            if mine:
                detail["holder_chain"] = mine
    if vm_row is not None:
        if r.get("creator_pid") is None:
            role = None               # a snapshot: who made it is unknown
        elif r["creator_pid"] == r["pid"]:
            role = "creator"
        elif not chain:
            role = None               # not the creator; by which way, a snapshot cannot say
        elif any(h["pid"] == r["pid"] for h in chain):
            role = "intermediate"     # on the way from the creator to the VM
        else:
            role = "copy"             # got a copy off that way and kept it
        detail.update(role=role, vm_pid=vm_row["pid"], vm_comm=vm_row["comm"],
                      vm_fd=vm_row["fd"])
        made_by = _label(r.get("creator_comm"), r.get("creator_pid"))
        whose = {"creator": " (its creator)",
                 "intermediate": f" (passed it on; created by {made_by})",
                 "copy": f" (a copy; created by {made_by})",
                 None: f" (created by {made_by})" if r.get("creator_pid") else ""}[role]
        return Finding("leak", ifname, r["pid"], r["fd"], r["comm"],
                       f"{ifname}: {who}{whose} still holds the {_kind(r)} that "
                       f"{_vm_label(vm_row['pid'], vm_row['comm'], vm)} uses", detail)
    owner = min(owners)
    owner_comm = next((x["comm"] for x in vm_files.values() if x["pid"] == owner), None)
    owner_label = (_vm_label(owner, owner_comm, vm) if owner_comm is not None
                   else f"VM {vm} (QEMU pid {owner})" if vm else f"the QEMU pid {owner}")
    own_vm = facts.qemu.get(r["pid"]) if r["pid"] in facts.qemu else None
    detail.update(vm_holds=bool(vm_files), holder_is_vm=r["pid"] in facts.qemu,
                  holder_vm=own_vm)
    if vm_files:
        how = "through an open file of its own, not the VM's"
    else:
        how = "which does not hold it"
    other = (f" (itself a VM{' ' + own_vm if own_vm else ''})"
             if r["pid"] in facts.qemu else "")
    return Finding("foreign_holder", ifname, r["pid"], r["fd"], r["comm"],
                   f"{ifname}: {who}{other} holds the {_kind(r)} of {owner_label}, {how}",
                   detail)


def probe_finding(report: dict) -> Finding | None:
    """A failed TUNGETIFF report (model `tungetiff` with an error) as a finding."""
    if report.get("type") != "tungetiff" or not report.get("error"):
        return None
    detail = {"error": report["error"]}
    for k in ("time", "ts_ns", "tid"):
        if report.get(k) is not None:
            detail[k] = report[k]
    return Finding("bad_probe", None, report["pid"], report["fd"], report["comm"],
                   f"{_label(report['comm'], report['pid'])}: TUNGETIFF {report['message']}",
                   detail)


def summary(findings: list[Finding]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for f in findings:
        counts[f.kind] = counts.get(f.kind, 0) + 1
    return {k: counts[k] for k in KINDS if k in counts}
