"""Cluster mode: move tenants' rows an older version kept in the shared schema into their own schemas.

Before tenants had schemas of their own in cluster mode, every tenant's runs,
schedule states, one-shots, outbox rows and no-storm episodes were in the cluster
store's schema, and the tenant of a service was recorded only in the `api.db` of
the node it was added through. At start each node moves the rows of the services
it knows a tenant of (its `api.db`, and the registrations' `tenant` column), and
records that tenant in the registration (where it had none), so the other nodes
learn it too (at their next start, or when the row changes).

Per tenant, one transaction on the database, under an advisory lock of the
cluster's schema: several nodes starting at once move each row once (the others
wait, then find nothing left); a crash rolls the whole tenant back and the next
start moves it again. Runs in flight under a live lease stay where they are (their
holder renews them there) and are moved by a later start once they ended.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Final, LiteralString

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from supervise.supervisor.store.base import NOTIFICATION_COLUMNS, RUN_COLUMNS, StoreError
from supervise.supervisor.store.tenants import SCHEMA_INFIX, TENANT_RE

log = logging.getLogger("supervise.store")

_RUNS: Final = (*RUN_COLUMNS, "family", "epoch", "expires_at")

# (table, its row id, the column naming the service, the columns copied): a row is deleted from
# the shared schema only once copied (one the tenant's schema has already, by id or occurrence, stays)
_BY_ID: Final[tuple[tuple[LiteralString, LiteralString, tuple[str, ...], LiteralString], ...]] = (
    ("runs", "run_id", _RUNS, "NOT (state IN ('starting', 'running') AND expires_at > now())"),
    ("notifications", "id", NOTIFICATION_COLUMNS, "true"),
)
# (table, the column naming the service): the tenant's own row wins over the shared one
_BY_SERVICE: Final[tuple[tuple[LiteralString, LiteralString], ...]] = (
    ("schedules", "service"),
    ("oneshots", "service"),
    ("alert_episodes", "subject"),
)


def move_cluster_tenant_rows(dsn: str, schema: str, owners: Mapping[str, str]) -> dict[str, int]:
    """Move the shared schema's rows of tenants' services (`owners`: service -> tenant) into each
    tenant's schema (which must exist: opened by the node first). Returns the runs moved per tenant.

    Raises:
        StoreError: the database refused; nothing of the tenant being moved changed.
    """
    by_tenant: dict[str, list[str]] = {}
    for service, tenant in sorted(owners.items()):
        if TENANT_RE.fullmatch(tenant):
            by_tenant.setdefault(tenant, []).append(service)
    moved: dict[str, int] = {}
    if not by_tenant:
        return moved
    try:
        with psycopg.connect(dsn, autocommit=True, connect_timeout=5, row_factory=dict_row) as conn:
            for tenant, services in by_tenant.items():
                count = _move(conn, schema, f"{schema}{SCHEMA_INFIX}{tenant}", tenant, services)
                if count:
                    moved[tenant] = count
    except psycopg.Error as exc:
        raise StoreError(f"cluster store: cannot move tenants' rows to their schemas: {exc}", exc) from exc
    return moved


def _move(conn: psycopg.Connection[dict[str, Any]], main: str, own: str, tenant: str, services: list[str]) -> int:
    m, t = sql.Identifier(main), sql.Identifier(own)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"supervise:tenant-move:{main}",))
        here = conn.execute("SELECT to_regclass(%s) IS NOT NULL AS here", (f'"{own}".runs',)).fetchone()
        if not (here and here["here"]):
            log.warning("tenant %s: no schema %s to move its rows to (yet); they stay where they are", tenant, own)
            return 0
        conn.execute(
            sql.SQL("UPDATE {}.registrations SET tenant = %s WHERE name = ANY(%s) AND tenant IS NULL").format(m),
            (tenant, services),
        )
        runs = 0
        for table, row_id, columns, movable in _BY_ID:
            cols = sql.SQL(", ").join(map(sql.Identifier, columns))
            query = sql.SQL(
                "WITH copied AS (INSERT INTO {t}.{table} ({cols}) SELECT {cols} FROM {m}.{table} "
                "WHERE service = ANY(%s) AND {movable} ORDER BY seq ON CONFLICT DO NOTHING RETURNING {id}) "
                "DELETE FROM {m}.{table} WHERE {id} IN (SELECT {id} FROM copied)"
            ).format(
                t=t, m=m, table=sql.Identifier(table), cols=cols, movable=sql.SQL(movable), id=sql.Identifier(row_id)
            )
            count = max(conn.execute(query, (services,)).rowcount, 0)
            runs = count if table == "runs" else runs
        for table, key in _BY_SERVICE:
            name, column = sql.Identifier(table), sql.Identifier(key)
            conn.execute(
                sql.SQL(
                    "INSERT INTO {t}.{table} SELECT * FROM {m}.{table} WHERE {key} = ANY(%s) ON CONFLICT DO NOTHING"
                ).format(t=t, m=m, table=name, key=column),
                (services,),
            )
            conn.execute(
                sql.SQL("DELETE FROM {m}.{table} WHERE {key} = ANY(%s)").format(m=m, table=name, key=column),
                (services,),
            )
    if runs:
        log.info("tenant %s: moved %d runs of %d services to its schema %s", tenant, runs, len(services), own)
    return runs
