"""The history database of `taptrace agent`: its schema, its safe creation, and the
one writer thread that owns the connection.

The agent's main thread never waits on the database: it puts rows on a queue
(`put`), and the writer commits them in batches, one transaction per batch (every
BATCH_S, or BATCH_ROWS rows). WAL mode with synchronous=NORMAL: a commit is in the
file (page cache) when it returns, so a SIGKILL of the agent loses at most the batch
being gathered, and a transaction is all there or not there: the file is never left
corrupt. Retention (by age, then by size, oldest first) runs in the writer too.

Readers (`taptrace history`) open the file read-only (tracer/history.py); the
schema is here so both sides agree on it.
"""

from __future__ import annotations

import errno
import fcntl
import os
import queue
import sqlite3
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from .render import safe

APP = "taptrace"
SCHEMA = 1
DEFAULT_DB = "/var/lib/taptrace/history.db"
BATCH_S = 0.5
BATCH_ROWS = 5000
RETAIN_EVERY_S = 60.0
QUEUED_MAX = 1_000_000      # rows waiting for the writer (a few hundred MB at most)

SCHEMA_SQL = """
CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID;
-- one row per agent run: started, stopped (NULL: still running, or killed), the
-- last time it was known alive, and what `ready` said (own_netns, backend)
CREATE TABLE runs(id INTEGER PRIMARY KEY, started REAL NOT NULL, stopped REAL,
                  last_seen REAL NOT NULL, pid INTEGER, host TEXT, backend TEXT,
                  own_netns INTEGER, version TEXT);
-- every report as `watch --json` prints it (render.public), `data` its JSON
CREATE TABLE events(id INTEGER PRIMARY KEY, run INTEGER NOT NULL, time REAL NOT NULL,
                    type TEXT NOT NULL, pid INTEGER, ifname TEXT, netns INTEGER,
                    data TEXT NOT NULL);
CREATE INDEX events_time ON events(time);
CREATE INDEX events_ifname ON events(ifname, time);
CREATE INDEX events_pid ON events(pid, time);
-- the other interfaces of an event that names several (fork, exec, exit, SCM_RIGHTS)
CREATE TABLE event_ifnames(ifname TEXT NOT NULL, event INTEGER NOT NULL,
                           PRIMARY KEY (ifname, event)) WITHOUT ROWID;
-- an audit finding appearing or clearing
CREATE TABLE findings(id INTEGER PRIMARY KEY, run INTEGER NOT NULL, time REAL NOT NULL,
                      state TEXT NOT NULL, kind TEXT NOT NULL, ifname TEXT, pid INTEGER,
                      fd INTEGER, comm TEXT, message TEXT, data TEXT NOT NULL);
CREATE INDEX findings_time ON findings(time);
CREATE INDEX findings_ifname ON findings(ifname, time);
-- holding intervals: one row of `ls --json` (`row`, enriched) from `since` until
-- `until` (NULL: still held when its run was last seen), with the open file's chain
CREATE TABLE intervals(id INTEGER PRIMARY KEY, run INTEGER NOT NULL, since REAL NOT NULL,
                       until REAL, pid INTEGER NOT NULL, fd INTEGER NOT NULL,
                       file INTEGER, ifname TEXT, netns INTEGER, comm TEXT, kind TEXT,
                       vm TEXT, creator_pid INTEGER, creator_comm TEXT,
                       row TEXT NOT NULL, chain TEXT NOT NULL);
-- `--at T`: a closed interval holds T when since <= T < until. Both orders are kept,
-- each covering both bounds (the other bound is checked in the index, no row read):
-- history reads the one with the shorter range to T (history.holders_at)
CREATE INDEX intervals_ifname_until ON intervals(ifname, until, since);
CREATE INDEX intervals_ifname_since ON intervals(ifname, since, until);
CREATE INDEX intervals_until ON intervals(until, since);
CREATE INDEX intervals_since ON intervals(since, until);
CREATE INDEX intervals_open ON intervals(since) WHERE until IS NULL;
CREATE INDEX intervals_pid ON intervals(pid, since);
CREATE INDEX intervals_vm ON intervals(vm, since) WHERE vm IS NOT NULL;
"""

