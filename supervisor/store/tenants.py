"""Where each tenant's run history lives: a SQLite file of its own, or a PostgreSQL schema of its own.

Beside the daemon's own store (`history.db`, or the schema of `store`), every
tenant of the HTTP API has a store of the same kind (docs/api.md, "A tenant's
data"):

- SQLite: `<state_dir>/tenants/<tenant>/history.db` (folder 0700, file 0600);
- PostgreSQL: the schema `<schema>_tenant_<tenant>` in the same database.

`TenantPlaces` opens, lists and drops them; `RoutedStore` (routed.py) sends each
service's rows to its tenant's store. `move_tenant_rows` moves the rows a state
directory of an older version kept in the shared store.
"""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, LiteralString, Protocol

from supervise.supervisor.private_files import UnsafePath, ensure_private_dir
from supervise.supervisor.store.base import Notification, ScheduleState, Store, StoreError

if TYPE_CHECKING:
    from psycopg import sql

log = logging.getLogger("supervise.store")

TENANT_RE: Final = re.compile(r"[a-z][a-z0-9_]{0,30}")
"""A tenant's name: also a file name and a PostgreSQL identifier as is."""
FOLDER: Final = "tenants"
SCHEMA_INFIX: Final = "_tenant_"
_ALL: Final = 10_000_000  # "every row" of a service in a migration: the history keeps far fewer


def check_tenant(name: str) -> str:
    """`name` when it is a valid tenant name; raises ValueError naming the rule otherwise."""
    if not TENANT_RE.fullmatch(name):
        raise ValueError(f'tenant must match {TENANT_RE.pattern}, got "{name}"')
    return name


class TenantPlaces(Protocol):
    """Opens, finds and drops the tenants' stores of one deployment."""

    def open(self, tenant: str) -> Store:
        """The tenant's store, created if missing, opened."""
        ...

    def existing(self) -> list[str]:
        """The tenants that have a store, sorted."""
        ...

    def drop(self, tenant: str) -> bool:
        """Delete the tenant's store and everything in it (it must be closed); False when it had none."""
        ...

    def where(self, tenant: str) -> str:
        """The file or schema of the tenant's store, for messages and docs."""
        ...


class SqliteTenants:
    """Each tenant's history in `<root>/<tenant>/history.db` (the folder private, 0700)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, tenant: str) -> Path:
        return self.root / check_tenant(tenant) / "history.db"

    def open(self, tenant: str) -> Store:
        from supervise.supervisor.store.sqlite import SqliteStore

        path = self.path(tenant)
        try:
            ensure_private_dir(self.root, exact=True)
            ensure_private_dir(path.parent, exact=True)
        except (OSError, UnsafePath) as exc:
            problem = f"cannot create the folder of tenant {tenant}'s history {path.parent}: {exc}"
            raise StoreError(problem, exc) from exc
        return SqliteStore(path).open()

    def existing(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            d.name for d in self.root.iterdir() if TENANT_RE.fullmatch(d.name) and (d / "history.db").is_file()
        )

    def drop(self, tenant: str) -> bool:
        folder = self.path(tenant).parent
        if not folder.exists():
            return False
        shutil.rmtree(folder)
        return True

    def where(self, tenant: str) -> str:
        return str(self.path(tenant))


class PostgresTenants:
    """Each tenant's history in the schema `<schema>_tenant_<tenant>` of the same database."""

    def __init__(self, dsn: str, schema: str) -> None:
        self.dsn = dsn
        self.schema = schema

    def schema_of(self, tenant: str) -> str:
        name = f"{self.schema}{SCHEMA_INFIX}{check_tenant(tenant)}"
        if len(name.encode()) > 63:  # PostgreSQL would cut the name and two tenants could share a schema
            raise StoreError(f"schema name {name} is longer than PostgreSQL's 63 bytes; use a shorter store schema")
        return name

    def open(self, tenant: str) -> Store:
        from supervise.supervisor.store.postgres import PostgresStore

        return PostgresStore(self.dsn, schema=self.schema_of(tenant)).open()

    def existing(self) -> list[str]:
        prefix = f"{self.schema}{SCHEMA_INFIX}"
        rows = self._run(
            "SELECT schema_name FROM information_schema.schemata WHERE left(schema_name, %s) = %s",
            (len(prefix), prefix),
        )
        names = (str(r[0])[len(prefix) :] for r in rows)
        return sorted(n for n in names if TENANT_RE.fullmatch(n))

    def drop(self, tenant: str) -> bool:
        """One transaction under the schema's advisory lock (the key its migrations take): a cluster
        node renewing, rescuing or counting the tenant's runs holds the lock shared, so the drop
        waits for that transaction and the node then finds the schema gone (store/cluster.py)."""
        import psycopg
        from psycopg import sql

        schema = self.schema_of(tenant)
        try:
            with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"supervise:{schema}",))
                found = conn.execute("SELECT 1 FROM information_schema.schemata WHERE schema_name = %s", (schema,))
                existed = found.fetchone() is not None
                conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL store: cannot drop tenant schema {schema}: {exc}", exc) from exc
        return existed

    def where(self, tenant: str) -> str:
        return f"schema {self.schema_of(tenant)}"

    def _run(self, query: LiteralString | sql.Composed, params: tuple[object, ...]) -> list[tuple[object, ...]]:
        import psycopg

        try:
            with psycopg.connect(self.dsn, autocommit=True, connect_timeout=5) as conn:
                cur = conn.execute(query, params)
                return list(cur.fetchall()) if cur.description else []
        except psycopg.Error as exc:
            raise StoreError(f"PostgreSQL store: cannot list or drop tenant schemas: {exc}", exc) from exc


