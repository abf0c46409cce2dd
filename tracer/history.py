"""`taptrace history`: answers from the agent's database, read-only, with no BPF and no
root: the holders at a moment (`--at`, an index lookup on the holding intervals),
the events and findings of a window, and the lineage of an interface.

The file may be anyone's (a copy from another host): it is opened read-only
(`mode=ro`, or `immutable=1` for a copy with no -wal beside it that we cannot add a
-shm to), checked to be a taptrace history, and every string it gives is printed
escaped.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
import sqlite3
import time
import urllib.parse
from dataclasses import dataclass

from . import render
from .history_store import HistoryError, check_schema
from .model import row_key

_EPOCH = re.compile(r"[0-9]{1,12}(\.[0-9]*)?")


def parse_time(text: str) -> float:
    """Epoch seconds, or ISO 8601 (a time without a zone is local time). ValueError."""
    text = text.strip()
    if _EPOCH.fullmatch(text):
        return float(text)
    when = dt.datetime.fromisoformat(text.replace("z", "Z"))
    t = when.timestamp()
    if not math.isfinite(t):
        raise ValueError(text)
    return t


def open_ro(path: str) -> sqlite3.Connection:
    """The database at `path`, read-only; HistoryError (one line) when it is missing,
    unreadable, or not a taptrace history."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        try:
            head = os.read(fd, 16)
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise HistoryError(f"no history database at {render.safe(path)} "
                           "(`taptrace agent --db PATH` writes one)") from None
    except OSError as exc:
        raise HistoryError(f"cannot read {render.safe(path)}: {exc.strerror}") from None
    if head != b"SQLite format 3\x00":
        raise HistoryError(f"{render.safe(path)} is not a taptrace history database")
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    tries = [uri]
    if _wal_empty(path):
        # a WAL database read by a user who may not create its -shm (a copy, another
        # user's directory): nothing writes it now, so it can be read as immutable
        tries.append(uri + "&immutable=1")
    last: Exception | None = None
    for u in tries:
        con = None
        try:
            con = sqlite3.connect(u, uri=True)
            check_schema(con, path)
            return con
        except sqlite3.Error as exc:
            last = exc
            if con is not None:
                con.close()
        except HistoryError:
            if con is not None:
                con.close()
            raise
    wal = path + "-wal"
    if os.path.exists(wal) and not os.access(wal, os.R_OK):
        raise HistoryError(f"cannot read {render.safe(wal)}, the agent's write-ahead log: "
                           "read the history as the agent's user or group, or a copy of the "
                           "file")
    raise HistoryError(f"cannot read {render.safe(path)}: {last}")


def _wal_empty(path: str) -> bool:
    """No -wal beside the file, or an empty one: the file alone is the database."""
    try:
        return os.stat(path + "-wal").st_size == 0
    except FileNotFoundError:
        return True
    except OSError:
        return False


@dataclass(frozen=True)
class Holding:
    """One holding interval as read back."""
    row: dict
    chain: list
    since: float
    until: float | None        # None: still held when its run was last seen
    last_seen: float            # its run's
    run: int


_COLS = ("i.row, i.chain, i.since, i.until, r.last_seen, i.run "
         "FROM intervals i JOIN runs r ON r.id = i.run")


def _cols(index: str) -> str:
    return _COLS.replace("FROM intervals i ", f"FROM intervals i INDEXED BY {index} ")


def _closed_index(con: sqlite3.Connection, t: float, ifname: str | None) -> str:
    """The index whose range to t is the shorter: intervals that ended after t (a
    recent t), or those that began before it (an early t). Both are index ranges; the
    choice keeps each at most half of the name's intervals (SQLite, without
    statistics, would always take the second)."""
    # one aggregate a query: each is then the first or last entry of an index
    where, args = ("WHERE ifname = ?", (ifname,)) if ifname is not None else ("", ())
    lo, hi = con.execute(f"SELECT (SELECT min(since) FROM intervals {where}), "
                         f"(SELECT max(since) FROM intervals {where})", args * 2).fetchone()
    recent = lo is None or t >= (lo + hi) / 2
    if ifname is None:
        return "intervals_until" if recent else "intervals_since"
    return "intervals_ifname_until" if recent else "intervals_ifname_since"


