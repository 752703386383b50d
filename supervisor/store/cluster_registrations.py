"""The cluster's runtime services on PostgreSQL: one row each, revised on every change (docs/cluster.md).

The run store's `registrations` table (name -> spec, shared by every node of the
schema) gains, when a node joins a cluster:

    paused         a scheduled service's pause state, for the whole cluster
    revision       bumped on every change, from one sequence (`registration_revisions`),
                   so a name removed and added again never repeats a revision
    spec_revision  the revision at which the spec last changed
    updated_at, updated_by   when, and through which node
    tenant         the HTTP API tenant that owns the service (null: none); its runs are kept
                   in that tenant's schema on every node (store/cluster_tenants.py)

The pause state of a scheduled service declared in the nodes' config files (not a
runtime service) is a row of `config_pauses` (name, paused, revision from the same
sequence, updated_at, updated_by), applied by every node whose config declares a
scheduled service of that name.

Every change is one transaction that ends with a NOTIFY on
`supervise_registrations_<schema>`; nodes LISTEN to apply it at once and poll
every `renew_every` for what a dropped notification missed. Removing a service
also cancels its occurrences that have not started (pending, due, queued,
buffered), for every node.

Synchronous, on its own connection; the daemon calls it from a thread.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final, LiteralString

import psycopg
from psycopg import sql

from supervise.supervisor.core.registration_sync import Stored
from supervise.supervisor.core.runs import RunState
from supervise.supervisor.store.node_connection import NodeConnection

log = logging.getLogger("supervise.cluster")

WAITING: Final = [s.value for s in (RunState.PENDING, RunState.DUE, RunState.QUEUED, RunState.BUFFERED)]
REMOVED_REASON: Final = "the service was removed"

_SCHEMA: Final[tuple[LiteralString, ...]] = (
    "CREATE SEQUENCE IF NOT EXISTS {s}.registration_revisions",
    "ALTER TABLE {s}.registrations ADD COLUMN IF NOT EXISTS paused boolean NOT NULL DEFAULT false",
    "ALTER TABLE {s}.registrations ADD COLUMN IF NOT EXISTS revision bigint NOT NULL DEFAULT 0",
    "ALTER TABLE {s}.registrations ADD COLUMN IF NOT EXISTS spec_revision bigint NOT NULL DEFAULT 0",
    "ALTER TABLE {s}.registrations ADD COLUMN IF NOT EXISTS updated_at timestamptz",
    "ALTER TABLE {s}.registrations ADD COLUMN IF NOT EXISTS updated_by text",
    "CREATE TABLE IF NOT EXISTS {s}.config_pauses (name text PRIMARY KEY, paused boolean NOT NULL, "
    "revision bigint NOT NULL, updated_at timestamptz NOT NULL, updated_by text NOT NULL)",
    "ALTER TABLE {s}.registrations ADD COLUMN IF NOT EXISTS tenant text",
)


@dataclass(frozen=True, slots=True)
class Registration:
    """A runtime service's row: its spec (the keys of a [services.NAME] table) and revisions."""

    name: str
    spec: dict[str, Any]
    stored: Stored
    updated_by: str | None = None
    tenant: str | None = None


@dataclass(frozen=True, slots=True)
class Removal:
    """What removing a service did: whether its row existed, and how many waiting runs were cancelled."""

    existed: bool
    cancelled: int


