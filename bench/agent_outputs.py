"""What the agent's metrics and system-log outputs cost per event, in process, no BPF:
the reports of a real recording (tests/data/demo.record.jsonl), replayed once into a
model, are handed to each sink over and over as the agent's loop hands them.

  report       MetricsSink.report / LogSink.report per event (the main thread's cost)
  log events   LogSink with --log-events: report + the sender thread, CPU per event
               (process CPU time, both threads), to a unix datagram socket read by a
               thread of this process
  tick         MetricsSink building a Sample from a model of N tap fds
  scrape       one GET /metrics (served by prometheus_client's thread)

Usage: .venv/bin/python bench/agent_outputs.py [--events N] [--rounds R] [--fds N]
Prints median [min .. max] over the rounds.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracer.logsink import LogSink, SyslogTarget
from tracer.metrics import MetricsSink
from tracer.model import Entry, FdTable, OpenFile, Process
from tracer.replay import replay

DEMO = Path(__file__).resolve().parents[1] / "tests" / "data" / "demo.record.jsonl"


def spread(xs: list[float], unit: str, scale: float = 1.0) -> str:
    xs = [x * scale for x in xs]
    return f"{statistics.median(xs):.3g} {unit} [{min(xs):.3g} .. {max(xs):.3g}]"


def per_event(sink, reports: list[dict], model, n: int) -> float:
    """CPU seconds per report() call (this thread only)."""
    batch = (reports * (n // len(reports) + 1))[:n]
    t0 = time.thread_time()
    for r in batch:
        sink.report(r, model)
    return (time.thread_time() - t0) / n


def drain(sock: socket.socket, stop: threading.Event) -> None:
    sock.settimeout(0.1)
    while not stop.is_set():
        try:
            sock.recv(65536)
        except TimeoutError:
            continue
        except OSError:
            return


def log_events_cost(reports: list[dict], model, n: int,
                    queue_max: int | None = None) -> tuple[float, int]:
    """Process CPU per event with --log-events, the sender thread included (and the
    reader standing for syslogd), and how many were dropped (a queue of `queue_max`;
    None: room for all, so every event is sent and costed)."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "log")
        reader = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        reader.bind(path)
        stop = threading.Event()
        t = threading.Thread(target=drain, args=(reader, stop), daemon=True)
        t.start()
        sink = LogSink(SyslogTarget(path), events=True, queue_max=queue_max or n + 16)
        batch = (reports * (n // len(reports) + 1))[:n]
        t0 = time.process_time()
        for r in batch:
            sink.report(r, model)
        sink.close()
        cpu = time.process_time() - t0
        stop.set()
        t.join()
        reader.close()
        return cpu / n, sink.dropped


def model_with(model, fds: int):
    for i in range(fds):
        pid = 100_000 + i
        table = FdTable(id=pid)
        table.fds[3] = Entry(OpenFile(id=pid, ifname=f"vnet{i}", iff=2), False, "inherited")
        model.procs[pid] = Process(pid, f"qemu-{i % 30}", table)
    return model


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--fds", type=int, default=200)
    args = ap.parse_args()
    model, reports = replay(DEMO.read_text().splitlines())
    reports = [r for r in reports if r["type"] not in ("ready", "table")]

    metrics = MetricsSink("127.0.0.1", 0)
    quiet_log = LogSink(SyslogTarget("/nonexistent"))     # with no events: never sends
    m_cost, l_cost, le_cost = [], [], []
    for _ in range(args.rounds):
        m_cost.append(per_event(metrics, reports, model, args.events))
        l_cost.append(per_event(quiet_log, reports, model, args.events))
        le_cost.append(log_events_cost(reports, model, args.events // 4)[0])
    quiet_log._queue.put(None)          # its thread ends; close() would log "stopped"
    burst = args.events // 4
    _, dropped = log_events_cost(reports, model, burst, queue_max=10_000)

    big = model_with(model, args.fds)
    ticks, scrapes = [], []
    host, port = metrics.address
    for _ in range(args.rounds):
        t0 = time.perf_counter()
        metrics.refresh(big)
        ticks.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with urllib.request.urlopen(f"http://{host}:{port}/metrics") as resp:
            size = len(resp.read())
        scrapes.append(time.perf_counter() - t0)
    metrics.close()

    print(f"# {args.events:,} events x {args.rounds} rounds; model of {args.fds} tap fds "
          f"({len({p.comm for p in big.procs.values()})} comms)")
    print(f"MetricsSink.report           {spread(m_cost, 'µs/event', 1e6)}")
    print(f"LogSink.report (no events)   {spread(l_cost, 'µs/event', 1e6)}")
    print(f"LogSink --log-events (CPU)   {spread(le_cost, 'µs/event', 1e6)} "
          "(main thread + sender + reader)")
    print(f"  a burst of {burst:,} events at full speed, default queue: "
          f"{dropped:,} dropped ({dropped / burst:.0%})")
    print(f"MetricsSink.tick             {spread(ticks, 'ms', 1e3)}")
    print(f"scrape /metrics              {spread(scrapes, 'ms', 1e3)} ({size:,} bytes)")


if __name__ == "__main__":
    main()
