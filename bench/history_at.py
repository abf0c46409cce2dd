"""`taptrace history IFNAME --at T` on a database of 1,000,000 events.

Fills a history database through the store's own writer (tracer/history_store.py:
the same statements, batches and indexes as the agent) with synthetic rows: TAPS
taps over DAYS days, EVENTS events, and one holding interval closed and another
opened every INTERVAL_EVERY events (a new holder of that tap), then asks:

  query    holders_at() in-process (open read-only, the lookup, rows decoded)
  command  `taptrace history IFNAME --at T --json` as a process, against the same
           process doing no query (`taptrace history --help`): Python's start
  growth   the file's bytes per 10,000 events (with their intervals)

Each at ROUNDS random moments (and the oldest one, the worst for the index).
Needs no root. `.venv/bin/python bench/history_at.py [--events N] [--db PATH]`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tracer import history as hi
from tracer.history_store import HistoryStore, Retention

TAPS = 200
DAYS = 30
INTERVAL_EVERY = 10
ROUNDS = 15


def row(pid: int, fd: int, ifname: str) -> dict:
    return {"pid": pid, "comm": "qemu-system-x86", "fd": fd, "ifname": ifname, "kind": "tap",
            "flags": ["vnet_hdr", "no_pi"], "cloexec": False, "path": "/dev/net/tun",
            "file": pid, "creator_pid": 812, "creator_comm": "libvirtd", "how": "inherited",
            "from_pid": 812, "from_fd": fd, "shared_with": [], "shared_count": 0,
            "queue": "attached", "owner": None, "group": None, "netns": 4026531840,
            "netns_name": None, "backends": [], "creator_from": "trace",
            "vm": f"vm{pid % 500}", "netdev": "hostnet0", "fd_role": "tap",
            "nic_model": "virtio-net-pci", "guest_mac": "52:54:00:12:34:56",
            "nic_alias": "net0", "host_mac": "fe:54:00:12:34:56", "master": "br0",
            "operstate": "up"}


def fill(path: str, events: int, taps: int) -> tuple[float, float, float]:
    """The database; returns (first, last moment, seconds it took)."""
    store = HistoryStore(path, Retention(None, None))
    run = store.next_run
    start = time.time() - DAYS * 86400
    step = DAYS * 86400 / events
    store.put("run", (run, start, start, 1, "bench", "tracepoint", 4026531840, "0"))
    rng = random.Random(1)
    holder: dict[str, int] = {}
    pid = 1000
    t0 = time.monotonic()
    for i in range(events):
        t = start + i * step
        name = f"vnet{rng.randrange(taps)}"
        eid = store.next_event
        store.next_event += 1
        data = {"v": 1, "type": "dup", "time": t, "ts_ns": i, "pid": pid, "tid": pid,
                "comm": "qemu-system-x86", "fd": 27, "ifname": name, "how": "dup",
                "newfd": 30, "cloexec": False, "netns": 4026531840, "netns_name": None}
        store.put("event", (eid, run, t, "dup", pid, name, 4026531840,
                            json.dumps(data, separators=(",", ":"))))
        if i % INTERVAL_EVERY == 0:
            if name in holder:
                store.put("close", (t, holder[name]))
            pid += 1
            iid = store.next_interval
            store.next_interval += 1
            holder[name] = iid
            r = row(pid, 27, name)
            store.put("open", (iid, run, t, None, pid, 27, pid, name, 4026531840, r["comm"],
                               "tap", r["vm"], 812, "libvirtd",
                               json.dumps(r, separators=(",", ":")),
                               json.dumps([{"op": "open", "pid": 812, "comm": "libvirtd",
                                            "fd": 27}, {"op": "fork", "pid": pid,
                                                        "comm": "libvirtd", "fd": 27}])))
        if i % 10000 == 0:
            # the writer's queue is bounded (it drops past QUEUED_MAX rows, as the
            # agent would): a bench filling faster than any agent waits for it
            while store._q.qsize() > 50_000:
                time.sleep(0.01)
        if i % 100000 == 0 and i:
            print(f"  {i} events queued", file=sys.stderr)
    end = start + events * step
    store.put("seen", (end, run))
    store.close()
    assert not store.dropped, f"{store.dropped} rows dropped"
    return start, end, time.monotonic() - t0


def stats(xs: list[float]) -> str:
    ms = [x * 1000 for x in xs]
    return (f"min {min(ms):.2f} ms, median {statistics.median(ms):.2f} ms, "
            f"max {max(ms):.2f} ms ({len(ms)} runs)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--db", help="reuse (or make) this database")
    ap.add_argument("--taps", type=int, default=TAPS,
                    help="over how many taps (1: every interval on one, the worst case)")
    args = ap.parse_args()
    tmp = None
    path = args.db
    if path is None:
        tmp = tempfile.mkdtemp(prefix="tthist")
        path = os.path.join(tmp, "history.db")
    if not os.path.exists(path):
        print(f"filling {path} with {args.events} events ...", file=sys.stderr)
        first, last, took = fill(path, args.events, args.taps)
        print(f"fill: {args.events} events in {took:.1f} s "
              f"({args.events / took:.0f} events/s through the writer)")
    else:
        con = hi.open_ro(path)
        first, last = con.execute("SELECT min(time), max(time) FROM events").fetchone()
        con.close()
    con = hi.open_ro(path)
    n_ev = con.execute("SELECT count(*) FROM events").fetchone()[0]
    n_iv = con.execute("SELECT count(*) FROM intervals").fetchone()[0]
    con.close()
    size = os.path.getsize(path)
    print(f"database: {n_ev} events, {n_iv} intervals, {size / 1e6:.1f} MB: "
          f"{size / n_ev * 10000 / 1e6:.2f} MB per 10,000 events")

    rng = random.Random(2)
    # the oldest moment, the middle (the longest range either index has to T), and
    # random ones
    moments = [first + 1.0, (first + last) / 2] + [rng.uniform(first, last)
                                                   for _ in range(ROUNDS - 2)]
    names = [f"vnet{rng.randrange(args.taps)}" for _ in moments]

    query, everything, found = [], [], []
    for t, name in zip(moments, names):
        t0 = time.perf_counter()
        con = hi.open_ro(path)
        held, _stale = hi.holders_at(con, t, name)
        con.close()
        query.append(time.perf_counter() - t0)
        found.append(len(held))
        t0 = time.perf_counter()
        con = hi.open_ro(path)
        hi.holders_at(con, t)
        con.close()
        everything.append(time.perf_counter() - t0)
    print(f"query  history IFNAME --at T (in-process): {stats(query)}; "
          f"holders found {min(found)}..{max(found)}")
    print(f"query  history --at T, every tap: {stats(everything)}")

    base, cmd = [], []
    py = [sys.executable, "-m", "tracer"]
    for t, name in zip(moments, names):
        t0 = time.perf_counter()
        subprocess.run([*py, "history", "--help"], cwd=ROOT, stdout=subprocess.DEVNULL,
                       check=True)
        base.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = subprocess.run([*py, "history", name, "--at", repr(t), "--json", "--db", path],
                             cwd=ROOT, stdout=subprocess.PIPE, check=True)
        cmd.append(time.perf_counter() - t0)
        assert json.loads(out.stdout)["type"] == "table"
    print(f"command `taptrace history IFNAME --at T --json`: {stats(cmd)}")
    print(f"command `taptrace history --help` (start, no query): {stats(base)}")
    print(f"the query's share of the command (median): "
          f"{(statistics.median(cmd) - statistics.median(base)) * 1000:.1f} ms")
    if tmp is not None:
        for f in os.listdir(tmp):
            os.unlink(os.path.join(tmp, f))
        os.rmdir(tmp)


if __name__ == "__main__":
    main()
