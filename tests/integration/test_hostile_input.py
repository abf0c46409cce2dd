"""Hostile input on the real command line: bad values, malformed and poisoned
recordings, a planted link or file at --record, a full disk, a closed or full stdout.

Each is a one-line error or a quiet exit with a fitting status: never a traceback,
never "internal error", never a raw control byte on the terminal, never unbounded
memory, and a failed recording never costs the trace its final table.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import resource
import select
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import tapkit
from conftest import ROOT, need_root

TAPTRACE = [sys.executable, "-m", "tracer"]
DEMO = ROOT / "tests" / "data" / "demo.record.jsonl"


def _corpus():
    spec = importlib.util.spec_from_file_location(
        "hostile_corpus", ROOT / "tests" / "unit" / "test_hostile_replay.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


CORPUS = _corpus()


def run(*args, stdin=subprocess.DEVNULL, timeout=60, **kw):
    """The command, its output as bytes (a terminal gets bytes, not str)."""
    return subprocess.run([*TAPTRACE, *args], cwd=ROOT, capture_output=True, stdin=stdin,
                          timeout=timeout, check=False, **kw)


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"


def assert_one_line_error(p, code: int, *fragments: str) -> str:
    err = p.stderr.decode("utf-8", "replace")
    assert p.returncode == code, (p.returncode, err)
    assert "Traceback" not in err and "internal error" not in err, err
    last = err.rstrip("\n").split("\n")[-1]
    assert last.startswith("Error: "), err
    if code == 1:
        assert err.count("\n") == 1, err           # usage errors add click's usage lines
    for f in fragments:
        assert f in last, err
    assert_inert(p.stderr)
    return last


def assert_inert(out: bytes) -> None:
    """Nothing that moves a terminal: C0 but newline, DEL, C1, bidi, broken UTF-8."""
    text = out.decode("utf-8")                     # raises on a raw undecodable byte
    for line in text.split("\n"):
        assert line.isprintable(), repr(line)


# ---- bad values (usage errors, exit 2) ---------------------------------------

def _absent_pid() -> int:
    limit = int(Path("/proc/sys/kernel/pid_max").read_text())
    return next(p for p in range(limit - 1, 1, -1) if not os.path.exists(f"/proc/{p}"))


PID_MAX = int(Path("/proc/sys/kernel/pid_max").read_text())
SECONDS = ["nan", "NaN", "-nan", "inf", "-inf", "Infinity", "1e309", "-1", "0", "-0", "1e10",
           "abc", "", "0x10", "1_0", "\x1b[31m"]
BAD_ARGS = (
    [["watch", "--duration", s] for s in SECONDS]
    + [["top", "--duration", s] for s in ("nan", "inf", "1e309", "0")]
    + [["who", "--watch", s, "tth0"] for s in ("nan", "inf", "1e309", "0", "-1", "x")]
    + [["audit", "--watch", s] for s in ("nan", "inf", "1e309", "0", "-5")]
    + [["watch", "-p", p] for p in ("999999999", "4194305", str(PID_MAX), "0", "-1", "abc",
                                    "", "1.5", "0x10", "+1", "9" * 30, "\x1b", "1 2",
                                    str(_absent_pid()))]
    + [["top", "-p", p] for p in ("999999999", "4194305", "0")]
    + [[cmd, "-i", ""] for cmd in ("ls", "watch", "top", "audit")]
    + [[cmd, "-c", ""] for cmd in ("watch", "top")]
    + [["ls", "-i", "x" * 300], ["watch", "-c", "*" * 300]]
    + [["who", n] for n in ("", ".", "..", "a/b", "a b", "a:b", "a\tb", "\n",
                            "x" * 16, "é" * 8, "tth0 ")]
    + [["who", "--watch", "1", ""]]
    + [["watch", "--buffer-pages", n] for n in ("0", "3", "100", "131072", "-1", "1e3",
                                                "abc", "", "9" * 30)]
    + [["replay"], ["replay", ""], ["replay", "/nonexistent/rec"],
       ["replay", "/tmp"], ["replay", "/tmp/tth\x1b]0;x\x07-nx"], ["replay", "a", "b"]]
    + [["nosuch"], ["nosuch\x1b[2J"], ["--bogus"], ["ls", "--bogus"], ["ls", "extra"],
       ["who"], ["who", "a", "b"], ["demo", "x"], ["doctor", "--bogus"], ["ls", "--json=1"],
       ["watch", "--record"], ["audit", "--watch"], ["top", "-q"]]
)


@pytest.mark.parametrize("args", BAD_ARGS, ids=[" ".join(a).encode("unicode_escape").decode()
                                                 for a in BAD_ARGS])
def test_a_bad_value_is_a_usage_error(args):
    p = run(*args, timeout=30)
    assert_one_line_error(p, 2)
    assert p.stdout == b""


def test_who_with_an_empty_name_no_longer_lists_every_tap():
    need_root()
    fd, name = tapkit.create_tap(tapkit.unique_name("tth"))
    try:
        assert name.encode() in run("who", name).stdout          # the name still works
        p = run("who", "")
        assert_one_line_error(p, 2, "empty interface name")
        assert name.encode() not in p.stdout + p.stderr
    finally:
        os.close(fd)


def test_minus_p_takes_a_live_pid_and_refuses_one_that_cannot_exist():
    need_root()
    p = run("watch", "--json", "-p", str(os.getpid()), "--duration", "0.5")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout.splitlines()[-1])["type"] == "table"
    assert_one_line_error(run("watch", "-p", str(PID_MAX)), 2, "pid_max")


# ---- hostile recordings ------------------------------------------------------

@pytest.mark.parametrize(("content", "line", "what"), [h[1:] for h in CORPUS.HOSTILE],
                         ids=[h[0] for h in CORPUS.HOSTILE])
def test_replay_of_a_malformed_recording_says_which_line(tmp_path, content, line, what):
    rec = tmp_path / "rec.jsonl"
    rec.write_bytes(content)
    for extra in ([], ["--json"]):
        p = run("replay", *extra, str(rec))
        last = assert_one_line_error(p, 1, "replay: ", what)
        if line:
            assert last.startswith(f"Error: replay: line {line}: "), last
        assert_inert(p.stdout)


def test_replay_of_dev_zero_stops_at_the_line_cap_in_bounded_memory():
    def limit() -> None:                     # 16 MiB lines may not cost a gigabyte
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    for source in (["/dev/zero"], ["-"]):
        stdin = open("/dev/zero", "rb") if source == ["-"] else subprocess.DEVNULL  # noqa: SIM115
        with stdin if source == ["-"] else contextlib.nullcontext():
            start = time.monotonic()
            p = subprocess.run([*TAPTRACE, "replay", *source], cwd=ROOT, stdin=stdin,
                               capture_output=True, timeout=60, check=False,
                               preexec_fn=limit)
        assert_one_line_error(p, 1, "line 1: longer than 16777216 bytes")
        assert time.monotonic() - start < 30


def test_replay_of_a_gigantic_line_from_a_pipe_is_bounded():
    # a writer that never stops: replay must stop reading, not buffer it all
    writer = subprocess.Popen(["yes", "x" * 1000], stdout=subprocess.PIPE)
    try:
        p = subprocess.run([*TAPTRACE, "replay", "-"], cwd=ROOT, stdin=writer.stdout,
                           capture_output=True, timeout=60, check=False)
    finally:
        writer.kill()
        writer.wait()
    assert_one_line_error(p, 1, "line 1: not JSON")


def test_a_poisoned_recording_reaches_the_terminal_escaped_and_json_exact(tmp_path):
    rec = tmp_path / "poison.jsonl"
    rec.write_text("\n".join(CORPUS.poisoned_demo()) + "\n")
    p = run("replay", str(rec))
    assert p.returncode == 0, p.stderr
    assert_inert(p.stdout)
    out = p.stdout.decode()
    assert "\\x1b]0;pwned\\x07" in out and "\\u202e" in out and "\\xff" in out
    assert "tap_gone" in out                              # the whole story still told
    pj = run("replay", "--json", str(rec))
    assert pj.returncode == 0, pj.stderr
    lines = [json.loads(x) for x in pj.stdout.decode("ascii").splitlines()]
    assert any(o.get("comm", "").endswith(CORPUS.HOSTILE_TEXT) for o in lines)
    assert lines[-1]["type"] == "table"


# ---- standard output closed or full ------------------------------------------

QUICK = [["ls"], ["ls", "--json"], ["who", "tth-none0"], ["doctor"], ["--help"],
         ["--version"], ["replay", str(DEMO)], ["replay", "--json", str(DEMO)], ["audit"],
         ["ls", "--help"]]


@pytest.mark.parametrize("args", QUICK, ids=[" ".join(a) for a in QUICK])
@pytest.mark.parametrize("redirect", [">&-", ">/dev/full"])
def test_a_closed_or_full_stdout_is_one_line_never_an_internal_error(args, redirect):
    p = subprocess.run(["bash", "-c", " ".join(["exec", *map(_quote, [*TAPTRACE, *args]),
                                               redirect])],
                       cwd=ROOT, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                       timeout=60, check=False)
    err = p.stderr.decode()
    assert "Traceback" not in err and "internal error" not in err, err
    if args[0] == "who":              # a name no tap has: its own error, nothing to write
        assert p.returncode == 1 and "no tun/tap interface" in err
        return
    assert p.returncode == 1, err
    why = "Bad file descriptor" if redirect == ">&-" else "No space left on device"
    assert err == f"Error: cannot write to standard output: {why}\n"


TRACING = [["watch", "--duration", "1"], ["watch", "--json", "--duration", "1"],
           ["top", "--duration", "1"], ["demo"], ["audit", "--watch", "0.5"],
           ["who", "--watch", "0.5", "lo"]]


@pytest.mark.parametrize("args", TRACING, ids=[" ".join(a) for a in TRACING])
@pytest.mark.parametrize("redirect", [">&-", ">/dev/full"])
def test_tracing_into_a_closed_or_full_stdout_is_one_line_and_leaves_nothing(args, redirect):
    need_root()
    # its own session: what it started is found by session id, not by a name that
    # another tracer on the machine could share
    p = subprocess.Popen(["bash", "-c", " ".join(["exec", *map(_quote, [*TAPTRACE, *args]),
                                                 redirect])],
                         cwd=ROOT, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                         start_new_session=True)
    err = p.communicate(timeout=90)[1].decode()
    assert "Traceback" not in err and "internal error" not in err, err
    if args[0] == "who":              # lo is no tap: nothing to write, its own error
        assert p.returncode == 1 and err.count("\n") == 1 and "no tun/tap" in err
        return
    why = "Bad file descriptor" if redirect == ">&-" else "No space left on device"
    assert (p.returncode, err) == (1, f"Error: cannot write to standard output: {why}\n")
    left = subprocess.run(["pgrep", "-s", str(p.pid)], capture_output=True, check=False)
    assert left.stdout == b""                    # demo's scenario process is gone too


def test_a_full_stderr_does_not_end_a_trace_that_warns(tmp_path):
    """A recording that fails warns on stderr; a full stderr must not end the trace."""
    need_root()
    held = [tapkit.create_tap(tapkit.unique_name("tth")) for _ in range(20)]
    try:                          # 20 taps held: the first snapshot is more than 4 KiB
        p = subprocess.run(["bash", "-c", " ".join(map(_quote, [
            "unshare", "-m", "--propagation", "private", "sh", "-c",
            f'mount -t tmpfs -o size=4k tth "{tmp_path}" && exec "$0" "$@"', *TAPTRACE,
            "watch", "--json", "--duration", "1", "--record", str(tmp_path / "rec")]))
            + " 2>/dev/full"], cwd=ROOT, stdout=subprocess.PIPE, timeout=90, check=False)
    finally:
        for fd, _name in held:
            os.close(fd)
    assert p.returncode == 1                     # the recording failed: said by the status
    table = json.loads(p.stdout.splitlines()[-1])
    assert table["type"] == "table"
    assert {name for _fd, name in held} <= {r["ifname"] for r in table["rows"]}


@pytest.mark.parametrize("args", [["ls"], ["replay", str(DEMO)], ["--help"], ["doctor"]])
def test_a_reader_that_leaves_early_ends_it_quietly(args):
    cmd = " ".join(map(_quote, [*TAPTRACE, *args])) + " | head -c 1 >/dev/null"
    p = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=ROOT, capture_output=True,
                       timeout=60, check=False)
    assert p.stderr == b""
    assert p.returncode in (0, 1)        # doctor says 1 when something here is missing


def test_quiet_audit_with_stdout_closed_keeps_its_status():
    p = subprocess.run(["bash", "-c", " ".join(map(_quote, [*TAPTRACE, "audit", "-q",
                                                           "-i", "tth-none*"])) + " >&-"],
                       cwd=ROOT, capture_output=True, timeout=60, check=False)
    assert p.returncode == 0 and p.stderr == b""


def test_closed_stdin_and_stderr_change_nothing():
    p = subprocess.run(["bash", "-c", " ".join(map(_quote, [*TAPTRACE, "ls", "--json"]))
                        + " <&- 2>&-"], cwd=ROOT, capture_output=False,
                       stdout=subprocess.PIPE, timeout=60, check=False)
    assert p.returncode == 0 and json.loads(p.stdout)["type"] == "table"
    p = subprocess.run(["bash", "-c", " ".join(map(_quote, [*TAPTRACE, "who", ""]))
                        + " 2>&-"], cwd=ROOT, stdout=subprocess.PIPE, timeout=60, check=False)
    assert p.returncode == 2 and p.stdout == b""


# ---- --record: where it writes, and when it cannot ---------------------------

def watch(*args: str, duration: str = "0.3", **kw) -> subprocess.CompletedProcess:
    return run("watch", "--json", "--duration", duration, *args, **kw)


@pytest.fixture
def sticky_dir():
    """A world-writable sticky directory, like /tmp, that this test owns."""
    d = Path(tempfile.mkdtemp(prefix="tth-rec-"))
    d.chmod(0o1777)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def as_nobody(*cmd: str) -> None:
    subprocess.run(["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", *cmd],
                   check=True, timeout=30)


def test_a_recording_is_a_new_file_0600_even_with_umask_0(tmp_path):
    """...and its checks pass a real snapshot: taps held, one shared with a child."""
    need_root()
    rec = tmp_path / "rec.jsonl"
    fd, name = tapkit.create_tap(tapkit.unique_name("tth"), cloexec=False)
    old = os.umask(0)
    try:
        with tapkit.held_by_child() as child:
            p = watch("--record", str(rec))
            assert p.returncode == 0, p.stderr
    finally:
        os.umask(old)
        os.close(fd)
    st = rec.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    r = run("replay", "--json", str(rec))
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout.splitlines()[-1])["rows"]
    assert {(os.getpid(), name), (child, name)} <= {(x["pid"], x["ifname"]) for x in rows}


def test_a_symlink_planted_by_another_user_is_never_followed(sticky_dir, tmp_path):
    need_root()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = sticky_dir / "rec.jsonl"
    as_nobody("ln", "-s", str(victim), str(link))
    dangling = sticky_dir / "dangling.jsonl"
    as_nobody("ln", "-s", str(tmp_path / "would-be-created"), str(dangling))
    for args in (["--record", str(link)], ["--record", str(link), "--overwrite"],
                 ["--record", str(dangling)], ["--record", str(dangling), "--overwrite"]):
        p = watch(*args)
        assert_one_line_error(p, 1, "--record: ")
        assert p.stdout == b""                     # refused before tracing starts
    assert victim.read_text() == "precious\n"
    assert not (tmp_path / "would-be-created").exists()
    assert os.readlink(link) == str(victim)


def test_an_existing_file_is_kept_unless_overwrite_and_then_only_our_own(sticky_dir):
    need_root()
    mine = sticky_dir / "mine.jsonl"
    mine.write_text("old\n")
    mine.chmod(0o644)
    assert_one_line_error(watch("--record", str(mine)), 1, "exists", "--overwrite")
    assert mine.read_text() == "old\n"
    p = watch("--record", str(mine), "--overwrite")
    assert p.returncode == 0, p.stderr
    assert stat.S_IMODE(mine.stat().st_mode) == 0o600
    assert json.loads(mine.read_text().splitlines()[0])["kind"] == "snapshot"

    theirs = sticky_dir / "theirs.jsonl"
    as_nobody("sh", "-c", f"echo theirs > {theirs}")
    assert_one_line_error(watch("--record", str(theirs), "--overwrite"), 1, "owned by uid")
    assert theirs.read_text() == "theirs\n"

    hard = sticky_dir / "hard.jsonl"
    os.link(mine, hard)
    assert_one_line_error(watch("--record", str(hard), "--overwrite"), 1, "2 hard links")
    mine.unlink()
    hard.unlink()


@pytest.mark.parametrize("kind", ["fifo", "dir", "dev-full", "no-dir", "read-only-fs"])
def test_a_target_that_is_not_a_file_we_may_write_is_refused_before_tracing(tmp_path, kind):
    need_root()
    target = tmp_path / "rec"
    prefix: list[str] = []
    if kind == "fifo":
        os.mkfifo(target)
    elif kind == "dir":
        target.mkdir()
    elif kind == "dev-full":
        target = Path("/dev/full")
    elif kind == "no-dir":
        target = tmp_path / "missing" / "rec"
    else:
        prefix = ["unshare", "-m", "--propagation", "private", "sh", "-c",
                  f'mount -t tmpfs -o ro tth "{tmp_path}" && exec "$0" "$@"']
    start = time.monotonic()
    p = subprocess.run([*prefix, *TAPTRACE, "watch", "--duration", "0.3", "--record",
                        str(target), "--overwrite"], cwd=ROOT, capture_output=True,
                       timeout=60, check=False)
    assert_one_line_error(p, 1, "--record: ")
    assert p.stdout == b"" and time.monotonic() - start < 20     # a FIFO never blocks it
    if kind == "dev-full":
        assert stat.S_ISCHR(os.stat("/dev/full").st_mode)


def _churn_taps(n: int) -> set[str]:
    names = set()
    for _ in range(n):
        fd, name = tapkit.create_tap(tapkit.unique_name("tth"))
        os.close(fd)
        names.add(name)
    return names


def test_a_full_disk_stops_recording_with_one_line_and_the_trace_ends_with_its_table(
        tmp_path):
    """The recording's filesystem fills while taps come and go: one warning, the
    trace goes on to its final table (exit 1: the recording is not whole), and the
    file holds whole records only, which replay."""
    need_root()
    mnt = tmp_path / "small"
    mnt.mkdir()
    rec = mnt / "rec.jsonl"
    script = (f'mount -t tmpfs -o size=16k tth "{mnt}" && "$0" "$@"; rc=$?; '
              f'cp "{rec}" "{tmp_path}/kept.jsonl"; exit $rc')
    proc = subprocess.Popen(["unshare", "-m", "--propagation", "private", "sh", "-c", script,
                             *TAPTRACE, "watch", "--json", "--record", str(rec),
                             "--duration", "8"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        ready = b""
        deadline = time.monotonic() + 60
        while b'"ready"' not in ready and time.monotonic() < deadline:
            if select.select([proc.stdout], [], [], 1)[0]:
                ready += os.read(proc.stdout.fileno(), 65536)
        assert b'"ready"' in ready, proc.stderr.read() if proc.poll() is not None else ready
        names = _churn_taps(60)             # ~180 records: far more than 16 KiB
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    out, err = ready + out, err.decode()
    assert proc.returncode == 1, err
    assert "Traceback" not in err and "internal error" not in err
    assert err.count("\n") == 1, err
    assert "recording to" in err and "stopped: No space left on device" in err
    lines = [json.loads(x) for x in out.splitlines()]
    assert lines[-1]["type"] == "table"                        # the trace went on
    assert names <= {x.get("ifname") for x in lines if x["type"] == "tunsetiff"}
    kept = (tmp_path / "kept.jsonl").read_bytes()
    assert kept.endswith(b"\n") and 0 < len(kept) <= 16 << 10
    records = int(err.split("its ")[1].split(" records")[0])
    assert kept.count(b"\n") == records
    assert run("replay", str(tmp_path / "kept.jsonl")).returncode == 0
