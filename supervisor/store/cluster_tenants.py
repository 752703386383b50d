"""Cluster mode: each tenant's run history in a schema of its own, under this node's leases.

The cluster's run store is a `RoutedStore` (routed.py) here too: the main
schema's `LeasedRuns` (leased.py) for services of no tenant, and one `LeasedRuns`
per tenant schema `<schema>_tenant_<t>` (`ClusterTenants`). `ClusterHistory`
adds what the scheduler and the cluster agent ask of the leases (claims, the
epochs held, revocation, the fencing deadline) across every schema: a claim goes
to the store of the run's service; the heartbeat renews each schema's runs
(`runs_by_schema`, used by `ClusterStore.beat`).

A tenant's schema dropped by another node (`supervise tenant delete`): the call
that finds it gone fails once (a StoreError, which the history writer retries),
the tenant is marked gone here, and from then on writes about its services change
nothing and spanning reads skip it, until a service of the tenant is assigned
again (its schema is then created again, empty) or the schema reappears
(`discover`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any, Final

import psycopg

from supervise.supervisor.core.runs import Run
from supervise.supervisor.store.base import ScheduleState, Store, StoreError
from supervise.supervisor.store.cluster import RUN_LEASES
from supervise.supervisor.store.leased import LeasedRuns
from supervise.supervisor.store.node_connection import NodeConnection
from supervise.supervisor.store.postgres import PostgresStore, idle_transaction_limit
from supervise.supervisor.store.routed import RoutedStore
from supervise.supervisor.store.tenants import SCHEMA_INFIX, TENANT_RE, PostgresTenants, check_tenant

log = logging.getLogger("supervise.cluster")

# What a call about a service of a dropped tenant answers: nothing is written, nothing is found.
_GONE: Final[dict[str, Callable[[], object]]] = {
    "insert_run": lambda: False,
    "insert_runs": lambda: 0,
    "update_run": lambda: False,
    "get_run": lambda: None,
    "list_runs": list,
    "runs_in_states": list,
    "pending_runs": list,
    "queued_runs": list,
    "count_runs": lambda: 0,
    "claim_due": lambda: None,
    "claim": lambda: None,
    "claim_many": dict,
    "get_schedule_state": ScheduleState,
    "put_schedule_state": lambda: None,
    "list_oneshots": list,
    "remove_oneshot": lambda: False,
    "put_registration": lambda: None,
    "delete_registration": lambda: False,
    "list_registrations": dict,
    "forget_service": lambda: 0,
    "add_notification": lambda: False,
    "put_episode": lambda: None,
    "epoch_of": lambda: None,
}


def schema_gone(error: BaseException) -> bool:
    """The store's schema (or its tables) no longer exists: a tenant's store dropped by another node."""
    cause = error.cause if isinstance(error, StoreError) else error
    return isinstance(cause, (psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName))


class ClusterTenants:
    """The tenants' schemas of a cluster, each opened as a `LeasedRuns` of this node (a `TenantPlaces`).

    Args:
        dsn, schema: the cluster store's.
        node, lease_ttl_ms: this node's (each schema's runs are leased like the main schema's).
    """

    def __init__(self, dsn: str, schema: str, *, node: str, lease_ttl_ms: int) -> None:
        self.places = PostgresTenants(dsn, schema)
        self.dsn = dsn
        self.node = node
        self.lease_ttl_ms = lease_ttl_ms
        self.configure: Callable[[LeasedRuns], None] = lambda _: None  # set by ClusterHistory
        self.main: LeasedRuns | None = None  # the main schema's store, for `existing` (set by ClusterHistory)

    def schema_of(self, tenant: str) -> str:
        return self.places.schema_of(tenant)

    def open(self, tenant: str) -> Store:
        store = PostgresStore(
            self.dsn, schema=self.schema_of(tenant), options=idle_transaction_limit(self.lease_ttl_ms)
        )
        leased = LeasedRuns(store, node=self.node, lease_ttl_ms=self.lease_ttl_ms).open()
        try:
            columns = NodeConnection(
                self.dsn, schema=store.schema, node=self.node, lease_ttl_ms=self.lease_ttl_ms, timeout_s=5.0
            )
            try:
                columns._create(RUN_LEASES)  # epoch and expires_at, as on the main schema's runs
            finally:
                columns.close()
        except BaseException:
            leased.close()
            raise
        self.configure(leased)
        return leased  # a Store: run writes fenced, the rest delegated

    def existing(self) -> list[str]:
        """The tenants whose schema has a `runs` table (made through any node). Read on the main
        store's connection when there is one: every node asks at each poll of the registrations."""
        if self.main is None:
            return self.places.existing()
        prefix = f"{self.places.schema}{SCHEMA_INFIX}"
        query = (
            "SELECT n.nspname AS name FROM pg_namespace n JOIN pg_class c ON c.relnamespace = n.oid "
            "WHERE c.relname = 'runs' AND c.relkind IN ('r', 'p') AND left(n.nspname, %s) = %s"
        )

        def read(conn: psycopg.Connection[dict[str, Any]]) -> list[dict[str, Any]]:
            return conn.execute(query, (len(prefix), prefix)).fetchall()

        rows: list[dict[str, Any]] = self.main._call(read)
        names = (str(r["name"])[len(prefix) :] for r in rows)
        return sorted(n for n in names if TENANT_RE.fullmatch(n))

    def drop(self, tenant: str) -> bool:
        return self.places.drop(tenant)

    def where(self, tenant: str) -> str:
        return self.places.where(tenant)


