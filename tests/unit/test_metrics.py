"""The agent's Prometheus endpoint (tracer/metrics.py), scraped over real HTTP while a
real kernel recording (the demo) replays through the model: the gauges follow the
model, the counters count, labels stay bounded and escaped, a bad address is refused."""

from __future__ import annotations

import re
import socket
import threading
import urllib.request
from pathlib import Path

import click
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tracer.agent_outputs import parse_address
from tracer.audit import Finding
from tracer.metrics import COMMS_MAX, MetricsSink, fd_counts
from tracer.model import Entry, FdTable, OpenFile, Process
from tracer.replay import recorded_model, replay_iter

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo.record.jsonl"
READY = {"type": "ready", "backend": "tracepoint", "buffer": "ringbuf", "rows": 0, "taps": 0}


def scrape(sink: MetricsSink) -> dict[tuple[str, tuple], float]:
    """Every sample of a real scrape: (name, sorted label items) -> value."""
    host, port = sink.address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(samples: dict, name: str, **labels) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


@pytest.fixture
def sink():
    s = MetricsSink("127.0.0.1", 0)
    yield s
    s.close()


def test_the_demo_moves_the_gauges_and_counters(sink):
    answers: dict = {}
    netns: dict = {}
    model = recorded_model(answers, netns)
    sink.ready(READY, model, 0)
    seen = {}
    for r in replay_iter(DEMO.read_text().splitlines(), model, answers, netns):
        sink.report(r, model)
        if r["type"] == "scm_recv":          # the "QEMU" holds both taps now
            sink.refresh(model)
            seen["both"] = scrape(sink)
    sink.refresh(model)
    end = scrape(sink)

    both = seen["both"]
    assert value(both, "taptrace_taps", kind="tap") == 2
    # libvirtd still holds its copy of the hot-plugged tap until it closes it
    assert value(both, "taptrace_tap_fds", kind="tap", comm="qemu-system-x86") == 2
    assert value(both, "taptrace_tap_fds", kind="tap", comm="libvirtd") == 1
    assert value(both, "taptrace_events_total", type="scm_recv") == 1
    # at the end: everything closed, the gauges at zero, the counters kept
    assert value(end, "taptrace_taps", kind="tap") == 0
    assert not [k for k in end if k[0] == "taptrace_tap_fds"]
    assert value(end, "taptrace_events_total", type="tunsetiff") == 3
    assert value(end, "taptrace_events_total", type="tap_gone") == 3
    assert value(end, "taptrace_events_total", type="ready") is None
    assert value(end, "taptrace_backend_info", backend="tracepoint", buffer="ringbuf") == 1
    assert value(end, "taptrace_build_info", version="0.1.0") == 1
    assert value(end, "taptrace_lost_records_total") == 0


def test_the_agent_itself_is_measured(sink):
    samples = scrape(sink)
    assert value(samples, "process_resident_memory_bytes") > 10_000_000
    assert value(samples, "process_cpu_seconds_total") is not None


def test_findings_now_and_in_all(sink):
    model = recorded_model({}, {})
    sink.ready(READY, model, 0)
    leak = Finding("leak", "vnet0", 10, 3, "libvirtd", "vnet0: libvirtd[10] keeps a copy")
    orphan = Finding("orphan", "tap9", None, None, None, "tap9: no holder")
    sink.findings([leak, orphan], [], model)
    sink.refresh(model)
    s = scrape(sink)
    assert value(s, "taptrace_audit_findings", kind="leak") == 1
    assert value(s, "taptrace_audit_findings", kind="orphan") == 1
    assert value(s, "taptrace_audit_findings", kind="vm_gone") == 0   # every kind, always
    sink.findings([], [leak], model)
    sink.refresh(model)
    s = scrape(sink)
    assert value(s, "taptrace_audit_findings", kind="leak") == 0
    assert value(s, "taptrace_audit_findings_appeared_total", kind="leak") == 1
    assert value(s, "taptrace_audit_findings_cleared_total", kind="leak") == 1


def test_a_failed_probe_is_counted_not_present(sink):
    """The agent hands a failed TUNGETIFF over as it happens and never clears it."""
    model = recorded_model({}, {})
    sink.ready(READY, model, 0)
    probe = Finding("bad_probe", None, 7, 9, "qemu", "qemu[7]: TUNGETIFF fd 9 is not a tap")
    sink.findings([probe], [], model)
    sink.findings([probe], [], model)
    sink.refresh(model)
    s = scrape(sink)
    assert value(s, "taptrace_audit_findings", kind="bad_probe") == 0
    assert value(s, "taptrace_audit_findings_appeared_total", kind="bad_probe") == 2


