"""The agent's cost on top of `watch`: both run at once on the same host (same load,
same moment), and for each: CPU seconds (utime+stime from /proc/PID/stat) and RSS,
idle and under tapchurn at a fixed rate; and the history database's growth per
10,000 events the agent wrote.

Run as root: `.venv/bin/python bench/agent_cost.py [--idle 20] [--churn 10]
[--rate 300]` (tapchurn is built into a temporary directory).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def wait_line(proc: subprocess.Popen, stream, marker: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = stream.readline()
        if marker in line:
            return
        if not line and proc.poll() is not None:
            break
    raise SystemExit(f"no {marker!r} from {proc.args}")


def events_in(db: str) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("SELECT count(*) FROM events").fetchone()[0]
    finally:
        con.close()


def db_bytes(db: str) -> int:
    return sum(os.path.getsize(db + s) for s in ("", "-wal") if os.path.exists(db + s))


def phase(name: str, procs: dict[str, int], seconds: float, action=None) -> dict:
    before = {k: cpu_s(p) for k, p in procs.items()}
    t0 = time.monotonic()
    if action is not None:
        action()
    left = seconds - (time.monotonic() - t0)
    if left > 0:
        time.sleep(left)
    wall = time.monotonic() - t0
    out = {}
    for k, p in procs.items():
        out[k] = {"cpu_s": cpu_s(p) - before[k], "cpu_pct": 100 * (cpu_s(p) - before[k]) / wall,
                  "rss_mib": rss_mib(p)}
    print(f"{name} ({wall:.1f} s): " + "; ".join(
        f"{k} CPU {v['cpu_s']:.2f} s ({v['cpu_pct']:.1f} %), RSS {v['rss_mib']:.1f} MiB"
        for k, v in out.items()))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--idle", type=float, default=20)
    ap.add_argument("--churn", type=float, default=10)
    ap.add_argument("--rate", type=int, default=300, help="tapchurn iterations per second")
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="ttagent")
    churn = os.path.join(tmp, "tapchurn")
    subprocess.run(["cc", "-O2", "-o", churn, str(ROOT / "bench" / "tapchurn.c")], check=True)
    db = os.path.join(tmp, "history.db")
    py = [sys.executable, "-m", "tracer"]
    agent = subprocess.Popen([*py, "agent", "--db", db], cwd=ROOT, stderr=subprocess.PIPE,
                             text=True)
    wait_line(agent, agent.stderr, "# taptrace agent:")
    watch = subprocess.Popen([*py, "watch", "--json"], cwd=ROOT, stdout=subprocess.PIPE,
                             text=True)
    wait_line(watch, watch.stdout, '"type": "ready"')
    drain = subprocess.Popen(["cat"], stdin=watch.stdout, stdout=subprocess.DEVNULL)
    procs = {"watch": watch.pid, "agent": agent.pid}
    try:
        time.sleep(3)                                   # both settled after start
        phase("idle", procs, args.idle)
        n0, b0 = events_in(db), db_bytes(db)
        result: dict = {}

        def run_churn() -> None:
            out = subprocess.run([churn, "moves", str(args.churn), str(args.rate), "0"],
                                 capture_output=True, text=True, check=True)
            result.update(json.loads(out.stdout))
        phase(f"tapchurn moves {args.churn:g} s at {args.rate}/s", procs, args.churn + 2,
              run_churn)
        time.sleep(1.5)
        n1, b1 = events_in(db), db_bytes(db)
        print(f"tapchurn: {result.get('events')} tap events in {result.get('seconds')} s "
              f"({result.get('events', 0) / max(result.get('seconds', 1), 1e-9):.0f}/s)")
        print(f"history: {n1 - n0} events written, {(b1 - b0) / 1e6:.1f} MB: "
              f"{(b1 - b0) / max(n1 - n0, 1) * 10000 / 1e6:.2f} MB per 10,000 events "
              "(with their holding intervals)")
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        lost = con.execute("SELECT count(*), coalesce(sum(json_extract(data, '$.count')), 0)"
                           " FROM events WHERE type = 'lost'").fetchone()
        print(f"agent losses: {lost[0]} (records {lost[1]})")
        con.close()
    finally:
        for p in (watch, agent):
            p.send_signal(signal.SIGINT)
        for p in (watch, agent):
            p.wait(timeout=60)
        drain.wait(timeout=10)
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)


if __name__ == "__main__":
    main()
