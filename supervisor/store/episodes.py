"""No-storm episodes in the store: one row per (rule, subject), next to the outbox.

The notifier reads an episode with `take_episode` (a row lock on PostgreSQL, the
write lock on SQLite), decides with the pure policy (core/alerts.py), and writes
it back with `put_episode` in the same transaction as the outbox rows it causes,
so a restarted supervisor, or another node sharing the store, goes on with the
same episode and no two of them open one at once. Times are wall-clock
milliseconds since the epoch; on PostgreSQL they are the database's `now()`,
never a node's clock. The SQL of both backends is here; the stores call it on
their own connection (inside `batch()` when the caller groups writes).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, LiteralString, Protocol

from supervise.supervisor.core.alerts import Episode

if TYPE_CHECKING:  # psycopg is imported only by a daemon with a PostgreSQL store
    from psycopg import sql

__all__ = [
    "EPISODE_SCHEMA_PG",
    "EPISODE_SCHEMA_SQLITE",
    "EpisodeStore",
    "EpisodeSummary",
]

EPISODE_SCHEMA_SQLITE: Final = (
    """CREATE TABLE IF NOT EXISTS alert_episodes (
        rule TEXT NOT NULL,
        subject TEXT NOT NULL,
        number INTEGER NOT NULL,
        failing_since_ms INTEGER,
        failures INTEGER NOT NULL,
        last_sent_ms INTEGER,
        held TEXT NOT NULL,
        held_total INTEGER NOT NULL,
        sent INTEGER NOT NULL,
        min_interval_ms INTEGER NOT NULL,
        PRIMARY KEY (rule, subject)
    )""",
)
EPISODE_SCHEMA_PG: Final[tuple[LiteralString, ...]] = (
    """CREATE TABLE IF NOT EXISTS {s}.alert_episodes (
        rule text NOT NULL,
        subject text NOT NULL,
        number integer NOT NULL,
        failing_since_ms bigint,
        failures integer NOT NULL,
        last_sent_ms bigint,
        held jsonb NOT NULL,
        held_total integer NOT NULL,
        sent integer NOT NULL,
        min_interval_ms bigint NOT NULL,
        PRIMARY KEY (rule, subject)
    )""",
)
_COLUMNS: Final = "number, failing_since_ms, failures, last_sent_ms, held, held_total, sent, min_interval_ms"
_ACTIVE: Final = "failing_since_ms IS NOT NULL OR held_total > 0"


@dataclass(frozen=True, slots=True)
class EpisodeSummary:
    """An episode that matters to the notifier's pass: open, or holding events."""

    rule: str
    subject: str
    failing: bool
    due: bool  # something is held and min_interval has passed since the last message


class EpisodeStore(Protocol):
    """The episode methods of a `Store`."""

    def take_episode(self, rule: str, subject: str, now_ms: int) -> tuple[Episode, int]:
        """The episode of (rule, subject), locked until the end of the transaction, and the
        store's time (`now_ms` on SQLite, the database's `now()` on PostgreSQL). Call it
        inside `batch()`: another supervisor taking the same episode waits for the commit."""
        ...

    def put_episode(self, rule: str, subject: str, episode: Episode) -> None:
        """Write the episode back (in the transaction of `take_episode`)."""
        ...

    def active_episodes(self, now_ms: int) -> list[EpisodeSummary]:
        """Episodes that are open or hold events, with whether a digest is due (the store's time)."""
        ...


def _episode(row: Any) -> Episode:
    held = row["held"]
    return Episode(
        number=row["number"],
        failing_since_ms=row["failing_since_ms"],
        failures=row["failures"],
        last_sent_ms=row["last_sent_ms"],
        held=json.loads(held) if isinstance(held, str) else dict(held),
        sent=row["sent"],
        min_interval_ms=row["min_interval_ms"],
    )


def _values(rule: str, subject: str, e: Episode) -> tuple[object, ...]:
    held = json.dumps(dict(e.held), sort_keys=True)
    return (rule, subject, e.number, e.failing_since_ms, e.failures, e.last_sent_ms, held, e.held_total, e.sent,
            e.min_interval_ms)  # fmt: skip