def test_losses_and_resyncs_are_counted(sink):
    model = recorded_model({}, {})
    sink.ready(READY, model, 0)
    sink.report({"type": "lost", "count": 40}, model)
    sink.report({"type": "resync", "rows": 0, "taps": 0}, model)
    sink.report({"type": "lost", "count": 2}, model)
    sink.report({"type": "resync", "rows": 0, "taps": 0}, model)
    sink.refresh(model)
    s = scrape(sink)
    assert value(s, "taptrace_lost_records_total") == 42
    assert value(s, "taptrace_resyncs_total") == 2
    assert value(s, "taptrace_events_total", type="lost") is None


def test_a_scrape_waits_for_the_next_tick(sink):
    """Scrapes see Samples built on the main thread, never the model as it changes."""
    model = recorded_model({}, {})
    sink.ready(READY, model, 0)
    sink.report({"type": "open", "pid": 1}, model)
    assert value(scrape(sink), "taptrace_events_total", type="open") is None
    sink.refresh(model)
    assert value(scrape(sink), "taptrace_events_total", type="open") == 1


def holders(model, comms: list[str]) -> None:
    for pid, comm in enumerate(comms, 100):
        table = FdTable(id=pid)
        table.fds[3] = Entry(OpenFile(id=pid, ifname=f"tap{pid}", iff=2), False, "opened")
        model.procs[pid] = Process(pid, comm, table)


def test_comm_labels_are_capped_and_escaped():
    model = recorded_model({}, {})
    holders(model, [f"helper{i}" for i in range(COMMS_MAX + 5)] + ["qemu"] * 3
            + ["evil\n\x1b[31m", "raw\udcff"])
    counts = fd_counts(model)
    comms = {c for _, c in counts}
    assert len(comms) == COMMS_MAX + 1 and "other" in comms
    assert counts[("tap", "qemu")] == 3                       # the commonest are kept
    assert sum(counts.values()) == COMMS_MAX + 5 + 3 + 2      # nothing lost by folding

    small = recorded_model({}, {})
    holders(small, ["evil\n\x1b[31m", "raw\udcff"])
    assert set(fd_counts(small)) == {("tap", "evil\\x0a\\x1b[31m"), ("tap", "raw\\xff")}


def test_a_thread_s_own_table_counts_as_its_rows_do():
    # process 100's fd 3, and thread 105's own table (shared with thread 106: one
    # table, counted once) holding fds 3 and 4
    model = recorded_model({}, {})
    holders(model, ["qemu"])
    own = FdTable(id=99, users={105, 106})
    own.fds[3] = model.procs[100].table.fds[3]
    own.fds[4] = Entry(OpenFile(id=98, ifname="tap9", iff=2), False, "opened")
    model.procs[100].thread_tables.update({105: own, 106: own})
    assert fd_counts(model) == {("tap", "qemu"): 3} == {("tap", "qemu"): len(model.rows())}


def test_hostile_comms_scrape_cleanly(sink):
    model = recorded_model({}, {})
    holders(model, ['q"e\\mu\n', "raw\udcff"])
    sink.refresh(model)
    s = scrape(sink)
    assert value(s, "taptrace_tap_fds", kind="tap", comm='q"e\\\\mu\\x0a') == 1
    assert value(s, "taptrace_tap_fds", kind="tap", comm="raw\\xff") == 1


@pytest.mark.parametrize("text, want", [
    ("127.0.0.1:9979", ("127.0.0.1", 9979)),
    ("9100", ("127.0.0.1", 9100)),
    ("0.0.0.0:9979", ("0.0.0.0", 9979)),
    ("[::1]:9979", ("::1", 9979)),
])
def test_addresses(text, want):
    assert parse_address(text) == want


@pytest.mark.parametrize("text, why", [
    ("localhost:9979", "is not an IP address"),
    ("127.0.0.1", "expected ADDR:PORT"),
    ("127.0.0.1:99999", "not a port"),
    ("::1:9979", "[ADDR]:PORT"),
    ("[::1]9979", "[ADDR]:PORT"),
    (":9979", "ADDR:PORT"),
    ("1.2.3.4:x", "not a port"),
])
def test_bad_addresses_are_refused(text, why):
    with pytest.raises(ValueError, match=re.escape(why)):
        parse_address(text)


def test_a_port_in_use_is_one_line():
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        with pytest.raises(click.ClickException) as exc:
            MetricsSink("127.0.0.1", taken.getsockname()[1])
        assert "cannot listen: Address already in use" in exc.value.message
    finally:
        taken.close()


def test_close_stops_serving():
    sink = MetricsSink("127.0.0.1", 0)
    host, port = sink.address
    sink.close()
    assert not [t for t in threading.enumerate() if t.name == "taptrace-metrics"]
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=2)
