"""Durable state in `.aidp/state.db` (SQLite, WAL), shared by every aidp process of a repository.

Every transition is one `BEGIN IMMEDIATE` transaction (or, when several are written at once, a
savepoint of one shared transaction: group commit), so a CLI and a server working on the same
repository see each other's changes and never half of one. A workstream is claimed (row in
`claims`) from the moment it is queued until its run has ended; the claim names the owning process
by pid and start time, so a claim left by a dead process can be told apart and reclaimed.

Each workstream has its own `id`, kept on its runs and events: a slug removed and created again
starts with no history or log of its predecessor.

The file is checked, not trusted: a database that is damaged, or deleted, replaced or truncated
under an open connection (which SQLite would go on using as if nothing happened), is refused with
a `StateError` that says how to recover.

The store is synchronous; the engine calls it from one worker thread so no event loop waits on it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import secrets
import sqlite3
import statistics
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from functools import partial
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import msgspec

from aidp.engine import scheduling
from aidp.engine.errors import AlreadyExists, Busy, InvalidInput, StateError, UnknownSlugs
from aidp.engine.model import (
    FINAL_STATUSES,
    CurrentRun,
    Event,
    Progress,
    SetupState,
    Status,
    Workstream,
    WorkstreamResult,
    priority_name,
    utc_now,
)

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS workstreams (
    slug TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    status TEXT NOT NULL,
    branch TEXT NOT NULL,
    path TEXT NOT NULL,
    base_branch TEXT,
    command TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    last_run_id TEXT
);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT NOT NULL,
    slug TEXT NOT NULL,
    status TEXT NOT NULL,
    exit_code INTEGER,
    started_at TEXT,
    finished_at TEXT,
    duration_s REAL,
    error TEXT,
    log_path TEXT,
    PRIMARY KEY (run_id, slug)
);
CREATE INDEX IF NOT EXISTS runs_by_slug ON runs (slug);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    slug TEXT NOT NULL,
    run_id TEXT,
    status TEXT NOT NULL,
    message TEXT,
    at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_slug ON events (slug, id);
CREATE TABLE IF NOT EXISTS claims (
    slug TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    owner_pid INTEGER NOT NULL,
    owner_start INTEGER NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    claimed_at TEXT NOT NULL
);
"""

# Schema changes after the first release, applied in order by `PRAGMA user_version`: a database
# made by an older aidp is upgraded in place on open, never dropped. Append; never edit one.
MIGRATIONS: list[str] = [
    # 1: where the harness's processes are (its pid and start time, its cgroup), so recovery finds
    # them even when the harness dropped the environment marker (`env -i`) or left its group (`setsid`).
    "ALTER TABLE claims ADD COLUMN child_pid INTEGER; ALTER TABLE claims ADD COLUMN child_start INTEGER; "
    "ALTER TABLE claims ADD COLUMN cgroup TEXT;",
    # 2: a workstream being created or removed is held like a run's claim, so a run, a second
    # creation or a second removal from another process is refused until the git work is done.
    "CREATE TABLE operations (slug TEXT PRIMARY KEY, op TEXT NOT NULL, token TEXT NOT NULL, "
    "owner_pid INTEGER NOT NULL, owner_start INTEGER NOT NULL, started_at TEXT NOT NULL);",
    # 3: each workstream's own identity, on its runs and events too. Older rows are matched by
    # time: events at or after the current workstream's creation are its own, and so are the runs
    # those events name; what a removed predecessor of the same slug left keeps no id.
    "ALTER TABLE workstreams ADD COLUMN id TEXT; ALTER TABLE runs ADD COLUMN ws_id TEXT; "
    "ALTER TABLE events ADD COLUMN ws_id TEXT; "
    "UPDATE workstreams SET id = lower(hex(randomblob(8))); "
    "UPDATE events SET ws_id = (SELECT w.id FROM workstreams w WHERE w.slug = events.slug "
    "AND events.at >= w.created_at); "
    "UPDATE runs SET ws_id = (SELECT e.ws_id FROM events e WHERE e.slug = runs.slug AND e.run_id = runs.run_id "
    "AND e.ws_id IS NOT NULL); "
    "CREATE INDEX events_by_ws ON events (ws_id, id); CREATE INDEX runs_by_ws ON runs (ws_id, started_at);",
    # 4: the commit a workstream's worktree started from, to show what it changed since.
    "ALTER TABLE workstreams ADD COLUMN base_commit TEXT;",
    # 5: scheduling. A workstream's priority and dependencies (a JSON list of slugs); each attempt
    # of a retried run is its own run record (so `runs` is rebuilt with `attempt` in its key), with
    # the command it ran and what its processes used; a claim knows its attempt, whether it holds
    # one of the repository's slots, and what it waits for while queued.
    "ALTER TABLE workstreams ADD COLUMN priority INTEGER NOT NULL DEFAULT 0; "
    "ALTER TABLE workstreams ADD COLUMN after TEXT; "
    "ALTER TABLE workstreams ADD COLUMN last_attempt INTEGER NOT NULL DEFAULT 1; "
    "ALTER TABLE claims ADD COLUMN attempt INTEGER NOT NULL DEFAULT 1; "
    "ALTER TABLE claims ADD COLUMN max_attempts INTEGER NOT NULL DEFAULT 1; "
    "ALTER TABLE claims ADD COLUMN slot INTEGER NOT NULL DEFAULT 0; "
    "ALTER TABLE claims ADD COLUMN waiting TEXT; "
    "CREATE TABLE runs_v5 (run_id TEXT NOT NULL, slug TEXT NOT NULL, attempt INTEGER NOT NULL DEFAULT 1, "
    "ws_id TEXT, status TEXT NOT NULL, exit_code INTEGER, started_at TEXT, finished_at TEXT, duration_s REAL, "
    "error TEXT, log_path TEXT, command TEXT, cpu_s REAL, peak_rss_kb INTEGER, PRIMARY KEY (run_id, slug, attempt)); "
    "INSERT INTO runs_v5 (run_id, slug, ws_id, status, exit_code, started_at, finished_at, duration_s, error, "
    "log_path) SELECT run_id, slug, ws_id, status, exit_code, started_at, finished_at, duration_s, error, log_path "
    "FROM runs; "
    "DROP TABLE runs; ALTER TABLE runs_v5 RENAME TO runs; "
    "CREATE INDEX runs_by_slug ON runs (slug); CREATE INDEX runs_by_ws ON runs (ws_id, started_at); "
    # Counts changes of priorities and dependencies: a run re-reads them when this moved.
    "CREATE TABLE schedule_changes (n INTEGER NOT NULL); INSERT INTO schedule_changes VALUES (0);",
    # 6: a running harness's latest progress report (JSON: percent, step, message), written at most
    # once a second, so viewers in other processes (a server following a CLI run, `ws list`) see it.
    "ALTER TABLE claims ADD COLUMN progress TEXT;",
    # 7: how each worktree was made ready ([worktree] copy and setup): a SetupState as JSON.
    "ALTER TABLE workstreams ADD COLUMN setup TEXT;",
    # 8: how a run was sandboxed (`[sandbox]`), None when it was not.
    "ALTER TABLE runs ADD COLUMN sandbox TEXT;",
    # 9: the machine an attempt's harness ran on (`[executor] kind = "ray"`), None on this one.
    "ALTER TABLE runs ADD COLUMN host TEXT;",
    # 10: counts the changes to the list that a run's statuses do not tell: a workstream added,
    # removed or edited (any column but those a run sets), a note that is no run's (created,
    # paused, landed), an operation held or ended. A server that
    # sees another process commit reloads its clients' list only when this moved; the rest were
    # runs, told as statuses (`Store.transitions`). A migration that adds a column to
    # `workstreams` must recreate `list_ws_edited` with it (tests/test_server_follow.py checks).
    # Safe to apply again (a database an older aidp was pointed back at keeps what it has).
    "CREATE TABLE IF NOT EXISTS list_changes (n INTEGER NOT NULL); "
    "INSERT INTO list_changes SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM list_changes); "
    "CREATE TRIGGER IF NOT EXISTS list_ws_added AFTER INSERT ON workstreams "
    "BEGIN UPDATE list_changes SET n = n + 1; END; "
    "CREATE TRIGGER IF NOT EXISTS list_ws_removed AFTER DELETE ON workstreams "
    "BEGIN UPDATE list_changes SET n = n + 1; END; "
    "CREATE TRIGGER IF NOT EXISTS list_ws_edited AFTER UPDATE OF slug, id, task, branch, path, base_branch, "
    'command, created_at, "after", priority, base_commit, setup ON workstreams '
    "BEGIN UPDATE list_changes SET n = n + 1; END; "
    "CREATE TRIGGER IF NOT EXISTS list_ws_noted AFTER INSERT ON events WHEN NEW.run_id IS NULL "
    "BEGIN UPDATE list_changes SET n = n + 1; END; "
    "CREATE TRIGGER IF NOT EXISTS list_op_held AFTER INSERT ON operations "
    "BEGIN UPDATE list_changes SET n = n + 1; END; "
    "CREATE TRIGGER IF NOT EXISTS list_op_changed AFTER UPDATE ON operations "
    "BEGIN UPDATE list_changes SET n = n + 1; END; "
    "CREATE TRIGGER IF NOT EXISTS list_op_ended AFTER DELETE ON operations "
    "BEGIN UPDATE list_changes SET n = n + 1; END;",
    # 11: the hooks running (`[hooks]`), each with its process, so that when the aidp process that
    # runs one dies, recovery ends it as it ends a dead process's harnesses. Safe to apply again.
    "CREATE TABLE IF NOT EXISTS hooks (id TEXT PRIMARY KEY, hook TEXT NOT NULL, run_id TEXT NOT NULL, slug TEXT, "
    "owner_pid INTEGER NOT NULL, owner_start INTEGER NOT NULL, pid INTEGER NOT NULL, pid_start INTEGER, "
    "started_at TEXT NOT NULL);",
]