def _holding(rec) -> Holding:
    return Holding(json.loads(rec[0]), json.loads(rec[1]), rec[2], rec[3], rec[4], rec[5])


def _filters(pid: int | None, vm: str | None) -> tuple[str, list]:
    sql, args = "", []
    if pid is not None:
        sql += " AND i.pid = ?"
        args.append(pid)
    if vm is not None:
        sql += " AND i.vm = ?"
        args.append(vm)
    return sql, args


def holders_at(con: sqlite3.Connection, t: float, ifname: str | None = None,
               pid: int | None = None, vm: str | None = None
               ) -> tuple[list[Holding], list[Holding]]:
    """(held at t, held at least until their run's last sight, which is before t, with
    no run of the agent seeing t): each an index lookup, not a scan."""
    extra, args = _filters(pid, vm)
    name = "i.ifname = ? AND " if ifname is not None else ""
    pre = [ifname] if ifname is not None else []
    closed = con.execute(
        f"SELECT {_cols(_closed_index(con, t, ifname))} "
        f"WHERE {name}i.until > ? AND i.since <= ?{extra}", [*pre, t, t, *args]).fetchall()
    still = con.execute(
        f"SELECT {_cols('intervals_ifname_until' if ifname is not None else 'intervals_open')}"
        f" WHERE {name}i.until IS NULL AND i.since <= ?{extra}", [*pre, t, *args]).fetchall()
    held = [_holding(r) for r in closed]
    stale = []
    for h in map(_holding, still):
        (held if t <= h.last_seen else stale).append(h)
    if stale and covered(con, t):
        stale = []              # a later run saw t, and these were not held then
    key = (lambda h: (h.row["pid"], h.row.get("tid") or 0, h.row["fd"], h.since))
    _put_sharing(con, t, held, stale, complete=pid is None and vm is None)
    return sorted(held, key=key), sorted(stale, key=key)


SHARED_MAX = 32            # as the model's rows: the first 32, and how many in all


def _put_sharing(con: sqlite3.Connection, t: float, held: list[Holding],
                 stale: list[Holding], complete: bool) -> None:
    """Each row's `shared_with` and `shared_count` as `ls` gives them at t: the other
    holders of the same open file then (the agent does not store them: a fork would
    rewrite every holder's row). Sharers hold the same interface, so its holders at
    t are all there is to look at; `complete`: those found are all of them (no --pid
    or --vm left any out)."""
    found = held + stale
    pool = list(found)
    if not complete:
        for name in {h.row.get("ifname") for h in found if h.row.get("ifname")}:
            pool += map(_holding, con.execute(
                f"SELECT {_COLS} WHERE i.ifname = ? AND i.since <= ? "
                "AND (i.until > ? OR i.until IS NULL)", (name, t, t)))
    peers: dict[tuple, set[tuple]] = {}
    for h in pool:
        peers.setdefault((h.run, h.row.get("file")), set()).add(row_key(h.row))
    for h in found:
        me = row_key(h.row)
        others = sorted(peers.get((h.run, h.row.get("file")), set()) - {me}) \
            if h.row.get("ifname") else []
        row = {}
        for k, v in h.row.items():
            if k in ("shared_with", "shared_count"):
                continue
            row[k] = v
            if k == "from_fd":
                row["shared_with"] = [list(x) for x in others[:SHARED_MAX]]
                row["shared_count"] = len(others)
        row.setdefault("shared_with", [list(x) for x in others[:SHARED_MAX]])
        row.setdefault("shared_count", len(others))
        h.row.clear()
        h.row.update(row)


def covered(con: sqlite3.Connection, t: float) -> bool:
    """Did some run of the agent see moment t?"""
    return con.execute("SELECT 1 FROM runs WHERE started <= ? AND last_seen >= ? LIMIT 1",
                       (t, t)).fetchone() is not None


