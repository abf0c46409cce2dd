"""The system log output (tracer/logsink.py) on its syslog path, as where journald
does not run (here): a real unix datagram socket stands for /dev/log, and what
arrives is read back — syslog(3)'s format, facility daemon, the fields as key=value,
every name escaped, a full queue dropping rather than blocking the loop."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest
from syslogd import SyslogSocket

from tracer import logsink
from tracer.audit import Finding
from tracer.logsink import LogSink, SyslogTarget, logfmt
from tracer.replay import recorded_model, replay_iter

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo.record.jsonl"
LINE = re.compile(r"<(\d+)>(\w{3} [ \d]\d \d\d:\d\d:\d\d) taptrace\[(\d+)\]: (.*)", re.DOTALL)


class DevLog(SyslogSocket):
    """LogSink's syslog target."""

    def read(self) -> list[tuple[int, str]]:
        """What arrived once the sink has closed (all it sent), as (priority value,
        text after `taptrace[PID]: `)."""
        out = []
        for data in self.drain():
            m = LINE.fullmatch(data.decode())
            assert m, f"not in syslog(3)'s format: {data!r}"
            assert int(m.group(3)) > 0
            out.append((int(m.group(1)), m.group(4)))
        return out

    def close(self) -> None:
        self.running = False
        self.sock.close()


@pytest.fixture
def devlog(tmp_path):
    d = DevLog(tmp_path / "log")
    yield d
    d.close()


LEAK = Finding("leak", "vnet0", 4242, 27, "libvirtd",
               "vnet0: libvirtd[4242] holds fd 27 of qemu-system-x86[4300] (VM web1)",
               {"vm": "web1", "role": "creator", "chain": [{"pid": 1}]})


def test_a_finding_appears_and_clears_with_its_fields(devlog):
    sink = LogSink(SyslogTarget(devlog.path))
    model = recorded_model({}, {})
    sink.ready({"type": "ready", "backend": "tracepoint", "rows": 3, "taps": 2}, model, 0)
    sink.findings([LEAK], [], model)
    sink.findings([], [LEAK], model)
    sink.close()
    (p0, started), (p1, appeared), (p2, cleared), (p3, stopped) = devlog.read()
    assert (p0, started) == (3 * 8 + 6, ("started: tracing with the tracepoint backend; "
                                        "3 tap fds and 2 taps known"))
    assert p1 == 3 * 8 + 4                       # daemon.warning
    assert appeared == ('leak: vnet0: libvirtd[4242] holds fd 27 of qemu-system-x86[4300] '
                        '(VM web1) finding=appeared kind=leak ifname=vnet0 pid=4242 fd=27 '
                        'comm=libvirtd vm=web1 role=creator')
    assert p2 == 3 * 8 + 5                       # daemon.notice
    assert cleared.startswith("cleared leak: vnet0: libvirtd[4242] holds")
    assert "finding=cleared kind=leak ifname=vnet0" in cleared
    assert (p3, stopped) == (3 * 8 + 6, "stopped")


def test_hostile_names_stay_escaped(devlog):
    sink = LogSink(SyslogTarget(devlog.path))
    model = recorded_model({}, {})
    evil = Finding("orphan", "t\x1b[2Jx\n", None, None, 'a "b"=c',
                   "t\x1b[2Jx\n: no holder\rforged line")
    sink.findings([evil], [], model)
    sink.close()
    (_, text), _ = devlog.read()
    assert "\x1b" not in text and "\n" not in text and "\r" not in text
    assert text == (r"orphan: t\x1b[2Jx\x0a: no holder\x0dforged line finding=appeared "
                    r'kind=orphan ifname=t\x1b[2Jx\x0a comm="a \"b\"=c"')


def test_events_only_when_asked(devlog):
    model = recorded_model({}, {})
    quiet = LogSink(SyslogTarget(devlog.path))
    loud = LogSink(SyslogTarget(devlog.path), events=True)
    answers: dict = {}
    netns: dict = {}
    model = recorded_model(answers, netns)
    reports = list(replay_iter(DEMO.read_text().splitlines(), model, answers, netns))
    for r in reports:
        quiet.report(r, model)
        loud.report(r, model)
    quiet.close()
    loud.close()
    msgs = [t for _, t in devlog.read()]
    assert msgs.count("stopped") == 2
    events = [m for m in msgs if m != "stopped"]
    assert len(events) == len(reports)
    scm = next(m for m in events if m.startswith("scm_recv "))
    assert re.fullmatch(r"scm_recv qemu-system-x86\[\d+\] ttdemo1: SCM_RIGHTS from "
                        r"libvirtd\[\d+\] fds 3→4 event=scm_recv pid=\d+ "
                        r"comm=qemu-system-x86 ifname=ttdemo1", scm), scm


def test_losses_are_summed_at_most_once_a_second(devlog):
    sink = LogSink(SyslogTarget(devlog.path))
    model = recorded_model({}, {})
    for _ in range(3):
        sink.report({"type": "lost", "count": 10}, model)
        sink.tick(model)
    sink.report({"type": "lost", "count": 5}, model)
    sink.close()
    got = [t for _, t in devlog.read()]
    assert got == ["10 records lost; resynced from /proc lost=10",
                   "25 records lost; resynced from /proc lost=25", "stopped"]


def test_a_full_queue_drops_and_says_so(devlog, monkeypatch):
    """The sender thread is held up (a stuck syslog daemon): findings beyond the
    queue are dropped, not waited for, and the count is logged when it moves."""
    gate = threading.Event()
    target = SyslogTarget(devlog.path)
    real_send = target.send

    def stuck_send(*a):
        gate.wait(10)
        real_send(*a)
    monkeypatch.setattr(target, "send", stuck_send)
    sink = LogSink(target, queue_max=3)
    model = recorded_model({}, {})
    t0 = time.monotonic()
    sink.findings([LEAK] * 10, [], model)
    assert time.monotonic() - t0 < 0.5
    assert sink.dropped >= 6
    gate.set()
    sink.close()
    msgs = [t for _, t in devlog.read()]
    notes = [m for m in msgs if m.endswith("messages not logged (queue full)")]
    assert notes == [f"{sink.dropped} messages not logged (queue full)"]
    assert len(msgs) == 10 + 1 - sink.dropped + 1     # 10 leaks and "stopped", the note


def test_no_syslog_daemon_is_one_warning(tmp_path, capsys):
    sink = LogSink(SyslogTarget(str(tmp_path / "nobody-listens")))
    model = recorded_model({}, {})
    sink.findings([LEAK, LEAK], [], model)
    sink.close()
    err = capsys.readouterr().err
    assert err.count("taptrace: warning: cannot log to syslog") == 1
    assert sink.failed == 3


def test_default_target_is_syslog_without_journald(tmp_path, monkeypatch):
    monkeypatch.setattr(logsink, "JOURNAL_SOCKET", str(tmp_path / "no-journal"))
    assert logsink.default_target().name == "syslog"
    assert logsink.default_target("/x/log").path == "/x/log"


def test_logfmt_quotes_what_needs_it():
    assert logfmt({"TAPTRACE_A": "x", "TAPTRACE_B": "", "TAPTRACE_C": "p q"}) == 'a=x b="" c="p q"'
