"""The default store: one SQLite file in WAL mode, in the state directory.

Writes use `BEGIN IMMEDIATE` (a deferred transaction that reads then writes can
fail with SQLITE_BUSY even with a busy timeout in WAL mode) and wait up to
`busy_timeout_ms` for another writer. A corrupt file found at open is moved
aside and replaced by an empty database (reliability.md F-21..F-24).
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Literal, Self, TypeVar, final

from supervise.supervisor.core.alerts import Episode
from supervise.supervisor.core.clock import Clock, SystemClock
from supervise.supervisor.core.runs import JSONValue, Run, RunState
from supervise.supervisor.private_files import make_database_private
from supervise.supervisor.store.base import (
    CLAIMABLE,
    NOTIFICATION_COLUMNS,
    RUN_COLUMNS,
    RUN_UPDATABLE,
    UNFINISHED,
    CorruptionRecovery,
    Notification,
    NotificationState,
    OneShot,
    ScheduleState,
    StoreError,
    attempt_outcome,
    from_json,
    notification_row,
    row_to_notification,
    row_to_run,
    run_to_row,
    run_update_values,
    to_json,
    utc,
)
from supervise.supervisor.store.episodes import (
    EPISODE_SCHEMA_SQLITE,
    EpisodeSummary,
    sqlite_active,
    sqlite_put,
    sqlite_take,
)
from supervise.supervisor.store.journal_marks import MARKS_SCHEMA_SQLITE, sqlite_mark, sqlite_put_mark

log = logging.getLogger("supervise.store")

SCHEMA_VERSION: Final = 3
_PRUNE_BATCH: Final = 5000

_SCHEMA: Final = (
    """CREATE TABLE runs (
        seq INTEGER PRIMARY KEY,
        run_id TEXT NOT NULL UNIQUE,
        service TEXT NOT NULL,
        nominal_time TEXT,
        family TEXT NOT NULL,
        origin TEXT NOT NULL,
        attempt INTEGER NOT NULL,
        state TEXT NOT NULL,
        created_at TEXT NOT NULL,
        reason TEXT,
        args TEXT NOT NULL,
        jittered_time TEXT,
        started_at TEXT,
        finished_at TEXT,
        node TEXT,
        pid INTEGER,
        exit_code INTEGER,
        signal INTEGER,
        error TEXT,
        result TEXT
    )""",
    (
        "CREATE UNIQUE INDEX runs_occurrence ON runs (service, nominal_time, family, attempt) "
        "WHERE nominal_time IS NOT NULL"
    ),
    "CREATE INDEX runs_by_service ON runs (service, created_at, seq)",
    "CREATE INDEX runs_by_created ON runs (created_at, seq)",
    "CREATE INDEX runs_by_state ON runs (state, service, created_at)",
    """CREATE TABLE schedules (
        service TEXT PRIMARY KEY,
        paused INTEGER NOT NULL,
        last_fired TEXT,
        runs_so_far INTEGER NOT NULL,
        skip_next INTEGER NOT NULL,
        note TEXT
    )""",
    "CREATE TABLE oneshots (id TEXT PRIMARY KEY, service TEXT NOT NULL, at TEXT NOT NULL, args TEXT NOT NULL)",
    "CREATE INDEX oneshots_by_service ON oneshots (service, at)",
    "CREATE TABLE registrations (name TEXT PRIMARY KEY, spec TEXT NOT NULL)",
)
_MIGRATIONS: Final[Mapping[int, tuple[str, ...]]] = {
    1: _SCHEMA,
    2: (
        "ALTER TABLE runs ADD COLUMN key TEXT",
        "CREATE INDEX runs_waiting ON runs (state, nominal_time, run_id)",
    ),
    # The pending and the queued runs, each in an index of its own that holds only them: a run's
    # later state changes (starting, running, its end) no longer rewrite an index entry of every
    # run ever kept, as runs_waiting's did (half the cost of each UPDATE of a burst).
    3: (
        "DROP INDEX runs_waiting",
        f"CREATE INDEX runs_pending ON runs (nominal_time, run_id) WHERE state = '{RunState.PENDING.value}'",
        f"CREATE INDEX runs_queued ON runs (service, nominal_time, seq) WHERE state = '{RunState.QUEUED.value}'",
    ),
}
"""Statements that take the schema from version n-1 to n (user_version)."""

# The notifications outbox: created if missing at every open, apart from the versioned run schema.
_OUTBOX_SCHEMA: Final = (
    """CREATE TABLE IF NOT EXISTS notifications (
        seq INTEGER PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        channel TEXT NOT NULL,
        service TEXT NOT NULL,
        event TEXT NOT NULL,
        payload TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        created_at TEXT NOT NULL,
        next_attempt_at TEXT NOT NULL,
        last_error TEXT,
        delivered_at TEXT
    )""",
    "CREATE INDEX IF NOT EXISTS notifications_due ON notifications (state, next_attempt_at, seq)",
    "CREATE INDEX IF NOT EXISTS notifications_by_created ON notifications (created_at, seq)",
    *EPISODE_SCHEMA_SQLITE,
    *MARKS_SCHEMA_SQLITE,
)

_T = TypeVar("_T")
_PENDING: Final = f"state = '{RunState.PENDING.value}'"  # the WHERE terms of the partial indexes
_QUEUED: Final = f"state = '{RunState.QUEUED.value}'"
_UPDATE_RUN: Final = f"UPDATE runs SET {', '.join(f'{name} = ?' for name in RUN_UPDATABLE)} WHERE run_id = ?"  # nosec B608 # column names from the RUN_UPDATABLE constant; values are ? parameters


def encode_time(value: datetime) -> str:
    """An aware datetime as fixed-width ISO-8601 UTC text (`YYYY-MM-DDTHH:MM:SS.ffffff+00:00`),
    so that text order is time order."""
    return utc(value).isoformat(timespec="microseconds")


def decode_time(text: str) -> datetime:
    return datetime.fromisoformat(text).astimezone(UTC)


@final
class SqliteStore:
    """The `Store` on one SQLite file.

    Durability: `synchronous = NORMAL` (the default here) survives any crash of
    supervise but may lose the last few commits on power loss or an OS crash,
    never consistency; `FULL` fsyncs every commit and loses nothing (F-24).

    Args:
        path: the database file; its directory must exist.
        busy_timeout_ms: how long a write waits for another writer before StoreError.
        clock: names the `.corrupt-<time>` file when a corrupt database is moved aside.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        busy_timeout_ms: int = 5000,
        synchronous: Literal["NORMAL", "FULL"] = "NORMAL",
        clock: Clock | None = None,
    ) -> None:
        self.path = Path(path)
        self.busy_timeout_ms = busy_timeout_ms
        self.synchronous = synchronous
        self.recovered: CorruptionRecovery | None = None
        self._clock = clock or SystemClock()
        self._conn: sqlite3.Connection | None = None  # writes (and reads inside a write)
        self._lock = threading.RLock()
        # Reads use a connection of their own: in WAL mode they never wait for a writer,
        # so a write stuck behind another process's lock does not hold up `runs` or recovery.
        self._read_conn: sqlite3.Connection | None = None
        self._read_lock = threading.Lock()
        self._in_batch = False  # inside `batch()`: writes join its transaction
        self._batch_owner: int | None = None  # the thread inside `batch()`, holding the lock

    # -- lifecycle --------------------------------------------------------------------------------

    def open(self) -> Self:
        with self._lock:
            if self._conn is not None:
                return self
            problem = self._check_existing()
            if problem is not None:
                self._move_aside(problem)
            try:
                make_database_private(self.path)
            except OSError as exc:
                raise StoreError(f"cannot open history database {self.path}: {exc}", exc) from exc
            try:
                self._conn = self._connect()
                self._migrate(self._conn)
                self._create_outbox(self._conn)
                self._read_conn = self._connect()
            except sqlite3.Error as exc:
                self.close()
                raise self._error("cannot open", exc) from exc
            return self

    def close(self) -> None:
        with self._lock, self._read_lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            if self._read_conn is not None:
                self._read_conn.close()
                self._read_conn = None

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path,
            timeout=self.busy_timeout_ms / 1000,
            isolation_level=None,  # we issue BEGIN IMMEDIATE / COMMIT ourselves
            check_same_thread=False,  # the shell may call from a worker thread; _lock serialises
        )
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        if conn.execute("PRAGMA user_version").fetchone()[0] == 0:
            # Must precede the first table; lets prune give pages back without a full VACUUM.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.synchronous}")
        conn.execute("PRAGMA foreign_keys = ON")
        return conn

    def _check_existing(self) -> str | None:
        """Why the existing file is unusable, or None when it is fine (or absent)."""
        if not self.path.exists() or self.path.stat().st_size == 0:
            return None
        try:
            conn = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None)
        except sqlite3.Error as exc:
            return str(exc)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
            return None if rows == ["ok"] else "; ".join(rows[:3])
        except sqlite3.OperationalError as exc:
            if _is_busy(exc):
                raise self._error("cannot check", exc) from exc
            return str(exc)
        except sqlite3.DatabaseError as exc:  # "file is not a database", "malformed"
            return str(exc)
        finally:
            conn.close()

    def _move_aside(self, problem: str) -> None:
        stamp = self._clock.wall().astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        self.path.rename(target)
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                side.rename(target.with_name(target.name + suffix))
        self.recovered = CorruptionRecovery(str(self.path), str(target), problem)
        log.error(self.recovered.message)

    def _migrate(self, conn: sqlite3.Connection) -> None:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StoreError(
                f"history database {self.path} has schema version {version}, newer than this supervise "
                f"understands ({SCHEMA_VERSION}); upgrade supervise or point it at another file"
            )
        for target in range(version + 1, SCHEMA_VERSION + 1):
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _MIGRATIONS[target]:
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {target}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    # -- plumbing ---------------------------------------------------------------------------------

    def _db(self) -> sqlite3.Connection:
        if self._conn is None:
            raise StoreError(f"history database {self.path} is not open; call open() or use 'with store:'")
        return self._conn

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction for every write made inside (by this thread): committed at the end,
        rolled back whole if any write fails. A busy writer commits once for many runs."""
        with self._write():
            self._in_batch = True
            self._batch_owner = threading.get_ident()
            try:
                yield
            finally:
                self._in_batch = False
                self._batch_owner = None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One `BEGIN IMMEDIATE` transaction, committed on success, errors as StoreError."""
        with self._lock:
            conn = self._db()
            if self._in_batch:  # the batch's transaction holds the lock and commits
                try:
                    yield conn
                except sqlite3.Error as exc:
                    raise self._error("cannot write to", exc) from exc
                return
            try:
                conn.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise self._error("cannot write to", exc) from exc
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                if isinstance(exc, sqlite3.Error):
                    raise self._error("cannot write to", exc) from exc
                raise

    def _read(self, query: Callable[[sqlite3.Connection], _T]) -> _T:
        with self._read_lock:
            if self._read_conn is None:
                raise StoreError(f"history database {self.path} is not open; call open() or use 'with store:'")
            try:
                return query(self._read_conn)
            except sqlite3.Error as exc:
                raise self._error("cannot read", exc) from exc

    def _error(self, doing: str, exc: sqlite3.Error) -> StoreError:
        if _is_busy(exc):
            return StoreError(
                f"history database {self.path} is locked by another connection (waited "
                f"{self.busy_timeout_ms / 1000:g} s); is another supervise or an sqlite3 shell "
                "holding a transaction open?",
                exc,
            )
        if "full" in str(exc).lower():
            return StoreError(f"history database {self.path}: disk full ({exc}); free space on its filesystem", exc)
        return StoreError(f"{doing} history database {self.path}: {exc}", exc)

    # -- runs -------------------------------------------------------------------------------------

    def insert_run(self, run: Run) -> bool:
        return self.insert_runs([run]) == 1

    def insert_runs(self, runs: list[Run]) -> int:
        columns = (*RUN_COLUMNS, "family")
        sql = (
            f"INSERT INTO runs ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "  # nosec B608 # column names from the RUN_COLUMNS constant; values are ? parameters
            "ON CONFLICT DO NOTHING"
        )
        with self._write() as conn:
            before = conn.total_changes
            conn.executemany(sql, (tuple(run_to_row(r, encode_time).values()) for r in runs))
            return conn.total_changes - before

    def update_run(self, run: Run, *, expected_state: RunState | None = None) -> bool:
        params = [*run_update_values(run, encode_time), run.run_id]
        sql = _UPDATE_RUN
        if expected_state is not None:
            sql += " AND state = ?"
            params.append(expected_state.value)
        if self._batch_owner == threading.get_ident():
            # Inside this thread's batch (the writer's, for every state change of a burst): its
            # transaction and lock are held already; what `_write` would do, without its overhead.
            try:
                return self._db().execute(sql, params).rowcount == 1
            except sqlite3.Error as exc:
                raise self._error("cannot write to", exc) from exc
        with self._write() as conn:
            return conn.execute(sql, params).rowcount == 1

    def get_run(self, run_id: str) -> Run | None:
        rows = self._select("WHERE run_id = ?", [run_id])
        return rows[0] if rows else None

    def list_runs(
        self,
        service: str | None = None,
        *,
        states: set[RunState] | frozenset[RunState] | None = None,
        limit: int = 100,
        before: datetime | None = None,
    ) -> list[Run]:
        where, params = [], []
        if service is not None:
            where.append("service = ?")
            params.append(service)
        if states is not None:
            where.append(f"state IN ({', '.join('?' * len(states))})")
            params.extend(s.value for s in states)
        if before is not None:
            where.append("created_at < ?")
            params.append(encode_time(before))
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        # One service's runs in some states: walk (state, service, created_at) backwards, not
        # every run of the service (a million pending one-shots before its last finished run).
        hint = "INDEXED BY runs_by_state " if service is not None and states is not None else ""
        return self._select(f"{hint}{clause} ORDER BY created_at DESC, seq DESC LIMIT ?", [*params, limit])

    def runs_in_states(self, states: set[RunState] | frozenset[RunState]) -> list[Run]:
        marks = ", ".join("?" * len(states))
        return self._select(f"WHERE state IN ({marks}) ORDER BY created_at, seq", [s.value for s in states])

    def pending_runs(self, after: tuple[datetime, str] | None, limit: int) -> list[Run]:
        # The state is written in the statement, not bound: SQLite uses a partial index only
        # for a query whose WHERE has the index's own term; and named, as the planner may
        # otherwise walk every pending run by runs_by_state and sort them (a million one-shots).
        if after is None:
            return self._select(
                f"INDEXED BY runs_pending WHERE {_PENDING} ORDER BY nominal_time, run_id LIMIT ?", [limit]
            )
        when = encode_time(after[0])
        return self._select(
            f"INDEXED BY runs_pending WHERE {_PENDING} AND (nominal_time > ? OR (nominal_time = ? AND run_id > ?)) "
            "ORDER BY nominal_time, run_id LIMIT ?",
            [when, when, after[1], limit],
        )

    def queued_runs(self, service: str, limit: int) -> list[Run]:
        return self._select(
            f"INDEXED BY runs_queued WHERE {_QUEUED} AND service = ? ORDER BY nominal_time, seq LIMIT ?",
            [service, limit],
        )

    def count_runs(self, service: str, states: set[RunState] | frozenset[RunState]) -> int:
        marks = ", ".join("?" * len(states))
        sql = f"SELECT count(*) FROM runs WHERE state IN ({marks}) AND service = ?"  # nosec B608 # table and column names are this module's constants; values are bound parameters
        params = [*(s.value for s in states), service]
        return int(self._read(lambda conn: conn.execute(sql, params).fetchone()[0]))

    def _select(self, tail: str, params: list[object]) -> list[Run]:
        sql = f"SELECT {', '.join(RUN_COLUMNS)} FROM runs {tail}"  # nosec B608 # tail is a constant clause of this module; values are ? parameters
        rows = self._read(lambda conn: conn.execute(sql, params).fetchall())
        return [row_to_run(row, decode_time) for row in rows]

    def claim_due(self, service: str, nominal_time: datetime, node: str) -> Run | None:
        when = encode_time(nominal_time)
        claimable = [s.value for s in CLAIMABLE]
        with self._write() as conn:
            row = conn.execute(
                "SELECT seq, state, node FROM runs WHERE service = ? AND nominal_time = ? "
                "AND (state IN (?, ?) OR (state = ? AND node = ?)) ORDER BY attempt, seq LIMIT 1",
                (service, when, *claimable, RunState.STARTING.value, node),
            ).fetchone()
            if row is None:
                return None
            if row["state"] != RunState.STARTING:
                conn.execute(
                    "UPDATE runs SET state = ?, node = ? WHERE seq = ?", (RunState.STARTING.value, node, row["seq"])
                )
            found = conn.execute(f"SELECT {', '.join(RUN_COLUMNS)} FROM runs WHERE seq = ?", (row["seq"],)).fetchone()  # nosec B608 # constant column list; the value is a ? parameter
        return row_to_run(found, decode_time)

    # -- schedule state, one-shots, registrations -------------------------------------------------

    def get_schedule_state(self, service: str) -> ScheduleState:
        row = self._read(lambda conn: conn.execute("SELECT * FROM schedules WHERE service = ?", (service,)).fetchone())
        if row is None:
            return ScheduleState()
        return ScheduleState(
            paused=bool(row["paused"]),
            last_fired=decode_time(row["last_fired"]) if row["last_fired"] else None,
            runs_so_far=row["runs_so_far"],
            skip_next=bool(row["skip_next"]),
            note=row["note"],
        )

    def put_schedule_state(self, service: str, state: ScheduleState) -> None:
        last = encode_time(state.last_fired) if state.last_fired else None
        with self._write() as conn:
            conn.execute(
                "INSERT OR REPLACE INTO schedules VALUES (?, ?, ?, ?, ?, ?)",
                (service, int(state.paused), last, state.runs_so_far, int(state.skip_next), state.note),
            )

    def add_oneshot(self, service: str, at: datetime, args: Mapping[str, JSONValue] | None = None) -> str:
        oneshot_id = uuid.uuid4().hex
        with self._write() as conn:
            conn.execute(
                "INSERT INTO oneshots VALUES (?, ?, ?, ?)",
                (oneshot_id, service, encode_time(at), to_json(dict(args or {}))),
            )
        return oneshot_id

    def list_oneshots(self, service: str | None = None) -> list[OneShot]:
        where, params = ("WHERE service = ?", (service,)) if service is not None else ("", ())
        rows = self._read(
            lambda conn: conn.execute(f"SELECT * FROM oneshots {where} ORDER BY at, id", params).fetchall()  # nosec B608 # a constant WHERE clause; the value is a ? parameter
        )
        return [OneShot(r["id"], r["service"], decode_time(r["at"]), from_json(r["args"])) for r in rows]

    def remove_oneshot(self, oneshot_id: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM oneshots WHERE id = ?", (oneshot_id,)).rowcount == 1

    def put_registration(self, name: str, spec: Mapping[str, Any]) -> None:
        with self._write() as conn:
            conn.execute("INSERT OR REPLACE INTO registrations VALUES (?, ?)", (name, to_json(dict(spec))))

    def delete_registration(self, name: str) -> bool:
        with self._write() as conn:
            return conn.execute("DELETE FROM registrations WHERE name = ?", (name,)).rowcount == 1

    def list_registrations(self) -> dict[str, dict[str, Any]]:
        rows = self._read(lambda conn: conn.execute("SELECT name, spec FROM registrations ORDER BY name").fetchall())
        return {row["name"]: from_json(row["spec"]) for row in rows}

    def forget_service(self, service: str) -> int:
        """See `Store.forget_service`: one transaction."""
        with self._write() as conn:
            runs = conn.execute("DELETE FROM runs WHERE service = ?", (service,)).rowcount
            conn.execute("DELETE FROM alert_episodes WHERE subject = ?", (service,))
            for table in ("oneshots", "schedules", "notifications"):
                conn.execute(f"DELETE FROM {table} WHERE service = ?", (service,))  # nosec B608 # constant names
            conn.execute("DELETE FROM registrations WHERE name = ?", (service,))
        return int(runs)

    # -- retention --------------------------------------------------------------------------------

    def prune(self, keep_per_outcome: int, max_age: timedelta, now: datetime) -> int:
        """See `Store.prune`. Deletes in batches of 5000 (short write locks), then
        returns freed pages to the filesystem (incremental vacuum + WAL truncate)."""
        unfinished = [s.value for s in UNFINISHED]
        marks = ", ".join("?" * len(unfinished))
        victims: list[int] = self._read(
            lambda conn: [
                r[0]
                for r in conn.execute(
                    f"""SELECT seq FROM (
                            SELECT seq, created_at, row_number() OVER (
                                PARTITION BY service, state ORDER BY created_at DESC, seq DESC) AS rank
                            FROM runs WHERE state NOT IN ({marks}))
                        WHERE rank > ? OR created_at < ?""",  # nosec B608 # marks is a run of ? placeholders
                    (*unfinished, keep_per_outcome, encode_time(now - max_age)),
                )
            ]
        )
        for start in range(0, len(victims), _PRUNE_BATCH):
            batch = victims[start : start + _PRUNE_BATCH]
            with self._write() as conn:
                conn.execute("DELETE FROM runs WHERE seq IN (SELECT value FROM json_each(?))", (to_json(batch),))
        if victims:
            self._reclaim()
        return len(victims)

    def _reclaim(self) -> None:
        with self._lock:
            conn = self._db()
            try:
                # executescript steps the pragma to completion; execute() would free one page.
                conn.executescript("PRAGMA incremental_vacuum;")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.OperationalError as exc:  # busy: the next prune reclaims
                log.warning("history database %s: could not reclaim free pages now (%s)", self.path, exc)

    # -- notifications outbox ---------------------------------------------------------------------

    def _create_outbox(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _OUTBOX_SCHEMA:
                conn.execute(statement)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def add_notification(self, notification: Notification) -> bool:
        n = notification
        row = notification_row(n, encode_time)
        sql = (
            f"INSERT INTO notifications ({', '.join(NOTIFICATION_COLUMNS)}) "  # nosec B608 # table and column names are this module's constants; values are bound parameters
            f"VALUES ({', '.join('?' * len(NOTIFICATION_COLUMNS))}) ON CONFLICT (id) DO NOTHING"
        )
        with self._write() as conn:
            return conn.execute(sql, row).rowcount == 1

    def due_notifications(self, now: datetime, limit: int = 100) -> list[Notification]:
        return self._notifications(
            "WHERE state = ? AND next_attempt_at <= ? ORDER BY next_attempt_at, seq LIMIT ?",
            [NotificationState.PENDING.value, encode_time(now), limit],
        )

    def claim_notifications(self, now: datetime, until: datetime, limit: int = 100) -> list[Notification]:
        select = (
            f"SELECT {', '.join(NOTIFICATION_COLUMNS)} FROM notifications WHERE state = ? AND next_attempt_at <= ? "  # nosec B608 # table and column names are this module's constants; values are bound parameters
            "ORDER BY next_attempt_at, seq LIMIT ?"
        )
        with self._write() as conn:
            rows = conn.execute(select, (NotificationState.PENDING.value, encode_time(now), limit)).fetchall()
            conn.executemany(
                "UPDATE notifications SET next_attempt_at = ? WHERE id = ?",
                [(encode_time(until), row["id"]) for row in rows],
            )
        return [replace(row_to_notification(row, decode_time), next_attempt_at=utc(until)) for row in rows]

    def next_notification_at(self) -> datetime | None:
        row = self._read(
            lambda conn: conn.execute(
                "SELECT min(next_attempt_at) FROM notifications WHERE state = ?", (NotificationState.PENDING.value,)
            ).fetchone()
        )
        return decode_time(row[0]) if row[0] is not None else None

    def record_attempt(
        self, notification_id: str, *, at: datetime, error: str | None, retry_at: datetime | None
    ) -> bool:
        state, next_at, delivered = attempt_outcome(at=at, error=error, retry_at=retry_at)
        with self._write() as conn:
            return (
                conn.execute(
                    "UPDATE notifications SET attempts = attempts + 1, state = ?, next_attempt_at = ?, "
                    "last_error = coalesce(?, last_error), delivered_at = ? WHERE id = ? AND state = ?",
                    (
                        state.value,
                        encode_time(next_at),
                        error,
                        encode_time(delivered) if delivered else None,
                        notification_id,
                        NotificationState.PENDING.value,
                    ),
                ).rowcount
                == 1
            )

    def list_notifications(self, *, failed_only: bool = False, limit: int = 100) -> list[Notification]:
        where, params = ("WHERE state = ? ", [NotificationState.FAILED.value]) if failed_only else ("", [])
        return self._notifications(f"{where}ORDER BY created_at DESC, seq DESC LIMIT ?", [*params, limit])

    def prune_notifications(self, before: datetime) -> int:
        with self._write() as conn:
            return conn.execute(
                "DELETE FROM notifications WHERE state != ? AND created_at < ?",
                (NotificationState.PENDING.value, encode_time(before)),
            ).rowcount

    # -- no-storm episodes (store/episodes.py) ----------------------------------------------------

    def take_episode(self, rule: str, subject: str, now_ms: int) -> tuple[Episode, int]:
        with self._write() as conn:
            return sqlite_take(conn, rule, subject), now_ms

    def put_episode(self, rule: str, subject: str, episode: Episode) -> None:
        with self._write() as conn:
            sqlite_put(conn, rule, subject, episode)

    def active_episodes(self, now_ms: int) -> list[EpisodeSummary]:
        return self._read(lambda conn: sqlite_active(conn, now_ms))

    def journal_mark(self, journal: str) -> int:
        return self._read(lambda conn: sqlite_mark(conn, journal))

    def put_journal_mark(self, journal: str, seq: int | None) -> None:
        with self._write() as conn:
            sqlite_put_mark(conn, journal, seq)

    def _notifications(self, tail: str, params: list[object]) -> list[Notification]:
        sql = f"SELECT {', '.join(NOTIFICATION_COLUMNS)} FROM notifications {tail}"  # nosec B608 # table and column names are this module's constants; values are bound parameters
        rows = self._read(lambda conn: conn.execute(sql, params).fetchall())
        return [row_to_notification(row, decode_time) for row in rows]


def _is_busy(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text
