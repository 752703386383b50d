"""The daemon's run history with a store per tenant: opened at start, a tenant's store dropped on request.

The history the scheduler writes to is a `RoutedStore` (store/routed.py): the
daemon's own store, plus one store per tenant of the HTTP API (a SQLite file
under `tenants/`, or a PostgreSQL schema). Owners come from `api.db`'s `owners`
table, read here without importing the API. Rows an older version kept in the
shared store are moved into the tenants' stores at start. In cluster mode the
history is a `ClusterHistory` (store/cluster_tenants.py): a schema per tenant too,
under the node's leases (docs/api.md, "What is stored where").
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from supervise.protocol.errors import ErrorCode, ProtocolError
from supervise.supervisor.store import open_store
from supervise.supervisor.store.routed import RoutedStore
from supervise.supervisor.store.tenants import TENANT_RE, move_tenant_rows, tenant_places

if TYPE_CHECKING:
    from supervise.supervisor.config.model import SupervisorConfig
    from supervise.supervisor.store.cluster_registrations import RegistrationStore
    from supervise.supervisor.store.cluster_tenants import ClusterHistory
    from supervise.supervisor.store.queued import QueuedStore

log = logging.getLogger("supervise.store")

API_FILE = "api.db"  # supervisor/api/store.py: FILE_NAME
DROP_WAIT_S = 10.0  # a tenant's queued history writes are written before its store is dropped


def read_owners(state_dir: Path) -> dict[str, str]:
    """service -> tenant, from `api.db` in `state_dir` (read only; empty when there is none yet)."""
    path = Path(state_dir) / API_FILE
    if not path.is_file():
        return {}
    try:
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error as exc:
        log.error("cannot read the owners of services from %s (%s); tenants' services use the main store", path, exc)
        return {}
    try:
        return {str(s): str(t) for s, t in db.execute("SELECT service, tenant FROM owners").fetchall()}
    except sqlite3.Error:
        return {}  # no owners table: no tenant has a service
    finally:
        db.close()


def open_history(sup: SupervisorConfig) -> RoutedStore:
    """The daemon's history: its own store and each tenant's, opened; rows of tenants still in the
    shared store (an older version's state directory) moved to their tenant's store first.

    Raises:
        StoreError: a store cannot be opened, or a move failed (the next start finishes it).
    """
    places = tenant_places(sup.store, sup.state_dir)
    owners = read_owners(sup.state_dir)
    routed = RoutedStore(open_store(sup.store or sup.state_dir / "history.db"), places, owners)
    try:
        routed.open()
        move_tenant_rows(routed.main, owners, routed.tenant_store)
    except BaseException:
        routed.close()
        raise
    return routed


def open_cluster_history(history: ClusterHistory, rows: RegistrationStore, state_dir: Path) -> None:
    """Cluster mode: open every tenant's schema, then move the rows of tenants' services that the
    shared schema still keeps (an older version's cluster database: store/cluster_migration.py).
    The owners are the registrations' tenants and, for rows that name none yet, this node's `api.db`.

    Raises:
        StoreError: a schema cannot be opened, or a move failed (the next start moves it again).
    """
    from supervise.supervisor.store.cluster_migration import move_cluster_tenant_rows

    history.open()
    owners = {**read_owners(state_dir), **rows.owners()}
    for service, tenant in sorted(owners.items()):
        if TENANT_RE.fullmatch(tenant):
            history.assign(service, tenant)  # its schema made or opened: the rows have somewhere to go
    main = history.leased_main.store
    move_cluster_tenant_rows(main.dsn, main.schema, owners)


async def drop_tenant(store: QueuedStore | None, tenant: str) -> dict[str, object]:
    """Close and delete `tenant`'s own store (its file or schema), after the writes queued for it.

    Raises:
        ProtocolError: BAD_ARGS for a name that is not a tenant's.
    """
    if not TENANT_RE.fullmatch(tenant):
        raise ProtocolError(ErrorCode.BAD_ARGS, f'drop_tenant: "tenant" must match {TENANT_RE.pattern}')
    router = store.store if store is not None else None
    if not isinstance(router, RoutedStore):
        return {"tenant": tenant, "dropped": False, "where": None}
    assert store is not None
    if not await store.written(DROP_WAIT_S):
        log.warning("tenant %s: history writes still queued after %.0f s; dropping its store", tenant, DROP_WAIT_S)
    where = router.places.where(tenant)
    dropped = await asyncio.to_thread(router.drop_tenant, tenant)
    log.info("tenant %s: its history store %s was %s", tenant, where, "deleted" if dropped else "absent")
    return {"tenant": tenant, "dropped": dropped, "where": where}
