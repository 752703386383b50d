"""Cluster mode: the services added at runtime are the cluster's, kept in its store (docs/cluster.md).

`add`, `update` and `remove` of a runtime service, and `pause`/`resume` of a
scheduled one, write its row first (one transaction, revision bumped, NOTIFY),
then apply the change here. Every node applies the rows' changes to itself:
woken by the notification, or by its poll every `renew_every` (with jitter)
should one be missed; and it loads them all at start. What to do is decided by
`core.registration_sync.plan_sync`. One lock orders this node's own changes and
its syncs, so a sync never applies a read older than a change made here.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any, Protocol, TypeVar

from supervise.protocol.errors import ErrorCode, ProtocolError, SuperviseError
from supervise.supervisor.core.registration_sync import (
    Applied,
    Change,
    Stored,
    order_adds,
    plan_config_pauses,
    plan_sync,
)
from supervise.supervisor.store.base import StoreError
from supervise.supervisor.store.cluster_registrations import Registration, RegistrationStore

log = logging.getLogger("supervise.cluster")

_T = TypeVar("_T")


class RegistrationHost(Protocol):
    """What applying the cluster's runtime services needs from the daemon (`RuntimeChanges`)."""

    def local_names(self) -> set[str]:
        """The services here that are not the cluster's runtime services (declared in the config)."""
        ...

    def adopt(self, name: str, spec: Mapping[str, Any], *, start: bool) -> None:
        """Register a runtime service here (and start it if `start` and it autostarts); raises on a bad spec."""
        ...

    async def adopt_update(self, name: str, spec: Mapping[str, Any]) -> None:
        """Replace a runtime service's spec here, as `update` does."""
        ...

    async def drop(self, name: str) -> None:
        """Stop and forget a runtime service here (its row is gone)."""
        ...

    def set_paused(self, name: str, paused: bool) -> None:
        """Pause or resume a scheduled service's schedule here (nothing for a long-running one)."""
        ...


class TenantRoutes(Protocol):
    """Where a service's runs are kept: its API tenant's schema (store/cluster_tenants.py)."""

    def owner(self, service: str) -> str | None:
        """The tenant `service` belongs to (None: none)."""
        ...

    def assign(self, service: str, tenant: str | None) -> None:
        """`service` belongs to `tenant` from now on (its schema opened, made if missing)."""
        ...

    def discover(self) -> list[str]:
        """Open the tenants' schemas other nodes made."""
        ...


