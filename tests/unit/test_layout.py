"""bpf/events.h and tracer/events.py describe one record.

The header is compiled with the host gcc; a probe program prints sizeof, every
field's offset, size and signedness, and every enumerator. Each must equal what
tracer/events.py decodes with (RECORD, RECORD_FIELDS, EV_*, DUP_HOW, SETFD_HOW, C_*).
The enumerators are read from the header itself, so a value added on one side
only is caught.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from tracer import events as ev

HEADER = Path(__file__).resolve().parents[2] / "bpf" / "events.h"


def header_enums() -> dict[str, list[str]]:
    """enum name -> its enumerators, in order, from bpf/events.h."""
    text = re.sub(r"/\*.*?\*/", "", HEADER.read_text(), flags=re.DOTALL)
    return {m.group(1): re.findall(r"\b(TT_[A-Z0-9_]+)\s*=", m.group(2))
            for m in re.finditer(r"enum\s+(\w+)\s*\{(.*?)\}", text, flags=re.DOTALL)}


def header_fields() -> list[str]:
    text = re.sub(r"/\*.*?\*/", "", HEADER.read_text(), flags=re.DOTALL)
    body = re.search(r"struct\s+tt_event\s*\{(.*?)\}", text, flags=re.DOTALL).group(1)
    return re.findall(r"(\w+)\s*(?:\[\s*\w+\s*\])?\s*;", body)


def probe_source() -> str:
    lines = ['#include <stddef.h>', '#include <stdio.h>', '#include "events.h"',
             "#define EL(f) (((struct tt_event *)0)->f)",
             ("#define FIELD(f, e) printf(\"field %s %zu %zu %d\\n\", #f, "
              "offsetof(struct tt_event, f), sizeof(EL(f)), (int)((__typeof__(e))-1 < 0))"),
             "int main(void) {",
             '  printf("sizeof %zu\\n", sizeof(struct tt_event));',
             '  printf("alignof %zu\\n", _Alignof(struct tt_event));']
    for name in header_fields():
        # arrays: signedness of an element; scalars: of the field
        elem = f"EL({name})[0]" if name in ("comm", "name", "fds") else f"EL({name})"
        lines.append(f"  FIELD({name}, {elem});")
    for const in ("TT_COMM_LEN", "TT_NAME_LEN", "TT_MAX_FDS"):
        lines.append(f'  printf("const {const} %lld\\n", (long long){const});')
    for enum, names in header_enums().items():
        for n in names:
            lines.append(f'  printf("enum {enum} {n} %lld\\n", (long long){n});')
    lines += ["  return 0;", "}"]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def c_side(tmp_path_factory) -> dict:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    d = tmp_path_factory.mktemp("layout")
    (d / "probe.c").write_text(probe_source())
    build = subprocess.run([gcc, "-std=gnu11", "-Wall", "-Werror", f"-I{HEADER.parent}",
                            "-o", str(d / "probe"), str(d / "probe.c")],
                           check=False, capture_output=True, text=True)
    assert build.returncode == 0, build.stderr
    out = subprocess.run([str(d / "probe")], check=True, capture_output=True,
                         text=True).stdout
    c: dict = {"fields": {}, "const": {}, "enums": {}}
    for line in out.splitlines():
        kind, *rest = line.split()
        if kind in ("sizeof", "alignof"):
            c[kind] = int(rest[0])
        elif kind == "field":
            name, off, size, signed = rest
            c["fields"][name] = (int(off), int(size), bool(int(signed)))
        elif kind == "const":
            c["const"][rest[0]] = int(rest[1])
        else:
            c["enums"].setdefault(rest[0], {})[rest[1]] = int(rest[2])
    return c


def python_fields() -> dict[str, tuple[int, int, bool | None, int]]:
    """RECORD_FIELDS -> (offset, size, signed, count) from RECORD's format."""
    fmt = ev.RECORD.format
    assert fmt[0] == "<", "the record is little-endian with standard sizes, no padding"
    tokens = re.findall(r"(\d*)([a-zA-Z?])", fmt[1:])
    assert len(tokens) == len(ev.RECORD_FIELDS)
    out, pos = {}, 0
    for name, (count, code) in zip(ev.RECORD_FIELDS, tokens):
        size = struct.calcsize(f"<{count}{code}")
        signed = None if code == "s" else code.islower()
        out[name] = (pos, size, signed, int(count or 1))
        pos += size
    assert pos == ev.RECORD.size
    return out


# ---- the struct --------------------------------------------------------------

def test_the_header_and_python_name_the_same_fields_in_the_same_order(c_side):
    assert header_fields() == list(ev.RECORD_FIELDS)
    assert list(c_side["fields"]) == list(ev.RECORD_FIELDS)


def test_every_field_has_the_same_offset_size_and_signedness(c_side):
    for name, (off, size, signed, _count) in python_fields().items():
        c_off, c_size, c_signed = c_side["fields"][name]
        assert (c_off, c_size) == (off, size), name
        if signed is not None:
            assert c_signed == signed, f"{name}: C signed={c_signed}, Python signed={signed}"


def test_the_record_size_is_the_c_size_less_its_tail_padding(c_side):
    # RECORD ("<", no padding) ends where the last C field ends; sizeof adds only the
    # padding that rounds the struct to its alignment. decode() reads that prefix.
    last = ev.RECORD_FIELDS[-1]
    off, size, _ = c_side["fields"][last]
    assert ev.RECORD.size == off + size
    align = c_side["alignof"]
    assert c_side["sizeof"] == (ev.RECORD.size + align - 1) // align * align


