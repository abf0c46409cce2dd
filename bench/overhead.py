"""Overhead of `taptrace watch` on unrelated work, measured side by side.

Alternates rounds without and with the tracer running (A B A B ...), each
round one run of the workload, and prints per-round ns/op, the median ratio
traced/untraced and its spread. Run as root: `make bench` (or
`.venv/bin/python bench/overhead.py`).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "bench" / "bin"


def run_workload(n: int) -> float:
    out = subprocess.run([str(BIN / "openclose"), str(n)], check=True, capture_output=True,
                         text=True).stdout
    return float(out.strip())


def start_tracer() -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "tracer", "watch", "--json"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if not line or json.loads(line)["type"] != "ready":
        proc.kill()
        raise SystemExit("bench: the tracer did not become ready")
    return proc


def stop_tracer(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("-n", type=int, default=500_000, help="open+close pairs per run")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("bench: needs root (it runs `taptrace watch`)")
    subprocess.run(["make", "-s", "-C", str(ROOT / "bench")], check=True)
    run_workload(args.n // 10)                        # warm caches
    base, traced = [], []
    tracer = start_tracer()
    stop_tracer(tracer)                               # warm the BPF compile path
    for _ in range(args.rounds):
        base.append(run_workload(args.n))
        tracer = start_tracer()
        try:
            traced.append(run_workload(args.n))
        finally:
            stop_tracer(tracer)
        time.sleep(0.2)
    ratios = [t / b for b, t in zip(base, traced)]
    print(f"open/close loop, {args.n} pairs x {args.rounds} rounds (ns per open+close)")
    print(f"  no tracer : median {statistics.median(base):8.1f}  "
          f"[{min(base):.1f} .. {max(base):.1f}]")
    print(f"  taptrace  : median {statistics.median(traced):8.1f}  "
          f"[{min(traced):.1f} .. {max(traced):.1f}]")
    print(f"  ratio taptrace/none: median {statistics.median(ratios):.3f}  "
          f"spread [{min(ratios):.3f} .. {max(ratios):.3f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