# What a held operation makes a workstream, in refusals.
OPERATION_STATES = {
    "create": "being created",
    "remove": "being removed",
    "land": "being landed",
    "sync": "being synced",
    "setup": "being set up",
}

_WS_COLUMNS = (
    "w.slug, w.task, w.status, w.branch, w.path, w.base_branch, w.command, w.created_at, w.updated_at, w.base_commit, "
    "w.priority, w.after, "
    "r.slug, r.status, r.exit_code, r.started_at, r.finished_at, r.duration_s, r.error, r.log_path, r.attempt, "
    "r.cpu_s, r.peak_rss_kb, r.sandbox, r.host, "
    "c.run_id, cr.started_at, c.attempt, c.max_attempts, c.waiting, c.progress, cr.host"
)
# r: the last finished run (attempt); c and cr: the claim and run (attempt) of the one in flight, if any.
_WS_QUERY = (
    f"SELECT {_WS_COLUMNS} FROM workstreams w "
    "LEFT JOIN runs r ON r.run_id = w.last_run_id AND r.slug = w.slug AND r.attempt = w.last_attempt "
    "LEFT JOIN claims c ON c.slug = w.slug "
    "LEFT JOIN runs cr ON cr.run_id = c.run_id AND cr.slug = w.slug AND cr.attempt = c.attempt"
)


class Operation(msgspec.Struct, frozen=True):
    """A creation or removal in progress, held by one process until its git work is done."""

    slug: str
    op: str
    token: str
    owner_pid: int
    owner_start: int


class HookInFlight(msgspec.Struct, frozen=True):
    """A hook running, recorded before it runs: `slug` is None for `on_run_end`."""

    id: str
    hook: str
    run_id: str
    slug: str | None
    owner_pid: int
    owner_start: int
    pid: int
    pid_start: int | None


class Claim(msgspec.Struct, frozen=True):
    slug: str
    run_id: str
    owner_pid: int
    owner_start: int
    child_pid: int | None = None  # the harness, once started: where recovery looks for leftovers
    child_start: int | None = None
    cgroup: str | None = None
    attempt: int = 1


class Held(msgspec.Struct, frozen=True):
    """What aidp processes hold now, read at once for recovery: operations, claims, hooks."""

    operations: list[Operation]
    claims: list[Claim]
    hooks: list[HookInFlight]


class SlotHolder(msgspec.Struct, frozen=True):
    """A workstream holding one of the repository's slots, and the process that runs it."""

    slug: str
    run_id: str
    owner_pid: int
    owner_start: int


class Successor(msgspec.Struct, frozen=True):
    """The workstream of the same run that takes the slot an ending one frees, in the transaction
    that records the end (`Store.finish`), when the order is as the run last read it."""

    slug: str
    changes: int  # `schedule_changes` when the run last read priorities and dependencies
    bound: int | None  # the repository's slots (None: this run's share is the only bound)
    start: StartRecord | None = None  # its start, recorded with the slot (as `mark_running` does)


class StartRecord(msgspec.Struct, frozen=True):
    """An attempt's start as the database keeps it: its log, when, which attempt, the harness
    command (before placeholders, which history is matched by), and where a recovery finds it: its
    pid and start time, else (recorded before it starts) its cgroup alone; `host`: the machine it
    runs on when that is not this one (a Ray node)."""

    log_path: str
    started_at: str
    attempt: int
    command: list[str] | None
    cgroup: str | None = None
    pid: int | None = None
    pid_start: int | None = None
    host: str | None = None


def rough(seconds: float) -> float:
    """A forecast to two significant figures, and to a tenth of a second below ten: what either
    face shows of it. Finer, it would move at nearly every run's end, and with it the record of
    every workstream that takes its command's forecast (`Store.borrowed`)."""
    if seconds < 10:
        return round(seconds, 1)
    return float(round(seconds, 2 - len(str(int(seconds)))))


class History(msgspec.Struct, frozen=True):
    """What recorded runs say of a workstream: its expected duration and peak memory (None: no record)."""

    expected_s: float | None
    peak_rss_kb: int | None


def _history_of(runs: list[tuple[float, int | None]]) -> History:
    """What these runs (duration, peak memory) say."""
    peaks = [peak for _, peak in runs if peak is not None]
    return History(
        expected_s=rough(statistics.median(d for d, _ in runs)) if runs else None,
        peak_rss_kb=max(peaks) if peaks else None,
    )