def own_netns(con: sqlite3.Connection, t: float | None = None) -> int | None:
    """taptrace's namespace on that host (the run nearest before t)."""
    rec = con.execute("SELECT own_netns FROM runs WHERE started <= ? ORDER BY started DESC "
                      "LIMIT 1", (t if t is not None else float("inf"),)).fetchone()
    if rec is None:
        rec = con.execute("SELECT own_netns FROM runs ORDER BY started LIMIT 1").fetchone()
    return rec[0] if rec else None


def runs(con: sqlite3.Connection) -> list[tuple]:
    return con.execute("SELECT id, started, stopped, last_seen, host FROM runs "
                       "ORDER BY started").fetchall()


def _vm_scope(con: sqlite3.Connection, vm: str) -> tuple[list[str], list[int]]:
    """The interfaces and processes that were ever that VM's (its intervals)."""
    recs = con.execute("SELECT DISTINCT ifname, pid FROM intervals WHERE vm = ?",
                       (vm,)).fetchall()
    return (sorted({r[0] for r in recs if r[0]}), sorted({r[1] for r in recs}))


def window(con: sqlite3.Connection, since: float, until: float, ifname: str | None = None,
           pid: int | None = None, vm: str | None = None) -> list[dict]:
    """The events and findings (their JSON objects) in [since, until], in time order."""
    span = [since, until]
    ev_sql, fi_sql = [], []
    if ifname is not None:
        ev_sql.append((("SELECT id, time, data FROM events WHERE ifname = ? "
                       "AND time BETWEEN ? AND ?"), [ifname, *span]))
        ev_sql.append((("SELECT e.id, e.time, e.data FROM event_ifnames x JOIN events e "
                       "ON e.id = x.event WHERE x.ifname = ? AND e.time BETWEEN ? AND ?"),
                       [ifname, *span]))
        fi_sql.append((("SELECT id, time, data FROM findings WHERE ifname = ? "
                       "AND time BETWEEN ? AND ?"), [ifname, *span]))
    if pid is not None:
        ev_sql.append((("SELECT id, time, data FROM events WHERE pid = ? "
                       "AND time BETWEEN ? AND ?"), [pid, *span]))
        fi_sql.append((("SELECT id, time, data FROM findings WHERE pid = ? "
                       "AND time BETWEEN ? AND ?"), [pid, *span]))
    if vm is not None:
        names, pids = _vm_scope(con, vm)
        for col, vals in (("ifname", names), ("pid", pids)):
            if vals:
                marks = ",".join("?" * len(vals))
                ev_sql.append(((f"SELECT id, time, data FROM events WHERE {col} IN ({marks}) "
                               "AND time BETWEEN ? AND ?"), [*vals, *span]))
                fi_sql.append(((f"SELECT id, time, data FROM findings WHERE {col} IN "
                               f"({marks}) AND time BETWEEN ? AND ?"), [*vals, *span]))
        if names:
            marks = ",".join("?" * len(names))
            ev_sql.append((("SELECT e.id, e.time, e.data FROM event_ifnames x JOIN events e "
                           f"ON e.id = x.event WHERE x.ifname IN ({marks}) "
                           "AND e.time BETWEEN ? AND ?"), [*names, *span]))
    if ifname is None and pid is None and vm is None:
        ev_sql.append(("SELECT id, time, data FROM events WHERE time BETWEEN ? AND ?", span))
        fi_sql.append(("SELECT id, time, data FROM findings WHERE time BETWEEN ? AND ?",
                       span))
    out: dict[tuple, tuple] = {}
    for kind, parts in ((0, ev_sql), (1, fi_sql)):
        for sql, args in parts:
            for rid, t, data in con.execute(sql, args):
                out[(kind, rid)] = (t, kind, rid, data)
    # several filters narrow one another: an item must pass each one given
    objs = {k: (t, kind, rid, json.loads(data)) for k, (t, kind, rid, data) in out.items()}
    if sum(x is not None for x in (ifname, pid, vm)) > 1:
        objs = {k: v for k, v in objs.items() if _passes(v[3], ifname, pid, vm, con)}
    if ifname is not None:
        vpids = set(_vm_scope(con, vm)[1]) if vm is not None else None
        for eid, t, o in _opens_of(con, ifname, since, until):
            if (pid is None or o.get("pid") == pid) and (
                    vpids is None or o.get("pid") in vpids):
                objs.setdefault((0, eid), (t, 0, eid, o))
    # by time, then as written (a report's time is rounded to the microsecond)
    return [v[3] for v in sorted(objs.values(), key=lambda v: v[:3])]


