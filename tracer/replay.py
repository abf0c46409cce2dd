"""Recordings: writing a `watch --record` file, and replaying one through the model
with no kernel and no bcc.

A recording is JSON lines: {"kind": "snapshot", ...} for each /proc snapshot
(the start and every resync) and one record per event (tracer.events), including
the opens user space made at an fd's first TUN ioctl. What the model asked /proc
while tracing (the receiver's fds of an SCM_RIGHTS message, the fds of unknown
close-on-exec state at an exec) is recorded beside the event and answered from
there.

A recording is anyone's file, so a replay trusts none of it: each line is read
with a length cap, must be UTF-8 and one JSON object of a known kind whose fields
have the types, sizes and values the tracer itself writes (checked against the
event and snapshot dataclasses, so a new field is checked as soon as it exists);
the first bad line stops the replay with its number. A recording is written by
the tracer as root, so it is created 0600 (it holds other users' command lines)
and never through a symbolic link or onto a file someone else planted.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import stat
import types
import typing
from collections.abc import Callable, Iterable, Iterator

from . import events as ev
from . import procfs
from .model import Model
from .render import json_line, safe

LINE_MAX = 16 << 20          # bytes in one line; a snapshot of a busy host is well under
INT_DIGITS_MAX = 20          # 2**64 has 20 digits; json would take 4,300
INT_MIN, INT_LIMIT = -(1 << 63), 1 << 64
PID_MAX_LIMIT = 1 << 22      # the kernel's PID_MAX_LIMIT on 64-bit: no pid is larger
LIST_MAX = 1 << 20
STR_MAX = {"comm": 64, "ifname": 64, "how": 32, "kind": 16, "mac": 64, "cmdline": 131072}
STR_DEFAULT_MAX = 4096       # PATH_MAX
PID_FIELDS = frozenset({"pid", "tid", "child", "old_pid", "source_pid", "target", "ppid"})
CHOICES = {(ev.Dup, "how"): frozenset(ev.DUP_HOW.values()),
           (ev.SetFd, "how"): frozenset(ev.SETFD_HOW.values())}
EVENT_KINDS = {cls.__name__: cls for cls in typing.get_args(ev.Event)}


class ReplayError(Exception):
    """A recording that cannot be replayed; the message names the line."""


class _Bad(Exception):
    """What is wrong with one line (ReplayError adds the line number)."""


def _show(value, limit: int = 40) -> str:
    """An untrusted value quoted in an error message: escaped and short."""
    s = safe(value)
    return f"'{s}'" if len(s) <= limit else f"'{s[:limit]}'…"


# ---- reading lines -----------------------------------------------------------

def read_lines(f, line_max: int = LINE_MAX) -> Iterator[bytes]:
    """The lines of a binary stream, each at most `line_max` bytes: /dev/zero or a
    gigantic line costs `line_max` of memory, then an error, never all of memory."""
    n = 0
    while True:
        n += 1
        try:
            line = f.readline(line_max + 1)
        except OSError as exc:
            raise ReplayError(f"line {n}: cannot read: {exc.strerror or exc}") from None
        if not line:
            return
        if len(line) > line_max:
            raise ReplayError(f"line {n}: longer than {line_max} bytes (not a recording)")
        yield line


def _int(text: str) -> int:
    # json hands every integer literal here: refuse a 5,000-digit one before int() works
    if len(text.lstrip("-")) > INT_DIGITS_MAX:
        raise _Bad(f"an integer of {len(text.lstrip('-'))} digits")
    return int(text)


def _no_float(text: str):
    raise _Bad(f"a number that is not an integer ({_show(text)})")


def _decode(line: bytes | str) -> dict | None:
    """One line to its JSON object; None for a blank line."""
    if isinstance(line, bytes):
        if len(line) > LINE_MAX:
            raise _Bad(f"longer than {LINE_MAX} bytes")
        try:
            line = line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _Bad(f"not UTF-8 (byte {exc.start + 1})") from None
    elif len(line) > LINE_MAX:
        raise _Bad(f"longer than {LINE_MAX} characters")
    if not line.strip():
        return None
    try:
        obj = json.loads(line, parse_int=_int, parse_float=_no_float, parse_constant=_no_float)
    except json.JSONDecodeError as exc:
        raise _Bad(f"not JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        raise _Bad("JSON nested too deeply") from None
    if not isinstance(obj, dict):
        raise _Bad(f"a JSON {_json_type(obj)}, not an object")
    return obj


def _json_type(v) -> str:
    if v is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array",
            dict: "object"}.get(type(v), type(v).__name__)


# ---- checking values against the dataclasses ---------------------------------

_HINTS: dict[type, dict] = {}


def _hints(cls: type) -> dict:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _check_str(v, name: str) -> str:
    if not isinstance(v, str):
        raise _Bad(f"{name}: a {_json_type(v)}, not a string")
    limit = STR_MAX.get(name.rsplit(".", 1)[-1].split("[", 1)[0], STR_DEFAULT_MAX)
    if len(v) > limit:
        raise _Bad(f"{name}: a string of {len(v)} characters (at most {limit})")
    # raw bytes travel as U+DC80..U+DCFF (surrogateescape); no other surrogate is real
    if any(0xD800 <= ord(c) <= 0xDFFF and not 0xDC80 <= ord(c) <= 0xDCFF for c in v):
        raise _Bad(f"{name}: a lone surrogate in a string")
    return v


def _check_int(v, name: str) -> int:
    if type(v) is not int:
        raise _Bad(f"{name}: a {_json_type(v)}, not an integer")
    if not INT_MIN <= v < INT_LIMIT:
        raise _Bad(f"{name}: {v} does not fit in 64 bits")
    if name.rsplit(".", 1)[-1] in PID_FIELDS and not 0 <= v <= PID_MAX_LIMIT:
        raise _Bad(f"{name}: {v} is not a pid")
    return v


def _convert(v, hint, name: str):
    """`v` (parsed JSON) as the Python value of type `hint`, or _Bad."""
    origin = typing.get_origin(hint)
    if hint is int:
        return _check_int(v, name)
    if hint is bool:
        if type(v) is not bool:
            raise _Bad(f"{name}: a {_json_type(v)}, not true/false")
        return v
    if hint is str:
        return _check_str(v, name)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if v is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(v, arg, name)
            except _Bad as exc:
                errors.append(exc)
        raise errors[0]
    if origin in (tuple, list):
        if not isinstance(v, list):
            raise _Bad(f"{name}: a {_json_type(v)}, not an array")
        if len(v) > LIST_MAX:
            raise _Bad(f"{name}: an array of {len(v)} items")
        args = typing.get_args(hint)
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(v) != len(args):
                raise _Bad(f"{name}: {len(v)} items, not {len(args)}")
            return tuple(_convert(x, a, f"{name}[{i}]") for i, (x, a) in
                         enumerate(zip(v, args)))
        out = [_convert(x, args[0], f"{name}[{i}]") for i, x in enumerate(v)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(v, dict):
            raise _Bad(f"{name}: a {_json_type(v)}, not an object")
        key_hint, val_hint = typing.get_args(hint)
        out = {}
        for k, x in v.items():
            if key_hint is int:
                if not (k.isascii() and k.isdigit() and len(k) <= INT_DIGITS_MAX):
                    raise _Bad(f"{name}: key {_show(k)} is not a number")
                key = int(k)
            else:
                key = _check_str(k, f"{name} key")
            out[key] = _convert(x, val_hint, f"{name}[{_show(k, 20)}]")
        return out
    if dataclasses.is_dataclass(hint):
        return _instance(v, hint, name)
    raise _Bad(f"{name}: cannot check a field of type {hint}")    # a new kind of field


def _instance(d, cls: type, name: str, skip: tuple[str, ...] = ()):
    """A dataclass built from a JSON object whose keys are exactly its fields."""
    where = f"{name}: " if name else ""        # "": the record itself
    if not isinstance(d, dict):
        raise _Bad(f"{where}a {_json_type(d)}, not an object")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = [k for k in d if k not in fields and k not in skip]
    if unknown:
        raise _Bad(f"{where}unknown field {_show(unknown[0])}")
    missing = [k for k, f in fields.items() if k not in d and
               f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise _Bad(f"{where}field {missing[0]!r} is missing")
    prefix = f"{name}." if name else ""
    args = {}
    for k in fields:
        if k in d:
            args[k] = _convert(d[k], hints[k], prefix + k)
            choices = CHOICES.get((cls, k))
            if choices is not None and args[k] not in choices:
                raise _Bad(f"{prefix}{k}: {_show(args[k])} is not one of "
                           f"{', '.join(sorted(choices))}")
    return cls(**args)


def snapshot_from(d: dict) -> procfs.Snapshot:
    """A checked snapshot (raises _Bad)."""
    snap = _instance(d, procfs.Snapshot, "snapshot")
    for pid, info in snap.procs.items():
        if pid != info.pid:
            raise _Bad(f"snapshot.procs: key {pid} holds pid {info.pid}")
    for tid, pid in snap.threads.items():
        # a thread of a listed process, not a process itself
        if not 0 < tid <= PID_MAX_LIMIT or pid not in snap.procs or tid in snap.procs:
            raise _Bad(f"snapshot.threads: {tid} is no thread of a listed process")
    for key, tap in snap.taps.items():
        # keyed by name in taptrace's namespace, "INODE:name" in another
        if key not in (tap.ifname, f"{tap.netns}:{tap.ifname}"):
            raise _Bad(f"snapshot.taps: key {_show(key)} holds {_show(tap.ifname)}")
    return snap


def _probe(rec: dict, e: ev.Event) -> list:
    """The recorded /proc answers beside an event, checked."""
    probe = rec.get("probe")
    if probe is None:
        return []
    answer = str | bool | None
    if isinstance(e, ev.ScmRecv):
        got = _convert(probe, list[answer], "probe")
        if len(got) != len(e.fds):
            raise _Bad(f"probe: {len(got)} answers for {len(e.fds)} fds")
        # read in the receiving thread's table where it has its own (/proc/TID)
        return [((task, fd), name) for fd, name in zip(e.fds, got)
                for task in dict.fromkeys((e.pid, e.tid))]
    if isinstance(e, ev.Exec):
        got = _convert(probe, list[tuple[int, answer]], "probe")
        return [((e.pid, fd), name) for fd, name in got]
    if isinstance(e, (ev.Unshare, ev.CloseRange)):     # the leader's threads
        return [(("threads", e.pid), _convert(probe, list[int], "probe"))]
    raise _Bad(f"probe: beside a {type(e).__name__} record")


def _tables(rec: dict, e: ev.Event) -> list:
    """The recorded answers about threads first seen: [tid, null or its own table's
    tun fds as [fd, ifname, cloexec]], checked."""
    got = _convert(rec.get("tables_asked", []),
                   list[tuple[int, list[tuple[int, str | bool | None, bool | None]] | None]],
                   "tables_asked")
    return [(("table", e.pid, tid), own) for tid, own in got]


def _threads(rec: dict, e: ev.Event) -> list:
    """The recorded listing of a process's threads asked beside an event other than
    an unshare (whose `probe` holds it): a thread first seen with a table of its own
    looks for the others using it."""
    if "threads_asked" not in rec:
        return []
    return [(("threads", e.pid), _convert(rec["threads_asked"], list[int], "threads_asked"))]


def _same(rec: dict) -> list:
    """The recorded kcmp answers: do two tasks use one fd table ([a, b, answer])."""
    got = _convert(rec.get("same_asked", []), list[tuple[int, int, bool | None]],
                   "same_asked")
    return [(("same", a, b), same) for a, b, same in got]


def _netns(rec: dict) -> list:
    """The namespaces the tracer read for an event ([pid, fd, inode, name]), checked."""
    asked = _convert(rec.get("ns_asked", []),
                     list[tuple[int, int, int | None, str | None]], "ns_asked")
    return [((pid, fd), None if ino is None else (ino, name)) for pid, fd, ino, name in asked]


@dataclasses.dataclass(frozen=True)
class Reread:
    """A process's fd table read from /proc again (Session._reread): after a fork, or
    an exec or unshare, older than the snapshot's read of the table it copied."""
    ts: int
    pid: int
    fds: list[tuple[int, str | bool | None, bool | None]]