# the statements the writer runs, by the name a caller puts on the queue
STATEMENTS = {
    "run": "INSERT INTO runs(id, started, last_seen, pid, host, backend, own_netns, version)"
           " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "seen": "UPDATE runs SET last_seen = max(last_seen, ?) WHERE id = ?",
    "stop": "UPDATE runs SET stopped = ?, last_seen = max(last_seen, ?) WHERE id = ?",
    "event": "INSERT INTO events(id, run, time, type, pid, ifname, netns, data)"
             " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
    "event_ifname": "INSERT OR IGNORE INTO event_ifnames(ifname, event) VALUES (?, ?)",
    "finding": "INSERT INTO findings(run, time, state, kind, ifname, pid, fd, comm, message,"
               " data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "open": "INSERT INTO intervals(id, run, since, until, pid, fd, file, ifname, netns, comm,"
            " kind, vm, creator_pid, creator_comm, row, chain)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    "close": "UPDATE intervals SET until = ? WHERE id = ?",
}


class HistoryError(Exception):
    """The database cannot be created, opened or written: one line for the user."""


def _check_not_link(path: str) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(st.st_mode):
        raise HistoryError(f"{safe(path)} is a symbolic link (not followed)")


def create_or_check(path: str) -> os.stat_result:
    """Make `path` a new empty file mode 0600 (its directory 0700 if we create it), or
    check the existing one: a regular file of ours, reached without a symbolic link
    (O_NOFOLLOW; O_EXCL refuses a link planted at `path` too). The -wal and -shm files
    SQLite opens beside it must not be links either. Returns the file's stat, which
    the caller compares once SQLite has it open."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        try:
            os.makedirs(parent, mode=0o700)
        except OSError as exc:
            raise HistoryError(f"cannot create {safe(parent)}: {exc.strerror}") from None
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        try:
            fd = os.open(path, flags)
        except OSError as exc:
            why = "a symbolic link (not followed)" if exc.errno == errno.ELOOP else exc.strerror
            raise HistoryError(f"cannot open {safe(path)}: {why}") from None
    except OSError as exc:
        raise HistoryError(f"cannot create {safe(path)}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
    finally:
        os.close(fd)
    if not stat.S_ISREG(st.st_mode):
        raise HistoryError(f"{safe(path)} is not a regular file")
    if st.st_uid != os.geteuid():
        raise HistoryError(f"{safe(path)} is owned by uid {st.st_uid}, not by you")
    for side in ("-wal", "-shm", "-journal"):
        _check_not_link(path + side)
    return st


def _lock(path: str) -> int:
    """One writer a database: an flock on the file (apart from SQLite's own POSIX
    locks, which it does not touch), held until the store closes. Two agents on one
    file would hand out the same ids."""
    create_or_check(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise HistoryError(f"cannot open {safe(path)}: {exc.strerror}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise HistoryError(f"another taptrace agent writes {safe(path)}") from None
    return fd


@dataclass(frozen=True)
class Retention:
    keep_s: float | None = 30 * 86400      # delete what is older (None: keep)
    max_bytes: int | None = 1 << 30        # then delete the oldest until under this


def connect_rw(path: str) -> sqlite3.Connection:
    st = create_or_check(path)
    try:
        con = sqlite3.connect(path, isolation_level=None, check_same_thread=False,
                              timeout=10)
        con.execute("PRAGMA foreign_keys = OFF")
        now = os.lstat(path)
    except (sqlite3.Error, OSError) as exc:
        raise HistoryError(f"cannot open {safe(path)}: {exc}") from None
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        con.close()
        raise HistoryError(f"{safe(path)} was replaced while it was opened")
    try:
        _init_schema(con, path)
    except sqlite3.DatabaseError as exc:
        con.close()
        raise HistoryError(f"{safe(path)}: {exc}") from None
    return con


def _init_schema(con: sqlite3.Connection, path: str) -> None:
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if not tables:
        # auto_vacuum must be set before the first table; incremental: retention can
        # give the pages it frees back to the file system
        con.execute("PRAGMA auto_vacuum = INCREMENTAL")
        con.execute("PRAGMA journal_mode = WAL")
        con.executescript(f"BEGIN;\n{SCHEMA_SQL}\nINSERT INTO meta VALUES ('app', '{APP}'), "
                          f"('schema', '{SCHEMA}');\nCOMMIT;")
    else:
        check_schema(con, path)
        con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA synchronous = NORMAL")


def check_schema(con: sqlite3.Connection, path: str) -> None:
    """Raise HistoryError unless this is a taptrace history of our schema."""
    try:
        meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
    except sqlite3.OperationalError as exc:
        # "unable to open", "disk I/O error": no verdict on the file (the caller may
        # read it another way); "no such table": a database, not ours
        if "no such table" not in str(exc):
            raise
        meta = {}
    except sqlite3.DatabaseError:            # "file is not a database"
        meta = {}
    if meta.get("app") != APP:
        raise HistoryError(f"{safe(path)} is not a taptrace history database")
    if meta.get("schema") != str(SCHEMA):
        raise HistoryError(f"{safe(path)}: history schema {safe(meta.get('schema'))}, "
                           f"this taptrace reads {SCHEMA}")


class HistoryStore:
    """The writer: `put(name, params)` from any thread (never waits), one transaction
    per batch in its own thread; `close()` writes what is queued and checkpoints."""

    def __init__(self, path: str, retention: Retention = Retention(),
                 retain_every_s: float = RETAIN_EVERY_S,
                 on_error: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.retention = retention
        self.retain_every_s = retain_every_s
        self.on_error = on_error
        self.error: str | None = None
        self.written = 0
        self.batches = 0
        self.skipped = 0
        self.dropped = 0
        self._lock = _lock(path)
        try:
            self._con = connect_rw(path)
        except BaseException:
            os.close(self._lock)
            raise
        # ids the agent's thread hands out itself, so it can close an interval or
        # name an event's interfaces without asking the writer
        self.next_run = self._max("runs") + 1
        self.next_event = self._max("events") + 1
        self.next_interval = self._max("intervals") + 1
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._retained_at = float("-inf")
        self._thread = threading.Thread(target=self._loop, name="taptrace-history",
                                        daemon=True)
        self._thread.start()

    def _max(self, table: str) -> int:
        return self._con.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()[0]

    def put(self, name: str, params: tuple) -> None:
        """Queue a row; never waits. Past QUEUED_MAX rows not yet written (the disk far
        slower than the events) a row is dropped, counted and said once, so memory
        stays bounded."""
        if self._q.qsize() >= QUEUED_MAX:
            self.dropped += 1
            if self.dropped == 1 and self.on_error is not None:
                self.on_error(f"history database {safe(self.path)}: writes fall behind; "
                              "rows are dropped")
            return
        self._q.put((name, params))

    def close(self) -> None:
        """Write what is queued, checkpoint the WAL into the file (so a copy of the db
        file alone is whole), close."""
        self._q.put(None)
        self._thread.join()
        try:
            self._con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
        self._con.close()
        os.close(self._lock)      # after SQLite's: closing an fd drops its POSIX locks

    # ---- the writer thread -------------------------------------------------

    def _loop(self) -> None:
        done = False
        while not done:
            try:
                item = self._q.get(timeout=self.retain_every_s)
            except queue.Empty:
                item = ()
            batch = []
            if item is None:
                done = True
            elif item:
                batch.append(item)
                deadline = time.monotonic() + BATCH_S
                while len(batch) < BATCH_ROWS:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    try:
                        item = self._q.get(timeout=left)
                    except queue.Empty:
                        break
                    if item is None:
                        done = True
                        break
                    batch.append(item)
            if done:                         # what was queued before close()
                while True:
                    try:
                        item = self._q.get_nowait()
                    except queue.Empty:
                        break
                    if item is not None:
                        batch.append(item)
            if batch:
                self._write(batch)
            if time.monotonic() - self._retained_at >= self.retain_every_s:
                self._retained_at = time.monotonic()
                self._guard(lambda: retain(self._con, self.retention, time.time()))
                # the WAL into the file: a copy of the file alone is (nearly) whole
                self._guard(lambda: self._con.execute("PRAGMA wal_checkpoint(PASSIVE)"))

    def _write(self, batch: list) -> None:
        def write() -> None:
            con = self._con
            con.execute("BEGIN IMMEDIATE")
            try:
                for name, params in batch:
                    try:
                        con.execute(STATEMENTS[name], params)
                    except (sqlite3.IntegrityError, sqlite3.InterfaceError,
                            OverflowError) as exc:
                        # one row SQLite will not take (an integer past 64 bits): that
                        # row, not the batch; the statement alone was rolled back
                        self.skipped += 1
                        self._say(exc)
                con.execute("COMMIT")
            except BaseException:
                if con.in_transaction:
                    con.execute("ROLLBACK")
                raise
            self.written += len(batch)
            self.batches += 1
        self._guard(write)

    def _guard(self, fn: Callable[[], object]) -> None:
        """A failed write (disk full, the file removed) is said once and its batch
        dropped; the agent runs on, and later batches are tried again."""
        try:
            fn()
        except sqlite3.Error as exc:
            self._say(exc)
        except Exception as exc:  # noqa: BLE001 - a bug here must not stop the writer
            self._say(exc)

    def _say(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = f"{type(exc).__name__}: {exc}"
            if self.on_error is not None:
                self.on_error(f"history database {safe(self.path)}: {exc}")


def retain(con: sqlite3.Connection, r: Retention, now: float) -> dict[str, int]:
    """Delete by age (older than keep_s), then by size (the oldest events, findings and
    closed intervals, a slice at a time, until the file is under max_bytes), and give
    the freed pages back to the file system. Returns how many rows went, by table."""
    gone = {"events": 0, "findings": 0, "intervals": 0}

    def delete_before(t: float) -> None:
        con.execute("BEGIN IMMEDIATE")
        try:
            n = con.execute("DELETE FROM events WHERE time < ?", (t,)).rowcount
            gone["events"] += n
            if n:
                con.execute("DELETE FROM event_ifnames WHERE event < "
                            "(SELECT coalesce(min(id), 1 << 62) FROM events)")
            gone["findings"] += con.execute("DELETE FROM findings WHERE time < ?",
                                            (t,)).rowcount
            gone["intervals"] += con.execute("DELETE FROM intervals WHERE until < ?",
                                             (t,)).rowcount
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise

    if r.keep_s is not None:
        delete_before(now - r.keep_s)
    if r.max_bytes is not None:
        for _ in range(64):
            if _used_bytes(con) <= r.max_bytes:
                break
            # the time below which a tenth of the rows lie (events dominate)
            n = con.execute("SELECT count(*) FROM events").fetchone()[0]
            cut = con.execute("SELECT time FROM events ORDER BY time LIMIT 1 OFFSET ?",
                              (max(1, n // 10),)).fetchone()
            if cut is None:
                cut = con.execute("SELECT max(t) FROM (SELECT max(time) AS t FROM findings "
                                  "UNION ALL SELECT max(until) FROM intervals)").fetchone()
                if cut is None or cut[0] is None:
                    break
                delete_before(cut[0] + 1e-6)
                if _used_bytes(con) > r.max_bytes:
                    break                # what is left is open intervals and runs
                continue
            delete_before(cut[0])
    if any(gone.values()):
        # sqlite3_exec runs it to the end (execute() steps once: one page)
        con.executescript("PRAGMA incremental_vacuum;")
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return gone


def _used_bytes(con: sqlite3.Connection) -> int:
    pages = con.execute("PRAGMA page_count").fetchone()[0]
    free = con.execute("PRAGMA freelist_count").fetchone()[0]
    size = con.execute("PRAGMA page_size").fetchone()[0]
    return (pages - free) * size