def tenant_places(store_url: str | None, state_dir: Path) -> TenantPlaces:
    """The tenants' stores beside the daemon's `store` (None: SQLite in `state_dir`)."""
    if store_url is not None and store_url.startswith(("postgresql://", "postgres://")):
        dsn, _, schema = store_url.partition("?schema=")
        return PostgresTenants(dsn, schema or "supervise")
    return SqliteTenants(Path(state_dir) / FOLDER)


def move_tenant_rows(main: Store, owners: Mapping[str, str], open_target: Callable[[str], Store]) -> int:
    """Move what `main` keeps of tenants' services (`owners`: service -> tenant) into each tenant's
    own store (`open_target(tenant)`, called only for a tenant with something to move); returns
    the runs moved.

    Per tenant, copies runs, schedule states, registrations and outbox rows (inserts that
    ignore rows already there), then deletes them from `main` (`forget_service`): run again
    after a crash between the two, it copies nothing twice and finishes the delete. Each side
    is one transaction when the store offers `batch()` (SQLite). A service with one-shot rows
    of the old format is left for the next start (the scheduler turns them into pending runs
    first).
    """
    by_tenant: dict[str, list[str]] = {}
    for service, tenant in sorted(owners.items()):
        if TENANT_RE.fullmatch(tenant):
            by_tenant.setdefault(tenant, []).append(service)
    if not by_tenant:
        return 0
    registrations = main.list_registrations()
    outbox = main.list_notifications(limit=_ALL)
    moved = 0
    for tenant, services in sorted(by_tenant.items()):
        wanted = set(services)
        notifications = [n for n in outbox if n.service in wanted]
        moved += _move(main, tenant, services, registrations, notifications, open_target)
    return moved


def _move(
    main: Store,
    tenant: str,
    services: list[str],
    registrations: Mapping[str, Mapping[str, Any]],
    notifications: list[Notification],
    open_target: Callable[[str], Store],
) -> int:
    movable = [s for s in services if not main.list_oneshots(s)]
    for service in set(services) - set(movable):
        log.warning("tenant %s: %s keeps old one-shot rows; its history moves at the next start", tenant, service)
    notifications = [n for n in notifications if n.service in set(movable)]
    found = {s: main.list_runs(s, limit=_ALL) for s in movable}
    states = {s: main.get_schedule_state(s) for s in movable}
    registered = [s for s in movable if s in registrations]
    changed = [s for s in movable if states[s] != ScheduleState()]
    if not any(found.values()) and not notifications and not registered and not changed:
        return 0
    target = open_target(tenant)
    with _together(target):
        for service in movable:
            target.insert_runs(list(reversed(found[service])))  # oldest first, as they were inserted
        for service in changed:
            target.put_schedule_state(service, states[service])
        for service in registered:
            target.put_registration(service, registrations[service])
        for notification in notifications:
            target.add_notification(notification)
    with _together(main):
        for service in movable:
            main.forget_service(service)
    moved = sum(len(runs) for runs in found.values())
    log.info("tenant %s: moved %d runs of %d services to its own store", tenant, moved, len(movable))
    return moved


def _together(store: Store) -> AbstractContextManager[object]:
    batch = getattr(store, "batch", None)
    return batch() if batch is not None else nullcontext()
