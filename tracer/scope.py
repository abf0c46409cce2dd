"""What `taptrace watch -- CMD` shows: the command's process tree and the taps it
touches, wherever they go.

* **The tree**: CMD and every process it forks, from the fork records as they come
  (a daemon that double-forks stays in the tree, whoever its parent is now). A pid
  the records did not introduce (records lost) is asked of /proc: a process whose
  ancestors include a member or taptrace itself (a child subreaper: orphans of the
  tree are re-parented to it) is one. A member leaves the tree when it exits.
* **Its taps**: every tap a member holds at any time (created, inherited, received,
  dup'd), and every tap made outside the tree at its request: made by a process
  that a member is talking to over a unix socket at that moment (libvirtd making
  `vnet0` while `virsh start` waits for its answer). A tap leaves the set when it
  is gone, so a later tap of the same name is not taken for it.
* **Shown**: what members do, and everything about the tree's taps, by anyone
  (libvirtd, the QEMU it starts, a process the tap was passed to).

A tap is (namespace, name) as elsewhere; None stands for taptrace's own namespace
and for an unknown one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from . import events as ev
from .model import Model, OpenFile

ANCESTORS_MAX = 64


class CommandScope:
    """Membership of a traced command's tree and of its taps; the session asks it
    about each record, report, row and tap (see tracer/session.py)."""

    def __init__(self, tracer_pid: int, ppid_of: Callable[[int], int | None],
                 talks_to: Callable[[int, Iterable[int]], bool]) -> None:
        """ppid_of(pid): its parent now (/proc); talks_to(server, clients): is `server`
        the peer of a unix socket one of `clients` holds."""
        self.tracer_pid = tracer_pid
        self._ppid_of = ppid_of
        self._talks_to = talks_to
        self.members: set[int] = set()
        self._outside: set[int] = set()             # asked of /proc: not in the tree
        self._taps: dict[str, set[int | None]] = {}  # ifname -> namespaces (None: own)
        self.model: Model | None = None

    def bind(self, model: Model) -> None:
        self.model = model

    def add_root(self, pid: int) -> None:
        self.members.add(pid)
        self._outside.discard(pid)

    # ---- the tree --------------------------------------------------------------

    def member(self, pid: int | None) -> bool:
        if pid is None:
            return False
        if pid in self.members:
            return True
        if pid in self._outside or not self.members:
            return False
        chain = [pid]
        cur = pid
        for _ in range(ANCESTORS_MAX):
            parent = self._ppid_of(cur)
            if parent is None or parent <= 1:
                break
            if parent in self.members or parent == self.tracer_pid:
                self.members.update(chain)
                return True
            chain.append(parent)
            cur = parent
        self._outside.add(pid)
        return False

    def forget_outside(self) -> None:
        """After lost records: a pid found outside may since be a member's child."""
        self._outside.clear()

    # ---- its taps -------------------------------------------------------------------

    def _ns(self, netns: int | None) -> int | None:
        own = self.model.own_netns if self.model is not None else None
        return None if netns is None or netns == own else netns

    def _file_key(self, f: OpenFile) -> tuple[int | None, str] | None:
        if f.is_vhost:
            f = next((b for _i, b in sorted(f.backends.items())
                      if b is not None and b.ifname), None)
            if f is None:
                return None
        return (self._ns(f.netns), f.ifname) if f.ifname else None

    def _add(self, key: tuple[int | None, str] | None) -> None:
        if key is not None:
            self._taps.setdefault(key[1], set()).add(key[0])

    def has(self, netns: int | None, ifname: str | None) -> bool:
        """Is (netns, ifname) a tap of the command? An unknown namespace matches any."""
        if not ifname:
            return False
        nss = self._taps.get(ifname)
        if not nss:
            return False
        ns = self._ns(netns)
        return ns in nss or ns is None or None in nss

    def _held_by(self, pid: int) -> Iterator[tuple[int | None, str]]:
        proc = self.model.procs.get(pid) if self.model is not None else None
        if proc is None:
            return
        for table in (proc.table, *proc.thread_tables.values()):
            for entry in table.fds.values():
                key = self._file_key(entry.file)
                if key is not None:
                    yield key

    def absorb(self) -> None:
        """Every tap a member holds now (after a resync, before a table)."""
        if self.model is None:
            return
        for pid in list(self.model.procs):
            if pid in self.members:
                for key in self._held_by(pid):
                    self._add(key)

    def _holds_one(self, pid: int | None) -> bool:
        return pid is not None and any(self.has(*k) for k in self._held_by(pid))

    # ---- what the session asks ----------------------------------------------------

    def before(self, e: ev.Event) -> None:
        """A record, before the model applies it: a member's fork adds its child."""
        if isinstance(e, ev.Fork) and not e.flags & ev.CLONE_THREAD:
            if self.member(e.pid):
                self.members.add(e.child)
                self._outside.discard(e.child)
            else:
                self.members.discard(e.child)    # a pid reused outside the tree

    def after(self, e: ev.Event) -> None:
        """A record, once applied and reported: the taps its member holds now; an
        exit takes the member out."""
        pid = getattr(e, "pid", None)
        if isinstance(e, ev.Exit):
            if not e.thread:
                self.members.discard(pid)
            return
        for p in (pid, e.child if isinstance(e, ev.Fork) else None):
            if p is not None and p in self.members:
                for key in self._held_by(p):
                    self._add(key)

    def note(self, report: dict) -> None:
        """A report, before it is filtered: a tap made outside the tree while a member
        talks to its maker is the tree's (a new tap by TUNSETIFF, a macvtap opened)."""
        t = report["type"]
        made = (t == "tunsetiff" and report.get("created") and not report.get("error")) \
            or (t == "open" and str(report.get("path", "")).startswith("/dev/tap"))
        if not made or not report.get("ifname") or self.has(report.get("netns"),
                                                            report["ifname"]):
            return
        pid = report.get("pid")
        if self.member(pid) or (self.members and self._talks_to(pid, sorted(self.members))):
            self._add((self._ns(report.get("netns")), report["ifname"]))

    def report_ok(self, report: dict) -> bool:
        t = report["type"]
        if t in ("lost", "resync"):
            return True
        keys = list(report_keys(report))
        if self.member(report.get("pid")):
            ok = True
        elif keys:
            ok = any(self.has(ns, name) for ns, name in keys)
        else:          # a failed probe, a vhost error: by a holder of one of its taps
            ok = self._holds_one(report.get("pid"))
        if t == "tap_gone" and ok:
            for ns, name in keys:
                nss = self._taps.get(name, set())
                nss.discard(self._ns(ns))
                if not nss:
                    self._taps.pop(name, None)
        return ok

    def file_ok(self, f: OpenFile) -> bool:
        """An open held until its file got a name (see Session._hold_open)."""
        key = self._file_key(f)
        return key is not None and self.has(*key)

    def row_ok(self, row: dict) -> bool:
        return row["pid"] in self.members or self.has(row.get("netns"), row.get("ifname"))

    def tap_ok(self, tap: dict) -> bool:
        return self.has(tap.get("netns"), tap["ifname"])


def report_keys(report: dict) -> Iterator[tuple[int | None, str]]:
    """(netns, ifname) of each tap a report names (one fd, a list, or exec's map)."""
    if report.get("ifname"):
        ns = report.get("netns")
        yield (ns if not isinstance(ns, (list, dict)) else None), report["ifname"]
    names, nss = report.get("ifnames"), report.get("netns")
    if isinstance(names, dict):
        nss = nss if isinstance(nss, dict) else {}
        for k, name in names.items():
            if name:
                yield nss.get(k), name
    elif isinstance(names, list):
        nss = nss if isinstance(nss, list) and len(nss) == len(names) else [None] * len(names)
        for name, ns in zip(names, nss):
            if name:
                yield ns, name