@dataclasses.dataclass(frozen=True)
class Adopt:
    """A process first seen through one of its threads, named from /proc
    (Session._adopt) before that thread's record applies."""
    pid: int
    comm: str
    ppid: int | None


@dataclasses.dataclass(frozen=True)
class Resync:
    """A snapshot taken to resync, with the answers the resync had from /proc and
    kcmp (Session._snapshot): which processes it did not list still ran, and which
    of them had parted from a table they shared with a listed one."""
    snapshot: procfs.Snapshot
    alive: frozenset[int]
    parted: frozenset[tuple[int, int]]
    one_table: frozenset[tuple[int, int]] = frozenset()
    acting: frozenset[int] = frozenset()


def parse(obj: dict) -> procfs.Snapshot | Resync | Reread | Adopt | tuple[ev.Event, list, list]:
    """One checked record: a snapshot, a table read again, a process adopted, or
    an event with its recorded /proc answers and the namespaces read for it."""
    kind = obj.get("kind")
    if kind == "reread":
        return _instance(obj, Reread, "", skip=("kind",))
    if kind == "adopt":
        return _instance(obj, Adopt, "", skip=("kind",))
    if kind == "snapshot":
        extra = [k for k in obj if k not in ("kind", "ts", "snapshot", "resync_asked")]
        if extra:
            raise _Bad(f"unknown field {_show(extra[0])}")
        if "ts" in obj:
            _check_int(obj["ts"], "ts")
        if "snapshot" not in obj:
            raise _Bad("field 'snapshot' is missing")
        snap = snapshot_from(obj["snapshot"])
        if "resync_asked" not in obj:
            return snap
        asked = obj["resync_asked"]
        if not isinstance(asked, dict):
            raise _Bad(f"resync_asked: a {_json_type(asked)}, not an object")
        unknown = [k for k in asked if k not in ("alive", "parted", "one_table", "acting")]
        if unknown:
            raise _Bad(f"resync_asked: unknown field {_show(unknown[0])}")
        alive = _convert(asked.get("alive", []), list[int], "resync_asked.alive")
        pairs = [frozenset(_convert(asked.get(k, []), list[tuple[int, int]],
                                    f"resync_asked.{k}"))
                 for k in ("parted", "one_table")]
        acting = _convert(asked.get("acting", []), list[int], "resync_asked.acting")
        return Resync(snap, frozenset(alive), *pairs, frozenset(acting))
    if not isinstance(kind, str):
        raise _Bad("no record kind" if kind is None else
                   f"kind: a {_json_type(kind)}, not a string")
    cls = EVENT_KINDS.get(kind)
    if cls is None:
        raise _Bad(f"unknown record kind {_show(kind)}")
    if isinstance(obj.get("netns"), list) and "ns_asked" not in obj:
        # recorded before records had a netns of their own: the answers' old key
        obj = {k: v for k, v in obj.items() if k != "netns"} | {"ns_asked": obj["netns"]}
    e = _instance(obj, cls, "", skip=("kind", "probe", "ns_asked", "tables_asked",
                                      "same_asked", "threads_asked"))
    return e, _probe(obj, e) + _tables(obj, e) + _same(obj) + _threads(obj, e), _netns(obj)


