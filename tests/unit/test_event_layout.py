"""bpf/events.h and tracer/events.py describe one record: checked field by field."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tracer import events as ev

BPF = Path(__file__).resolve().parents[2] / "bpf"

PROBE = r"""
#include <stddef.h>
#include <stdio.h>
#include "events.h"
#define OFF(f) printf(#f " %zu %zu\n", offsetof(struct tt_event, f), \
                      sizeof(((struct tt_event *)0)->f))
int main(void) {
    printf("size %zu 0\n", sizeof(struct tt_event));
    OFF(ts); OFF(type); OFF(tgid); OFF(tid); OFF(fd); OFF(ret); OFF(arg); OFF(arg2);
    OFF(comm); OFF(name); OFF(nfds); OFF(fds);
    printf("TT_EV_OPEN %d 0\nTT_EV_TUN_IOCTL %d 0\nTT_EV_DUP %d 0\nTT_EV_CLOSE %d 0\n"
           "TT_EV_CLOSE_RANGE %d 0\nTT_EV_SETFD %d 0\nTT_EV_FORK %d 0\nTT_EV_EXEC %d 0\n"
           "TT_EV_EXIT %d 0\nTT_EV_SCM_SEND %d 0\nTT_EV_SCM_RECV %d 0\nTT_EV_UNSHARE %d 0\n"
           "TT_EV_PIDFD_GETFD %d 0\n",
           TT_EV_OPEN, TT_EV_TUN_IOCTL, TT_EV_DUP, TT_EV_CLOSE, TT_EV_CLOSE_RANGE,
           TT_EV_SETFD, TT_EV_FORK, TT_EV_EXEC, TT_EV_EXIT, TT_EV_SCM_SEND, TT_EV_SCM_RECV,
           TT_EV_UNSHARE, TT_EV_PIDFD_GETFD);
    printf("TT_DUP %d 0\nTT_DUP2 %d 0\nTT_DUP3 %d 0\nTT_F_DUPFD %d 0\n"
           "TT_F_DUPFD_CLOEXEC %d 0\nTT_DUP_CLOEXEC %d 0\n", TT_DUP, TT_DUP2, TT_DUP3,
           TT_F_DUPFD, TT_F_DUPFD_CLOEXEC, TT_DUP_CLOEXEC);
    printf("TT_F_SETFD %d 0\nTT_FIOCLEX %d 0\nTT_FIONCLEX %d 0\n",
           TT_F_SETFD, TT_FIOCLEX, TT_FIONCLEX);
    printf("TT_C_LOST %d 0\nTT_C_INTEREST_FULL %d 0\nTT_C_SCM_ARMED_UNTIL %d 0\n"
           "TT_MAX_FDS %d 0\n", TT_C_LOST, TT_C_INTEREST_FULL, TT_C_SCM_ARMED_UNTIL,
           TT_MAX_FDS);
    return 0;
}
"""


@pytest.fixture(scope="module")
def c_layout(tmp_path_factory) -> dict[str, tuple[int, int]]:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("no C compiler")
    d = tmp_path_factory.mktemp("layout")
    (d / "probe.c").write_text(PROBE)
    subprocess.run([cc, f"-I{BPF}", "-o", str(d / "probe"), str(d / "probe.c")], check=True)
    out = subprocess.run([str(d / "probe")], check=True, capture_output=True, text=True).stdout
    return {k: (int(a), int(b)) for k, a, b in (line.split() for line in out.splitlines())}


def python_offsets() -> dict[str, tuple[int, int]]:
    """Offsets and sizes of RECORD's fields, walking its format."""
    fmt = ev.RECORD.format.lstrip("<")
    offsets, pos, i = {}, 0, 0
    for name in ev.RECORD_FIELDS:
        count = ""
        while fmt[i].isdigit():
            count += fmt[i]
            i += 1
        code = fmt[i]
        i += 1
        n = int(count or 1)
        size = struct.calcsize(f"<{n}{code}")
        offsets[name] = (pos, size)
        pos += size
    return offsets


def test_every_field_has_the_same_offset_and_size(c_layout):
    for name, (off, size) in python_offsets().items():
        assert c_layout[name] == (off, size), name


def test_the_record_sizes_agree(c_layout):
    # the C struct may end in padding; Python decodes the prefix it knows
    assert c_layout["size"][0] >= ev.RECORD.size
    assert c_layout["size"][0] - ev.RECORD.size < 8


def test_enum_values_agree(c_layout):
    pairs = {
        "TT_EV_OPEN": ev.EV_OPEN, "TT_EV_TUN_IOCTL": ev.EV_TUN_IOCTL, "TT_EV_DUP": ev.EV_DUP,
        "TT_EV_CLOSE": ev.EV_CLOSE, "TT_EV_CLOSE_RANGE": ev.EV_CLOSE_RANGE,
        "TT_EV_SETFD": ev.EV_SETFD, "TT_EV_FORK": ev.EV_FORK, "TT_EV_EXEC": ev.EV_EXEC,
        "TT_EV_EXIT": ev.EV_EXIT, "TT_EV_SCM_SEND": ev.EV_SCM_SEND,
        "TT_EV_SCM_RECV": ev.EV_SCM_RECV, "TT_EV_UNSHARE": ev.EV_UNSHARE,
        "TT_EV_PIDFD_GETFD": ev.EV_PIDFD_GETFD, "TT_DUP_CLOEXEC": ev.DUP_CLOEXEC,
        "TT_C_LOST": ev.C_LOST, "TT_C_INTEREST_FULL": ev.C_INTEREST_FULL,
        "TT_C_SCM_ARMED_UNTIL": ev.C_SCM_ARMED_UNTIL,
    }
    for cname, value in pairs.items():
        assert c_layout[cname][0] == value, cname
    for value, how in ev.DUP_HOW.items():
        assert c_layout["TT_" + how.upper()][0] == value, how
    for value, how in ev.SETFD_HOW.items():
        assert c_layout["TT_" + how][0] == value, how


def test_max_fds_agrees(c_layout):
    assert ev.RECORD.format.endswith(f"{c_layout['TT_MAX_FDS'][0]}i")


def test_decode_of_a_packed_record():
    raw = ev.RECORD.pack(7, ev.EV_DUP, 10, 11, 3, 20, 2 | ev.DUP_CLOEXEC, 20, b"qemu\x1b",
                         b"", 0, *([0] * 16))
    rec = ev.decode(raw)
    assert rec == ev.Dup(ts=7, pid=10, tid=11, comm="qemu\x1b", oldfd=3, newfd=20, how="dup3",
                         cloexec=True)
    name = b"t\xff\x1bx"
    raw = ev.RECORD.pack(1, ev.EV_TUN_IOCTL, 5, 5, 4, 0, ev.TUNSETIFF, 0x1002, b"c", name, 0,
                         *([0] * 16))
    assert ev.decode(raw).ifname.encode("utf-8", "surrogateescape") == name
    raw = ev.RECORD.pack(1, ev.EV_SCM_RECV, 5, 5, 9, 1, ev.MSG_CMSG_CLOEXEC, 0, b"c", b"", 2,
                         4, 6, *([99] * 14))
    assert ev.decode(raw) == ev.ScmRecv(ts=1, pid=5, tid=5, comm="c", sock=9, fds=(4, 6),
                                        cloexec=True)
