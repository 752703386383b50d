"""The multi-host store: PostgreSQL through psycopg 3, all tables in one schema.

Several supervisors share it: occurrences are inserted with `ON CONFLICT DO
NOTHING` (exactly-once enqueue) and claimed with `FOR UPDATE SKIP LOCKED`
(exactly one node starts each). A dropped connection is reopened with backoff
and the call retried; every call is idempotent so a retry is safe (F-25).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, Final, LiteralString, Self, TypeVar, final

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from supervise.supervisor.core.alerts import Episode
from supervise.supervisor.core.runs import JSONValue, Run, RunState
from supervise.supervisor.store.base import (
    CLAIMABLE,
    NOTIFICATION_COLUMNS,
    RUN_COLUMNS,
    RUN_UPDATABLE,
    UNFINISHED,
    Notification,
    NotificationState,
    OneShot,
    ScheduleState,
    StoreError,
    attempt_outcome,
    notification_row,
    row_to_notification,
    row_to_run,
    run_to_row,
    run_update_values,
    to_json,
    utc,
)
from supervise.supervisor.store.episodes import EPISODE_SCHEMA_PG, EpisodeSummary, pg_active, pg_put, pg_take
from supervise.supervisor.store.journal_marks import MARKS_SCHEMA_PG, pg_mark, pg_put_mark

log = logging.getLogger("supervise.store")

SCHEMA_VERSION: Final = 2
_PRUNE_BATCH: Final = 5000
_JSON_COLUMNS: Final = ("args", "result")

_SCHEMA: Final[tuple[LiteralString, ...]] = (
    """CREATE TABLE {s}.runs (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        run_id text NOT NULL UNIQUE,
        service text NOT NULL,
        nominal_time timestamptz,
        family text NOT NULL,
        origin text NOT NULL,
        attempt integer NOT NULL,
        state text NOT NULL,
        created_at timestamptz NOT NULL,
        reason text,
        args jsonb NOT NULL,
        jittered_time timestamptz,
        started_at timestamptz,
        finished_at timestamptz,
        node text,
        pid integer,
        exit_code integer,
        signal integer,
        error text,
        result jsonb
    )""",
    (
        "CREATE UNIQUE INDEX runs_occurrence ON {s}.runs (service, nominal_time, family, attempt) "
        "WHERE nominal_time IS NOT NULL"
    ),
    "CREATE INDEX runs_by_service ON {s}.runs (service, created_at, seq)",
    "CREATE INDEX runs_by_created ON {s}.runs (created_at, seq)",
    "CREATE INDEX runs_by_state ON {s}.runs (state, service, created_at)",
    """CREATE TABLE {s}.schedules (
        service text PRIMARY KEY,
        paused boolean NOT NULL,
        last_fired timestamptz,
        runs_so_far integer NOT NULL,
        skip_next boolean NOT NULL,
        note text
    )""",
    "CREATE TABLE {s}.oneshots (id text PRIMARY KEY, service text NOT NULL, at timestamptz NOT "
    "NULL, args jsonb NOT NULL)",
    "CREATE INDEX oneshots_by_service ON {s}.oneshots (service, at)",
    "CREATE TABLE {s}.registrations (name text PRIMARY KEY, spec jsonb NOT NULL)",
)
_MIGRATIONS: Final[Mapping[int, tuple[LiteralString, ...]]] = {
    1: _SCHEMA,
    2: (
        "ALTER TABLE {s}.runs ADD COLUMN key text",
        "CREATE INDEX runs_waiting ON {s}.runs (state, nominal_time, run_id)",
    ),
}

# The notifications outbox: created if missing at every open, apart from the versioned run schema.
_OUTBOX_SCHEMA: Final[tuple[LiteralString, ...]] = (
    """CREATE TABLE IF NOT EXISTS {s}.notifications (
        seq bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        id text NOT NULL UNIQUE,
        channel text NOT NULL,
        service text NOT NULL,
        event text NOT NULL,
        payload jsonb NOT NULL,
        state text NOT NULL,
        attempts integer NOT NULL,
        created_at timestamptz NOT NULL,
        next_attempt_at timestamptz NOT NULL,
        last_error text,
        delivered_at timestamptz
    )""",
    "CREATE INDEX IF NOT EXISTS notifications_due ON {s}.notifications (state, next_attempt_at, seq)",
    "CREATE INDEX IF NOT EXISTS notifications_by_created ON {s}.notifications (created_at, seq)",
    *EPISODE_SCHEMA_PG,
    *MARKS_SCHEMA_PG,
)

_UPDATE_RUN: Final = (
    "UPDATE {s}.runs SET "
    + ", ".join(  # nosec B608 # column names from RUN_UPDATABLE; values are %s parameters
        f"{c} = %s::jsonb" if c in _JSON_COLUMNS else f"{c} = %s" for c in RUN_UPDATABLE
    )
    + " WHERE run_id = %s"
)
_SELECT_RUN: Final = ", ".join(f"{c}::text AS {c}" if c in _JSON_COLUMNS else c for c in RUN_COLUMNS)
_T = TypeVar("_T")


def _decode_time(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _keep_time(value: datetime) -> datetime:
    return value


@final
class PostgresStore:
    """The `Store` on PostgreSQL.

    Args:
        dsn: a libpq connection string or `postgresql://` URL.
        schema: the schema holding the tables, created if missing (one per
            deployment; tests use a throwaway one).
        reconnect_attempts: how many times a call reconnects after a dropped
            connection before it raises StoreError; waits double from `reconnect_delay_ms`.
    """

    def __init__(
        self,
        dsn: str,
        *,
        schema: str = "supervise",
        connect_timeout_s: float = 5.0,
        reconnect_attempts: int = 3,
        reconnect_delay_ms: int = 200,
        sleep: Callable[[float], None] = time.sleep,
        options: str | None = None,
    ) -> None:
        self.dsn = dsn
        self.options = options  # libpq session options (`-c name=value`), e.g. `idle_transaction_limit`
        self.schema = schema
        self.connect_timeout_s = connect_timeout_s
        self.reconnect_attempts = reconnect_attempts
        self.reconnect_delay_ms = reconnect_delay_ms
        self._sleep = sleep
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self._opened = False
        self._lock = threading.RLock()
        self._batch: psycopg.Connection[dict[str, Any]] | None = None  # inside `batch()`: its transaction's
        self._where = _describe_dsn(dsn)
        self._update_run = self._q(_UPDATE_RUN)

    # -- lifecycle --------------------------------------------------------------------------------

    def open(self) -> Self:
        with self._lock:
            if not self._opened:
                self._opened = True
                try:
                    self._call(self._migrate)
                    self._call(self._create_outbox)
                except BaseException:
                    self.close()
                    raise
            return self

    def close(self) -> None:
        with self._lock:
            self._opened = False
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _migrate(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        with conn.transaction():
            # Several nodes may start at once; one migrates, the others wait here.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"supervise:{self.schema}",))
            conn.execute(self._q("CREATE SCHEMA IF NOT EXISTS {s}"))
            conn.execute(self._q("CREATE TABLE IF NOT EXISTS {s}.meta (key text PRIMARY KEY, value integer NOT NULL)"))
            row = conn.execute(self._q("SELECT value FROM {s}.meta WHERE key = 'schema_version'")).fetchone()
            version = row["value"] if row else 0
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"PostgreSQL store {self._where} schema {self.schema} has version {version}, newer than this "
                    f"supervise understands ({SCHEMA_VERSION}); upgrade supervise or use another schema"
                )
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target]:
                    conn.execute(self._q(statement))
            conn.execute(
                self._q(
                    "INSERT INTO {s}.meta VALUES ('schema_version', %s) "
                    "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
                ),
                (SCHEMA_VERSION,),
            )

    # -- plumbing ---------------------------------------------------------------------------------

    def _q(self, text: LiteralString) -> sql.Composed:
        return sql.SQL(text).format(s=sql.Identifier(self.schema))

    def _connection(self) -> psycopg.Connection[dict[str, Any]]:
        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(
                with_options(self.dsn, self.options),
                autocommit=True,
                connect_timeout=max(1, int(self.connect_timeout_s)),
                row_factory=dict_row,
            )
        return self._conn

    @contextmanager
    def batch(self) -> Iterator[None]:
        """One transaction for every call made inside (by this thread): committed at the end,
        rolled back whole if any call fails (StoreError), with no reconnect in the middle. The
        history's writer commits a run's final state with the notifications it causes this way."""
        with self._lock:
            if self._batch is not None:  # nested: the outer batch commits
                yield
                return
            conn = self._call(lambda c: c)  # connected, with the usual reconnect attempts
            try:
                with conn.transaction():
                    self._batch = conn
                    try:
                        yield
                    finally:
                        self._batch = None
            except psycopg.Error as exc:
                if conn.closed or conn.broken:
                    self._conn = None
                raise self._error(exc) from exc

    def _call(self, op: Callable[[psycopg.Connection[dict[str, Any]]], _T]) -> _T:
        """Run `op` on a live connection, reconnecting with backoff if the connection drops."""
        with self._lock:
            if not self._opened:
                raise StoreError(f"PostgreSQL store {self._where} is not open; call open() or use 'with store:'")
            if self._batch is not None:  # inside `batch()`: its transaction, no retry on another connection
                try:
                    return op(self._batch)
                except psycopg.Error as exc:
                    raise self._error(exc) from exc
            last: Exception | None = None
            for attempt in range(self.reconnect_attempts + 1):
                if attempt:
                    self._sleep(self.reconnect_delay_ms * (2 ** (attempt - 1)) / 1000)
                try:
                    conn = self._connection()
                except psycopg.OperationalError as exc:
                    last = exc
                    continue
                try:
                    return op(conn)
                except psycopg.OperationalError as exc:
                    if not (conn.closed or conn.broken):
                        raise self._error(exc) from exc
                    log.warning("PostgreSQL store %s: connection lost (%s); reconnecting", self._where, exc)
                    self._conn = None
                    last = exc
                except psycopg.Error as exc:
                    raise self._error(exc) from exc
            raise StoreError(
                f"PostgreSQL store {self._where} is unreachable after {self.reconnect_attempts + 1} attempts "
                f"({last}); is the server up and the DSN right?",
                last,
            )

    def _error(self, exc: psycopg.Error) -> StoreError:
        return StoreError(f"PostgreSQL store {self._where}: {str(exc).strip()}", exc)

    # -- runs -------------------------------------------------------------------------------------

    def insert_run(self, run: Run) -> bool:
        return self.insert_runs([run]) == 1

    def insert_runs(self, runs: list[Run]) -> int:
        columns = (*RUN_COLUMNS, "family")
        values = ", ".join("%s::jsonb" if c in _JSON_COLUMNS else "%s" for c in columns)
        query = sql.SQL("INSERT INTO {s}.runs ({cols}) VALUES (" + values + ") ON CONFLICT DO NOTHING").format(  # nosec B608 # column names from the RUN_COLUMNS constant; values are %s parameters
            s=sql.Identifier(self.schema), cols=sql.SQL(", ").join(map(sql.Identifier, columns))
        )
        rows = [tuple(run_to_row(r, _keep_time).values()) for r in runs]

        def insert(conn: psycopg.Connection[dict[str, Any]]) -> int:
            with conn.transaction(), conn.cursor() as cur:
                cur.executemany(query, rows)
                return max(cur.rowcount, 0)

        return self._call(insert)

    def update_run(self, run: Run, *, expected_state: RunState | None = None) -> bool:
        params = [*run_update_values(run, _keep_time), run.run_id]
        query = self._update_run
        if expected_state is not None:
            query = self._q(_UPDATE_RUN + " AND state = %s")
            params.append(expected_state.value)
        return self._call(lambda conn: conn.execute(query, params).rowcount == 1)

    def get_run(self, run_id: str) -> Run | None:
        rows = self._select("WHERE run_id = %s", [run_id])
        return rows[0] if rows else None

    def list_runs(
        self,
        service: str | None = None,
        *,
        states: set[RunState] | frozenset[RunState] | None = None,
        limit: int = 100,
        before: datetime | None = None,
    ) -> list[Run]:
        where: list[str] = []
        params: list[object] = []
        if service is not None:
            where.append("service = %s")
            params.append(service)
        if states is not None:
            where.append("state = ANY(%s)")
            params.append([s.value for s in states])
        if before is not None:
            where.append("created_at < %s")
            params.append(utc(before))
        clause = ("WHERE " + " AND ".join(where)) if where else ""
        return self._select(f"{clause} ORDER BY created_at DESC, seq DESC LIMIT %s", [*params, limit])

    def runs_in_states(self, states: set[RunState] | frozenset[RunState]) -> list[Run]:
        return self._select("WHERE state = ANY(%s) ORDER BY created_at, seq", [[s.value for s in states]])

    def pending_runs(self, after: tuple[datetime, str] | None, limit: int) -> list[Run]:
        if after is None:
            return self._select(
                "WHERE state = %s ORDER BY nominal_time, run_id LIMIT %s", [RunState.PENDING.value, limit]
            )
        return self._select(
            "WHERE state = %s AND (nominal_time, run_id) > (%s, %s) ORDER BY nominal_time, run_id LIMIT %s",
            [RunState.PENDING.value, utc(after[0]), after[1], limit],
        )

    def queued_runs(self, service: str, limit: int) -> list[Run]:
        return self._select(
            "WHERE state = %s AND service = %s ORDER BY nominal_time, seq LIMIT %s",
            [RunState.QUEUED.value, service, limit],
        )

    def count_runs(self, service: str, states: set[RunState] | frozenset[RunState]) -> int:
        query = self._q("SELECT count(*) AS n FROM {s}.runs WHERE state = ANY(%s) AND service = %s")
        row = self._call(lambda conn: conn.execute(query, ([s.value for s in states], service)).fetchone())
        return int(row["n"]) if row else 0

    def _select(self, tail: str, params: list[object]) -> list[Run]:
        query = self._q(f"SELECT {_SELECT_RUN} FROM {{s}}.runs {tail}")  # nosec B608 # tail is a constant clause of this module; values are %s parameters
        rows = self._call(lambda conn: conn.execute(query, params).fetchall())
        return [row_to_run(row, _decode_time) for row in rows]

    def claim_due(self, service: str, nominal_time: datetime, node: str) -> Run | None:
        claim = self._q(
            "WITH c AS (SELECT seq FROM {s}.runs WHERE service = %s AND nominal_time = %s AND state = ANY(%s) "
            "ORDER BY attempt, seq LIMIT 1 FOR UPDATE SKIP LOCKED) "
            "UPDATE {s}.runs r SET state = %s, node = %s FROM c WHERE r.seq = c.seq RETURNING r.run_id"
        )
        mine = self._q(
            "SELECT run_id FROM {s}.runs WHERE service = %s AND nominal_time = %s AND state = %s AND node = %s"
        )
        when = utc(nominal_time)
        starting = RunState.STARTING.value

        def run(conn: psycopg.Connection[dict[str, Any]]) -> str | None:
            with conn.transaction():
                row = (
                    conn.execute(claim, (service, when, [s.value for s in CLAIMABLE], starting, node)).fetchone()
                    or conn.execute(mine, (service, when, starting, node)).fetchone()
                )
            return None if row is None else str(row["run_id"])

        run_id = self._call(run)
        return None if run_id is None else self.get_run(run_id)

    # -- schedule state, one-shots, registrations -------------------------------------------------

    def get_schedule_state(self, service: str) -> ScheduleState:
        query = self._q("SELECT * FROM {s}.schedules WHERE service = %s")
        row = self._call(lambda conn: conn.execute(query, (service,)).fetchone())
        if row is None:
            return ScheduleState()
        last = row["last_fired"]
        return ScheduleState(
            paused=row["paused"],
            last_fired=_decode_time(last) if last else None,
            runs_so_far=row["runs_so_far"],
            skip_next=row["skip_next"],
            note=row["note"],
        )

    def put_schedule_state(self, service: str, state: ScheduleState) -> None:
        query = self._q(
            "INSERT INTO {s}.schedules VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (service) DO UPDATE SET "
            "paused = EXCLUDED.paused, last_fired = EXCLUDED.last_fired, runs_so_far = EXCLUDED.runs_so_far, "
            "skip_next = EXCLUDED.skip_next, note = EXCLUDED.note"
        )
        last = utc(state.last_fired) if state.last_fired else None
        params = (service, state.paused, last, state.runs_so_far, state.skip_next, state.note)
        self._call(lambda conn: conn.execute(query, params))

    def add_oneshot(self, service: str, at: datetime, args: Mapping[str, JSONValue] | None = None) -> str:
        oneshot_id = uuid.uuid4().hex  # chosen here, so a retried insert cannot add a second row
        query = self._q("INSERT INTO {s}.oneshots VALUES (%s, %s, %s, %s::jsonb) ON CONFLICT DO NOTHING")
        params = (oneshot_id, service, utc(at), to_json(dict(args or {})))
        self._call(lambda conn: conn.execute(query, params))
        return oneshot_id

    def list_oneshots(self, service: str | None = None) -> list[OneShot]:
        where = "WHERE service = %s" if service is not None else ""
        query = self._q(f"SELECT id, service, at, args FROM {{s}}.oneshots {where} ORDER BY at, id")  # nosec B608 # a constant WHERE clause; the value is a %s parameter
        params = (service,) if service is not None else ()
        rows = self._call(lambda conn: conn.execute(query, params).fetchall())
        return [OneShot(r["id"], r["service"], _decode_time(r["at"]), r["args"]) for r in rows]

    def remove_oneshot(self, oneshot_id: str) -> bool:
        query = self._q("DELETE FROM {s}.oneshots WHERE id = %s")
        return self._call(lambda conn: conn.execute(query, (oneshot_id,)).rowcount == 1)

    def put_registration(self, name: str, spec: Mapping[str, Any]) -> None:
        query = self._q(
            "INSERT INTO {s}.registrations VALUES (%s, %s::jsonb) ON CONFLICT (name) DO UPDATE SET spec = EXCLUDED.spec"
        )
        text = to_json(dict(spec))
        self._call(lambda conn: conn.execute(query, (name, text)))

    def delete_registration(self, name: str) -> bool:
        query = self._q("DELETE FROM {s}.registrations WHERE name = %s")
        return self._call(lambda conn: conn.execute(query, (name,)).rowcount == 1)

    def list_registrations(self) -> dict[str, dict[str, Any]]:
        query = self._q("SELECT name, spec FROM {s}.registrations ORDER BY name")
        rows = self._call(lambda conn: conn.execute(query).fetchall())
        return {row["name"]: row["spec"] for row in rows}

    def forget_service(self, service: str) -> int:
        """See `Store.forget_service`: one transaction."""
        runs = self._q("DELETE FROM {s}.runs WHERE service = %s")
        others = [
            self._q("DELETE FROM {s}.oneshots WHERE service = %s"),
            self._q("DELETE FROM {s}.schedules WHERE service = %s"),
            self._q("DELETE FROM {s}.notifications WHERE service = %s"),
            self._q("DELETE FROM {s}.alert_episodes WHERE subject = %s"),
            self._q("DELETE FROM {s}.registrations WHERE name = %s"),
        ]

        def forget(conn: psycopg.Connection[dict[str, Any]]) -> int:
            with conn.transaction():
                deleted = conn.execute(runs, (service,)).rowcount
                for query in others:
                    conn.execute(query, (service,))
            return int(deleted)

        return self._call(forget)

    # -- retention --------------------------------------------------------------------------------

    def prune(self, keep_per_outcome: int, max_age: timedelta, now: datetime) -> int:
        """See `Store.prune`. Deletes in batches of 5000; autovacuum reclaims the space."""
        find = self._q(
            "SELECT seq FROM (SELECT seq, created_at, row_number() OVER ("
            "PARTITION BY service, state ORDER BY created_at DESC, seq DESC) AS rank "
            "FROM {s}.runs WHERE NOT (state = ANY(%s))) v WHERE rank > %s OR created_at < %s"
        )
        params = ([s.value for s in UNFINISHED], keep_per_outcome, utc(now) - max_age)
        victims = [r["seq"] for r in self._call(lambda conn: conn.execute(find, params).fetchall())]
        delete = self._q("DELETE FROM {s}.runs WHERE seq = ANY(%s)")

        def delete_batch(batch: list[int]) -> Callable[[psycopg.Connection[dict[str, Any]]], object]:
            return lambda conn: conn.execute(delete, (batch,))

        for start in range(0, len(victims), _PRUNE_BATCH):
            self._call(delete_batch(victims[start : start + _PRUNE_BATCH]))
        return len(victims)

    # -- notifications outbox ---------------------------------------------------------------------

    def _create_outbox(self, conn: psycopg.Connection[dict[str, Any]]) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"supervise:{self.schema}",))
            for statement in _OUTBOX_SCHEMA:
                conn.execute(self._q(statement))

    def add_notification(self, notification: Notification) -> bool:
        n = notification
        values = ", ".join("%s::jsonb" if c == "payload" else "%s" for c in NOTIFICATION_COLUMNS)
        query = self._q(
            f"INSERT INTO {{s}}.notifications ({', '.join(NOTIFICATION_COLUMNS)}) VALUES ({values}) "  # nosec B608 # table and column names are this module's constants; values are bound parameters
            "ON CONFLICT (id) DO NOTHING"
        )
        row = notification_row(n, utc)
        return self._call(lambda conn: conn.execute(query, row).rowcount == 1)

    def due_notifications(self, now: datetime, limit: int = 100) -> list[Notification]:
        return self._notifications(
            "WHERE state = %s AND next_attempt_at <= %s ORDER BY next_attempt_at, seq LIMIT %s",
            [NotificationState.PENDING.value, utc(now), limit],
        )

    def claim_notifications(self, now: datetime, until: datetime, limit: int = 100) -> list[Notification]:
        columns = ", ".join("n.payload::text AS payload" if c == "payload" else f"n.{c}" for c in NOTIFICATION_COLUMNS)
        query = self._q(
            "WITH c AS (SELECT seq FROM {s}.notifications WHERE state = %s AND next_attempt_at <= %s "  # nosec B608 # table and column names are this module's constants; values are bound parameters
            "ORDER BY next_attempt_at, seq LIMIT %s FOR UPDATE SKIP LOCKED) "
            f"UPDATE {{s}}.notifications n SET next_attempt_at = %s FROM c WHERE n.seq = c.seq RETURNING {columns}"
        )
        params = (NotificationState.PENDING.value, utc(now), limit, utc(until))

        def claim(conn: psycopg.Connection[dict[str, Any]]) -> list[dict[str, Any]]:
            with conn.transaction():
                return conn.execute(query, params).fetchall()

        rows = self._call(claim)
        found = [row_to_notification(row, _decode_time) for row in rows]
        return sorted(found, key=lambda n: n.created_at)

    def next_notification_at(self) -> datetime | None:
        query = self._q("SELECT min(next_attempt_at) AS at FROM {s}.notifications WHERE state = %s")
        row = self._call(lambda conn: conn.execute(query, (NotificationState.PENDING.value,)).fetchone())
        return _decode_time(row["at"]) if row is not None and row["at"] is not None else None

    def record_attempt(
        self, notification_id: str, *, at: datetime, error: str | None, retry_at: datetime | None
    ) -> bool:
        state, next_at, delivered = attempt_outcome(at=at, error=error, retry_at=retry_at)
        query = self._q(
            "UPDATE {s}.notifications SET attempts = attempts + 1, state = %s, next_attempt_at = %s, "
            "last_error = coalesce(%s, last_error), delivered_at = %s WHERE id = %s AND state = %s"
        )
        params = (
            state.value,
            utc(next_at),
            error,
            utc(delivered) if delivered else None,
            notification_id,
            NotificationState.PENDING.value,
        )
        return self._call(lambda conn: conn.execute(query, params).rowcount == 1)

    def list_notifications(self, *, failed_only: bool = False, limit: int = 100) -> list[Notification]:
        if failed_only:
            return self._notifications(
                "WHERE state = %s ORDER BY created_at DESC, seq DESC LIMIT %s", [NotificationState.FAILED.value, limit]
            )
        return self._notifications("ORDER BY created_at DESC, seq DESC LIMIT %s", [limit])

    def prune_notifications(self, before: datetime) -> int:
        query = self._q("DELETE FROM {s}.notifications WHERE state != %s AND created_at < %s")
        params = (NotificationState.PENDING.value, utc(before))
        return self._call(lambda conn: max(conn.execute(query, params).rowcount, 0))

    # -- no-storm episodes (store/episodes.py) ----------------------------------------------------

    def take_episode(self, rule: str, subject: str, now_ms: int) -> tuple[Episode, int]:
        return self._call(lambda conn: pg_take(conn, self._q, rule, subject))

    def put_episode(self, rule: str, subject: str, episode: Episode) -> None:
        self._call(lambda conn: pg_put(conn, self._q, rule, subject, episode))

    def active_episodes(self, now_ms: int) -> list[EpisodeSummary]:
        return self._call(lambda conn: pg_active(conn, self._q))

    def journal_mark(self, journal: str) -> int:
        return self._call(lambda conn: pg_mark(conn, self._q, journal))

    def put_journal_mark(self, journal: str, seq: int | None) -> None:
        self._call(lambda conn: pg_put_mark(conn, self._q, journal, seq))

    def _notifications(self, tail: LiteralString, params: list[object]) -> list[Notification]:
        columns = ", ".join("payload::text AS payload" if c == "payload" else c for c in NOTIFICATION_COLUMNS)
        query = self._q(f"SELECT {columns} FROM {{s}}.notifications {tail}")  # nosec B608 # table and column names are this module's constants; values are bound parameters
        rows = self._call(lambda conn: conn.execute(query, params).fetchall())
        return [row_to_notification(row, _decode_time) for row in rows]


def idle_transaction_limit(lease_ttl_ms: int) -> str:
    """Session options for a cluster node's connections: the server ends a transaction left idle
    for half a lease (a node frozen between two statements of it), so that its row locks do not
    outlive its leases and hold up the node that rescues its runs."""
    return f"-c idle_in_transaction_session_timeout={max(500, lease_ttl_ms // 2)}"


def with_options(dsn: str, options: str | None) -> str:
    """`dsn` with libpq session `options` added to any it has already."""
    if not options:
        return dsn
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    given = conninfo_to_dict(dsn).get("options")
    return make_conninfo(dsn, options=f"{given} {options}" if given else options)


def _describe_dsn(dsn: str) -> str:
    """The DSN without its password, for messages."""
    try:
        parts = conninfo_to_dict(dsn)
    except psycopg.Error:
        return "(unparsable DSN)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{parts.get('host', 'localhost')}{port}/{parts.get('dbname', '')}"
