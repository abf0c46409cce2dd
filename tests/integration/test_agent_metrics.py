"""`taptrace agent --metrics --log` end to end: a real Prometheus (Debian's package,
started here with its own config, data dir and loopback port) scrapes the agent every
second while real taps are made, handed over and left behind; the test asks
Prometheus' HTTP API (/api/v1/query) and sees the taps, the tap fds of the process
that received one, the orphan finding appear and clear, and the counters move. The
same findings arrive in the system log (a unix datagram socket given as
--log-socket). It runs twice: the agent as is, and under the systemd unit's settings. Others may make taps on this machine at the same time: the test
looks at its own names and at changes, never at host-wide totals."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import tapkit
import unitexec
from conftest import ROOT, need_root
from syslogd import SyslogSocket

PROMETHEUS = shutil.which("prometheus")
RULES = ROOT / "contrib" / "prometheus" / "taptrace-alerts.yml"
UNIT = ROOT / "contrib" / "systemd" / "taptrace-agent.service"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, pred, timeout: float = 20, every: float = 0.25):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = pred()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


class Syslog(SyslogSocket):
    """The agent's syslog socket (--log-socket): the messages that arrived."""


class Prometheus:
    def __init__(self, workdir: Path, target: str) -> None:
        self.port = free_port()
        config = workdir / "prometheus.yml"
        rules = workdir / "taptrace-alerts.yml"
        shutil.copy(RULES, rules)
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            f"rule_files: ['{rules}']\n"
            "scrape_configs:\n  - job_name: taptrace\n"
            f"    static_configs:\n      - targets: ['{target}']\n")
        self.log = open(workdir / "prometheus.log", "w+")   # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=workdir)
        wait_until("Prometheus to be ready", self._ready, timeout=30)

    def _get(self, path: str) -> dict:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            return json.loads(r.read())

    def _ready(self) -> bool:
        assert self.proc.poll() is None, self.tail()
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2)
            return True
        except OSError:
            return False

    def query(self, promql: str) -> list[dict]:
        out = self._get("/api/v1/query?" + urllib.parse.urlencode({"query": promql}))
        assert out["status"] == "success", out
        return out["data"]["result"]

    def value(self, promql: str) -> float | None:
        """The value of a query that gives one series (None: none)."""
        result = self.query(promql)
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def rules(self) -> list[dict]:
        return [r for g in self._get("/api/v1/rules")["data"]["groups"] for r in g["rules"]]

    def tail(self) -> str:
        self.log.seek(0)
        return "".join(self.log.readlines()[-20:])

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Agent:
    """`taptrace agent --metrics --log`; under_unit: with the systemd unit's settings
    (tests/unitexec.py: capabilities, syscall filter, W^X, the mount sandbox), its
    database then in the unit's StateDirectory (its /tmp is its own)."""

    def __init__(self, db: Path, metrics: str, log_socket: str, under_unit: bool) -> None:
        cmd = [sys.executable, "-m", "tracer", "agent", "--db", str(db),
               "--metrics", metrics, "--log", "--log-socket", log_socket,
               "--audit-every", "0.5"]
        if under_unit:
            cmd = unitexec.unit_command(UNIT, cmd)
        self.proc = subprocess.Popen(cmd, cwd=ROOT, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stderr.readline()          # its start line, once tracing
        assert line.startswith("# taptrace agent: tracing"), line + self.proc.stderr.read()

    def stop(self) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return self.proc.returncode, err


@pytest.fixture
def links():
    names: list[str] = []
    yield names
    for name in names:
        tapkit.delete_link(name)


HANDOFF = """
import os, sys, time
sys.path.insert(0, {tests!r})
import tapkit
fd, name = tapkit.create_tap({name!r}, cloexec=False)
pid = os.fork()
if pid == 0:
    os.execv("/bin/sleep", ["sleep", "30"])      # the "VM" gets the tap by fork+exec
os.close(fd)
print(pid, flush=True)
os.waitpid(pid, 0)
"""

# A tap made persistent by a child of its creator, then left: an orphan (had its
# creator set persist itself, as `ip tuntap add` does, it would be kept on purpose).
ORPHAN = """
import os, sys
sys.path.insert(0, {tests!r})
import tapkit
fd, name = tapkit.create_tap({name!r}, cloexec=False)
pid = os.fork()
if pid == 0:
    tapkit.set_persist(fd, True)
    os._exit(0)
os.waitpid(pid, 0)
"""


@pytest.fixture
def run_dir():
    """Where the agent's socket and database go: outside /tmp, which the unit's
    sandbox makes its own."""
    where = Path(tempfile.mkdtemp(prefix="taptrace-metrics-test-", dir="/run"))
    db = Path("/var/lib/taptrace") / f"test-{where.name}.db"
    yield where, db
    shutil.rmtree(where, ignore_errors=True)
    for suffix in ("", "-wal", "-shm", "-journal", ".lock"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)


@pytest.mark.skipif(PROMETHEUS is None, reason="prometheus is missing (apt-get install "
                                                 "prometheus)")
@pytest.mark.parametrize("under_unit", [False, True], ids=["plain", "under-the-unit"])
def test_prometheus_scrapes_the_agent_through_a_handoff_and_a_finding(tmp_path, links,
                                                                      run_dir, under_unit):
    need_root()
    pytest.importorskip("prometheus_client")
    if under_unit:
        pytest.importorskip("seccomp", reason="python3-seccomp is missing")
    where, db = run_dir
    syslog = Syslog(where / "log")
    metrics = f"127.0.0.1:{free_port()}"
    agent = Agent(db, metrics, syslog.path, under_unit)
    prom = None
    handoff = None
    try:
        prom = Prometheus(tmp_path, metrics)
        q = prom.value
        job = '{job="taptrace"}'
        wait_until("the first scrape", lambda: q(f"up{job}") == 1)
        assert q('taptrace_backend_info{backend=~"tracepoint|kernel"}') == 1
        assert q('taptrace_build_info{version="0.1.0"}') == 1
        assert q(f"process_resident_memory_bytes{job}") > 10e6
        assert q(f"process_cpu_seconds_total{job}") > 0
        tunsetiff0 = q('taptrace_events_total{type="tunsetiff"}') or 0
        forks0 = q('taptrace_events_total{type="fork"}') or 0
        appeared0 = q('taptrace_audit_findings_appeared_total{kind="orphan"}')
        cleared0 = q('taptrace_audit_findings_cleared_total{kind="orphan"}')
        assert appeared0 is not None and cleared0 is not None

        # a handoff: a tap made, handed to a "VM" (sleep) by fork+exec
        tap = tapkit.unique_name("tpm")
        links.append(tap)
        handoff = subprocess.Popen([sys.executable, "-c", HANDOFF.format(
            tests=str(ROOT / "tests"), name=tap)], stdout=subprocess.PIPE, text=True)
        handoff.stdout.readline()
        wait_until("the tap fd of sleep",
                   lambda: (q('taptrace_tap_fds{kind="tap", comm="sleep"}') or 0) >= 1)
        assert q('taptrace_events_total{type="tunsetiff"}') >= tunsetiff0 + 1
        assert q('taptrace_events_total{type="fork"}') >= forks0 + 1
        assert q('taptrace_taps{kind="tap"}') >= 1

        # a finding: a persistent tap left with no holder (orphan), then deleted
        orphan = tapkit.unique_name("tpo")
        links.append(orphan)
        subprocess.run([sys.executable, "-c", ORPHAN.format(tests=str(ROOT / "tests"),
                                                            name=orphan)], check=True)
        wait_until("the orphan finding",
                   lambda: q('taptrace_audit_findings_appeared_total{kind="orphan"}')
                   >= appeared0 + 1)
        assert q('taptrace_audit_findings{kind="orphan"}') >= 1
        assert q('sum by (kind) (taptrace_audit_findings{kind="orphan"}) > 0') >= 1
        # taken back and let go (traced: an `ip link del` is no event, and an idle
        # agent audits only once a minute)
        fd, _ = tapkit.create_tap(orphan)
        tapkit.set_persist(fd, False)
        os.close(fd)
        wait_until("the orphan cleared",
                   lambda: q('taptrace_audit_findings_cleared_total{kind="orphan"}')
                   >= cleared0 + 1)
        # the example alerting rules load and evaluate against the agent's series
        rules = {r["name"]: r for r in prom.rules()}
        assert rules["TaptraceAuditFinding"]["health"] == "ok", rules
        assert rules["TaptraceAgentDown"]["health"] == "ok"
    finally:
        if handoff is not None:
            handoff.kill()
            handoff.wait()
        code, err = agent.stop()
        if prom is not None:
            prom.stop()
        syslog.close()
    assert code == 0, err

    # the same finding in the system log, with its fields
    mine = [line for line in syslog.lines if orphan in line]
    assert any(re.search(rf"taptrace\[\d+\]: orphan: {orphan}: .* finding=appeared "
                         rf"kind=orphan ifname={orphan}$", line) for line in mine), mine
    assert any(re.search(rf"taptrace\[\d+\]: cleared orphan: {orphan}: .* finding=cleared "
                         rf"kind=orphan ifname={orphan}$", line) for line in mine), mine
    assert re.search(r"taptrace\[\d+\]: started: tracing with the \w+ backend",
                     syslog.lines[0]), syslog.lines[:1]
    assert syslog.lines[-1].endswith("stopped")
    assert db.exists()
