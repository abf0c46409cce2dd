"""A real kernel recording (`taptrace watch --record` over `python -m tracer.demo`)
replays through the model, with no kernel, to the same story and the same table."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from tracer import events as ev
from tracer.replay import ReplayError, replay

DEMO = Path(__file__).resolve().parents[1] / "data" / "demo.record.jsonl"


def lines_until(kind: str, nth: int = 1) -> list[str]:
    """The recording cut just after the nth record of that kind."""
    out, seen = [], 0
    for line in DEMO.read_text().splitlines():
        out.append(line)
        if json.loads(line).get("kind") == kind:
            seen += 1
            if seen == nth:
                break
    return out


def test_the_demo_replays_to_the_recorded_story():
    model, reports = replay(DEMO.read_text().splitlines())
    story = [(r["type"], r.get("ifname")) for r in reports if not r.get("quiet")]
    assert story[:4] == [("open", None), ("tunsetiff", "ttdemo0"), ("open", None),
                         ("tunsetiff", "ttdemo1")]
    kinds = [t for t, _ in story]
    assert kinds.index("fork") < kinds.index("exec") < kinds.index("scm_recv")
    enotty = [r for r in reports if r["type"] == "tungetiff" and r["error"] == "ENOTTY"]
    assert len(enotty) == 1 and enotty[0]["message"].endswith("is not a tap (ENOTTY)")
    assert sorted(r["ifname"] for r in reports if r["type"] == "tap_gone") == [
        "ttdemo0", "ttdemo1", "ttdemo1"]
    assert model.rows() == [] and model.taps == {}


def test_mid_recording_the_qemu_stand_in_holds_both_taps():
    model, reports = replay(lines_until("ScmRecv"))
    recv = next(r for r in reports if r["type"] == "scm_recv")
    qemu = recv["pid"]
    rows = {r["fd"]: r for r in model.rows() if r["pid"] == qemu}
    inherited = next(r for r in rows.values() if r["ifname"] == "ttdemo0")
    received = next(r for r in rows.values() if r["ifname"] == "ttdemo1")
    assert inherited["how"] == "inherited" and inherited["cloexec"] is False
    assert received["how"] == "received" and received["from_pid"] == recv["from_pid"]
    assert inherited["creator_pid"] == received["creator_pid"] == recv["from_pid"]
    # the hot-plugged file went libvirtd -> qemu: the sender's fd is still open here
    assert any(r["pid"] == recv["from_pid"] and r["ifname"] == "ttdemo1"
               for r in model.rows())


def test_every_recorded_event_round_trips():
    for line in itertools.islice(DEMO.read_text().splitlines(), 1, None):
        rec = json.loads(line)
        rec.pop("probe", None)
        assert json.loads(json.dumps(ev.to_record(ev.from_record(rec)))) == rec


@pytest.mark.parametrize("bad", ["not json", '{"kind": "Nope"}', '{"kind": "Close"}'])
def test_a_bad_recording_is_one_clear_error(bad):
    with pytest.raises(ReplayError):
        replay(lines_until("snapshot") + [bad])