# ---- replaying ---------------------------------------------------------------

def recorded_model(answers: dict, netns: dict) -> Model:
    """A model that asks the recorded answers instead of /proc and the kernel."""
    return Model(probe_fd=lambda pid, fd: answers.get((pid, fd)),
                 netns_of=lambda pid, fd: netns.get((pid, fd)),
                 threads_of=lambda pid: answers.get(("threads", pid), []),
                 thread_table=lambda pid, tid, _known: answers.get(("table", pid, tid)),
                 same_table=lambda a, b: answers.get(("same", a, b)))


def replay_iter(lines: Iterable[bytes | str], model: Model | None = None,
                answers: dict | None = None, netns: dict | None = None) -> Iterator[dict]:
    """The reports of a recording, line by line, into `model` (made if None, asking
    `answers` and `netns`). The first bad line raises ReplayError naming it; the
    reports before it are already out."""
    answers = {} if answers is None else answers
    netns = {} if netns is None else netns
    if model is None:
        model = recorded_model(answers, netns)
    loaded = False
    records = 0
    n = 0
    for n, line in enumerate(lines, 1):
        try:
            obj = _decode(line)
            if obj is None:
                continue
            rec = parse(obj)
        except _Bad as exc:
            raise ReplayError(f"line {n}: {exc}") from None
        records += 1
        if records == 1 and not isinstance(rec, (procfs.Snapshot, Resync)):
            raise ReplayError(f"line {n}: a recording starts with a snapshot record, "
                              "not an event (not a recording?)")
        try:
            if isinstance(rec, Reread):
                yield from model.reload_table(rec.pid, rec.fds, rec.ts)
                continue
            if isinstance(rec, Adopt):
                model._proc(rec.pid, rec.comm).ppid = rec.ppid
                continue
            if isinstance(rec, Resync) and loaded:
                report = model.resync(rec.snapshot, alive=rec.alive.__contains__,
                                      parted=lambda a, b, p=rec.parted: (a, b) in p,
                                      one_table=lambda a, b, p=rec.one_table: (a, b) in p,
                                      acting=rec.acting.__contains__)
                report.pop("kept", None)        # (the session's, as in the trace)
                yield report
                continue
            if isinstance(rec, Resync):
                rec = rec.snapshot
            if isinstance(rec, procfs.Snapshot):
                if loaded:
                    # (recorded before resyncs kept their answers: none alive)
                    yield model.resync(rec)
                else:
                    model.load(rec)
                    loaded = True
                continue
            e, probe, asked = rec
            if isinstance(e, ev.PidfdOpen):
                continue          # the recorded pidfd_getfd already names its source
            answers.clear()
            answers.update(probe)
            netns.clear()
            netns.update(asked)
            out = model.apply(e)
        except Exception as exc:  # noqa: BLE001 - the model on a record no tracer writes
            raise ReplayError(f"line {n}: the model cannot apply this record "
                              f"({type(exc).__name__}: {safe(exc)})") from None
        yield from out
    if records == 0:
        raise ReplayError(f"no records in {n} line{'s' if n != 1 else ''} (not a recording)")