def test_array_lengths_agree(c_side):
    fields = python_fields()
    assert fields["comm"][3] == c_side["const"]["TT_COMM_LEN"]
    assert fields["name"][3] == c_side["const"]["TT_NAME_LEN"]
    assert fields["fds"][3] == c_side["const"]["TT_MAX_FDS"]


# ---- the enums ---------------------------------------------------------------

def test_event_types_agree_both_ways(c_side):
    c = c_side["enums"]["tt_event_type"]
    py = {n: getattr(ev, n) for n in dir(ev) if re.fullmatch(r"EV_[A-Z0-9_]+", n)}
    assert {"TT_" + n: v for n, v in py.items()} == c


def test_dup_how_agrees_both_ways(c_side):
    c = dict(c_side["enums"]["tt_dup_how"])
    assert c.pop("TT_DUP_CLOEXEC") == ev.DUP_CLOEXEC
    assert {"TT_" + how.upper(): v for v, how in ev.DUP_HOW.items()} == c
    # the flag must not collide with a how (decode masks the how with 0xFF)
    assert all(v & ev.DUP_CLOEXEC == 0 and v <= 0xFF for v in c.values())


def test_setfd_how_agrees_both_ways(c_side):
    assert {"TT_" + how: v for v, how in ev.SETFD_HOW.items()} == c_side["enums"]["tt_setfd_how"]


def test_counters_agree_both_ways(c_side):
    c = dict(c_side["enums"]["tt_counter"])
    nr = c.pop("TT_C_NR")
    py = {n: getattr(ev, n) for n in dir(ev) if re.fullmatch(r"C_[A-Z0-9_]+", n)}
    assert {"TT_" + n: v for n, v in py.items()} == c
    assert sorted(c.values()) == list(range(nr))      # dense indexes of one array


def test_every_enum_in_the_header_is_checked(c_side):
    assert set(c_side["enums"]) == {"tt_event_type", "tt_dup_how", "tt_setfd_how",
                                    "tt_counter", "tt_file_kind"}


def test_file_kinds_agree_both_ways(c_side):
    py = {n: getattr(ev, n) for n in dir(ev) if re.fullmatch(r"FK_[A-Z]+", n)}
    assert {"TT_" + n: v for n, v in py.items()} == c_side["enums"]["tt_file_kind"]


# ---- the vhost-net record ------------------------------------------------------
#
# TT_EV_VHOST_BACKEND reuses the common fields: fd = the vhost fd, arg = the vring
# index, arg2 = the backend fd as a u32, both read from the caller's
# struct vhost_vring_file. The uapi header (<linux/vhost.h>) is the reference.

BPF = HEADER.parent / "common.h"


def bpf_defines() -> dict[str, int]:
    pattern = r"^#define\s+(\w+)\s+0x([0-9a-fA-F]+)U?(?:LL|ULL)?\b"
    return {m.group(1): int(m.group(2), 16)
            for m in re.finditer(pattern, BPF.read_text(), flags=re.MULTILINE)}


VHOST_PROBE = r"""
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <linux/vhost.h>
#include "events.h"

int main(void) {
	printf("cmd %u\n", (unsigned)VHOST_NET_SET_BACKEND);
	printf("vring_file %zu %zu %zu\n", sizeof(struct vhost_vring_file),
	       offsetof(struct vhost_vring_file, index), offsetof(struct vhost_vring_file, fd));
	/* what on_vhost_backend() does with QEMU's {.index = 1, .fd = -1} */
	struct vhost_vring_file vf = { .index = 1, .fd = -1 };
	unsigned int w[2];
	memcpy(w, &vf, sizeof(w));
	struct tt_event e;
	memset(&e, 0, sizeof(e));
	e.ts = 99; e.type = TT_EV_VHOST_BACKEND; e.tgid = 100; e.tid = 101; e.fd = 28;
	e.ret = -14; e.arg = w[0]; e.arg2 = w[1];
	memcpy(e.comm, "qemu", 5);
	fwrite(&e, sizeof(e), 1, stdout);
	return 0;
}
"""


@pytest.fixture(scope="module")
def vhost_c(tmp_path_factory) -> tuple[list[str], bytes]:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed")
    d = tmp_path_factory.mktemp("vhost")
    (d / "probe.c").write_text(VHOST_PROBE)
    build = subprocess.run([gcc, "-std=gnu11", "-Wall", "-Werror", f"-I{HEADER.parent}",
                            "-o", str(d / "probe"), str(d / "probe.c")],
                           check=False, capture_output=True, text=True)
    if "linux/vhost.h" in build.stderr:
        pytest.skip("no uapi <linux/vhost.h> (linux-libc-dev)")
    assert build.returncode == 0, build.stderr
    out = subprocess.run([str(d / "probe")], check=True, capture_output=True).stdout
    lines = out.split(b"\n", 2)
    return [x.decode() for x in lines[:2]], lines[2]


def test_vhost_net_set_backend_is_the_uapi_number_on_both_sides(vhost_c):
    cmd = int(vhost_c[0][0].split()[1])
    assert cmd == ev.VHOST_NET_SET_BACKEND == bpf_defines()["VHOST_NET_SET_BACKEND_"]
    assert (cmd >> 8) & 0xFF == 0xAF        # the filter's second compare in sys_enter_ioctl


def test_vhost_vring_file_is_the_two_u32_words_the_bpf_side_reads(vhost_c):
    assert vhost_c[0][1].split()[1:] == ["8", "0", "4"]


def test_a_vhost_record_filled_as_the_bpf_side_does_decodes_field_by_field(vhost_c):
    rec = ev.decode(vhost_c[1])
    assert rec == ev.VhostBackend(ts=99, pid=100, tid=101, comm="qemu", fd=28, index=1,
                                  backend_fd=-1, ret=-14)