def _opens_of(con: sqlite3.Connection, ifname: str, since: float,
              until: float) -> list[tuple[int, float, dict]]:
    """The `open` of /dev/net/tun that became each fd holding `ifname` in the window
    (an open names no interface yet: `watch -i` holds it back until it has one; here it
    is the last open of that fd by that process before its holding began)."""
    out: dict[int, tuple[int, float, dict]] = {}
    for p, fd, start, row in con.execute(
            "SELECT pid, fd, since, row FROM intervals INDEXED BY intervals_ifname_since "
            "WHERE ifname = ? AND since BETWEEN ? AND ?", (ifname, since, until)):
        if json.loads(row).get("how") != "opened":
            continue
        for eid, t, data in con.execute(
                "SELECT id, time, data FROM events WHERE pid = ? AND time <= ? AND time >= ? "
                "AND type = 'open' ORDER BY time DESC LIMIT 8", (p, start, since)):
            o = json.loads(data)
            if o.get("fd") == fd:
                if not o.get("ifname"):
                    out[eid] = (eid, t, o)
                break
    return list(out.values())


def _passes(o: dict, ifname, pid, vm, con) -> bool:
    from .model import iter_ifnames
    names = set(iter_ifnames(o))
    if ifname is not None and ifname not in names:
        return False
    if pid is not None and o.get("pid") != pid:
        return False
    if vm is not None:
        vnames, vpids = _vm_scope(con, vm)
        if not (names & set(vnames) or o.get("pid") in vpids):
            return False
    return True


def lineage(con: sqlite3.Connection, ifname: str, since: float, until: float,
            pid: int | None = None, vm: str | None = None) -> list[Holding]:
    """Every holding of `ifname` that overlaps [since, until], oldest first."""
    extra, args = _filters(pid, vm)
    recs = con.execute(f"SELECT {_COLS} WHERE i.ifname = ? AND i.since <= ? "
                       f"AND (i.until IS NULL OR i.until >= ?){extra} ORDER BY i.since, i.id",
                       [ifname, until, since, *args]).fetchall()
    return merge([_holding(r) for r in recs])


def merge(holdings: list[Holding]) -> list[Holding]:
    """One holding per unbroken stretch of one (pid, fd, open file): the intervals a
    change of its row split (another holder forked, close-on-exec cleared) joined;
    the latest row and chain kept."""
    out: list[Holding] = []
    last: dict[tuple, int] = {}
    for h in holdings:
        key = (h.run, h.row.get("pid"), h.row.get("fd"), h.row.get("file"))
        i = last.get(key)
        if i is not None and out[i].until is not None and out[i].until == h.since:
            out[i] = Holding(h.row, h.chain, out[i].since, h.until, h.last_seen, h.run)
            continue
        last[key] = len(out)
        out.append(h)
    return out


# ---- rendering ---------------------------------------------------------------

def when(t: float | None, date: bool = True) -> str:
    if t is None:
        return "-"
    lt = time.localtime(t)
    ms = f".{int(t * 1000) % 1000:03d}"
    return time.strftime("%Y-%m-%d %H:%M:%S" if date else "%H:%M:%S", lt) + ms


def table_json(held: list[Holding], stale: list[Holding], t: float,
               own: int | None) -> str:
    obj = {"v": render.SCHEMA_VERSION, "type": "table", "at": t, "own_netns": own,
           "rows": [h.row for h in held]}
    if stale:
        obj["held_at_least_until"] = [{"last_seen": h.last_seen, "row": h.row}
                                      for h in stale]
    return render.json_line(obj)