def replay(lines: Iterable[bytes | str]) -> tuple[Model, list[dict]]:
    """The model at the end of a recording and every report on the way."""
    answers: dict = {}
    netns: dict = {}
    model = recorded_model(answers, netns)
    reports = list(replay_iter(lines, model, answers, netns))
    return model, reports


# ---- writing -----------------------------------------------------------------

class RecordError(Exception):
    """The recording file cannot be opened safely; the message says why."""


def open_recording(path: str, overwrite: bool = False) -> int:
    """An fd to write a new recording at `path`, created 0600.

    Never through a symbolic link (O_NOFOLLOW, and O_EXCL refuses a link at `path`
    too), never onto an existing file unless `overwrite`; then only a regular file
    this user owns with no other hard link, opened without following a link (a
    FIFO or device someone put there is refused before anything is written)."""
    base = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY
    try:
        return os.open(path, base | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        if not overwrite:
            raise RecordError(f"{safe(path)} exists; --overwrite replaces a regular file "
                              "you own") from None
    except OSError as exc:
        raise RecordError(f"cannot create {safe(path)}: {exc.strerror}") from None
    try:
        # O_NONBLOCK: opening a FIFO for writing would wait for a reader
        fd = os.open(path, base | os.O_NONBLOCK)
    except OSError as exc:
        why = "a symbolic link (not followed)" if exc.errno == errno.ELOOP else exc.strerror
        raise RecordError(f"cannot overwrite {safe(path)}: {why}") from None
    try:
        st = os.fstat(fd)
        why = None
        if not stat.S_ISREG(st.st_mode):
            why = "not a regular file"
        elif st.st_uid != os.geteuid():
            why = f"owned by uid {st.st_uid}, not by you"
        elif st.st_nlink != 1:
            why = f"it has {st.st_nlink} hard links"
        if why is not None:
            raise RecordError(f"will not overwrite {safe(path)}: {why}")
        os.set_blocking(fd, True)
        os.ftruncate(fd, 0)
        os.fchmod(fd, 0o600)
    except OSError as exc:
        os.close(fd)
        raise RecordError(f"cannot overwrite {safe(path)}: {exc.strerror}") from None
    except RecordError:
        os.close(fd)
        raise
    return fd


class Recorder:
    """Writes records to an fd, one line per write(2), so every record written is in
    the file (page cache) at once. The first write failure (full disk, EIO, a closed
    pipe) stops recording: the file is cut back to its last whole record, `on_error`
    is told once, and later records are dropped; the trace goes on."""

    def __init__(self, fd: int, name: str, on_error: Callable[[str], None]) -> None:
        self.fd, self.name, self.on_error = fd, name, on_error
        self.size = 0                 # bytes of whole records written
        self.records = 0
        self.failed: str | None = None

    def __call__(self, rec: dict) -> None:
        if self.failed is not None:
            return
        data = (json_line(rec) + "\n").encode()
        if len(data) > LINE_MAX:
            self._fail(f"a {rec.get('kind')} record of {len(data)} bytes is more than "
                       "replay reads")
            return
        try:
            view = memoryview(data)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except OSError as exc:
            self._fail(exc.strerror or str(exc))
            return
        self.size += len(data)
        self.records += 1

    def _fail(self, why: str) -> None:
        self.failed = why
        try:        # a partial line would end the replay of what was recorded well
            os.ftruncate(self.fd, self.size)
        except OSError:
            pass
        self.on_error(f"recording to {safe(self.name)} stopped: {why}; its "
                      f"{self.records} records are kept; tracing goes on")

    def close(self) -> None:
        try:
            os.close(self.fd)
        except OSError as exc:
            if self.failed is None:
                self._fail(exc.strerror or str(exc))
