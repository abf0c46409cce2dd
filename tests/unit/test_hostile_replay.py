"""A recording is anyone's file: every malformed or hostile line is one clear error
naming the line (no traceback, no unbounded memory), and every string a replay
prints reaches the terminal escaped.

HOSTILE is the corpus of malformed recordings; tests/integration/test_hostile_input.py
replays each one through the real command line too.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from tracer import render
from tracer.replay import LINE_MAX, ReplayError, read_lines, replay

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo.record.jsonl"
EMPTY = {"procs": {}, "fds": [], "taps": {}, "files": [], "tables": []}
SNAP = {"kind": "snapshot", "ts": 1, "snapshot": EMPTY}
BASE = {"ts": 2, "pid": 100, "tid": 100, "comm": "libvirtd"}
OPEN = {"kind": "Open", **BASE, "fd": 3, "path": "/dev/net/tun", "flags": 2}
SETIFF = {"kind": "TunIoctl", **BASE, "fd": 3, "cmd": 0x400454CA, "ret": 0,
          "ifname": "tth0", "value": 0x1002}
DUP = {"kind": "Dup", **BASE, "oldfd": 3, "newfd": 5, "how": "dup", "cloexec": False}
FORK = {"kind": "Fork", **BASE, "child": 101, "flags": 17}
SEND = {"kind": "ScmSend", **BASE, "sock": 7, "fds": [3]}
RECV = {"kind": "ScmRecv", **BASE, "pid": 102, "tid": 102, "sock": 8, "fds": [4],
        "cloexec": False, "probe": ["tth0"]}
EXEC = {"kind": "Exec", **BASE, "old_pid": 100, "probe": [[3, "tth0"]]}
SETFD = {"kind": "SetFd", **BASE, "fd": 3, "cloexec": True, "how": "FIOCLEX"}
PROC = {"pid": 100, "ppid": 1, "comm": "libvirtd", "cmdline": ["libvirtd"], "uid": 0}
FD = {"pid": 100, "fd": 3, "path": "/dev/net/tun", "ifname": "tth0", "cloexec": True,
      "flags": 2}
TAP = {"ifname": "tth0", "ifindex": 9, "kind": "tap", "tun_flags": 0x1002, "persist": False,
       "multi_queue": False, "vnet_hdr": False, "owner": None, "group": None,
       "mac": "fe:54:00:00:00:01"}


def j(obj) -> bytes:
    return json.dumps(obj).encode() + b"\n"


def with_(rec: dict, **fields) -> bytes:
    return j({**rec, **fields})


def without(rec: dict, key: str) -> bytes:
    return j({k: v for k, v in rec.items() if k != key})


def snap(**parts) -> bytes:
    return j({**SNAP, "snapshot": {**EMPTY, **parts}})


def deep(n: int) -> bytes:
    return b"[" * n + b"]" * n + b"\n"


# (id, the line after a good snapshot line, what the error says). The bad line is line 2.
AFTER_SNAPSHOT = [
    ("array", b"[]\n", "a JSON array, not an object"),
    ("array-of-records", b"[" + j(OPEN).strip() + b"]\n", "array"),
    ("number", b"42\n", "a JSON number"),
    ("negative-number", b"-1\n", "a JSON number"),
    ("null", b"null\n", "a JSON null"),
    ("true", b"true\n", "boolean"),
    ("string", b'"Open"\n', "a JSON string"),
    ("invalid-utf8", b"\xff\xfe{}\n", "not UTF-8"),
    ("invalid-utf8-in-string", b'{"kind": "Close", "comm": "\xc3("}\n', "not UTF-8"),
    ("overlong-utf8", b'{"kind": "\xc0\xaf"}\n', "not UTF-8"),
    ("utf16", '{"kind": "Close"}'.encode("utf-16"), "not UTF-8"),
    ("deep-arrays", deep(200_000), "nested too deeply"),
    ("deep-objects", b'{"a": ' * 100_000 + b"1" + b"}" * 100_000 + b"\n", "nested too deeply"),
    ("deep-in-field", with_(OPEN, path=json.loads(deep(500))), "path: a array"),
    ("5000-digit-int-fd", b'{"kind": "Close", "ts": 2, "pid": 1, "tid": 1, "comm": "x", '
     b'"fd": ' + b"9" * 5000 + b"}\n", "an integer of 5000 digits"),
    ("5000-digit-int-alone", b"1" * 5000 + b"\n", "an integer of 5000 digits"),
    ("negative-5000-digits", b'{"fd": -' + b"7" * 5000 + b"}\n", "5000 digits"),
    ("int-over-64-bits", with_(OPEN, flags=1 << 64), "does not fit in 64 bits"),
    ("int-under-64-bits", with_(OPEN, ts=-(1 << 63) - 1), "does not fit in 64 bits"),
    ("float-fd", with_(OPEN, fd=3.0), "not an integer"),
    ("exponent-fd", b'{"kind": "Close", "fd": 1e3}\n', "not an integer"),
    ("nan", b'{"kind": "Close", "fd": NaN}\n', "NaN"),
    ("infinity", b'{"kind": "Close", "fd": Infinity}\n', "Infinity"),
    ("minus-infinity", b'{"kind": "Close", "fd": -Infinity}\n', "Infinity"),
    ("1e999", b'{"kind": "Close", "fd": 1e999}\n', "not an integer"),
    ("not-json", b"not json\n", "not JSON"),
    ("truncated", j(OPEN)[:20] + b"\n", "not JSON"),
    ("trailing-garbage", j(OPEN).strip() + b" x\n", "not JSON"),
    ("two-objects", j(OPEN).strip() + j(OPEN), "not JSON"),
    ("nul-bytes", b"\0" * 1000 + b"\n", "not JSON"),
    ("bom", b"\xef\xbb\xbf" + j(OPEN), "not JSON"),
    ("unknown-kind", with_(OPEN, kind="Nope"), "unknown record kind 'Nope'"),
    ("kind-escaped", with_(OPEN, kind="\x1b]0;pwned\x07"), "'\\x1b]0;pwned\\x07'"),
    ("no-kind", without(OPEN, "kind"), "no record kind"),
    ("kind-number", with_(OPEN, kind=1), "kind: a number"),
    ("kind-list", with_(OPEN, kind=["Open"]), "kind: a array"),
    ("kind-lost-internal", with_(BASE, kind="__class__"), "unknown record kind"),
    ("missing-field", without(OPEN, "fd"), "field 'fd' is missing"),
    ("missing-pid", without(DUP, "pid"), "field 'pid' is missing"),
    ("unknown-field", with_(OPEN, evil=1), "unknown field 'evil'"),
    ("unknown-field-escaped", with_(OPEN, **{"\x1b[2J": 1}), "'\\x1b[2J'"),
    ("fd-string", with_(OPEN, fd="3"), "fd: a string, not an integer"),
    ("fd-bool", with_(OPEN, fd=True), "fd: a boolean, not an integer"),
    ("fd-null", with_(OPEN, fd=None), "fd: a null"),
    ("fd-object", with_(OPEN, fd={}), "fd: a object"),
    ("pid-negative", with_(OPEN, pid=-1), "is not a pid"),
    ("pid-too-big", with_(OPEN, pid=999_999_999), "is not a pid"),
    ("child-too-big", with_(FORK, child=4_194_305), "child: 4194305 is not a pid"),
    ("child-string-esc", with_(FORK, child="\x1b[31m1"), "child: a string"),
    ("newfd-string-bel", with_(DUP, newfd="5\x07"), "newfd: a string"),
    ("how-escape", with_(DUP, how="\x1b]0;pwned\x07"), "how: '\\x1b]0;pwned\\x07' is not one of"),
    ("how-unknown", with_(DUP, how="dup4"), "how: 'dup4' is not one of"),
    ("how-number", with_(DUP, how=2), "how: a number"),
    ("setfd-how", with_(SETFD, how="F_SETFL"), "is not one of"),
    ("comm-huge", with_(OPEN, comm="A" * 10_000), "comm: a string of 10000 characters"),
    ("comm-number", with_(OPEN, comm=7), "comm: a number"),
    ("comm-surrogate", with_(OPEN, comm="\ud800"), "lone surrogate"),
    ("ifname-huge", with_(SETIFF, ifname="v" * 100), "ifname: a string of 100"),
    ("path-megabyte", with_(OPEN, path="/" * (1 << 20)), "path: a string of 1048576"),
    ("fds-not-list", with_(SEND, fds=3), "fds: a number, not an array"),
    ("fds-strings", with_(SEND, fds=["3"]), "fds[0]: a string"),
    ("fds-nested", with_(SEND, fds=[[3]]), "fds[0]: a array"),
    ("fds-too-many", with_(SEND, fds=[3] * ((1 << 20) + 1)), "an array of 1048577 items"),
    ("cloexec-string", with_(DUP, cloexec="yes"), "cloexec: a string, not true/false"),
    ("cloexec-int", with_(DUP, cloexec=1), "cloexec: a number, not true/false"),
    ("probe-on-close", with_(OPEN, kind="Close", probe=["x"], path=None, flags=None)
     .replace(b', "path": null, "flags": null', b""), "probe: beside a Close"),
    ("probe-wrong-length", with_(RECV, probe=["a", "b"]), "2 answers for 1 fds"),
    ("probe-object", with_(RECV, probe=[{}]), "probe[0]"),
    ("probe-not-list", with_(RECV, probe="tth0"), "probe: a string"),
    ("exec-probe-shape", with_(EXEC, probe=[[3]]), "probe[0]: 1 items, not 2"),
    ("threads-asked-strings", with_(DUP, threads_asked=["101"]), "threads_asked[0]: a string"),
    ("threads-asked-object", with_(DUP, threads_asked={}), "threads_asked: a object"),
    ("exec-probe-fd-string", with_(EXEC, probe=[["3", "x"]]), "probe[0][0]: a string"),
    ("ts-string", with_(OPEN, ts="now"), "ts: a string"),
    ("snapshot-missing", b'{"kind": "snapshot", "ts": 3}\n', "'snapshot' is missing"),
    ("snapshot-array", j({**SNAP, "snapshot": []}), "snapshot: a array"),
    ("snapshot-null", j({**SNAP, "snapshot": None}), "snapshot: a null"),
    ("snapshot-extra", j({**SNAP, "x": 1}), "unknown field 'x'"),
    ("snapshot-ts-float", j({**SNAP, "ts": 1.5}), "not an integer"),
    ("snapshot-part-missing", j({**SNAP, "snapshot": {"procs": {}}}), "'fds' is missing"),
    ("procs-key-not-pid", snap(procs={"x": PROC}), "key 'x' is not a number"),
    ("procs-key-huge", snap(procs={"9" * 5000: PROC}), "is not a number"),
    ("procs-key-mismatch", snap(procs={"7": PROC}), "key 7 holds pid 100"),
    ("procs-not-object", snap(procs=[PROC]), "procs: a array"),
    ("proc-field-missing", snap(procs={"100": {**PROC, "uid": None} | {}}),
     "uid: a null"),
    ("proc-unknown-field", snap(procs={"100": {**PROC, "evil": 1}}), "unknown field 'evil'"),
    ("cmdline-string", snap(procs={"100": {**PROC, "cmdline": "libvirtd"}}),
     "cmdline: a string, not an array"),
    ("cmdline-numbers", snap(procs={"100": {**PROC, "cmdline": [1]}}), "cmdline[0]: a number"),
    ("fds-item-array", snap(fds=[[100, 3]]), "fds[0]: a array"),
    ("fd-cloexec-string", snap(fds=[{**FD, "cloexec": "no"}]), "cloexec: a string"),
    ("taps-key-mismatch", snap(taps={"other": TAP}), "key 'other' holds 'tth0'"),
    ("tap-kind-huge", snap(taps={"tth0": {**TAP, "kind": "t" * 100}}), "kind: a string of 100"),
    ("files-triples", snap(files=[[[100, 3, 4]]]), "3 items, not 2"),
    ("files-not-nested", snap(files=[100, 3]), "files[0]: a number"),
    ("tables-strings", snap(tables=[["100"]]), "tables[0][0]: a string"),
    ("threads-key-not-tid", snap(procs={"100": PROC}, threads={"x": 100}),
     "key 'x' is not a number"),
    ("threads-of-no-process", snap(procs={"100": PROC}, threads={"101": 7}),
     "101 is no thread of a listed process"),
    ("threads-a-process", snap(procs={"100": PROC}, threads={"100": 100}),
     "100 is no thread of a listed process"),
    ("threads-tid-huge", snap(procs={"100": PROC}, threads={"9999999": 100}),
     "9999999 is no thread"),
    ("threads-pid-string", snap(procs={"100": PROC}, threads={"101": "100"}),
     "threads['101']: a string"),
]

# whole files: (id, content, the bad line, what the error says)
WHOLE = [
    ("empty", b"", 0, "no records in 0 lines"),
    ("blank-lines", b"\n \n\t\n", 0, "no records in 3 lines"),
    ("starts-with-event", j(OPEN), 1, "starts with a snapshot"),
    ("bad-first-line", b"[1]\n" + j(SNAP), 1, "array"),
    ("bad-line-after-events", j(SNAP) + j(OPEN) + j(SETIFF) + b"\n" + b"null\n", 5, "null"),
    ("good-then-truncated", DEMO.read_bytes()[:-30], len(DEMO.read_bytes().splitlines()),
     "not JSON"),
]


def hostile_files() -> list[tuple[str, bytes, int, str]]:
    """Every malformed recording: (id, content, bad line number, message fragment)."""
    return [(name, j(SNAP) + line, 2, what) for name, line, what in AFTER_SNAPSHOT] + WHOLE


HOSTILE = hostile_files()


@pytest.mark.parametrize(("content", "line", "what"), [h[1:] for h in HOSTILE],
                         ids=[h[0] for h in HOSTILE])
def test_a_malformed_recording_is_one_error_naming_its_line(content, line, what):
    with pytest.raises(ReplayError) as err:
        replay(read_lines(io.BytesIO(content)))
    msg = str(err.value)
    assert "\n" not in msg and "\x1b" not in msg and "\x07" not in msg
    if line:
        assert msg.startswith(f"line {line}: "), msg
    assert what in msg, msg


def test_the_good_records_of_this_corpus_replay():
    """The corpus mutates records that are good as they stand (else it proves nothing)."""
    good = [SNAP, OPEN, SETIFF, DUP, SETFD, FORK, SEND, RECV, EXEC,
            {**SNAP, "snapshot": {**EMPTY, "procs": {"100": PROC}, "fds": [FD],
                                  "taps": {"tth0": TAP}, "files": [[[100, 3]]],
                                  "tables": [[100]]}}]
    model, reports = replay(read_lines(io.BytesIO(b"".join(j(r) for r in good))))
    assert [r["type"] for r in reports if not r.get("quiet")][:4] == [
        "open", "tunsetiff", "dup", "cloexec"]
    assert any(r["ifname"] == "tth0" for r in model.rows())


def test_a_gigantic_line_costs_the_cap_then_an_error():
    zeros = io.BytesIO(b"\0" * (5 << 20))          # /dev/zero, shortened
    with pytest.raises(ReplayError, match=r"^line 1: longer than 1048576 bytes"):
        list(read_lines(zeros, line_max=1 << 20))
    assert zeros.tell() == (1 << 20) + 1            # read no further than the cap
    big = io.BytesIO(j(SNAP) + b'{"kind": "' + b"x" * (LINE_MAX + 10) + b'"}\n')
    with pytest.raises(ReplayError, match=r"^line 2: longer than"):
        replay(read_lines(big))


def test_every_line_number_counts_blank_lines():
    content = j(SNAP) + b"\n\n" + j(OPEN) + b"\n" + b"[]\n"
    with pytest.raises(ReplayError, match=r"^line 6: a JSON array"):
        replay(read_lines(io.BytesIO(content)))


HOSTILE_TEXT = "\x1b]0;pwned\x07\x1b[2J\x9b1m\u202e\udcff\\"
KEEP = frozenset({"kind", "how"})          # checked against fixed choices


def poison(obj, key: str | None = None):
    """Every free string of a recording with terminal escapes, BEL, a C1 CSI, a bidi
    override, a raw byte and a backslash appended (names stay consistent)."""
    if isinstance(obj, dict):
        return {(poison(k) if key == "taps" else k): poison(v, k) for k, v in obj.items()}
    if isinstance(obj, list):
        return [poison(x, key) for x in obj]
    if isinstance(obj, str) and key not in KEEP:
        return obj[:4] + HOSTILE_TEXT
    return obj


def poisoned_demo() -> list[str]:
    return [json.dumps(poison(json.loads(line))) for line in DEMO.read_text().splitlines()]


def test_a_poisoned_recording_replays_and_every_human_line_is_inert():
    _model, reports = replay(poisoned_demo())
    assert any(HOSTILE_TEXT in (r.get("comm") or "") for r in reports)
    for r in reports:
        if r.get("quiet"):
            continue
        line = render.inert(render.event_line(r, 0))
        assert line.isprintable(), repr(line)
        assert "\udcff" not in line and "\u202e" not in line


@pytest.mark.parametrize("ch", ["\x1b", "\x07", "\x00", "\x7f", "\x9b", "\u202e", "\u2066",
                                "\u2028", chr(0xD800), chr(0xDCFF)])
def test_safe_and_inert_escape_what_moves_a_terminal(ch):
    assert render.safe(f"a{ch}b").isprintable()
    assert render.inert(f"a{ch}b\nc").split("\n")[0].isprintable()
    assert render.inert("a\\x1b") == "a\\x1b"          # already escaped: read the same
    assert render.safe("a\\b") == "a\\\\b"