class _Gone:
    """The store of a tenant whose schema was dropped: writes change nothing, reads find nothing."""

    def __init__(self, tenant: str) -> None:
        self.tenant = tenant

    def __getattr__(self, name: str) -> Any:
        default = _GONE.get(name)

        def call(*args: object, **kwargs: object) -> object:
            if default is None:
                raise StoreError(f"tenant {self.tenant}'s run history was deleted ({name})")
            return default()

        return call


class _Watched:
    """A tenant's store whose calls report a dropped schema to the router (then fail once)."""

    def __init__(self, store: Store, tenant: str, gone: Callable[[str, Store], None]) -> None:
        self.store = store
        self._tenant = tenant
        self._gone = gone

    def __getattr__(self, name: str) -> Any:
        found = getattr(self.store, name)
        if not callable(found) or name == "batch":
            return found

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                return found(*args, **kwargs)
            except StoreError as e:
                if schema_gone(e):
                    self._gone(self._tenant, self.store)
                raise

        return call


class ClusterHistory(RoutedStore):
    """The cluster's run store seen by one node: a `RoutedStore` of `LeasedRuns`, one per schema,
    that also answers for the leases of every schema (`LeasedRuns`' methods the scheduler and the
    cluster agent use)."""

    cluster_owners = True

    def __init__(self, main: LeasedRuns, places: ClusterTenants, owners: Mapping[str, str] | None = None) -> None:
        super().__init__(main, places, owners)
        self.leased_main = main
        self.cluster_places = places
        self.node = main.node
        self._gone_tenants: set[str] = set()
        self._unrouted: set[str] = set()
        self._watched: dict[int, _Watched] = {}  # id of a tenant's store -> its watcher
        # Stores of dropped schemas that still had run leases: reported by `held()` until the
        # heartbeat finds those leases gone and the agent revokes them (their runs are stopped).
        self._orphans: list[LeasedRuns] = []
        self._fence_until: float | None = None
        self._fence_grace_ms = 0
        self._on_claimable: Callable[[str], None] | None = None
        places.configure = self._configure
        places.main = main

    def __getattr__(self, name: str) -> Any:
        """A `LeasedRuns` method not routed here acts on the main schema only (logged once per name):
        a method about runs of several services belongs in this class, spanning the schemas."""
        if name.startswith("__") or name in ("leased_main", "_unrouted"):
            raise AttributeError(name)
        found = getattr(self.leased_main, name)
        if name not in self._unrouted:
            self._unrouted.add(name)
            log.warning("cluster: %s is not routed across the tenants' schemas; the main schema's store answers", name)
        return found

    # -- the agent's settings, the same on every schema's store --------------------------------

    def _configure(self, store: LeasedRuns) -> None:
        store.fence_until = self._fence_until
        store.fence_grace_ms = self._fence_grace_ms
        store.on_claimable = self._on_claimable

    def _leased(self) -> list[LeasedRuns]:
        stores: list[object] = [self.main, *self._tenants.values(), *self._orphans]
        return [s for s in stores if isinstance(s, LeasedRuns)]

    def _orphan(self, store: Store | None) -> None:
        if isinstance(store, LeasedRuns) and store.held():
            with self._lock:
                self._orphans = [*[o for o in self._orphans if o.held()], store]

    @property
    def fence_until(self) -> float | None:
        return self._fence_until

    @fence_until.setter
    def fence_until(self, value: float | None) -> None:
        self._fence_until = value
        for store in self._leased():
            store.fence_until = value

    @property
    def fence_grace_ms(self) -> int:
        return self._fence_grace_ms

    @fence_grace_ms.setter
    def fence_grace_ms(self, value: int) -> None:
        self._fence_grace_ms = value
        for store in self._leased():
            store.fence_grace_ms = value

    @property
    def on_claimable(self) -> Callable[[str], None] | None:
        return self._on_claimable

    @on_claimable.setter
    def on_claimable(self, value: Callable[[str], None] | None) -> None:
        self._on_claimable = value
        for store in self._leased():
            store.on_claimable = value

    @property
    def fenced_writes(self) -> int:
        return sum(s.fenced_writes for s in self._leased())

    # -- the leases, across the schemas ----------------------------------------------------------

    def held(self) -> list[tuple[str, int]]:
        """Every run lease this node holds, in any schema."""
        return [lease for store in self._leased() for lease in store.held()]

    def runs_by_schema(self, runs: list[tuple[str, int]]) -> dict[str, list[tuple[str, int]]]:
        """`runs` (as `held()` gives them) grouped by the schema whose `runs` table keeps them,
        for the heartbeat's renewal (a lease this node no longer knows stays with the main schema)."""
        schema_of = {run_id: store.store.schema for store in self._leased() for run_id, _ in store.held()}
        grouped: dict[str, list[tuple[str, int]]] = {}
        for run_id, epoch in runs:
            grouped.setdefault(schema_of.get(run_id, self.leased_main.store.schema), []).append((run_id, epoch))
        return grouped

    def epoch_of(self, run_id: str) -> int | None:
        for store in self._leased():
            epoch = store.epoch_of(run_id)
            if epoch is not None:
                return epoch
        return None

    def revoke(self, run_ids: set[str] | frozenset[str]) -> list[str]:
        return [run_id for store in self._leased() for run_id in store.revoke(run_ids)]

    def worker_lease(self, run_id: str) -> dict[str, object]:
        for store in self._leased():
            if store.epoch_of(run_id) is not None:
                return store.worker_lease(run_id)
        return {}

    def claim(self, run_id: str, service: str | None = None) -> int | None:
        """Take a waiting run under a new lease, in the store of its service (every store when
        the service is not given)."""
        stores = [self._for(service)] if service is not None else self._all()
        for store in stores:
            epoch: int | None = store.claim(run_id)  # type: ignore[attr-defined]
            if epoch is not None:
                return epoch
        return None

    def claim_many(self, run_ids: list[str], service: str | None = None) -> dict[str, int]:
        """`claim` of several runs (of one service, when given) in one statement per store."""
        if not run_ids:
            return {}
        taken: dict[str, int] = {}
        for store in [self._for(service)] if service is not None else self._all():
            taken.update(store.claim_many([r for r in run_ids if r not in taken]))  # type: ignore[attr-defined]
        return taken

    def insert_waiting(self, runs: list[Run]) -> set[str]:
        """`LeasedRuns.insert_waiting` in the store of each run's service (one transaction per
        store: a `schedule` batch is of one service, so one store)."""
        by_store: dict[int, tuple[Store, list[Run]]] = {}
        for run in runs:
            store = self._for(run.service)
            by_store.setdefault(id(store), (store, []))[1].append(run)
        inserted: set[str] = set()
        for store, batch in by_store.values():
            inserted |= store.insert_waiting(batch)  # type: ignore[attr-defined]
        return inserted

    def claim_due_oneshots(self, service: str, due_by: datetime, limit: int) -> list[Run]:
        """`LeasedRuns.claim_due_oneshots` in the store of `service` (its tenant's schema)."""
        found: list[Run] = self._for(service).claim_due_oneshots(service, due_by, limit)  # type: ignore[attr-defined]
        return found

    def due_services(self, due_by: datetime) -> set[str]:
        """The services with one-shots due by `due_by` that nobody took, in every schema."""
        found: set[str] = set()
        for store in self._all():
            found |= store.due_services(due_by)  # type: ignore[attr-defined]
        return found

    # -- tenants' schemas made or dropped by other nodes --------------------------------------------

    def assign(self, service: str, tenant: str | None) -> None:
        if tenant is not None:
            with self._lock:
                self._gone_tenants.discard(check_tenant(tenant))
        super().assign(service, tenant)

    def discover(self) -> list[str]:
        """Open the tenants' schemas that exist and are not open here (made through another node,
        or made again after a drop); returns the tenants opened."""
        found = [t for t in self.places.existing() if t not in self._tenants]
        opened = []
        for tenant in found:
            with self._lock:
                if tenant in self._tenants:
                    continue
                self._gone_tenants.discard(tenant)
                try:
                    self._tenant(tenant)
                except StoreError as e:
                    log.warning("cluster: cannot open tenant %s's store (%s); trying again later", tenant, e)
                    continue
            opened.append(tenant)
        if opened:
            log.info("cluster: opened the stores of tenant(s) %s, made through another node", ", ".join(opened))
        return opened

    def drop_tenant(self, tenant: str) -> bool:
        with self._lock:
            self._gone_tenants.add(check_tenant(tenant))
            store = self._tenants.get(tenant)
        self._orphan(store)
        return super().drop_tenant(tenant)

    def _vanished(self, tenant: str, store: Store) -> None:
        """`tenant`'s schema was dropped (through another node): stop using its store."""
        with self._lock:
            if self._tenants.get(tenant) is not store:
                return
            self._tenants = {t: s for t, s in self._tenants.items() if t != tenant}
            self._gone_tenants.add(tenant)
        self._orphan(store)
        log.warning(
            "cluster: tenant %s's run history (%s) was deleted through another node; its rows are no longer "
            "written or read here",
            tenant,
            self.places.where(tenant),
        )
        try:
            store.close()
        except StoreError:
            pass

    def _for(self, service: str) -> Store:
        tenant = self._owners.get(service)
        if tenant is not None and tenant in self._gone_tenants:
            return _Gone(tenant)
        return self._watch(super()._for(service))

    def _all(self) -> list[Store]:
        return [self._watch(s) for s in super()._all()]

    def _writing(self, store: Store) -> Store:
        super()._writing(store.store if isinstance(store, _Watched) else store)
        return store

    def _watch(self, store: Store) -> Store:
        if store is self.main:
            return store
        watched = self._watched.get(id(store))
        if watched is None or watched.store is not store:
            tenant = next((t for t, s in self._tenants.items() if s is store), None)
            if tenant is None:
                return store
            watched = _Watched(store, tenant, self._vanished)
            self._watched = {**self._watched, id(store): watched}
        return watched
