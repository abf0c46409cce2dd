"""Integration fixtures: a real `taptrace watch --json` on the real kernel.

`tracer` starts the tracer as its own process (as a user would), waits for its
`ready` line, and `stop()` ends it with SIGINT and returns every JSON object it
printed plus its final table. Ground truth comes from /proc (tests/tapkit.py).
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import tapkit

ROOT = Path(__file__).resolve().parents[2]
# The backend every tracer of this run uses (the guest matrix runs the set with both).
BACKEND = os.environ.get("TAPTRACE_BACKEND", "auto")
HOOKS = os.environ.get("TAPTRACE_KERNEL_HOOKS", "auto")     # the kernel backend's
# A TUN ioctl on an fd that is not open (EBADF) never reaches a kernel function the
# kernel backend hooks (security_file_ioctl is past the fd lookup): only the
# tracepoint backend (sys_exit_ioctl) sees it. Both see one on an open fd that is not
# a tun/tap fd (ENOTTY).
SEES_BAD_FD_IOCTLS = BACKEND != "kernel"


def need_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("integration tests need root (BPF, /dev/net/tun)")
    if not os.path.exists("/dev/net/tun"):
        pytest.skip("/dev/net/tun is missing")


class Tracer:
    """A running `watch --json`; a reader thread moves its lines into a queue, so a
    line is seen as soon as it is printed (select + readline can leave lines sitting
    in Python's buffer)."""

    COMMAND: tuple[str, ...] = ("watch", "--json")

    def __init__(self, *args: str) -> None:
        self.cmd = [sys.executable, "-m", "tracer", *self.COMMAND, *args]
        self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.lines: list[dict] = []
        self._q: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        self.ready = self._read_until(lambda o: o["type"] == "ready", timeout=60)
        # TAPTRACE_BACKEND=kernel runs every test with that backend (the guest matrix)
        wanted = os.environ.get("TAPTRACE_BACKEND", "auto")
        if wanted != "auto":
            assert self.ready["backend"] == wanted, self.ready
        # TAPTRACE_KERNEL_HOOKS=kprobe: the kernel backend's kprobe variant, never
        # fentry by a silent fallback
        if self.ready["backend"] == "kernel" and HOOKS in ("fentry", "kprobe"):
            assert self.ready.get("hooks") == HOOKS, self.ready
            assert self.ready.get("backend_note", "").startswith(
                f"kernel backend hooks: {HOOKS} "), self.ready

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self._q.put(json.loads(line))
        self._q.put(None)                       # end of output

    def _read_until(self, pred, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                obj = self._q.get(timeout=left)
            except queue.Empty:
                break
            if obj is None:
                self._q.put(None)
                break
            self.lines.append(obj)
            if pred(obj):
                return obj
        err = self.proc.stderr.read() if self.proc.poll() is not None else ""
        raise AssertionError(f"tracer did not say what was expected: {self.lines[-5:]} {err}")

    def wait_quiet(self, pred, quiet: float, timeout: float = 30) -> None:
        """Until `quiet` seconds pass with no new line matching pred."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self._read_until(pred, quiet)
            except AssertionError:
                return
        raise AssertionError(f"tracer never went quiet: {self.lines[-5:]}")

    def wait_for(self, pred, timeout: float = 10) -> dict:
        for obj in self.lines:
            if pred(obj):
                return obj
        return self._read_until(pred, timeout)

    def stop(self, settle: float = 0.4, sig: int = signal.SIGINT) -> tuple[list[dict], dict]:
        time.sleep(settle)                 # let the last records reach user space
        self.proc.send_signal(sig)
        self._reader.join(timeout=60)            # stdout is the reader's alone
        self.proc.wait(timeout=30)
        err = self.proc.stderr.read()
        while True:
            obj = self._q.get()
            if obj is None:
                break
            self.lines.append(obj)
        assert self.proc.returncode == 0, f"tracer exited {self.proc.returncode}: {err}"
        table = self.lines[-1]
        assert table["type"] == "table", table
        return self.lines, table

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class StepReader:
    """The JSON step lines ({"step": ..., "pid": ...}) a scenario process prints,
    read as they come (select + os.read: nothing sits in a Python buffer)."""

    def __init__(self, proc: subprocess.Popen, steps: list[dict]) -> None:
        self.proc = proc
        self.steps = steps
        self._buf = b""

    def until(self, step: str, timeout: float = 15) -> dict | None:
        """Read until a line says `step`; that line, or None (EOF or timeout)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if b"\n" not in self._buf:
                r, _, _ = select.select([self.proc.stdout], [], [], 0.5)
                if r:
                    chunk = os.read(self.proc.stdout.fileno(), 65536)
                    if not chunk:
                        break
                    self._buf += chunk
                continue
            line, self._buf = self._buf.split(b"\n", 1)
            self.steps.append(json.loads(line))
            if self.steps[-1]["step"] == step:
                return self.steps[-1]
        return None


def end_scenario(proc: subprocess.Popen | None, names, say: bytes = b"",
                 also_kill=()) -> None:
    """End a scenario run in its own session: tell it `say` and close its stdin (its
    cue to let go), wait a little, then SIGKILL whatever is left of its session and
    the pids in `also_kill`, and delete the links it made (`names`)."""
    if proc is not None and proc.poll() is None:
        try:
            if say:
                proc.stdin.write(say)
            proc.stdin.close()
        except (BrokenPipeError, OSError, ValueError):
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    for pid in also_kill:
        if proc is None or pid != proc.pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    if proc is not None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    for n in names:
        tapkit.delete_link(n)


@contextlib.contextmanager
def spawned(cls):
    """`start(*args)` makes a cls(*args) (a running taptrace); every one started is
    killed at the end, whatever happened."""
    need_root()
    started: list = []

    def start(*args: str):
        obj = cls(*args)
        started.append(obj)
        return obj

    try:
        yield start
    finally:
        for obj in started:
            obj.kill()


@pytest.fixture
def tracer():
    with spawned(Tracer) as start:
        yield start


def events_of(lines: list[dict], kind: str, **match) -> list[dict]:
    return [o for o in lines if o["type"] == kind
            and all(o.get(k) == v for k, v in match.items())]


def table_triples(table: dict, pids) -> set[tuple[int, int, str]]:
    """The tracer's table as {(pid, fd, ifname)} for the given processes."""
    pids = set(pids)
    return {(r["pid"], r["fd"], r["ifname"]) for r in table["rows"]
            if r["pid"] in pids and r["ifname"]}