class RunInFlight(msgspec.Struct, frozen=True):
    slug: str
    run_id: str
    owner_pid: int
    owner_start: int
    log_path: str | None
    started_at: str | None = None
    progress: Progress | None = None  # its harness's latest report, as stored (at most once a second)
    host: str | None = None  # the machine its harness runs on, when not the owner's (a Ray node)
    attempt: int = 1
    waiting: str | None = None  # while queued: what it waits for (a dependency, a slot, a back-off)


class Transition(msgspec.Struct, frozen=True):
    """A run's status as another process recorded it (an event with a run), with what its attempt's
    record says now (`Store.transitions`)."""

    event_id: int
    slug: str
    run_id: str
    status: Status
    attempt: int | None = None
    started_at: str | None = None
    exit_code: int | None = None
    duration_s: float | None = None
    error: str | None = None
    sandbox: str | None = None
    host: str | None = None


def _workstream(row: tuple[Any, ...]) -> Workstream:
    (slug, task, status, branch, path, base, command, created, updated, base_commit, priority, after, *rest) = row
    last, (run_id, run_start, attempt, max_attempts, waiting, progress, run_host) = rest[:13], rest[13:]
    result = None
    if last[0] is not None:
        (
            r_slug,
            r_status,
            code,
            started,
            finished,
            duration,
            error,
            log_path,
            r_attempt,
            cpu_s,
            peak_rss_kb,
            sandbox,
            host,
        ) = last
        result = WorkstreamResult(
            slug=str(r_slug),
            status=Status(r_status),
            exit_code=code,
            started_at=started,
            finished_at=finished,
            duration_s=duration,
            error=error,
            log_path=log_path,
            attempt=r_attempt,
            cpu_s=cpu_s,
            peak_rss_kb=peak_rss_kb,
            sandbox=sandbox,
            host=host,
        )
    return Workstream(
        slug=str(slug),
        task=str(task),
        status=Status(status),
        branch=str(branch),
        path=str(path),
        base_branch=base,
        command=json.loads(str(command)) if command else None,
        created_at=str(created),
        updated_at=str(updated),
        last_result=result,
        current_run=(
            CurrentRun(
                run_id=run_id,
                started_at=run_start,
                attempt=attempt,
                max_attempts=max_attempts,
                waiting=waiting,
                progress=_progress(progress),
                host=run_host,
            )
            if run_id
            else None
        ),
        base_commit=base_commit,
        priority=int(priority),
        after=json.loads(str(after)) if after else [],
    )


def _progress(stored: str | None) -> Progress | None:
    """A claim's progress column; one this aidp cannot read (written by another version) is none."""
    if stored is None:
        return None
    try:
        return msgspec.json.decode(stored, type=Progress)
    except msgspec.DecodeError:
        return None


SQLITE_HEADER = b"SQLite format 3\x00"
_RESTART = "stop every aidp process of this repository (servers, editors, CLIs), then run the command again"


def state_exists(path: Path) -> bool:
    """A database file with something in it. An empty one is what truncation leaves, and SQLite
    would silently take it for a new database."""
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False


def _identity(stat: os.stat_result) -> tuple[int, int]:
    return stat.st_dev, stat.st_ino


def damaged(path: Path, detail: str) -> StateError:
    return StateError(
        f"the state database {path} is damaged ({detail}); nothing was changed. Move it aside with its -wal "
        f"and -shm files (mkdir {path.parent}/broken && mv {path}* {path.parent}/broken/), then restore it from "
        "a backup, or re-create each workstream with 'aidp ws new <slug> <task>', which adopts its worktree"
    )


def is_damage(exc: sqlite3.DatabaseError) -> bool:
    """SQLite's own word that the file is not (or no longer) a sound database."""
    return (exc.sqlite_errorcode & 0xFF) in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)


