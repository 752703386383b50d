"""What the cluster agent asks of the supervisor, carried out on its parts (docs/cluster.md).

Built by the composition root with the parts it needs: the service table, the
feed into the core, the orphan guard, the scheduler.
"""

from __future__ import annotations

import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from supervise.supervisor.core import state as core
from supervise.supervisor.daemon.guard_link import GuardLink
from supervise.supervisor.daemon.registry import ServiceTable

if TYPE_CHECKING:
    from supervise.supervisor.daemon.scheduler import Scheduler


class ClusterBinding:
    """`ClusterHost` on the supervisor's service table, core feed, guard and scheduler."""

    def __init__(
        self,
        services: ServiceTable,
        *,
        feed: Callable[[str, core.Event], None],
        start: Callable[[list[str]], None],
        guard: GuardLink,
        scheduler: Callable[[], Scheduler | None],
        publish: Callable[[str, str, Mapping[str, object]], None],
        execute: Callable[[str, dict[str, Any]], Awaitable[object]],
        send: Callable[[str, str, dict[str, object]], None],
    ) -> None:
        self._services = services
        self._feed = feed
        self._start = start
        self._guard = guard
        self._scheduler = scheduler
        self._publish = publish
        self.execute = execute  # a control command relayed from another node
        self._send = send  # (worker, kind, fields): a message to a warm worker

    def publish(self, service: str, kind: str, detail: dict[str, object]) -> None:
        self._publish(service, kind, detail)

    def singleton_instances(self, name: str) -> list[str]:
        return self._services.expand(name) if name in self._services or f"{name}:1" in self._services else []

    def start_singleton(self, name: str) -> None:
        self._start([name])

    def fence_singleton(self, name: str, reason: str) -> None:
        for instance in self.singleton_instances(name):
            self._feed(instance, core.StopRequested())
            svc = self._services[instance]
            if svc.worker is not None:
                svc.worker.signal_group(signal.SIGKILL)  # no grace: another node may start it soon

    def singleton_stopped(self, name: str) -> bool:
        return all(
            self._services[i].worker is None and self._services[i].record.state not in core.ALIVE
            for i in self.singleton_instances(name)
        )

    def fence_deadline(self, names: list[str], deadline: float | None) -> None:
        self._guard.fence(names, deadline)

    def runs_lost(self, run_ids: list[str], reason: str) -> None:
        scheduler = self._scheduler()
        if scheduler is not None:
            scheduler.leases_lost(set(run_ids), reason)

    def runs_rescued(self, lost_run_ids: list[str]) -> None:
        scheduler = self._scheduler()
        if scheduler is not None:
            scheduler.rescued(lost_run_ids)

    def poll_runs(self, services: set[str] | None = None) -> None:
        scheduler = self._scheduler()
        if scheduler is not None:
            scheduler.poll_store(services)

    def renew_runs(self, run_ids: set[str], until: float) -> None:
        scheduler = self._scheduler()
        if scheduler is None:
            return
        for worker, ids in scheduler.runs_in_workers(run_ids).items():
            self._send(worker, "lease", {"runs": dict.fromkeys(ids, until)})
        for pgid in scheduler.run_groups(run_ids):  # command runs: the orphan guard holds them to it
            self._guard.fence_group(pgid, until)
