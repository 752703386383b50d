"""Run history, schedule state, one-shots and runtime registrations.

`open_store(url)` picks the backend: `sqlite:///path/history.db` (the default,
nothing to install) or `postgresql://…` (needs the `postgres` extra, psycopg 3).
"""

from __future__ import annotations

from pathlib import Path

from supervise.supervisor.store.base import (
    CorruptionRecovery as CorruptionRecovery,
)
from supervise.supervisor.store.base import (
    OneShot as OneShot,
)
from supervise.supervisor.store.base import (
    ScheduleState as ScheduleState,
)
from supervise.supervisor.store.base import (
    Store as Store,
)
from supervise.supervisor.store.base import (
    StoreError as StoreError,
)
from supervise.supervisor.store.sqlite import SqliteStore as SqliteStore

__all__ = ["CorruptionRecovery", "OneShot", "ScheduleState", "SqliteStore", "Store", "StoreError", "open_store"]


def open_store(url: str | Path, *, schema: str = "supervise") -> Store:
    """Open the store at `url` (a path means SQLite); close it when done.

    Raises:
        StoreError: for an unsupported scheme, a missing driver, or a database that
            cannot be opened.
    """
    text = str(url)
    if text.startswith(("postgresql://", "postgres://")):
        try:
            from supervise.supervisor.store.postgres import PostgresStore
        except ImportError as exc:
            raise StoreError(
                "a postgresql:// store needs psycopg 3; install it with pip install 'supervise[postgres]'"
            ) from exc
        dsn, _, query = text.partition("?schema=")  # "postgresql://…/db?schema=name" picks the schema
        return PostgresStore(dsn, schema=query or schema).open()
    if text.startswith("sqlite:///"):
        return SqliteStore(text.removeprefix("sqlite://")).open()
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise StoreError(f'unsupported scheme "{scheme}" (use sqlite:///path or postgresql://…)')
    return SqliteStore(text).open()
