"""One node's own connection to the cluster's schema: a transaction per call, reconnecting.

The cluster's tables (cluster.py) and its runtime registrations
(cluster_registrations.py) are read and written this way: each call runs in one
transaction on a connection of its own, guarded by a lock (a thread-safe object);
a broken connection is dropped and the next call reconnects; a frozen or
unplugged server fails the call within `timeout_s` instead of hanging it; the
server ends a transaction the node left idle for half a lease
(`postgres.idle_transaction_limit`). Every driver error becomes a `StoreError`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any, LiteralString, TypeVar

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from supervise.supervisor.store.base import StoreError
from supervise.supervisor.store.postgres import idle_transaction_limit, with_options
from supervise.supervisor.store.tenants import SCHEMA_INFIX

_T = TypeVar("_T")


class NodeConnection:
    """The plumbing both cluster stores share; `purpose` names the connection in `pg_stat_activity`."""

    purpose = "supervise"

    def __init__(self, dsn: str, *, schema: str, node: str, lease_ttl_ms: int | None, timeout_s: float) -> None:
        self.dsn = dsn
        self.schema = schema
        self.node = node
        self._timeout_s = timeout_s
        self._options = idle_transaction_limit(lease_ttl_ms) if lease_ttl_ms is not None else None
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def _q(self, text: LiteralString) -> sql.Composed:
        return sql.SQL(text).format(s=sql.Identifier(self.schema))

    def _call(self, op: Callable[[psycopg.Connection[dict[str, Any]]], _T]) -> _T:
        """Run `op` in one transaction; a dead connection is dropped (the next call reconnects)."""
        with self._lock:
            try:
                if self._conn is None or self._conn.closed or self._conn.broken:
                    self._conn = psycopg.connect(
                        with_options(self.dsn, self._options),
                        autocommit=True,
                        row_factory=dict_row,
                        connect_timeout=max(1, int(self._timeout_s)),
                        # a frozen or unplugged server must fail the call, not hang it
                        tcp_user_timeout=int(self._timeout_s * 1000),
                        keepalives=1,
                        keepalives_idle=1,
                        keepalives_interval=1,
                        keepalives_count=2,
                        application_name=f"{self.purpose}:{self.node}"[:63],
                    )
                conn = self._conn
                with conn.transaction():
                    return op(conn)
            except psycopg.Error as exc:
                if self._conn is not None and (self._conn.closed or self._conn.broken):
                    self._conn.close()
                    self._conn = None
                raise StoreError(f"cluster store: {exc}".strip(), exc) from exc

    def _in(self, schema: str, text: LiteralString) -> sql.Composed:
        """`text` with `{s}` naming `schema` (a tenant's, beside this store's own)."""
        return sql.SQL(text).format(s=sql.Identifier(schema))

    def tenant_schema(self, tenant: str) -> str:
        """The schema keeping the API tenant's runs (store/tenants.py)."""
        return f"{self.schema}{SCHEMA_INFIX}{tenant}"

    def _lock_runs(self, conn: psycopg.Connection[dict[str, Any]], schema: str) -> bool:
        """Before touching a tenant's `runs` in this transaction: hold off a drop of its schema until
        the transaction ends (a shared lock on the key the schema's migrations and drops take);
        False when the schema is gone already (dropped through some node)."""
        if schema == self.schema:
            return True
        conn.execute("SELECT pg_advisory_xact_lock_shared(hashtext(%s))", (f"supervise:{schema}",))
        row = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL AS here", ('"{}".runs'.format(schema.replace('"', '""')),)
        ).fetchone()
        return bool(row and row["here"])

    def _create(self, statements: Iterable[LiteralString]) -> None:
        """Run the schema's statements once, under the schema's advisory lock (nodes start together)."""

        def create(conn: psycopg.Connection[dict[str, Any]]) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"supervise:{self.schema}",))
            for statement in statements:
                conn.execute(self._q(statement))

        self._call(create)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