class ClusterRegistrations:
    """This node's side of the cluster's runtime services: writes, then applies; syncs on NOTIFY and by polling.

    Args:
        store: the rows (its own connection; called from threads).
        host: applies changes to this node.
        renew_every_ms: the poll interval (the cluster's `renew_every`).
    """

    def __init__(
        self,
        store: RegistrationStore,
        host: RegistrationHost,
        *,
        renew_every_ms: int,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self._host = host
        self._every_s = renew_every_ms / 1000
        self._rng = rng or random.Random()  # nosec B311 # jitter, not a secret
        self.applied: dict[str, Applied] = {}
        self.config_applied: dict[str, int] = {}  # config-declared service -> the `config_pauses` revision applied
        self.lock = asyncio.Lock()
        self._shadowed: set[str] = set()  # warned once each
        self._failed: dict[str, int] = {}  # name -> the revision that could not be loaded (warned once)
        self._wake = asyncio.Event()
        self._loaded = asyncio.Event()  # set by `load`: this node's own changes wait for it
        self._listening = threading.Event()  # set: the LISTEN thread stops
        self._task: asyncio.Task[None] | None = None
        self.tenants: TenantRoutes | None = None  # set once the run store is open

    # -- lifecycle ---------------------------------------------------------------------------

    async def load(self) -> None:
        """At start: register every runtime service of the cluster (the daemon starts them with the
        others). Changes asked of this node meanwhile wait for it. The store must be open."""
        async with self.lock:
            await self._sync(start=False)
        self._loaded.set()

    async def _locked(self) -> asyncio.Lock:
        await self._loaded.wait()
        return self.lock

    def start(self) -> None:
        """Apply changes as they are notified, and poll every renew_every."""
        loop = asyncio.get_running_loop()
        threading.Thread(
            target=self.store.listen,
            args=(lambda: loop.call_soon_threadsafe(self._wake.set), self._listening),
            name="supervise-cluster-registrations",
            daemon=True,
        ).start()
        self._task = asyncio.create_task(self._run(), name="supervise-cluster-registrations")

    async def close(self) -> None:
        self._listening.set()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.to_thread(self.store.close)

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), self._every_s * self._rng.uniform(0.9, 1.1))
            except TimeoutError:
                pass
            self._wake.clear()
            await self.sync()

    async def sync(self) -> None:
        """Bring this node to the store's rows now."""
        try:
            async with await self._locked():
                await self._sync(start=True)
        except StoreError as e:
            log.warning("cluster: could not read the runtime services (%s); trying again in renew_every", e)
        except Exception:
            log.exception("cluster: applying the runtime services failed; trying again in renew_every")

    # -- what this node changes ----------------------------------------------------------------

    def owns(self, name: str) -> bool:
        """`name` is one of the cluster's runtime services, applied here."""
        mine = self.applied.get(name)
        return mine is not None and mine.present

    async def add(self, name: str, spec: Mapping[str, Any], apply: Callable[[], None]) -> None:
        """Insert the row (refused when the cluster has the name), then `apply` here."""
        async with await self._locked():
            tenant = self.tenants.owner(name) if self.tenants is not None else None
            done = await asyncio.to_thread(functools.partial(self.store.add, name, spec, tenant=tenant))
            if isinstance(done, Registration):
                if self.tenants is not None:
                    self.tenants.assign(name, done.tenant)  # the cluster's service keeps its owner here
                raise ProtocolError(
                    ErrorCode.CONFLICT,
                    f'a service named "{name}" exists in the cluster (added through node {done.updated_by or "?"}); '
                    "use update or remove it first",
                )
            apply()
            self.applied[name] = Applied(done.revision, done.spec_revision, done.paused)

    async def update(self, name: str, spec: Mapping[str, Any], apply: Callable[[], Awaitable[_T]]) -> _T:
        """Replace the row's spec if no other node changed it since this node applied it, then `apply` here."""
        async with await self._locked():
            mine = self.applied.get(name)
            done = None
            if mine is not None:
                done = await asyncio.to_thread(self.store.update, name, spec, expected=mine.spec_revision)
            if done is None:
                await self._sync(start=True)  # take the other change now, so a retry patches it
                raise ProtocolError(
                    ErrorCode.CONFLICT,
                    f"update: {name} was changed or removed through another node meanwhile; this node has now "
                    "applied that change: look at it again and retry",
                )
            result = await apply()
            self._host.set_paused(name, done.paused)  # the schedule was replaced: keep the cluster's state
            self.applied[name] = Applied(done.revision, done.spec_revision, done.paused)
            return result

    async def remove(self, name: str, apply: Callable[[], Awaitable[_T]]) -> _T:
        """Delete the row (and cancel its runs that have not started, cluster-wide), then `apply` here."""
        async with await self._locked():
            removal = await asyncio.to_thread(self.store.remove, name)
            if removal.cancelled:
                log.info("%s: removed from the cluster; %d waiting run(s) cancelled", name, removal.cancelled)
            result = await apply()
            self.applied.pop(name, None)
            return result

    async def set_paused(self, names: list[str], paused: bool) -> None:
        """Pause or resume these scheduled services for the whole cluster (a runtime service's
        row, or a config-declared service's `config_pauses` row; the caller then applies it here)."""
        for name in dict.fromkeys(names):
            if not self.owns(name):
                async with await self._locked():
                    row = await asyncio.to_thread(self.store.set_config_paused, name, paused)
                    self.config_applied[name] = max(row.revision, self.config_applied.get(name, 0))
                continue
            async with await self._locked():
                done = await asyncio.to_thread(self.store.set_paused, name, paused)
                mine = self.applied.get(name)
                if done is not None and mine is not None:
                    self.applied[name] = replace(mine, revision=done.revision, paused=done.paused)

    # -- applying the store's rows ---------------------------------------------------------------

    async def _sync_config_pauses(self) -> None:
        """Apply the cluster's pause state of the scheduled services this node's config declares."""
        rows = await asyncio.to_thread(self.store.config_pauses)
        declared = {n for n in self._host.local_names() if not self.owns(n)}
        todo, self.config_applied = plan_config_pauses(self.config_applied, rows, declared)
        for name, paused in todo.items():
            log.info("cluster: %s is %s for the cluster; applied here", name, "paused" if paused else "resumed")
            self._host.set_paused(name, paused)

    async def _sync(self, *, start: bool) -> None:
        if self.tenants is not None:
            await asyncio.to_thread(self._follow_tenants)
        await self._sync_config_pauses()
        stored = await asyncio.to_thread(self.store.revisions)
        steps = plan_sync(self.applied, stored, self._host.local_names() - set(self.applied))
        if not steps:
            return
        wanted = [s.name for s in steps if s.change in (Change.ADD, Change.UPDATE)]
        rows = await asyncio.to_thread(self.store.read, wanted) if wanted else {}
        adds: dict[str, Registration] = {}
        for step in steps:
            name = step.name
            match step.change:
                case Change.REMOVE:
                    await self._remove_here(name)
                case Change.SHADOWED:
                    if name not in self._shadowed:
                        self._shadowed.add(name)
                        log.warning(
                            "cluster: runtime service %s is shadowed here by this node's config service of that name",
                            name,
                        )
                case Change.ADD if name in rows:
                    adds[name] = rows[name]
                case Change.UPDATE if name in rows:
                    await self._update_here(rows[name])
                case Change.PAUSE | Change.RESUME:
                    self._host.set_paused(name, step.change is Change.PAUSE)
                    self._applied(name, stored[name])
                case Change.ADOPT:
                    self._applied(name, stored[name])
        self._shadowed &= set(stored)
        if adds:
            if self.tenants is not None:
                await asyncio.to_thread(self._route, adds)
            self._add_here(adds, start=start)

    def _follow_tenants(self) -> None:
        """Open the tenants' schemas made through other nodes, and follow owners recorded after a
        service was added here (an older cluster database's rows, given their tenant at a node's start)."""
        assert self.tenants is not None
        owners = self.store.owners()  # first: it fails fast while the database is away
        self.tenants.discover()
        for name in [n for n in self.applied if self.owns(n)]:
            if self.tenants.owner(name) != owners.get(name):
                self.tenants.assign(name, owners.get(name))

    def _route(self, rows: dict[str, Registration]) -> None:
        """Before services are added here: each one's runs go to its tenant's schema (or the main one)."""
        assert self.tenants is not None
        for name, row in rows.items():
            self.tenants.assign(name, row.tenant)

    def _applied(self, name: str, row: Stored, *, present: bool = True) -> None:
        self.applied[name] = Applied(row.revision, row.spec_revision, row.paused, present)

    async def _remove_here(self, name: str) -> None:
        mine = self.applied.pop(name)
        self._failed.pop(name, None)
        if mine.present:
            log.info("cluster: %s was removed through another node; removing it here", name)
            await self._host.drop(name)
            tenant = self.tenants.owner(name) if self.tenants is not None else None
            late = await asyncio.to_thread(self.store.cancel_orphans, name, tenant)
            if late:
                log.warning("cluster: %s: cancelled %d run(s) fired before this node learnt of the removal", name, late)

    async def _update_here(self, row: Registration) -> None:
        try:
            await self._host.adopt_update(row.name, row.spec)
        except SuperviseError as e:
            self._could_not_load(row, e, present=True)  # the version it has stays here
            return
        self._host.set_paused(row.name, row.stored.paused)
        log.info("cluster: %s was updated through node %s; applied here", row.name, row.updated_by or "?")
        self._applied(row.name, row.stored)

    def _add_here(self, rows: dict[str, Registration], *, start: bool) -> None:
        requires = {name: _requires(row.spec) for name, row in rows.items()}
        ordered, waiting = order_adds(requires, self._host.local_names() | {n for n in self.applied if self.owns(n)})
        for name in ordered:
            row = rows[name]
            try:
                self._host.adopt(name, row.spec, start=start)
            except SuperviseError as e:
                self._could_not_load(row, e, present=False)
                continue
            self._host.set_paused(name, row.stored.paused)
            if start:
                log.info("cluster: %s was added through node %s; added here", name, row.updated_by or "?")
            self._applied(name, row.stored)
        for name in waiting:  # tried again at the next round
            log.warning("cluster: %s requires a service this node does not have yet; waiting", name)

    def _could_not_load(self, row: Registration, error: SuperviseError, *, present: bool) -> None:
        """Logged once per revision; tried again when the row changes."""
        if self._failed.get(row.name) != row.stored.revision:
            self._failed[row.name] = row.stored.revision
            kept = "; the previous version stays" if present else "; skipped"
            log.error("cluster: runtime service %s cannot be loaded on this node%s:\n%s", row.name, kept, error)
        self._applied(row.name, row.stored, present=present)


def _requires(spec: Mapping[str, Any]) -> list[str]:
    needs = spec.get("requires")
    return [n for n in needs if isinstance(n, str)] if isinstance(needs, list) else []
