"""LogSink's journal path, where journald runs (not on this machine): in a mount
namespace of its own, a socket stands at /run/systemd/journal/socket; LogSink picks
the journal by itself and python3-systemd sends its native protocol there. The
datagrams are decoded field by field: TAPTRACE_* fields, PRIORITY, SYSLOG_IDENTIFIER,
names escaped."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess
import sys

import pytest
from conftest import ROOT, need_root

CHILD = r"""
import json, os, socket, subprocess, sys
if not os.path.isdir("/run/systemd"):   # no systemd at all (the guest): a /run of our own
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run"], check=True)
    os.mkdir("/run/systemd")
subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/run/systemd"], check=True)
os.mkdir("/run/systemd/journal")
sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
sock.bind("/run/systemd/journal/socket")
sock.settimeout(5)
from tracer.audit import Finding
from tracer.logsink import LogSink, default_target
from tracer.replay import recorded_model
target = default_target()
sink = LogSink(target)
f = Finding("leak", "vnet0", 4242, 27, "evil\x1b]0;x\x07", "vnet0: evil\x1b]0;x\x07[4242] holds\nfd 27",
            {"vm": "web1", "role": "creator"})
model = recorded_model({}, {})
sink.findings([f], [], model)
sink.findings([], [f], model)
sink.close()
out = []
for _ in range(3):
    out.append(sock.recv(1 << 20).hex())
print(json.dumps({"target": target.name, "datagrams": out}))
"""


def journal_fields(data: bytes) -> dict[str, str]:
    """journald's native protocol: KEY=VALUE lines, or KEY, a 64-bit length, VALUE."""
    fields = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            i = nl + 1
        else:
            key = line
            (n,) = struct.unpack("<Q", data[nl + 1:nl + 9])
            value = data[nl + 9:nl + 9 + n]
            i = nl + 9 + n + 1
        fields[key.decode()] = value.decode()
    return fields


def test_findings_go_to_the_journal_with_their_fields():
    need_root()
    pytest.importorskip("systemd.journal", reason="python3-systemd is missing")
    if shutil.which("unshare") is None:
        pytest.skip("unshare is missing (util-linux)")
    out = subprocess.run(["unshare", "--mount", "--propagation", "private", "--",
                          sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["target"] == "journal"
    appeared, cleared, stopped = (journal_fields(bytes.fromhex(d)) for d in got["datagrams"])
    assert {k: v for k, v in appeared.items() if not k.startswith("CODE_")} == {
        "MESSAGE": r"leak: vnet0: evil\x1b]0;x\x07[4242] holds\x0afd 27",
        "PRIORITY": "4", "SYSLOG_IDENTIFIER": "taptrace", "SYSLOG_FACILITY": "3",
        "TAPTRACE_FINDING": "appeared", "TAPTRACE_KIND": "leak", "TAPTRACE_IFNAME": "vnet0",
        "TAPTRACE_PID": "4242", "TAPTRACE_FD": "27", "TAPTRACE_COMM": r"evil\x1b]0;x\x07",
        "TAPTRACE_VM": "web1", "TAPTRACE_ROLE": "creator"}
    assert cleared["TAPTRACE_FINDING"] == "cleared" and cleared["PRIORITY"] == "5"
    assert cleared["MESSAGE"].startswith("cleared leak: vnet0: ")
    assert stopped["MESSAGE"] == "stopped" and stopped["PRIORITY"] == "6"
