"""How far the store has a supervisor's notifications journal (daemon/outbox_journal.py).

One row per journal: the highest sequence number whose episode and outbox rows
are committed, written in the same transaction as those rows. The SQL of both
backends; the stores call it on their own connection.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, LiteralString, Protocol

if TYPE_CHECKING:  # psycopg is imported only by a daemon with a PostgreSQL store
    from psycopg import sql

MARKS_SCHEMA_SQLITE: Final = (
    "CREATE TABLE IF NOT EXISTS journal_marks (journal TEXT PRIMARY KEY, seq INTEGER NOT NULL)",
)
MARKS_SCHEMA_PG: Final[tuple[LiteralString, ...]] = (
    "CREATE TABLE IF NOT EXISTS {s}.journal_marks (journal text PRIMARY KEY, seq bigint NOT NULL)",
)


class JournalMarks(Protocol):
    """The journal-mark methods of a `Store`."""

    def journal_mark(self, journal: str) -> int:
        """The highest sequence number of `journal` committed (0 when none)."""
        ...

    def put_journal_mark(self, journal: str, seq: int | None) -> None:
        """Set the mark (in the transaction of the rows it stands for); None forgets the journal."""
        ...


def sqlite_mark(conn: sqlite3.Connection, journal: str) -> int:
    row = conn.execute("SELECT seq FROM journal_marks WHERE journal = ?", (journal,)).fetchone()
    return 0 if row is None else int(row[0])


def sqlite_put_mark(conn: sqlite3.Connection, journal: str, seq: int | None) -> None:
    if seq is None:
        conn.execute("DELETE FROM journal_marks WHERE journal = ?", (journal,))
    else:
        conn.execute("INSERT OR REPLACE INTO journal_marks VALUES (?, ?)", (journal, seq))


Quote = Callable[[LiteralString], "sql.Composed"]


def pg_mark(conn: Any, q: Quote, journal: str) -> int:
    row = conn.execute(q("SELECT seq FROM {s}.journal_marks WHERE journal = %s"), (journal,)).fetchone()
    return 0 if row is None else int(row["seq"])


def pg_put_mark(conn: Any, q: Quote, journal: str, seq: int | None) -> None:
    if seq is None:
        conn.execute(q("DELETE FROM {s}.journal_marks WHERE journal = %s"), (journal,))
    else:
        conn.execute(
            q("INSERT INTO {s}.journal_marks VALUES (%s, %s) ON CONFLICT (journal) DO UPDATE SET seq = EXCLUDED.seq"),
            (journal, seq),
        )