def _statements(script: str) -> Iterator[str]:
    """A migration's statements: split at each `;` that ends one (a trigger's body holds others)."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" ;"):
                yield pending
            pending = ""


def _optional_str(path: Path | None) -> str | None:
    return None if path is None else str(path)


class Store:
    def __init__(self, path: Path, create: bool = True) -> None:
        """Open (or with `create`, make) the database at `path`. Without `create` a missing or
        empty one stays so: the store is then an empty one in memory and writes nothing to disk."""
        self.path = path
        self._grouped = False  # inside `group`: `_tx` opens savepoints of the shared transaction
        # Once `transitions` is read: the events this connection recorded (ids, ascending) that it
        # has not passed yet, so that it reports only other processes' own; and where it got to.
        self._mine: list[int] = []
        self._transitions_at: tuple[int, int] | None = None  # (last event id read, data_version then)
        # The file, held open for as long as the connection: `verify` compares its identity and
        # first bytes with the path's. (Closing any descriptor of the file drops SQLite's locks.)
        self._fd: int | None = None
        wal = path.with_name(path.name + "-wal")
        # The log first: SQLite writes a new database's first page before anything to its log, so
        # another process creating the database at this very moment is never taken for a stray log.
        logged = state_exists(wal)
        exists = state_exists(path)
        if logged and not exists:
            raise StateError(
                f"the state database {path} is missing or empty, but its write-ahead log {wal} is not: another "
                f"aidp process may still have the deleted database open; {_RESTART} (if the log stays, move it "
                "and the -shm file aside)"
            )
        on_disk = exists or create
        if on_disk:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
        self._identity = _identity(os.fstat(self._fd)) if self._fd is not None else None
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE), one per transition.
        self._db = sqlite3.connect(
            path if on_disk else ":memory:", timeout=30, isolation_level=None, check_same_thread=False
        )
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("PRAGMA busy_timeout=30000")
            problems = [row[0] for row in self._db.execute("PRAGMA quick_check(3)")]
            if problems != ["ok"]:
                raise damaged(path, "PRAGMA quick_check: " + "; ".join(problems))
            self._db.executescript(SCHEMA)  # idempotent; executescript manages its own transaction
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self.close()
            if is_damage(exc):
                raise damaged(path, str(exc)) from exc
            raise
        except BaseException:
            self.close()
            raise

    def verify(self) -> None:
        """Refuse a file that was deleted, replaced or overwritten since it was opened. SQLite
        would go on with what it has open (an unlinked file, or a WAL over a truncated one), so
        this process and every other would each see a different state."""
        if self._fd is None:
            return  # in memory: nothing on disk to check
        whose = f"while this aidp process (pid {os.getpid()}) had it open"
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            raise StateError(f"the state database {self.path} was deleted {whose}; {_RESTART}") from None
        if _identity(now) != self._identity:
            raise StateError(f"the state database {self.path} was replaced by another file {whose}; {_RESTART}")
        if os.pread(self._fd, len(SQLITE_HEADER), 0) != SQLITE_HEADER:
            raise damaged(self.path, f"it was truncated or overwritten {whose}")

    def _migrate(self) -> None:
        with self._tx() as db:
            version = int(db.execute("PRAGMA user_version").fetchone()[0])
            for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
                for statement in _statements(script):
                    db.execute(statement)
                db.execute(f"PRAGMA user_version = {number}")

    def group(self, transitions: list[Callable[[], object]]) -> list[tuple[object, Exception | None]]:
        """Run several transitions (store methods that write through `_tx`) in one transaction, each
        in its own savepoint; returns each one's (value, error). Nothing is durable before the
        shared COMMIT: when BEGIN or COMMIT fails, every transition gets that error."""
        if len(transitions) == 1:  # nothing to share: its own transaction, as always
            try:
                return [(transitions[0](), None)]
            except Exception as exc:
                return [(None, exc)]
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            return [(None, exc)] * len(transitions)
        outcomes: list[tuple[object, Exception | None]] = []
        mine = len(self._mine)
        self._grouped = True
        try:
            for transition in transitions:
                try:
                    outcomes.append((transition(), None))
                except Exception as exc:
                    if not self._db.in_transaction:  # SQLite rolled the whole group back (I/O, disk full)
                        del self._mine[mine:]
                        return [(None, exc)] * len(transitions)
                    outcomes.append((None, exc))
        except BaseException:
            self._db.execute("ROLLBACK")
            del self._mine[mine:]
            raise
        finally:
            self._grouped = False
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            with suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")
            del self._mine[mine:]
            return [(None, exc)] * len(transitions)
        return outcomes

    def close(self) -> None:
        self._db.close()
        if self._fd is not None:
            os.close(self._fd)  # only now: SQLite no longer holds locks on the file
            self._fd = None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        mine = len(self._mine)  # events recorded inside are forgotten with a rollback (ids are reused)
        if self._grouped:  # inside `group`: a savepoint, so a failing transition rolls back alone
            self._db.execute("SAVEPOINT transition")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:  # else SQLite already rolled the whole group back
                    self._db.execute("ROLLBACK TO transition")
                    self._db.execute("RELEASE transition")
                    del self._mine[mine:]
                raise
            self._db.execute("RELEASE transition")
            return
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            del self._mine[mine:]
            raise
        try:
            self._db.execute("COMMIT")
        except sqlite3.Error:  # refused (a full disk): nothing of it is durable, its events are not ours
            with suppress(sqlite3.Error):  # SQLite may keep the transaction open after a failed COMMIT
                self._db.execute("ROLLBACK")
            del self._mine[mine:]
            raise

    def _event(self, slug: str, run_id: str | None, status: Status, message: str | None, at: str) -> None:
        """An event of the workstream that now has `slug` (call it before deleting the row)."""
        recorded = self._db.execute(
            "INSERT INTO events (slug, ws_id, run_id, status, message, at) "
            "VALUES (?, (SELECT id FROM workstreams WHERE slug = ?), ?, ?, ?, ?)",
            (slug, slug, run_id, status, message, at),
        )
        if self._transitions_at is not None and recorded.lastrowid is not None:  # someone reads `transitions`
            self._mine.append(recorded.lastrowid)

    def _set_status(self, slug: str, status: Status, run_id: str | None, message: str | None) -> None:
        now = utc_now()
        self._db.execute("UPDATE workstreams SET status = ?, updated_at = ? WHERE slug = ?", (status, now, slug))
        self._event(slug, run_id, status, message, now)

    # -- workstreams -------------------------------------------------------------------------

    def insert(self, ws: Workstream, token: str | None = None, message: str = "created") -> None:
        """Add the workstream and end the creation that `token` held, in one transaction."""
        if self._fd is None:  # would be lost with the process: a bug of the caller, never silent
            raise StateError(f"{self.path} does not exist and was opened without create: nothing can be added")
        with self._tx() as db:
            if token is not None:
                db.execute("DELETE FROM operations WHERE slug = ? AND token = ?", (ws.slug, token))
            if db.execute("SELECT 1 FROM workstreams WHERE slug = ?", (ws.slug,)).fetchone():
                raise AlreadyExists(f"workstream {ws.slug!r} already exists")
            db.execute(
                "INSERT INTO workstreams (id, slug, task, status, branch, path, base_branch, command, "
                "created_at, updated_at, base_commit, priority, after) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    secrets.token_hex(8),
                    ws.slug,
                    ws.task,
                    ws.status,
                    ws.branch,
                    ws.path,
                    ws.base_branch,
                    json.dumps(ws.command) if ws.command else None,
                    ws.created_at,
                    ws.updated_at,
                    ws.base_commit,
                    ws.priority,
                    json.dumps(ws.after) if ws.after else None,
                ),
            )
            self._check_acyclic(db)
            self._event(ws.slug, None, ws.status, message, ws.created_at)

    def get(self, slug: str) -> Workstream | None:
        row = self._db.execute(f"{_WS_QUERY} WHERE w.slug = ?", (slug,)).fetchone()
        return _workstream(row) if row else None

    def all(self) -> list[Workstream]:
        return [_workstream(row) for row in self._db.execute(f"{_WS_QUERY} ORDER BY w.created_at, w.slug")]

    def paths(self) -> list[str]:
        """Every workstream's worktree path (what `all` reads, without building the records)."""
        return [row[0] for row in self._db.execute("SELECT path FROM workstreams")]

    def delete(self, slug: str, token: str | None = None) -> list[str]:
        """Delete the workstream and end the removal that `token` held, in one transaction. Its
        dependents stop waiting for it (said in their events); returns them."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM claims WHERE slug = ?", (slug,)).fetchone():
                raise Busy([slug], action="remove")
            if token is not None:
                db.execute("DELETE FROM operations WHERE slug = ? AND token = ?", (slug, token))
            self._event(slug, None, Status.ACTIVE, "removed", utc_now())
            db.execute("DELETE FROM workstreams WHERE slug = ?", (slug,))
            dependents = [other for other, after in self._dependencies(db).items() if slug in after]
            for other in dependents:
                self._write_schedule(other, None, [s for s in self._dependencies(db)[other] if s != slug])
                status = Status(db.execute("SELECT status FROM workstreams WHERE slug = ?", (other,)).fetchone()[0])
                self._event(other, None, status, f"no longer after {slug}: {slug} was removed", utc_now())
            return dependents

    # -- scheduling: priorities and dependencies -------------------------------------------------

    @staticmethod
    def _dependencies(db: sqlite3.Connection) -> dict[str, list[str]]:
        rows = db.execute("SELECT slug, after FROM workstreams").fetchall()
        return {slug: json.loads(after) if after else [] for slug, after in rows}

    def _check_acyclic(self, db: sqlite3.Connection) -> None:
        """Refuse (rolling back the caller's transaction) dependencies on unknown slugs or in a cycle."""
        graph = self._dependencies(db)
        for slug, after in graph.items():
            if unknown := [s for s in after if s not in graph]:
                raise UnknownSlugs(unknown, f"named as a dependency of {slug!r}")
        if cycle := scheduling.find_cycle(graph):
            raise InvalidInput(f"dependencies would form a cycle: {' -> '.join(cycle)}; nothing was changed")

    def _write_schedule(self, slug: str, priority: int | None, after: list[str] | None) -> None:
        if priority is not None:
            self._db.execute("UPDATE workstreams SET priority = ? WHERE slug = ?", (priority, slug))
        if after is not None:
            self._db.execute(
                "UPDATE workstreams SET after = ? WHERE slug = ?", (json.dumps(after) if after else None, slug)
            )

    def set_schedule(self, slug: str, priority: int | None, after: list[str] | None) -> None:
        """Change a workstream's priority and/or dependencies (None: unchanged), as an event.
        Allowed while it is queued: a run reads priorities each time it picks what starts next."""
        with self._tx() as db:
            row = db.execute("SELECT status FROM workstreams WHERE slug = ?", (slug,)).fetchone()
            if row is None:
                raise UnknownSlugs([slug])
            self._write_schedule(slug, priority, after)
            self._check_acyclic(db)
            db.execute("UPDATE schedule_changes SET n = n + 1")
            said = []
            if priority is not None:
                said.append(f"priority {priority_name(priority)}")
            if after is not None:
                said.append(f"after {', '.join(after)}" if after else "no dependencies")
            self._event(slug, None, Status(row[0]), "set " + "; ".join(said), utc_now())

    def schedule_changes(self) -> int:
        """A number that moves whenever a priority or dependency is set (by any process)."""
        return int(self._db.execute("SELECT n FROM schedule_changes").fetchone()[0])

    def schedule_state(self, slugs: list[str]) -> dict[str, tuple[Status, int]]:
        """Each workstream's status and priority as they are now (a run picks by them)."""
        marks = ",".join("?" * len(slugs))
        rows = self._db.execute(f"SELECT slug, status, priority FROM workstreams WHERE slug IN ({marks})", slugs)
        return {slug: (Status(status), int(priority)) for slug, status, priority in rows}

    def history(self, commands: Mapping[str, str], n: int) -> dict[str, History]:
        """For each slug in `commands` (slug -> its harness command as JSON): the median duration of
        its own latest `n` completed runs, else of the latest `n` completed runs of that command by
        any workstream; and the highest peak memory among those same runs.

        Read at every run's start and every list, so it costs what the workstreams asked about
        have, not every run ever recorded (a window over all runs took 0.3 s at 23,000 runs): each
        one's latest runs come through its index, newest start first, which is newest end first
        since one workstream's runs never overlap; a command's runs only for those without any."""
        own: dict[str, list[tuple[float, int | None]]] = {}
        rows = self._db.execute(
            "SELECT w.slug, r.duration_s, r.peak_rss_kb FROM workstreams w JOIN runs r ON r.rowid IN ("
            "SELECT rowid FROM runs WHERE ws_id = w.id AND status = ? AND duration_s IS NOT NULL "
            "AND command IS NOT NULL ORDER BY started_at DESC LIMIT ?) "
            "WHERE w.slug IN (SELECT value FROM json_each(?))",
            (Status.COMPLETED, n, json.dumps(list(commands))),
        )
        for slug, duration, peak in rows:
            own.setdefault(slug, []).append((duration, peak))
        return self._forecasts(commands, own, n)

    def borrowed(self, default: str, n: int) -> dict[str, History]:
        """`history` of each workstream with no completed run of its own (`default`: the harness
        command, as JSON, of those that name none): theirs is their command's, which any
        workstream's run can move."""
        rows = self._db.execute(
            "SELECT slug, command FROM workstreams w WHERE NOT EXISTS (SELECT 1 FROM runs WHERE ws_id = w.id "
            "AND status = ? AND duration_s IS NOT NULL AND command IS NOT NULL)",
            (Status.COMPLETED,),
        )
        return self._forecasts({slug: command or default for slug, command in rows}, {}, n)

    def _forecasts(
        self, commands: Mapping[str, str], own: dict[str, list[tuple[float, int | None]]], n: int
    ) -> dict[str, History]:
        """`history` from each workstream's `own` runs (duration, peak memory), else its command's."""
        by_command: dict[str, list[tuple[float, int | None]]] = {}
        for command in {command for slug, command in commands.items() if slug not in own}:
            by_command[command] = self._db.execute(
                "SELECT duration_s, peak_rss_kb FROM runs WHERE command = ? AND status = ? "
                "AND duration_s IS NOT NULL ORDER BY finished_at DESC LIMIT ?",
                (command, Status.COMPLETED, n),
            ).fetchall()
        of_command = {command: _history_of(runs) for command, runs in by_command.items()}
        return {slug: _history_of(own[slug]) if slug in own else of_command[c] for slug, c in commands.items()}

    def note(self, slug: str, run_id: str | None, status: Status, message: str) -> None:
        """An event that changes no status (an auto-commit during a run)."""
        with self._tx():
            self._event(slug, run_id, status, message, utc_now())

    def mark_landed(self, slug: str, commit: str, message: str) -> None:
        """The workstream's work is on its target branch (as `commit`): it rests at `landed`."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM claims WHERE slug = ?", (slug,)).fetchone():
                raise Busy([slug], action="land")
            self._set_status(slug, Status.LANDED, None, f"{message} ({commit})")

    def set_paused(self, slug: str, paused: bool) -> Status:
        """Pause, or resume to the status of the last run (or `active`); refused while in flight."""
        with self._tx() as db:
            if db.execute("SELECT 1 FROM claims WHERE slug = ?", (slug,)).fetchone():
                raise Busy([slug], action="pause" if paused else "resume")
            if paused:
                status = Status.PAUSED
            else:
                row = db.execute(
                    "SELECT r.status FROM workstreams w JOIN runs r ON r.run_id = w.last_run_id "
                    "AND r.slug = w.slug WHERE w.slug = ?",
                    (slug,),
                ).fetchone()
                status = Status(row[0]) if row else Status.ACTIVE
            self._set_status(slug, status, None, "paused" if paused else "resumed")
            return status

    def data_version(self) -> int:
        """Changes when another connection (another aidp process) commits, never for our own."""
        return int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def versions(self) -> tuple[int, int]:
        """`data_version`, and the count of list changes that no run's status tells (migration 10)."""
        (changes,) = self._db.execute("SELECT n FROM list_changes").fetchone()
        return self.data_version(), int(changes)

    def transitions(self) -> list[Transition]:
        """The run events other processes recorded since the last call, oldest first (none at the
        first call: it marks where to start). For one reader: a server following a terminal's runs.
        While no other connection committed (`data_version`), every new event is this one's own and
        nothing is read."""
        version = self.data_version()
        if self._transitions_at is None:
            last = self._db.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]
            self._transitions_at = (last, version)
            return []
        after, seen = self._transitions_at
        if version == seen:
            if self._mine:
                self._transitions_at = (self._mine[-1], version)
                self._mine.clear()
            return []
        rows = self._db.execute(
            "SELECT e.id, e.slug, e.run_id, e.status, r.attempt, r.started_at, r.exit_code, r.duration_s, r.error, "
            "r.sandbox, r.host FROM events e LEFT JOIN runs r ON r.run_id = e.run_id AND r.slug = e.slug "
            "AND r.attempt = (SELECT max(attempt) FROM runs WHERE run_id = e.run_id AND slug = e.slug) "
            "WHERE e.id > ? ORDER BY e.id",
            (after,),
        ).fetchall()
        mine = set(self._mine)
        self._mine.clear()
        self._transitions_at = (max([after, *(row[0] for row in rows)]), version)
        return [
            Transition(event_id, slug, run_id, Status(status), *run)
            for event_id, slug, run_id, status, *run in rows
            if run_id is not None and event_id not in mine
        ]

    def events(self, slug: str, limit: int) -> list[Event]:
        """The latest `limit` events of the workstream that now has `slug`, oldest first."""
        rows = self._db.execute(
            "SELECT slug, run_id, status, message, at FROM events "
            "WHERE ws_id = (SELECT id FROM workstreams WHERE slug = ?) ORDER BY id DESC LIMIT ?",
            (slug, limit),
        ).fetchall()
        return [Event(slug=s, run_id=r, status=Status(st), message=m, at=a) for s, r, st, m, a in reversed(rows)]

    def run_log_path(self, run_id: str, slug: str) -> str | None:
        """The log of the workstream's last attempt in that run (None: it never started)."""
        row = self._db.execute(
            "SELECT log_path FROM runs WHERE run_id = ? AND slug = ? AND log_path IS NOT NULL "
            "ORDER BY attempt DESC LIMIT 1",
            (run_id, slug),
        ).fetchone()
        return str(row[0]) if row else None

    def latest_log_path(self, slug: str) -> str | None:
        """The log of this workstream's latest run that started (never a predecessor's of the same slug)."""
        row = self._db.execute(
            "SELECT log_path FROM runs WHERE ws_id = (SELECT id FROM workstreams WHERE slug = ?) "
            "AND log_path IS NOT NULL ORDER BY started_at DESC LIMIT 1",
            (slug,),
        ).fetchone()
        return str(row[0]) if row else None

    # -- runs --------------------------------------------------------------------------------

    def claim(
        self,
        slugs: list[str],
        run_id: str,
        owner: tuple[int, int],
        cgroups: Mapping[str, Path | None],
        max_attempts: int = 1,
    ) -> None:
        """Claim every slug and queue it, or none: a run starts whole or not at all. `cgroups`:
        where each harness's cgroup will be, recorded before anything starts."""
        now = utc_now()
        with self._tx() as db:
            marks = ",".join("?" * len(slugs))
            held = [r[0] for r in db.execute(f"SELECT slug FROM claims WHERE slug IN ({marks})", slugs)]
            if held:
                raise Busy(sorted(held))
            if busy := db.execute(f"SELECT slug, op FROM operations WHERE slug IN ({marks})", slugs).fetchall():
                raise Busy(sorted(slug for slug, _ in busy), state=OPERATION_STATES[busy[0][1]])
            # Read before the claim: a removal by another process may have ended since.
            known = {r[0] for r in db.execute(f"SELECT slug FROM workstreams WHERE slug IN ({marks})", slugs)}
            if gone := sorted(set(slugs) - known):
                raise UnknownSlugs(gone, hint="removed by another aidp process meanwhile")
            db.executemany(
                "INSERT INTO claims (slug, run_id, owner_pid, owner_start, claimed_at, cgroup, max_attempts) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (slug, run_id, owner[0], owner[1], now, _optional_str(cgroups.get(slug)), max_attempts)
                    for slug in slugs
                ],
            )
            db.executemany(
                "INSERT INTO runs (run_id, slug, ws_id, status) SELECT ?, slug, id, ? FROM workstreams WHERE slug = ?",
                [(run_id, Status.QUEUED, slug) for slug in slugs],
            )
            for slug in slugs:
                self._set_status(slug, Status.QUEUED, run_id, None)

    def take_slots(self, run_id: str, slugs: list[str], bound: int) -> list[str]:
        """Take slots of the repository's `bound` for these claimed workstreams (in order), as many
        as are free; returns those that got one. Slots are held on claims, so the slots of a dead
        process come back when recovery releases its claims."""
        with self._tx():
            return self._take_slots(run_id, slugs, bound)

    def _take_slots(self, run_id: str, slugs: list[str], bound: int) -> list[str]:
        free = bound - int(self._db.execute("SELECT COUNT(*) FROM claims WHERE slot = 1").fetchone()[0])
        taken = slugs[: max(0, free)]
        self._db.executemany(
            "UPDATE claims SET slot = 1, waiting = NULL WHERE slug = ? AND run_id = ?",
            [(slug, run_id) for slug in taken],
        )
        return taken

    def slot_holders(self) -> list[SlotHolder]:
        rows = self._db.execute("SELECT slug, run_id, owner_pid, owner_start FROM claims WHERE slot = 1")
        return [SlotHolder(*row) for row in rows]

    def set_waiting(self, run_id: str, waiting: Mapping[str, str | None]) -> None:
        """What queued workstreams wait for, so every viewer (other processes too) can say it."""
        with self._tx() as db:
            db.executemany(
                "UPDATE claims SET waiting = ? WHERE slug = ? AND run_id = ?",
                [(why, slug, run_id) for slug, why in waiting.items()],
            )

    def mark_running(
        self,
        run_id: str,
        slug: str,
        child: tuple[int | None, int | None, Path | None],
        log_path: str,
        started_at: str,
        attempt: int = 1,
        command: list[str] | None = None,
        host: str | None = None,
    ) -> bool:
        """`child`: the harness's pid, start time and cgroup (see `StartRecord`). False, recording
        nothing, when a cancel was asked for it meanwhile (maybe by another process, whose request
        its run reads only every few ticks): it must not run."""
        pid, pid_start, cgroup = child
        start = StartRecord(log_path, started_at, attempt, command, _optional_str(cgroup), pid, pid_start, host)
        with self._tx():
            if self._cancel_asked(run_id, slug):
                return False
            self._record_running(run_id, slug, start)
        return True

    def _cancel_asked(self, run_id: str, slug: str) -> bool:
        asked = self._db.execute("SELECT cancel_requested FROM claims WHERE slug = ? AND run_id = ?", (slug, run_id))
        return any(flag for (flag,) in asked)

    def _record_running(self, run_id: str, slug: str, start: StartRecord) -> None:
        self._db.execute(
            "UPDATE runs SET status = ?, started_at = ?, log_path = ?, command = ?, host = ? "
            "WHERE run_id = ? AND slug = ? AND attempt = ?",
            (
                Status.RUNNING,
                start.started_at,
                start.log_path,
                json.dumps(start.command) if start.command else None,
                start.host,
                run_id,
                slug,
                start.attempt,
            ),
        )
        self._db.execute(
            "UPDATE claims SET child_pid = ?, child_start = ?, cgroup = ?, waiting = NULL, progress = NULL "
            "WHERE slug = ? AND run_id = ?",
            (start.pid, start.pid_start, start.cgroup, slug, run_id),
        )
        if start.pid is None and start.cgroup is not None:
            message = f"in cgroup {Path(start.cgroup).name}"
        else:
            message = f"pid {start.pid}"
        message += "" if start.host is None else f" on {start.host}"
        message += "" if start.attempt == 1 else f", attempt {start.attempt}"
        self._set_status(slug, Status.RUNNING, run_id, message)

    def finish(
        self, run_id: str, result: WorkstreamResult, message: str | None = None, successor: Successor | None = None
    ) -> bool:
        """Record the result, set the resting status and release the claim, in one transaction;
        in it too, the slot goes to `successor` when no priority or dependency was set since the
        run read them (else its order may differ) and the repository's bound still has room (a
        slot another process took meanwhile is its own); and its `start`, unless a cancel was asked
        for it meanwhile (`mark_running`). Whether the successor took the slot."""
        with self._tx():
            self._finish(run_id, result, message)
            if successor is None or self.schedule_changes() != successor.changes:
                return False
            start = successor.start
            if start is not None and self._cancel_asked(run_id, successor.slug):
                return False
            if successor.bound is not None and not self._take_slots(run_id, [successor.slug], successor.bound):
                return False
            if start is not None:
                self._record_running(run_id, successor.slug, start)
            return True

    def set_progress(self, run_id: str, progress: Mapping[str, Progress]) -> None:
        """Running workstreams' latest progress, so every viewer (other processes too) can show it."""
        with self._tx() as db:
            db.executemany(
                "UPDATE claims SET progress = ? WHERE slug = ? AND run_id = ?",
                [(msgspec.json.encode(p).decode(), slug, run_id) for slug, p in progress.items()],
            )

    def _record_attempt(self, run_id: str, result: WorkstreamResult) -> None:
        self._db.execute(
            "UPDATE runs SET status = ?, exit_code = ?, started_at = COALESCE(?, started_at), finished_at = ?, "
            "duration_s = ?, error = ?, log_path = COALESCE(?, log_path), cpu_s = ?, peak_rss_kb = ?, sandbox = ?, "
            "host = COALESCE(?, host) WHERE run_id = ? AND slug = ? AND attempt = ?",
            (
                result.status,
                result.exit_code,
                result.started_at,
                result.finished_at,
                result.duration_s,
                result.error,
                result.log_path,
                result.cpu_s,
                result.peak_rss_kb,
                result.sandbox,
                result.host,
                run_id,
                result.slug,
                result.attempt,
            ),
        )
        self._db.execute(
            "UPDATE workstreams SET last_run_id = ?, last_attempt = ? WHERE slug = ?",
            (run_id, result.attempt, result.slug),
        )

    def _finish(self, run_id: str, result: WorkstreamResult, message: str | None) -> None:
        assert result.status in FINAL_STATUSES
        self._record_attempt(run_id, result)
        self._set_status(result.slug, result.status, run_id, message or result.error)
        self._db.execute("DELETE FROM claims WHERE slug = ? AND run_id = ?", (result.slug, run_id))

    def retry(self, run_id: str, result: WorkstreamResult, waiting: str) -> None:
        """Record a failed attempt and queue the next one in the same run: the claim stays held
        (nothing else can start the workstream meanwhile) but its slot is given back."""
        assert result.status in FINAL_STATUSES
        with self._tx() as db:
            self._record_attempt(run_id, result)
            attempt = result.attempt + 1
            db.execute(
                "UPDATE claims SET attempt = ?, slot = 0, waiting = ?, child_pid = NULL, child_start = NULL "
                "WHERE slug = ? AND run_id = ?",
                (attempt, waiting, result.slug, run_id),
            )
            db.execute(
                "INSERT INTO runs (run_id, slug, attempt, ws_id, status) "
                "SELECT ?, slug, ?, id, ? FROM workstreams WHERE slug = ?",
                (run_id, attempt, Status.QUEUED, result.slug),
            )
            why = result.error.splitlines()[0] if result.error else result.status
            self._set_status(result.slug, Status.QUEUED, run_id, f"attempt {result.attempt} {why}; {waiting}")

    def prune_runs(self, slugs: list[str], keep: int) -> list[str]:
        """`[state] keep_runs`: forget all but the `keep` latest runs of each of these workstreams
        (every attempt's row and the run's events), never a run still claimed; returns the
        forgotten attempts' log paths, for the caller to delete once this has committed."""
        with self._tx() as db:
            forgotten: list[tuple[str, str]] = []
            for slug in slugs:
                latest_first = "SELECT run_id FROM runs WHERE slug = ? GROUP BY run_id ORDER BY MAX(rowid) DESC"
                runs = [run_id for (run_id,) in db.execute(latest_first, (slug,))]
                claimed = {run_id for (run_id,) in db.execute("SELECT run_id FROM claims WHERE slug = ?", (slug,))}
                forgotten += [(slug, run_id) for run_id in runs[keep:] if run_id not in claimed]
            paths = [
                path
                for slug, run_id in forgotten
                for (path,) in db.execute(
                    "SELECT log_path FROM runs WHERE slug = ? AND run_id = ? AND log_path IS NOT NULL", (slug, run_id)
                )
            ]
            db.executemany("DELETE FROM runs WHERE slug = ? AND run_id = ?", forgotten)
            db.executemany("DELETE FROM events WHERE slug = ? AND run_id = ?", forgotten)
            return paths

    def claims(self) -> list[Claim]:
        rows = self._db.execute(
            "SELECT slug, run_id, owner_pid, owner_start, child_pid, child_start, cgroup, attempt FROM claims"
        ).fetchall()
        return [Claim(*row) for row in rows]

    def request_cancel(self, slugs: list[str] | None, run_id: str | None) -> list[Claim]:
        """Flag claims for cancellation; their owner (maybe another process) acts on the flag."""
        with self._tx() as db:
            query = "SELECT slug, run_id, owner_pid, owner_start FROM claims WHERE 1"
            args: list[str] = []
            if slugs is not None:
                query += f" AND slug IN ({','.join('?' * len(slugs))})"
                args += slugs
            if run_id is not None:
                query += " AND run_id = ?"
                args.append(run_id)
            found = [Claim(*row) for row in db.execute(query, args)]
            db.executemany("UPDATE claims SET cancel_requested = 1 WHERE slug = ?", [(c.slug,) for c in found])
            return found

    def cancel_requests(self, run_id: str) -> list[str]:
        rows = self._db.execute("SELECT slug FROM claims WHERE run_id = ? AND cancel_requested = 1", (run_id,))
        return [r[0] for r in rows]

    def release_stale(self, claim: Claim, message: str) -> bool:
        """Correct a claim whose owner died: its workstream is recorded `cancelled`. False when
        another process got there first."""
        with self._tx() as db:
            still_held = db.execute(
                "SELECT 1 FROM claims WHERE slug = ? AND run_id = ? AND owner_pid = ? AND owner_start = ?",
                (claim.slug, claim.run_id, claim.owner_pid, claim.owner_start),
            ).fetchone()
            if not still_held:
                return False
            result = WorkstreamResult(
                slug=claim.slug, status=Status.CANCELLED, finished_at=utc_now(), error=message, attempt=claim.attempt
            )
            self._finish(claim.run_id, result, message)
            return True

    def runs_in_flight(self) -> list[RunInFlight]:
        """Every claimed workstream's run, with its owner and, once its harness started, its log.
        Polled five times a second by a server: CROSS JOIN keeps the claims outside, so each finds
        its run by key (SQLite's planner chose to scan every run ever recorded: 14 ms at 22,000)."""
        rows = self._db.execute(
            "SELECT c.slug, c.run_id, c.owner_pid, c.owner_start, r.log_path, r.started_at, c.progress, r.host, "
            "c.attempt, c.waiting FROM claims c "
            "CROSS JOIN runs r ON r.run_id = c.run_id AND r.slug = c.slug AND r.attempt = c.attempt"
        ).fetchall()
        return [
            RunInFlight(slug, run_id, pid, start, log_path, started_at, _progress(progress), host, attempt, waiting)
            for slug, run_id, pid, start, log_path, started_at, progress, host, attempt, waiting in rows
        ]

    # -- setup: how each worktree was made ready ---------------------------------------------------

    def set_setup(self, slug: str, setup: SetupState, message: str | None = None) -> None:
        """Record the workstream's setup state, and `message` (if any) as an event that keeps its status."""
        with self._tx() as db:
            row = db.execute("SELECT status FROM workstreams WHERE slug = ?", (slug,)).fetchone()
            if row is None:
                raise UnknownSlugs([slug])
            db.execute("UPDATE workstreams SET setup = ? WHERE slug = ?", (msgspec.json.encode(setup).decode(), slug))
            if message is not None:
                self._event(slug, None, Status(row[0]), message, utc_now())

    def setup_states(self) -> dict[str, SetupState]:
        """Each workstream's setup state, for those that have one; one this aidp cannot read
        (written by another version) is left out rather than failing every list."""
        found = {}
        for slug, stored in self._db.execute("SELECT slug, setup FROM workstreams WHERE setup IS NOT NULL"):
            try:
                found[str(slug)] = msgspec.json.decode(stored, type=SetupState)
            except msgspec.DecodeError:
                continue
        return found

    # -- operations: a creation or removal in progress -------------------------------------------

    def hold(self, slug: str, op: str, token: str, owner: tuple[int, int]) -> None:
        """Hold `slug` for a creation, removal, land or sync; refused while it runs or another holds it."""
        with self._tx() as db:
            held = db.execute("SELECT op FROM operations WHERE slug = ?", (slug,)).fetchone()
            if op == "create" and held:
                raise AlreadyExists(f"workstream {slug!r} already exists: another aidp process is creating it")
            if held:
                raise Busy([slug], action=op, state=OPERATION_STATES[held[0]])
            if db.execute("SELECT 1 FROM claims WHERE slug = ?", (slug,)).fetchone():
                raise Busy([slug], action=op)
            db.execute(
                "INSERT INTO operations (slug, op, token, owner_pid, owner_start, started_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (slug, op, token, owner[0], owner[1], utc_now()),
            )

    def release(self, slug: str, token: str) -> None:
        """End the operation `token` held, if `insert` or `delete` did not already."""
        with self._tx() as db:
            db.execute("DELETE FROM operations WHERE slug = ? AND token = ?", (slug, token))

    def operations(self) -> list[Operation]:
        rows = self._db.execute("SELECT slug, op, token, owner_pid, owner_start FROM operations").fetchall()
        return [Operation(*row) for row in rows]

    def release_stale_operation(self, held: Operation, message: str) -> bool:
        """Release an operation whose owner died. No run status is recorded, since nothing ran;
        the interrupted removal is noted in the workstream's events. False when another process
        got there first."""
        with self._tx() as db:
            deleted = db.execute("DELETE FROM operations WHERE slug = ? AND token = ?", (held.slug, held.token))
            if deleted.rowcount == 0:
                return False
            row = db.execute("SELECT status FROM workstreams WHERE slug = ?", (held.slug,)).fetchone()
            if row:
                self._event(held.slug, None, Status(row[0]), message, utc_now())
            return True

    # -- hooks: those running, so that recovery ends what a dead process's hooks left ----------

    def hook_started(self, hook: HookInFlight) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO hooks (id, hook, run_id, slug, owner_pid, owner_start, pid, pid_start, started_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (*msgspec.structs.astuple(hook), utc_now()),
            )

    def hook_ended(self, hook_id: str) -> None:
        with self._tx() as db:
            db.execute("DELETE FROM hooks WHERE id = ?", (hook_id,))

    def hooks_in_flight(self) -> list[HookInFlight]:
        rows = self._db.execute(
            "SELECT id, hook, run_id, slug, owner_pid, owner_start, pid, pid_start FROM hooks"
        ).fetchall()
        return [HookInFlight(*row) for row in rows]

    def held(self) -> Held:
        """One call (a list asks on every request) rather than three."""
        return Held(self.operations(), self.claims(), self.hooks_in_flight())

    def release_stale_hook(self, hook: HookInFlight, message: str) -> bool:
        """Forget a hook whose owner died (its processes ended), saying so in its workstream's
        events for `on_end`. False when another process got there first."""
        with self._tx() as db:
            if db.execute("DELETE FROM hooks WHERE id = ? AND owner_pid = ?", (hook.id, hook.owner_pid)).rowcount == 0:
                return False
            if hook.slug is not None and (
                row := db.execute("SELECT status FROM workstreams WHERE slug = ?", (hook.slug,)).fetchone()
            ):
                self._event(hook.slug, hook.run_id, Status(row[0]), message, utc_now())
            return True


