"""The example libvirt hook (contrib/libvirt/hooks/qemu), run as libvirtd runs it:
`qemu DOMAIN OPERATION SUB-OPERATION -` with the domain XML on stdin. It audits the
domain's real taps with the real `taptrace audit` in a detached process and logs the
result to syslog (a unix datagram socket standing for /dev/log); it returns at once
and with status 0 whatever the audit does, so no domain start waits on it."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time

import pytest
import tapkit
from conftest import ROOT, need_root
from syslogd import SyslogSocket

HOOK = ROOT / "contrib" / "libvirt" / "hooks" / "qemu"
LINE = re.compile(r"<(\d+)>taptrace-hook\[(\d+)\]: (.*)", re.DOTALL)
WARNING, INFO, ERR = 3 * 8 + 4, 3 * 8 + 6, 3 * 8 + 3


class Syslog(SyslogSocket):
    """The hook's syslog target: (priority value, message) of each line."""

    @property
    def got(self) -> list[tuple[int, str]]:
        out = []
        for line in self.lines:
            m = LINE.fullmatch(line)
            assert m, line
            out.append((int(m.group(1)), m.group(3)))
        return out

    def wait(self, n: int, timeout: float = 60) -> list[tuple[int, str]]:
        super().wait(n, timeout)
        return self.got


@pytest.fixture
def syslog(tmp_path):
    s = Syslog(tmp_path / "log")
    yield s
    s.close()


@pytest.fixture
def links():
    names: list[str] = []
    yield names
    for name in reversed(names):
        tapkit.delete_link(name)


def domain_xml(name: str, taps: list[str]) -> str:
    nics = "".join(f"<interface type='ethernet'><mac address='52:54:00:00:00:0{i}'/>"
                   f"<target dev='{t}' managed='no'/><model type='virtio'/></interface>"
                   for i, t in enumerate(taps))
    return (f"<domain type='qemu' id='7'><name>{name}</name><memory>65536</memory>"
            f"<devices>{nics}</devices></domain>")


def run_hook(syslog: Syslog, args: list[str], xml: str, **env: str) -> tuple[int, float]:
    environ = {**os.environ, "TAPTRACE": f"{sys.executable} -m tracer", "PYTHONPATH": str(ROOT),
               "TAPTRACE_HOOK_SYSLOG": syslog.path, "TAPTRACE_HOOK_DELAY": "0.2", **env}
    t0 = time.monotonic()
    # as libvirtd does: it reads the hook's stdout and stderr to their end
    out = subprocess.run([str(HOOK), *args], input=xml, capture_output=True, text=True,
                         env=environ, timeout=30, check=False)
    took = time.monotonic() - t0
    assert (out.stdout, out.stderr) == ("", "")
    return out.returncode, took


def test_the_hook_is_an_executable_python_script():
    assert os.stat(HOOK).st_mode & stat.S_IXUSR
    assert HOOK.read_text().startswith("#!/usr/bin/python3\n")


def test_a_started_domain_with_an_orphaned_tap(syslog, links):
    need_root()
    orphan, clean = tapkit.unique_name("tho"), tapkit.unique_name("thc")
    subprocess.run(["ip", "tuntap", "add", "dev", orphan, "mode", "tap"], check=True)
    links.append(orphan)
    rc, took = run_hook(syslog, ["web1", "started", "begin", "-"],
                        domain_xml("web1", [orphan, clean]))
    assert rc == 0 and took < 2 * tapkit.SLOWDOWN
    got = syslog.wait(2)
    assert got[0] == (WARNING, (f"domain=web1 event=started ifname={orphan} kind=orphan "
                               f"pid=- fd=-: {orphan}: persistent tap, no process holds it"))
    assert got[1] == (INFO, (f"domain=web1 event=started ifname={clean}: no findings "
                            "(0 taps, 0 fds checked)"))


def test_a_stopped_domain_whose_tap_a_helper_still_holds(syslog, links):
    """The unplugged NIC that never goes away: after the stop, a helper that is no
    QEMU still holds the tap, left on the bridge."""
    need_root()
    bridge, tap = tapkit.unique_name("thb"), tapkit.unique_name("tht")
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    links.append(bridge)
    fd, _ = tapkit.create_tap(tap)
    links.append(tap)
    try:
        subprocess.run(["ip", "link", "set", tap, "master", bridge], check=True)
        helper = subprocess.Popen(["sleep", "60"], pass_fds=[fd])
        os.close(fd)
        fd = -1
        try:
            rc, took = run_hook(syslog, ["web2", "stopped", "end", "-"],
                                domain_xml("web2", [tap]))
            assert rc == 0 and took < 2 * tapkit.SLOWDOWN
            (prio, text), = syslog.wait(1)
        finally:
            helper.kill()
            helper.wait()
    finally:
        if fd >= 0:
            os.close(fd)
    assert prio == WARNING
    assert text.startswith(f"domain=web2 event=stopped ifname={tap} kind=vm_gone pid=- fd=-: "
                           f"{tap}: ")
    assert bridge in text


