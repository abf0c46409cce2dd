"""How `taptrace audit` says what it found: one line (or JSON object) per finding as
it comes, then a `#` summary (or the `audit` JSON object), and its exit status.
Shared by every way of auditing: a snapshot, `--watch S`, and `-- CMD`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import click

from . import render
from .audit import Finding, probe_finding, summary


class AuditError(click.ClickException):
    """The audit could not be done: exit 3, so a script tells it from findings (1)."""
    exit_code = 3


class Reporter:
    """Writes findings through `write` (one line each) as they are shown."""

    def __init__(self, write: Callable[[str], None], json_out: bool, quiet: bool) -> None:
        self.write = write
        self.json_out = json_out
        self.quiet = quiet
        self.found: list[Finding] = []

    def show(self, f: Finding) -> None:
        self.found.append(f)
        if self.quiet:
            return
        if self.json_out:
            self.write(render.json_line({"v": render.SCHEMA_VERSION, "type": "finding",
                                         **f.fields()}))
            return
        self.write(f"{f.kind} {render.safe(f.message)}")
        if f.detail.get("chain"):
            self.write("    " + render.chain_text(f.ifname, f.detail["chain"]))
        if f.detail.get("holder_chain"):      # a side copy: how it came to the holder
            self.write("    " + render.chain_text("its copy", f.detail["holder_chain"]))

    def summarize(self, rows: list[dict], taps: list[dict], kept: list[str], complete: bool,
                  extra: dict | None = None, tail: str = "") -> None:
        """The last line: how many findings of each kind, taps and fds checked, what was
        kept on purpose; `extra` goes into the JSON object, `tail` ends the text."""
        if self.quiet:
            return
        kinds = summary(self.found)
        kind_of = {(t["netns"], t["ifname"]): t["kind"] for t in taps}
        for r in rows:
            if r["ifname"] and r["kind"] != "vhost":
                kind_of.setdefault((r["netns"], r["ifname"]), r["kind"])
        if self.json_out:
            self.write(render.json_line({"v": render.SCHEMA_VERSION, "type": "audit",
                                         "findings": len(self.found), "kinds": kinds,
                                         "taps": len(kind_of), "rows": len(rows),
                                         "complete": complete, "kept_on_purpose": kept,
                                         **(extra or {})}))
            return
        found = self.found
        what = (f"{len(found)} finding{'s' if len(found) != 1 else ''} ("
                + ", ".join(f"{k} {n}" for k, n in kinds.items()) + ")"
                if found else "no findings")
        counts = ", ".join(f"{n} {k}{'s' if n != 1 else ''}"
                           for k, n in sorted(Counter(kind_of.values()).items()))
        names = ", ".join(render.safe(n) for n in kept[:5]) + (
            f" +{len(kept) - 5} more" if len(kept) > 5 else "")
        self.write(f"# audit: {what}; {counts or '0 taps'}, "
                   f"{len(rows)} fd{'s' if len(rows) != 1 else ''} checked"
                   + (f"; kept on purpose, not counted (--strict): {names}" if kept else "")
                   + ("" if complete else " (not root: other users' fds unseen, so "
                      "orphan/vm_gone may be wrong)") + tail)


def live_emit(reporter: Reporter, lost_note, offset: int, ifname: str | None,
              header: Callable[[dict], str]) -> Callable[[dict], None]:
    """The session callback of a live audit (`--watch S`, `-- CMD`): losses counted,
    the `ready` line (`header(report)`, or its JSON), a failed TUNGETIFF shown as a
    finding as it happens (not with -i: a probe names no interface)."""
    def emit(report: dict) -> None:
        t = report["type"]
        if t == "lost":
            lost_note.add(report["count"])
        elif t == "ready" and not reporter.quiet:
            if reporter.json_out:
                reporter.write(render.json_line(render.public(report, offset)))
            else:
                reporter.write(header(report))
                if report.get("backend_note"):     # why not the kernel backend
                    reporter.write(f"# {render.safe(report['backend_note'])}")
        elif t == "tungetiff" and ifname is None:
            f = probe_finding(render.public(report, offset))
            if f is not None:
                reporter.show(f)
    return emit