class AsyncStore:
    """The store behind one worker thread: callers await, no event loop ever waits on SQLite, and
    the connection is only ever used from that one thread."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aidp-db")
        self._queued: list[tuple[Callable[[], object], asyncio.AbstractEventLoop, asyncio.Future[Any]]] = []
        self._lock = threading.Lock()

    async def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """`fn(*args, **kwargs)` on the store's thread; SQLite's "malformed" or "not a database"
        comes out as a `StateError` that says how to recover, not as a traceback."""
        try:
            return await asyncio.get_running_loop().run_in_executor(self._pool, partial(fn, *args, **kwargs))
        except sqlite3.DatabaseError as exc:
            self._explain(exc)
            raise

    async def recovery_write(self, what: str, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T | None:
        """`call` for recovery's writes: one the database refuses (a full disk) is said in the log,
        with `what` it would have recorded, and answered None. Recovery goes on (what it ended
        stays ended) and leaves the record to the next one, which finds the same dead process."""
        try:
            return await self.call(fn, *args, **kwargs)
        except sqlite3.Error as exc:
            log.warning("%s; this could not be recorded (%s): the next aidp command records it", what, exc)
            return None

    async def write(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Like `call`, for a transition (a store method that writes through `_tx`), with group
        commit: the transitions queued while the store's thread is busy share one transaction
        (`Store.group`), which saves a COMMIT and a thread crossing each when many jobs end at
        once. Each caller is answered only after that COMMIT: still durable before it is told."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        transition = partial(fn, *args, **kwargs)
        with self._lock:
            self._queued.append((transition, loop, future))
            first = len(self._queued) == 1
        if first:
            try:
                self._pool.submit(self._commit_queued)
            except RuntimeError:  # closed: nothing will take the queue, so it must not keep this
                with self._lock:
                    self._queued.remove((transition, loop, future))
                raise
        try:
            return await future
        except sqlite3.DatabaseError as exc:
            self._explain(exc)
            raise

    def _commit_queued(self) -> None:
        """On the store's thread: everything queued so far, as one group; the answers go back to
        each caller's loop in one hop per loop."""
        with self._lock:
            batch, self._queued = self._queued, []
        outcomes: list[tuple[object, Exception | None]]
        try:
            outcomes = self.store.group([transition for transition, _, _ in batch])
        except BaseException as exc:  # never leave a caller waiting forever
            outcomes = [(None, RuntimeError(f"the state database's thread failed: {exc!r}"))] * len(batch)
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[Any], object, Exception | None]]] = {}
        for (_, loop, future), (value, error) in zip(batch, outcomes, strict=True):
            by_loop.setdefault(loop, []).append((future, value, error))
        for loop, answers in by_loop.items():
            with suppress(RuntimeError):  # a loop closed meanwhile: nobody waits there any more
                loop.call_soon_threadsafe(_answer, answers)

    def _explain(self, exc: sqlite3.DatabaseError) -> None:
        """Damage ("malformed", "not a database") as a `StateError` that says how to recover."""
        if is_damage(exc):
            raise damaged(self.store.path, str(exc)) from exc

    def close(self) -> None:
        self._pool.submit(self.store.close).result()
        self._pool.shutdown()


def _answer(answers: list[tuple[asyncio.Future[Any], object, Exception | None]]) -> None:
    for future, value, error in answers:
        if future.cancelled():
            continue
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)
