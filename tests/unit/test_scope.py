"""tracer.scope: which processes and taps are a traced command's (`watch -- CMD`).

Records are fed to a real Model in the order tracer/session.py uses: the scope sees
each record before the model applies it, each report before it is shown, and the
record again after; /proc and unix-socket peers are answered by the test.
"""

from __future__ import annotations

import itertools

from tracer import events as ev
from tracer.model import Model
from tracer.scope import CommandScope, report_keys

TAP = ev.IFF_TAP | ev.IFF_NO_PI
SIGCHLD = 17
TRACER = 100
CMD = 200


class Scoped:
    def __init__(self, ppid: dict[int, int] | None = None,
                 servers: set[int] = frozenset()) -> None:
        self.m = Model()
        self.ppid = dict(ppid or {})
        self.asked: list[tuple[int, list[int]]] = []
        self.servers = servers

        def talks_to(server: int, clients) -> bool:
            self.asked.append((server, list(clients)))
            return server in self.servers

        self.s = CommandScope(TRACER, self.ppid.get, talks_to)
        self.s.bind(self.m)
        self.s.add_root(CMD)
        self.m._proc(CMD, "sh")                  # as Session.track puts it there
        self.shown: list[dict] = []
        self.clock = itertools.count(1_000)

    def apply(self, cls, pid: int, comm: str = "proc", **kw) -> None:
        e = cls(ts=next(self.clock), pid=pid, tid=pid, comm=comm, **kw)
        self.s.before(e)
        for report in self.m.apply(e):
            self.s.note(report)
            if not report.get("quiet") and self.s.report_ok(report):
                self.shown.append(report)
        self.s.after(e)

    def tap(self, pid: int, fd: int, name: str) -> None:
        self.apply(ev.Open, pid, fd=fd, path="/dev/net/tun", flags=0o2)
        self.apply(ev.TunIoctl, pid, fd=fd, cmd=ev.TUNSETIFF, ret=0, ifname=name, value=TAP)

    def fork(self, pid: int, child: int) -> None:
        self.apply(ev.Fork, pid, child=child, flags=SIGCHLD)

    def rows(self) -> set[tuple[int, int, str]]:
        self.s.absorb()
        return {(r["pid"], r["fd"], r["ifname"]) for r in self.m.rows() if self.s.row_ok(r)}

    def shown_about(self, name: str) -> list[tuple[str, int]]:
        return [(r["type"], r["pid"]) for r in self.shown
                if name in [n for _ns, n in report_keys(r)]]


def test_a_double_forked_daemon_stays_in_the_tree_and_a_reused_pid_does_not():
    w = Scoped()
    w.fork(CMD, 201)
    w.fork(201, 202)
    w.apply(ev.Exit, 201)                        # the middle one leaves: 202 is orphaned
    w.apply(ev.Exit, CMD)
    assert w.s.member(202)
    assert not w.s.member(201) and not w.s.member(CMD)
    w.apply(ev.Exit, 202)
    w.fork(999, 202)                             # an outsider's child got pid 202
    assert not w.s.member(202)


def test_a_pid_no_fork_record_introduced_is_asked_of_proc():
    # 301's parent is a member; 302 was re-parented to taptrace (the subreaper);
    # 303 descends from init only
    w = Scoped(ppid={301: CMD, 302: TRACER, 303: 50, 50: 1})
    assert w.s.member(301) and w.s.member(302)
    assert not w.s.member(303)


def test_every_holder_of_a_tap_the_tree_held_is_shown_and_nothing_else_of_theirs():
    w = Scoped()
    w.tap(CMD, 3, "tapA")
    w.tap(500, 4, "other")                       # an outsider's own tap
    w.apply(ev.ScmSend, CMD, sock=9, fds=(3,))
    w.apply(ev.ScmRecv, 500, sock=7, fds=(5,), cloexec=False)
    w.apply(ev.Close, CMD, fd=3)
    assert w.rows() == {(500, 5, "tapA")}
    assert ("scm_recv", 500) in w.shown_about("tapA")
    assert w.shown_about("other") == []


def test_a_tap_made_outside_at_the_trees_request_is_followed_to_its_vm():
    w = Scoped(servers={600})                    # 600 answers a socket the tree holds
    w.fork(CMD, 201)
    w.tap(600, 29, "vnet0")                      # libvirtd makes it
    w.fork(600, 601)                             # ...forks the future QEMU
    w.apply(ev.Close, 600, fd=29)
    w.apply(ev.Exec, 601, comm="qemu-system-x86", old_pid=601)
    assert w.asked and w.asked[0] == (600, [CMD, 201])
    assert w.rows() == {(601, 29, "vnet0")}
    assert [t for t, _ in w.shown_about("vnet0")] == ["tunsetiff", "fork", "close", "exec"]
    w.tap(700, 3, "vnet1")                       # nobody of the tree talks to 700
    assert w.shown_about("vnet1") == [] and (700, 3, "vnet1") not in w.rows()


def test_a_tap_that_is_gone_is_no_longer_the_commands_nor_a_namesake_made_later():
    w = Scoped()
    w.tap(CMD, 3, "tapA")
    w.apply(ev.Close, CMD, fd=3)                 # the last file: the tap goes
    assert ("tap_gone", CMD) in w.shown_about("tapA")
    w.tap(500, 4, "tapA")                        # someone else's tapA, later
    assert ("tunsetiff", 500) not in w.shown_about("tapA")
    assert w.rows() == set()


def test_report_keys_reads_one_fd_a_list_and_execs_map():
    assert list(report_keys({"ifname": "a", "netns": 5})) == [(5, "a")]
    assert list(report_keys({"ifnames": ["a", None, "b"], "netns": [1, None, 2]})) == [
        (1, "a"), (2, "b")]
    assert list(report_keys({"ifnames": {"3": "a", "4": None}, "netns": {"3": 7}})) == [
        (7, "a")]