def table_lines(held: list[Holding], stale: list[Holding], t: float, ifname: str | None,
                own: int | None, seen: bool) -> list[str]:
    what = f"holders of {render.safe(ifname)}" if ifname else "tun/tap holders"
    lines = [f"# {what} at {when(t)}"]
    if not seen and not stale:
        lines.append("# the agent was not running then: nothing is known of that moment")
    lines.append(render.inert(render.table_text([h.row for h in held], own_netns=own)))
    if stale:
        last = max(h.last_seen for h in stale)
        lines.append(f"\n# held at least until {when(last)}, when the agent was last seen "
                     "(it stopped or was killed; not known after):")
        lines.append(render.inert(render.table_text([h.row for h in stale], own_netns=own)))
    return lines


def item_line(o: dict, own: int | None) -> str:
    """One event (as `watch` prints it) or finding, escaped."""
    if o.get("type") == "finding":
        at = when(o.get("time"), date=False)
        return render.inert(f"{at:<12} finding {o.get('state', '')} {render.safe(o.get('kind'))} "
                            f"{render.safe(o.get('message'))}")
    if o.get("type") == "agent_stop":
        return f"{when(o.get('time'), date=False):<12} {'':>7} agent stopped"
    if o.get("type") == "ready":
        return (f"{when(o.get('time'), date=False):<12} {'':>7} agent started: "
                f"{render.safe(o.get('backend'))} backend, {o.get('rows')} tap fds and "
                f"{o.get('taps')} taps known")
    r = dict(o)
    if isinstance(o.get("time"), (int, float)):
        r["ts_ns"] = int(o["time"] * 1e9)
    try:
        return render.inert(render.event_line(r, 0, own))
    except (KeyError, TypeError, ValueError, AttributeError):
        return render.inert(f"{when(o.get('time'), date=False):<12} {o.get('pid', ''):>7} "
                            f"{render.safe(o.get('type'))} {render.safe(json.dumps(o))}")


def chain_text(ifname: str, hops: list[dict]) -> str:
    """render.chain_text, with the hops the agent left out of a long chain said."""
    cut = next((i for i, h in enumerate(hops) if h.get("op") == "skipped"), None)
    if cut is None:
        return render.chain_text(ifname, hops)
    # the hops after the cut, as chain_text writes every hop but the first
    tail = render.chain_text(ifname, [hops[0], *hops[cut + 1:]]).split(" → ", 1)
    return (render.chain_text(ifname, hops[:cut]) + f" → … {hops[cut].get('count')} hops …"
            + (" → " + tail[1] if len(tail) > 1 else ""))


def lineage_lines(ifname: str, holdings: list[Holding]) -> list[str]:
    if not holdings:
        return [f"# no process held {render.safe(ifname)} in this window"]
    out = [f"# lineage of {render.safe(ifname)} (creator → holder; held from → until):"]
    for h in holdings:
        r = h.row
        until = (when(h.until) if h.until is not None else
                 f"at least {when(h.last_seen)} (still held when the agent was last seen)")
        creator = (render.proc_label(r.get("creator_comm") or "?", r["creator_pid"])
                   if r.get("creator_pid") is not None else "-")
        out.append(render.inert(
            f"  {when(h.since)} → {until}  {render.proc_label(r.get('comm'), r['pid'])} "
            f"fd {r['fd']}  created by {creator}"
            + (f"  vm {render.safe(r['vm'])}" if r.get("vm") else "")))
        if h.chain:
            out.append("      " + render.inert(chain_text(ifname, h.chain)))
    return out


def lineage_json(ifname: str, holdings: list[Holding]) -> str:
    return render.json_line({
        "v": render.SCHEMA_VERSION, "type": "lineage", "ifname": ifname,
        "holdings": [{"since": h.since, "until": h.until,
                      "held_at_least_until": h.last_seen if h.until is None else None,
                      "row": h.row, "chain": h.chain} for h in holdings]})