def test_a_slow_audit_does_not_hold_the_domain(syslog, tmp_path):
    slow = tmp_path / "slow-taptrace"
    slow.write_text("#!/bin/sh\nexec sleep 30\n")
    slow.chmod(0o755)
    rc, took = run_hook(syslog, ["web3", "started", "begin", "-"], domain_xml("web3", ["x0"]),
                        TAPTRACE=str(slow), TAPTRACE_HOOK_TIMEOUT="1",
                        TAPTRACE_HOOK_DELAY="0")
    assert rc == 0 and took < 2 * tapkit.SLOWDOWN
    assert syslog.wait(1) == [
        (ERR, "domain=web3 event=started ifname=x0: taptrace audit timed out after 1s")]


def test_a_missing_taptrace_is_logged_not_fatal(syslog, tmp_path):
    rc, _ = run_hook(syslog, ["web4", "stopped", "end", "-"], domain_xml("web4", ["x0"]),
                     TAPTRACE=str(tmp_path / "nothing-here"))
    assert rc == 0
    (prio, text), = syslog.wait(1)
    assert prio == ERR and text.startswith(
        "domain=web4 event=stopped ifname=x0: cannot run taptrace: No such file")


@pytest.mark.parametrize("args", [
    ["web5", "prepare", "begin", "-"], ["web5", "start", "begin", "-"],
    ["web5", "release", "end", "-"], ["web5", "migrate", "begin", "-"], ["web5"], [],
])
def test_other_calls_are_left_alone(syslog, args):
    rc, took = run_hook(syslog, args, domain_xml("web5", ["x0"]))
    assert rc == 0 and took < 2 * tapkit.SLOWDOWN
    time.sleep(0.5)
    assert syslog.got == []


def test_bad_xml_and_hostile_names(syslog, tmp_path):
    fake = tmp_path / "fake-taptrace"
    fake.write_text("#!/bin/sh\ncat <<'EOF'\n"
                    '{"type": "finding", "kind": "leak", "pid": 1, "fd": 3, '
                    '"message": "evil\\u001b[2J\\nname"}\n'
                    '{"type": "audit", "findings": 1}\nEOF\nexit 1\n')
    fake.chmod(0o755)
    rc, _ = run_hook(syslog, ["w\x1b6", "started", "begin", "-"], "<domain><oops",
                     TAPTRACE=str(fake), TAPTRACE_HOOK_DELAY="0")
    assert rc == 0
    (prio, text), = syslog.wait(1)       # no taps read: the whole host is audited
    assert (prio, text) == (WARNING, (r"domain=w\x1b6 event=started ifname=* kind=leak pid=1 "
                                     r"fd=3: evil\x1b[2J\x0aname"))


def test_settings_from_the_config_file(syslog, tmp_path):
    """libvirtd passes a hook no environment of ours: the settings come from a file."""
    fake = tmp_path / "fake-taptrace"
    fake.write_text("#!/bin/sh\necho '{\"type\": \"audit\", \"taps\": 1, \"rows\": 2}'\n")
    fake.chmod(0o755)
    config = tmp_path / "taptrace-hook"
    config.write_text(f"# taptrace hook\nTAPTRACE='{fake}'\nTAPTRACE_HOOK_DELAY=0\n"
                      f"TAPTRACE_HOOK_SYSLOG=\"{syslog.path}\"\nPATH=/nowhere\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TAPTRACE")}
    out = subprocess.run([str(HOOK), "web6", "started", "begin", "-"],
                         input=domain_xml("web6", ["x0"]), capture_output=True, text=True,
                         env={**env, "TAPTRACE_HOOK_CONFIG": str(config)}, timeout=30,
                         check=False)
    assert (out.returncode, out.stdout, out.stderr) == (0, "", "")
    assert syslog.wait(1) == [
        (INFO, "domain=web6 event=started ifname=x0: no findings (1 taps, 2 fds checked)")]
