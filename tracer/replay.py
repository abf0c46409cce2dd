"""Replaying a `watch --record` file through the model, with no kernel and no bcc.

A recording is JSON lines: {"kind": "snapshot", ...} for each /proc snapshot
(the start and every resync) and one record per event (tracer.events), including
the opens user space made at an fd's first TUN ioctl. What the model asked /proc
while tracing (the receiver's fds of an SCM_RIGHTS message, the fds of unknown
close-on-exec state at an exec) is recorded beside the event and answered from
there.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from . import events as ev
from . import procfs
from .model import Model


class ReplayError(Exception):
    pass


def snapshot_from(d: dict) -> procfs.Snapshot:
    return procfs.Snapshot(
        procs={int(k): procfs.ProcInfo(**{**v, "cmdline": tuple(v["cmdline"])})
               for k, v in d["procs"].items()},
        fds=[procfs.FdInfo(**f) for f in d["fds"]],
        taps={k: procfs.TapInfo(**v) for k, v in d["taps"].items()},
        files=[[tuple(k) for k in g] for g in d["files"]],
        tables=[list(g) for g in d["tables"]],
        own_netns=d.get("own_netns"),       # recordings made before namespaces: none
        netns_names={int(k): v for k, v in (d.get("netns_names") or {}).items()},
    )


def records(lines: Iterable[str]) -> Iterator[dict]:
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as exc:
            raise ReplayError(f"line {n}: not JSON ({exc.msg})") from None


def replay(lines: Iterable[str]) -> tuple[Model, list[dict]]:
    answers: dict[tuple[int, int], str | None] = {}
    netns: dict[tuple[int, int], tuple | None] = {}   # the namespaces read while tracing
    model = Model(probe_fd=lambda pid, fd: answers.get((pid, fd)),
                  netns_of=lambda pid, fd: netns.get((pid, fd)))
    reports: list[dict] = []
    loaded = False
    for n, rec in enumerate(records(lines), 1):
        try:
            if rec.get("kind") == "snapshot":
                snap = snapshot_from(rec["snapshot"])
                if loaded:
                    reports.append(model.resync(snap))
                else:
                    model.load(snap)
                    loaded = True
                continue
            probe = rec.pop("probe", None)
            asked = rec.pop("netns", None) or []
            e = ev.from_record(rec)
            netns.clear()
            for pid, fd, ino, name in asked:
                netns[(pid, fd)] = None if ino is None else (ino, name)
            if isinstance(e, ev.PidfdOpen):
                continue          # the recorded pidfd_getfd already names its source
            answers.clear()
            if probe is not None and isinstance(e, ev.ScmRecv):
                answers.update({(e.pid, fd): name for fd, name in zip(e.fds, probe)})
            elif probe is not None and isinstance(e, ev.Exec):
                answers.update({(e.pid, fd): name for fd, name in probe})
            reports.extend(model.apply(e))
        except (KeyError, TypeError, ValueError) as exc:
            raise ReplayError(f"record {n}: {exc}") from None
    return model, reports