def _summaries(rows: list[Any], now_ms: int) -> list[EpisodeSummary]:
    found = []
    for row in rows:
        due = row["held_total"] > 0 and (row["last_sent_ms"] or 0) + row["min_interval_ms"] <= now_ms
        found.append(EpisodeSummary(row["rule"], row["subject"], row["failing_since_ms"] is not None, due))
    return found


# -- SQLite: inside BEGIN IMMEDIATE the database's write lock is held --------------------------


def sqlite_take(conn: sqlite3.Connection, rule: str, subject: str) -> Episode:
    row = conn.execute(
        f"SELECT {_COLUMNS} FROM alert_episodes WHERE rule = ? AND subject = ?",  # nosec B608 # constant column list
        (rule, subject),
    ).fetchone()
    return Episode() if row is None else _episode(row)


def sqlite_put(conn: sqlite3.Connection, rule: str, subject: str, episode: Episode) -> None:
    conn.execute(
        f"INSERT OR REPLACE INTO alert_episodes (rule, subject, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",  # nosec B608 # constant column list
        _values(rule, subject, episode),
    )


def sqlite_active(conn: sqlite3.Connection, now_ms: int) -> list[EpisodeSummary]:
    rows = conn.execute(f"SELECT rule, subject, {_COLUMNS} FROM alert_episodes WHERE {_ACTIVE}").fetchall()  # nosec B608 # constant clauses
    return _summaries(rows, now_ms)


# -- PostgreSQL: a row lock; the row is inserted first so that there is one to lock ------------

Quote = Callable[[LiteralString], "sql.Composed"]
_NOW_MS: Final = "(extract(epoch FROM now()) * 1000)::bigint"


def pg_take(conn: Any, q: Quote, rule: str, subject: str) -> tuple[Episode, int]:
    # A second taker's INSERT waits for the first one's commit, then its SELECT ... FOR UPDATE
    # reads the committed episode: two supervisors never both find "no episode" and open one.
    conn.execute(
        q(
            "INSERT INTO {s}.alert_episodes (rule, subject, number, failures, held, held_total, sent, "
            "min_interval_ms) VALUES (%s, %s, 0, 0, '{{}}'::jsonb, 0, 0, 0) ON CONFLICT DO NOTHING"
        ),
        (rule, subject),
    )
    row = conn.execute(
        q(
            "SELECT " + _COLUMNS + ", " + _NOW_MS + " AS now_ms FROM {s}.alert_episodes "  # nosec B608 # constant column list
            "WHERE rule = %s AND subject = %s FOR UPDATE"
        ),
        (rule, subject),
    ).fetchone()
    return _episode(row), int(row["now_ms"])


def pg_put(conn: Any, q: Quote, rule: str, subject: str, episode: Episode) -> None:
    conn.execute(
        q(
            "INSERT INTO {s}.alert_episodes (rule, subject, " + _COLUMNS + ") "  # nosec B608 # constant column list
            "VALUES (%s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s, %s) ON CONFLICT (rule, subject) DO UPDATE SET "
            "number = EXCLUDED.number, failing_since_ms = EXCLUDED.failing_since_ms, failures = EXCLUDED.failures, "
            "last_sent_ms = EXCLUDED.last_sent_ms, held = EXCLUDED.held, held_total = EXCLUDED.held_total, "
            "sent = EXCLUDED.sent, min_interval_ms = EXCLUDED.min_interval_ms"
        ),
        _values(rule, subject, episode),
    )


def pg_active(conn: Any, q: Quote) -> list[EpisodeSummary]:
    row = conn.execute("SELECT " + _NOW_MS + " AS now_ms").fetchone()
    rows = conn.execute(
        q("SELECT rule, subject, " + _COLUMNS + " FROM {s}.alert_episodes WHERE " + _ACTIVE)  # nosec B608 # constant clauses
    ).fetchall()
    return _summaries(rows, int(row["now_ms"]))