class RegistrationStore(NodeConnection):
    """The `registrations` rows of one schema, written by one node.

    Args:
        dsn: libpq connection string or URL.
        schema: the run store's schema (its `registrations` table must exist).
        node: this node's name (recorded as `updated_by`).
    """

    purpose = "supervise-registrations"

    def __init__(
        self, dsn: str, *, schema: str, node: str, timeout_s: float = 2.0, lease_ttl_ms: int | None = None
    ) -> None:
        super().__init__(dsn, schema=schema, node=node, lease_ttl_ms=lease_ttl_ms, timeout_s=timeout_s)
        self._sequence = '"{}".registration_revisions'.format(schema.replace('"', '""'))

    @property
    def channel(self) -> str:
        """The NOTIFY channel of changes (the payload is `node revision name`, for the logs)."""
        return f"supervise_registrations_{self.schema}"[:63]

    def open(self) -> RegistrationStore:
        """Add the revision columns and sequence if missing."""
        self._create(_SCHEMA)
        return self

    # -- reads --------------------------------------------------------------------------------

    def revisions(self) -> dict[str, Stored]:
        """Every row's revisions and pause state, without the specs (the cheap poll)."""
        query = self._q("SELECT name, revision, spec_revision, paused FROM {s}.registrations")
        rows = self._call(lambda conn: conn.execute(query).fetchall())
        return {r["name"]: Stored(int(r["revision"]), int(r["spec_revision"]), bool(r["paused"])) for r in rows}

    def read(self, names: list[str] | None = None) -> dict[str, Registration]:
        """The rows of `names` (every row with None), with their specs."""
        if names is not None and not names:
            return {}
        query = self._q(
            "SELECT name, spec, revision, spec_revision, paused, updated_by, tenant FROM {s}.registrations "
            "WHERE %s::text[] IS NULL OR name = ANY(%s::text[])"
        )
        params = (names, names)
        rows = self._call(lambda conn: conn.execute(query, params).fetchall())
        return {
            r["name"]: Registration(
                r["name"],
                dict(r["spec"]),
                Stored(int(r["revision"]), int(r["spec_revision"]), bool(r["paused"])),
                r["updated_by"],
                r["tenant"],
            )
            for r in rows
        }

    # -- changes: one transaction each, then NOTIFY --------------------------------------------

    def _notify(self, conn: psycopg.Connection[dict[str, Any]], revision: int, name: str) -> None:
        conn.execute("SELECT pg_notify(%s, %s)", (self.channel, f"{self.node} {revision} {name}"))

    def add(self, name: str, spec: Mapping[str, Any], *, tenant: str | None = None) -> Stored | Registration:
        """Insert a new row (owned by API `tenant`, or by none): its `Stored` revisions, or the
        `Registration` already there under that name (nothing changed)."""
        insert = self._q(
            "INSERT INTO {s}.registrations (name, spec, paused, revision, spec_revision, updated_at, updated_by, "
            "tenant) SELECT %s, %s::jsonb, false, r, r, now(), %s, %s FROM nextval(%s::regclass) AS n(r) "
            "ON CONFLICT (name) DO NOTHING RETURNING revision"
        )
        seq = self._sequence

        def add(conn: psycopg.Connection[dict[str, Any]]) -> Stored | None:
            row = conn.execute(insert, (name, json.dumps(dict(spec)), self.node, tenant, seq)).fetchone()
            if row is None:
                return None
            revision = int(row["revision"])
            self._notify(conn, revision, name)
            return Stored(revision, revision, False)

        done = self._call(add)
        if done is not None:
            return done
        existing = self.read([name]).get(name)
        return existing if existing is not None else self.add(name, spec, tenant=tenant)  # removed meanwhile

    def update(self, name: str, spec: Mapping[str, Any], *, expected: int) -> Stored | None:
        """Replace the spec of a row whose spec is still at revision `expected` (compare-and-set;
        a pause meanwhile does not count): its new `Stored`, or None when the row is gone or
        another node changed its spec since."""
        query = self._q(
            "UPDATE {s}.registrations SET spec = %s::jsonb, revision = r, spec_revision = r, updated_at = now(), "
            "updated_by = %s FROM nextval(%s::regclass) AS n(r) WHERE name = %s AND spec_revision = %s "
            "RETURNING revision, paused"
        )
        seq = self._sequence

        def update(conn: psycopg.Connection[dict[str, Any]]) -> Stored | None:
            row = conn.execute(query, (json.dumps(dict(spec)), self.node, seq, name, expected)).fetchone()
            if row is None:
                return None
            revision = int(row["revision"])
            self._notify(conn, revision, name)
            return Stored(revision, revision, bool(row["paused"]))

        return self._call(update)

    def set_paused(self, name: str, paused: bool) -> Stored | None:
        """Pause or resume a scheduled service for the whole cluster: its new `Stored`, or None
        when there is no such row. Setting the state it has already changes nothing."""
        query = self._q(
            "UPDATE {s}.registrations SET paused = %s, revision = nextval(%s::regclass), updated_at = now(), "
            "updated_by = %s WHERE name = %s AND paused <> %s RETURNING revision, spec_revision, paused"
        )
        same = self._q("SELECT revision, spec_revision, paused FROM {s}.registrations WHERE name = %s")
        seq = self._sequence

        def pause(conn: psycopg.Connection[dict[str, Any]]) -> Stored | None:
            row = conn.execute(query, (paused, seq, self.node, name, paused)).fetchone()
            if row is not None:
                self._notify(conn, int(row["revision"]), name)
            else:
                row = conn.execute(same, (name,)).fetchone()
            if row is None:
                return None
            return Stored(int(row["revision"]), int(row["spec_revision"]), bool(row["paused"]))

        return self._call(pause)

    def config_pauses(self) -> dict[str, Stored]:
        """The pause state of config-declared scheduled services, by name (`spec_revision` is
        the revision too: there is no spec)."""
        query = self._q("SELECT name, paused, revision FROM {s}.config_pauses")
        rows = self._call(lambda conn: conn.execute(query).fetchall())
        return {r["name"]: Stored(int(r["revision"]), int(r["revision"]), bool(r["paused"])) for r in rows}

    def set_config_paused(self, name: str, paused: bool) -> Stored:
        """Pause or resume a config-declared scheduled service for the whole cluster: the row's
        new `Stored` (unchanged when it already had that state: no new revision, no NOTIFY)."""
        upsert = self._q(
            "INSERT INTO {s}.config_pauses AS p VALUES (%s, %s, nextval(%s::regclass), now(), %s) "
            "ON CONFLICT (name) DO UPDATE SET paused = EXCLUDED.paused, revision = EXCLUDED.revision, "
            "updated_at = EXCLUDED.updated_at, updated_by = EXCLUDED.updated_by WHERE p.paused <> EXCLUDED.paused "
            "RETURNING revision"
        )
        same = self._q("SELECT revision FROM {s}.config_pauses WHERE name = %s")
        seq = self._sequence

        def pause(conn: psycopg.Connection[dict[str, Any]]) -> Stored:
            row = conn.execute(upsert, (name, paused, seq, self.node)).fetchone()
            if row is not None:
                self._notify(conn, int(row["revision"]), name)
            else:
                row = conn.execute(same, (name,)).fetchone()
                assert row is not None  # the conflicting row, with this state already
            revision = int(row["revision"])
            return Stored(revision, revision, paused)

        return self._call(pause)

    def remove(self, name: str) -> Removal:
        """Delete a row, its schedule state, and cancel its runs that have not started, on every node
        (in its tenant's schema, for a service an API tenant owns)."""
        delete = self._q("DELETE FROM {s}.registrations WHERE name = %s RETURNING revision, tenant")
        cancel: LiteralString = (
            "UPDATE {s}.runs SET state = 'cancelled', finished_at = now(), reason = %s "
            "WHERE service = %s AND state = ANY(%s)"
        )
        forget: LiteralString = "DELETE FROM {s}.schedules WHERE service = %s"

        def remove(conn: psycopg.Connection[dict[str, Any]]) -> Removal:
            row = conn.execute(delete, (name,)).fetchone()
            if row is None:
                return Removal(existed=False, cancelled=0)
            cancelled = 0
            schema = self.schema if row["tenant"] is None else self.tenant_schema(row["tenant"])
            if self._lock_runs(conn, schema):
                cancelled = conn.execute(self._in(schema, cancel), (REMOVED_REASON, name, WAITING)).rowcount
                conn.execute(self._in(schema, forget), (name,))
            self._notify(conn, int(row["revision"]), name)
            return Removal(existed=True, cancelled=max(cancelled, 0))

        return self._call(remove)

    def owners(self) -> dict[str, str]:
        """Every runtime service an API tenant owns: name -> tenant."""
        query = self._q("SELECT name, tenant FROM {s}.registrations WHERE tenant IS NOT NULL")
        return {str(r["name"]): str(r["tenant"]) for r in self._call(lambda conn: conn.execute(query).fetchall())}

    def tenant_names(self, tenant: str) -> list[str]:
        """The runtime services the API `tenant` owns, cluster-wide."""
        query = self._q("SELECT name FROM {s}.registrations WHERE tenant = %s ORDER BY name")
        return [str(r["name"]) for r in self._call(lambda conn: conn.execute(query, (tenant,)).fetchall())]

    def cancel_orphans(self, name: str, tenant: str | None = None) -> int:
        """Cancel the runs of `name` (kept in `tenant`'s schema, or the main one) that have not
        started, if it has no row (any more): those a node inserted by its schedule after the
        removal, before it applied it. Returns how many."""
        schema = self.schema if tenant is None else self.tenant_schema(tenant)
        query = sql.SQL(
            "UPDATE {r}.runs SET state = 'cancelled', finished_at = now(), reason = %s "
            "WHERE service = %s AND state = ANY(%s) AND NOT EXISTS (SELECT 1 FROM {s}.registrations WHERE name = %s)"
        ).format(r=sql.Identifier(schema), s=sql.Identifier(self.schema))

        def cancel(conn: psycopg.Connection[dict[str, Any]]) -> int:
            if not self._lock_runs(conn, schema):
                return 0
            return max(conn.execute(query, (REMOVED_REASON, name, WAITING, name)).rowcount, 0)

        return self._call(cancel)

    def listen(self, wake: Callable[[], None], stop: threading.Event) -> None:
        """Block (in a thread) calling `wake()` on every change another node notified, until `stop` is set.
        Reconnects after a second when the connection drops (and wakes then: a change may
        have been missed; polling covers it anyway)."""
        while not stop.is_set():
            try:
                with psycopg.connect(self.dsn, autocommit=True, connect_timeout=2) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    wake()
                    mine = f"{self.node} "
                    while not stop.is_set():
                        for note in conn.notifies(timeout=0.5):
                            if not note.payload.startswith(mine):  # this node's own change is applied already
                                wake()
            except psycopg.Error as e:
                log.debug("cluster: listening for service changes: %s; again in 1 s", e)
                stop.wait(1.0)
