"""The API's bearer tokens in cluster mode: one `tokens` table in the cluster's PostgreSQL schema.

In cluster mode (docs/cluster.md) a token is the cluster's, not a node's: created,
listed and revoked through any node or with the CLI against any node's config, it
authenticates on every node. The table has the columns of `api.db`'s own `tokens`
table (store.py), the SHA-256 of the secret and never the secret itself.

A node reads the table into memory and reads it again when its copy is older than
`max_age_s` (1 s), or when a request names a token id it does not know and the copy
is older than `miss_age_s` (50 ms): a revoke through any node is refused everywhere
within a second, and a token created through any node is usable at once. Those reads
run on the daemon's event loop, on this object's own connection (one short SELECT);
when the store cannot be read, `find` raises StoreError and the API answers 503.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Final, LiteralString

from supervise.supervisor.store.node_connection import NodeConnection

if TYPE_CHECKING:
    import psycopg


log = logging.getLogger("supervise.api")

COLUMNS: Final = ("id", "name", "role", "tenant", "created_at", "expires_at", "revoked_at", "last_used_at", "hash")
"""The columns a row is read with, in this order (store.py's `verify` order)."""

_SCHEMA: Final[tuple[LiteralString, ...]] = (
    "CREATE SCHEMA IF NOT EXISTS {s}",
    """CREATE TABLE IF NOT EXISTS {s}.tokens (
        id text PRIMARY KEY, name text NOT NULL UNIQUE, hash text NOT NULL, role text NOT NULL,
        tenant text, created_at double precision NOT NULL, expires_at double precision,
        revoked_at double precision, last_used_at double precision
    )""",
    # The ids of tokens deleted with their tenant (nothing else of them), so that a copy left in a
    # node's api.db is not copied in again at its next start
    "CREATE TABLE IF NOT EXISTS {s}.tokens_deleted (id text PRIMARY KEY, deleted_at double precision NOT NULL)",
)
_SELECT: Final = "SELECT id, name, role, tenant, created_at, expires_at, revoked_at, last_used_at, hash FROM {s}.tokens"

Row = tuple[Any, ...]


def cluster_location(url: str) -> tuple[str, str]:
    """(dsn, schema) of `[cluster] store` (`postgresql://…[?schema=name]`, default schema `supervise`),
    as `open_store` reads it."""
    dsn, _, schema = url.partition("?schema=")
    return dsn, schema or "supervise"


class ClusterTokens(NodeConnection):
    """The cluster's `tokens` table, seen by one node (or by the CLI); thread-safe."""

    purpose = "supervise-tokens"

    def __init__(
        self,
        dsn: str,
        *,
        schema: str,
        node: str,
        timeout_s: float = 2.0,
        max_age_s: float = 1.0,
        miss_age_s: float = 0.05,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(dsn, schema=schema, node=node, lease_ttl_ms=None, timeout_s=timeout_s)
        self.max_age_s = max_age_s
        self.miss_age_s = miss_age_s
        self._clock = clock
        self._copy: dict[str, Row] = {}
        self._read_at: float | None = None

    def open(self) -> ClusterTokens:
        """Create the schema and the table if missing (under the schema's advisory lock)."""
        self._create(_SCHEMA)
        return self

    # -- reads -------------------------------------------------------------------------

    def rows(self) -> list[Row]:
        """Every row, oldest first, read now (COLUMNS order)."""

        def read(conn: psycopg.Connection[dict[str, Any]]) -> list[Row]:
            found = conn.execute(self._q(_SELECT + " ORDER BY created_at, id")).fetchall()
            return [tuple(r[c] for c in COLUMNS) for r in found]

        return self._call(read)

    def find(self, token_id: str) -> Row | None:
        """The row of `token_id` from the in-memory copy, read again when too old (module docstring)."""
        now = self._clock()
        age = None if self._read_at is None else now - self._read_at
        if age is None or age >= self.max_age_s or (token_id not in self._copy and age >= self.miss_age_s):
            self._copy = {r[0]: r for r in self.rows()}
            self._read_at = now
        return self._copy.get(token_id)

    # -- writes ------------------------------------------------------------------------

    def insert(self, row: Row) -> bool:
        """Add a row (COLUMNS order); False when its name (or id) is taken."""

        def insert(conn: psycopg.Connection[dict[str, Any]]) -> bool:
            cur = conn.execute(
                self._q(
                    "INSERT INTO {s}.tokens (id, name, role, tenant, created_at, expires_at, revoked_at,"
                    " last_used_at, hash) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING"
                ),
                row,
            )
            return cur.rowcount > 0

        added = self._call(insert)
        self._read_at = None  # this node sees its own writes at once
        return added

    def revoke(self, name_or_id: str, now: float) -> bool:
        """Revoke the active token named or with id `name_or_id`; False when there is none."""

        def revoke(conn: psycopg.Connection[dict[str, Any]]) -> bool:
            cur = conn.execute(
                self._q("UPDATE {s}.tokens SET revoked_at = %s WHERE (name = %s OR id = %s) AND revoked_at IS NULL"),
                (now, name_or_id, name_or_id),
            )
            return cur.rowcount > 0

        done = self._call(revoke)
        self._read_at = None
        return done

    def note_used(self, token_id: str, now: float) -> None:
        """Set the copy's last use of `token_id` (until the next read), so that the requests
        before `touch` is written do not each ask for it."""
        row = self._copy.get(token_id)
        if row is not None:
            self._copy[token_id] = (*row[:7], now, *row[8:])

    def touch(self, token_id: str, now: float) -> None:
        """Record that the token was used at `now`."""
        self._call(
            lambda conn: conn.execute(self._q("UPDATE {s}.tokens SET last_used_at = %s WHERE id = %s"), (now, token_id))
        )

    def delete_tenant(self, tenant: str) -> list[str]:
        """Delete the tenant's tokens, keeping their ids alone in `tokens_deleted`; returns the ids."""

        def delete(conn: psycopg.Connection[dict[str, Any]]) -> list[str]:
            found = conn.execute(self._q("DELETE FROM {s}.tokens WHERE tenant = %s RETURNING id"), (tenant,))
            ids = [str(r["id"]) for r in found.fetchall()]
            for token_id in ids:
                conn.execute(
                    self._q("INSERT INTO {s}.tokens_deleted (id, deleted_at) VALUES (%s, %s) ON CONFLICT DO NOTHING"),
                    (token_id, time.time()),
                )
            return ids

        ids = self._call(delete)
        self._read_at = None
        return ids

    def copy_in(self, rows: Sequence[Row]) -> list[str]:
        """Copy a node's `api.db` tokens (COLUMNS order) into the table, by name, in one transaction.

        A name not in the table is added, unless its id was deleted with its tenant (`tokens_deleted`);
        a name there with the same hash is kept, and revoked if the node's copy is revoked; a name
        there with another hash (or a clash of ids) is kept as the table has it, and its name is
        returned (the caller warns). Idempotent.
        """

        def copy(conn: psycopg.Connection[dict[str, Any]]) -> list[str]:
            clashes = []
            gone = {r["id"] for r in conn.execute(self._q("SELECT id FROM {s}.tokens_deleted")).fetchall()}
            for row in [r for r in rows if r[0] not in gone]:
                conn.execute(
                    self._q(
                        "INSERT INTO {s}.tokens (id, name, role, tenant, created_at, expires_at, revoked_at,"
                        " last_used_at, hash) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s) ON CONFLICT DO NOTHING"
                    ),
                    row,
                )
                there = conn.execute(self._q("SELECT id, hash FROM {s}.tokens WHERE name = %s"), (row[1],)).fetchone()
                if there is None or there["id"] != row[0] or there["hash"] != row[8]:
                    clashes.append(row[1])
                elif row[6] is not None:
                    conn.execute(
                        self._q("UPDATE {s}.tokens SET revoked_at = %s WHERE id = %s AND revoked_at IS NULL"),
                        (row[6], row[0]),
                    )
            return clashes

        clashes = self._call(copy)
        self._read_at = None
        return clashes
