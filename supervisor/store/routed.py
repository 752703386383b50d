"""One `Store` over the daemon's own store and each tenant's: rows go to their service's owner.

A service owned by a tenant of the HTTP API keeps its runs, one-shots, schedule
state, registration and outbox rows in the tenant's store (tenants.py); a service
of no tenant keeps them in the main store. Calls about one service go to that
service's store; calls that span services (the soonest pending runs, runs in some
states, retention, the outbox) ask every store and merge the answers in the order
the `Store` contract gives. The scheduler and the history writer see one store.

Owners come from the API (`assign`, before the service's first row) and, at open,
from the registrations each tenant's store holds. With no tenant, every call goes
straight to the main store.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, ExitStack, contextmanager
from datetime import datetime, timedelta
from typing import Any, Self

from supervise.supervisor.core.alerts import Episode
from supervise.supervisor.core.runs import JSONValue, Run, RunState
from supervise.supervisor.store.base import Notification, OneShot, ScheduleState, Store
from supervise.supervisor.store.episodes import EpisodeSummary
from supervise.supervisor.store.tenants import TENANT_RE, TenantPlaces, check_tenant

log = logging.getLogger("supervise.store")


class RoutedStore:
    """A `Store` that keeps each tenant's services in the tenant's own store.

    Args:
        main: the daemon's own store (services of no tenant).
        places: where tenants' stores are opened, found and dropped.
        owners: service -> tenant, known before open (the API's `owners` table).
    """

    cluster_owners = False
    """True when the owners here are the cluster's (each registration's tenant, on every node), and
    so the ones the API shows (store/cluster_tenants.py); else the API's own table is."""

    def __init__(self, main: Store, places: TenantPlaces, owners: Mapping[str, str] | None = None) -> None:
        self.main = main
        self.places = places
        self._owners: dict[str, str] = {s: t for s, t in (owners or {}).items() if TENANT_RE.fullmatch(t)}
        self._tenants: dict[str, Store] = {}
        self._lock = threading.RLock()  # opening or dropping a tenant's store
        # Inside `batch()`, per thread (the history writer's and the notifier's may batch at once):
        # (its stack, the stores entered).
        self._batches = threading.local()
        # A batch where the stores have one (SQLite); none where they do not (PostgreSQL), so the
        # history writer writes one at a time there, as it does on such a store alone.
        self.batch: Callable[[], AbstractContextManager[None]] | None = (
            self._batched if getattr(main, "batch", None) is not None else None
        )

    # -- lifecycle --------------------------------------------------------------------------------

    def open(self) -> Self:
        """Open the main store and every tenant's store that exists; learn owners from their registrations."""
        with self._lock:
            self.main.open()
            for tenant in self.places.existing():
                store = self._tenant(tenant)
                for name in store.list_registrations():
                    self._owners.setdefault(name, tenant)
        return self

    def close(self) -> None:
        with self._lock:
            stores, self._tenants = list(self._tenants.values()), {}
            for store in stores:
                store.close()
            self.main.close()

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- routing ----------------------------------------------------------------------------------

    def assign(self, service: str, tenant: str | None) -> None:
        """`service` belongs to `tenant` (None: to no tenant) from now on: its next rows go to that
        store. Call it before the service's first row is written (before it is added)."""
        with self._lock:
            if tenant is None:
                self._owners.pop(service, None)
                return
            self._owners[service] = check_tenant(tenant)
            self._tenant(tenant)

    def owner(self, service: str) -> str | None:
        """The tenant whose store keeps `service`'s rows, or None (the main store)."""
        return self._owners.get(service)

    def owned_by(self, tenant: str) -> list[str]:
        """The services routed to `tenant`'s store."""
        return sorted(s for s, t in list(self._owners.items()) if t == tenant)

    def tenant_store(self, tenant: str) -> Store:
        """The tenant's own store (opened, and created if missing)."""
        with self._lock:
            return self._tenant(tenant)

    def drop_tenant(self, tenant: str) -> bool:
        """Close and delete the tenant's store (its file or schema); its services are no longer
        routed there. False when it had none."""
        check_tenant(tenant)
        with self._lock:
            tenants = dict(self._tenants)
            store = tenants.pop(tenant, None)
            self._tenants = tenants
            for service in [s for s, t in self._owners.items() if t == tenant]:
                del self._owners[service]
        if store is not None:  # closed outside the lock: the writer may hold the store's while it opens another
            store.close()
        return self.places.drop(tenant)

    def tenants(self) -> list[str]:
        """Tenants whose store is open."""
        with self._lock:
            return sorted(self._tenants)

    def _tenant(self, tenant: str) -> Store:
        store = self._tenants.get(tenant)
        if store is None:
            store = self.places.open(tenant)
            self._tenants = {**self._tenants, tenant: store}  # a new dict: readers iterate a snapshot
        return store

    def _for(self, service: str) -> Store:
        tenant = self._owners.get(service)
        if tenant is None:
            return self._writing(self.main)
        store = self._tenants.get(tenant)
        if store is None:
            with self._lock:
                store = self._tenant(tenant)
        return self._writing(store)

    def _all(self) -> list[Store]:
        tenants = self._tenants  # replaced, never changed in place: safe to iterate from any thread
        return [self.main, *tenants.values()] if tenants else [self.main]

    # -- one transaction per store for the history writer's batch ---------------------------------

    @contextmanager
    def _batched(self) -> Iterator[None]:
        """The writes this thread makes inside go into one transaction per store they touch (each
        store's own `batch()`, entered at its first write); every store commits at the end, or
        each rolls back when a write fails. A run and the outbox rows it causes share a store."""
        if getattr(self._batches, "open", None) is not None:  # nested: the outer batch commits
            yield
            return
        with ExitStack() as stack:
            self._batches.open = (stack, set())
            try:
                yield
            finally:
                self._batches.open = None

    def _writing(self, store: Store) -> Store:
        batch: tuple[ExitStack, set[int]] | None = getattr(self._batches, "open", None)
        if batch is not None and id(store) not in batch[1]:
            enter = getattr(store, "batch", None)
            if enter is not None:
                batch[0].enter_context(enter())
            batch[1].add(id(store))
        return store

    # -- runs -------------------------------------------------------------------------------------

    def insert_run(self, run: Run) -> bool:
        return self._for(run.service).insert_run(run)

    def insert_runs(self, runs: list[Run]) -> int:
        if not self._owners:
            return self._writing(self.main).insert_runs(runs)
        inserted = 0
        for _, group in itertools.groupby(runs, key=lambda r: self._owners.get(r.service)):
            batch = list(group)
            inserted += self._for(batch[0].service).insert_runs(batch)
        return inserted

    def update_run(self, run: Run, *, expected_state: RunState | None = None) -> bool:
        return self._for(run.service).update_run(run, expected_state=expected_state)

    def get_run(self, run_id: str) -> Run | None:
        for store in self._all():
            found = store.get_run(run_id)
            if found is not None:
                return found
        return None

    def list_runs(
        self,
        service: str | None = None,
        *,
        states: set[RunState] | frozenset[RunState] | None = None,
        limit: int = 100,
        before: datetime | None = None,
    ) -> list[Run]:
        if service is not None:
            return self._for(service).list_runs(service, states=states, limit=limit, before=before)
        stores = self._all()
        if len(stores) == 1:
            return self.main.list_runs(states=states, limit=limit, before=before)
        found = (s.list_runs(states=states, limit=limit, before=before) for s in stores)
        return list(itertools.islice(heapq.merge(*found, key=lambda r: r.created_at, reverse=True), limit))

    def runs_in_states(self, states: set[RunState] | frozenset[RunState]) -> list[Run]:
        stores = self._all()
        if len(stores) == 1:
            return self.main.runs_in_states(states)
        return list(heapq.merge(*(s.runs_in_states(states) for s in stores), key=lambda r: r.created_at))

    def pending_runs(self, after: tuple[datetime, str] | None, limit: int) -> list[Run]:
        stores = self._all()
        if len(stores) == 1:
            return self.main.pending_runs(after, limit)
        found = (s.pending_runs(after, limit) for s in stores)
        return list(itertools.islice(heapq.merge(*found, key=_pending_key), limit))

    def queued_runs(self, service: str, limit: int) -> list[Run]:
        return self._for(service).queued_runs(service, limit)

    def count_runs(self, service: str, states: set[RunState] | frozenset[RunState]) -> int:
        return self._for(service).count_runs(service, states)

    def claim_due(self, service: str, nominal_time: datetime, node: str) -> Run | None:
        return self._for(service).claim_due(service, nominal_time, node)

    # -- schedule state, one-shots, registrations -------------------------------------------------

    def get_schedule_state(self, service: str) -> ScheduleState:
        return self._for(service).get_schedule_state(service)

    def put_schedule_state(self, service: str, state: ScheduleState) -> None:
        self._for(service).put_schedule_state(service, state)

    def add_oneshot(self, service: str, at: datetime, args: Mapping[str, JSONValue] | None = None) -> str:
        return self._for(service).add_oneshot(service, at, args)

    def list_oneshots(self, service: str | None = None) -> list[OneShot]:
        if service is not None:
            return self._for(service).list_oneshots(service)
        return list(heapq.merge(*(s.list_oneshots() for s in self._all()), key=lambda o: (o.at, o.id)))

    def remove_oneshot(self, oneshot_id: str) -> bool:
        return any(self._writing(s).remove_oneshot(oneshot_id) for s in self._all())

    def put_registration(self, name: str, spec: Mapping[str, Any]) -> None:
        self._for(name).put_registration(name, spec)

    def delete_registration(self, name: str) -> bool:
        return self._for(name).delete_registration(name)

    def list_registrations(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        for store in self._all():
            found.update(store.list_registrations())
        return dict(sorted(found.items()))

    def forget_service(self, service: str) -> int:
        return self._for(service).forget_service(service)

    def prune(self, keep_per_outcome: int, max_age: timedelta, now: datetime) -> int:
        return sum(self._writing(s).prune(keep_per_outcome, max_age, now) for s in self._all())

    # -- notifications outbox ---------------------------------------------------------------------

    def add_notification(self, notification: Notification) -> bool:
        return self._for(notification.service).add_notification(notification)

    def due_notifications(self, now: datetime, limit: int = 100) -> list[Notification]:
        found = (s.due_notifications(now, limit) for s in self._all())
        return list(itertools.islice(heapq.merge(*found, key=lambda n: n.next_attempt_at), limit))

    def claim_notifications(self, now: datetime, until: datetime, limit: int = 100) -> list[Notification]:
        stores = self._all()
        if len(stores) == 1:
            return self._writing(self.main).claim_notifications(now, until, limit)
        # The soonest `limit` across the stores decide how many each store gives (a store
        # whose rows another claimer took meanwhile gives fewer).
        due = [[(n.next_attempt_at, index) for n in s.due_notifications(now, limit)] for index, s in enumerate(stores)]
        soonest = list(itertools.islice(heapq.merge(*due), limit))
        shares = [sum(1 for _, i in soonest if i == index) for index in range(len(stores))]
        claimed: list[Notification] = []
        for store, share in zip(stores, shares, strict=True):
            if share:
                claimed += self._writing(store).claim_notifications(now, until, share)
        return claimed

    def next_notification_at(self) -> datetime | None:
        times = [t for t in (s.next_notification_at() for s in self._all()) if t is not None]
        return min(times, default=None)

    def record_attempt(
        self, notification_id: str, *, at: datetime, error: str | None, retry_at: datetime | None
    ) -> bool:
        return any(
            self._writing(s).record_attempt(notification_id, at=at, error=error, retry_at=retry_at) for s in self._all()
        )

    def list_notifications(self, *, failed_only: bool = False, limit: int = 100) -> list[Notification]:
        found = (s.list_notifications(failed_only=failed_only, limit=limit) for s in self._all())
        return list(itertools.islice(heapq.merge(*found, key=lambda n: n.created_at, reverse=True), limit))

    def prune_notifications(self, before: datetime) -> int:
        return sum(self._writing(s).prune_notifications(before) for s in self._all())

    # -- no-storm episodes and the notification journal's marks ----------------------------------

    def take_episode(self, rule: str, subject: str, now_ms: int) -> tuple[Episode, int]:
        return self._writing(self._for(subject)).take_episode(rule, subject, now_ms)

    def put_episode(self, rule: str, subject: str, episode: Episode) -> None:
        self._writing(self._for(subject)).put_episode(rule, subject, episode)

    def active_episodes(self, now_ms: int) -> list[EpisodeSummary]:
        return [summary for s in self._all() for summary in s.active_episodes(now_ms)]

    def journal_mark(self, journal: str) -> int:
        """The daemon's journal is marked in the main store (a tenant's episode and rows, in its own,
        commit in a transaction of their own: docs/notifications.md)."""
        return self._writing(self.main).journal_mark(journal)

    def put_journal_mark(self, journal: str, seq: int | None) -> None:
        self._writing(self.main).put_journal_mark(journal, seq)


def _pending_key(run: Run) -> tuple[datetime, str]:
    assert run.nominal_time is not None  # a pending run waits for its nominal time
    return run.nominal_time, run.run_id
