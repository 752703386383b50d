"""Cluster mode: due one-shots claimed off the event loop, as many as this node has room for.

Every node's pending window holds the same one-shots (they are rows of the shared
store) and its timer fires at their times. The timer only says *which services have
one-shots due*; the runs are taken with one statement per service,
`LeasedRuns.claim_due_oneshots` (`FOR UPDATE SKIP LOCKED … LIMIT room`), in a thread:
each node takes as many of the soonest due runs as it has free slots, the others
skip the rows it holds locked, and nobody tries a run another node took. The event
loop never waits on that statement, so a burst of one-shots does not hold up the
node's lease renewals or its workers' `lease` messages.

A service whose claim came back full may have more runs due: it is claimed again when
a slot frees (`room_freed`). At every poll (each heartbeat, each wake-up) one query
looks for services with due one-shots left, the safety net for a node that had no
room when their time came and a node that died between its claim and its start (its
leases expire and the leader requeues those runs).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from supervise.supervisor.core.runs import Run
from supervise.supervisor.store.base import StoreError

if TYPE_CHECKING:
    from supervise.supervisor.store.cluster_tenants import ClusterHistory

log = logging.getLogger("supervise.cluster")


class DueClaims:
    """Claims of due one-shots for one node: at most one claim in flight, the rest coalesced.

    Args:
        leases: the node's leased run stores (every schema's).
        room: free slots of a service now (0 when it has a queue, or is gone).
        due_by: the latest time a service's one-shot may have to be claimed now (its
            fire-ahead for warm workers included).
        start: called on the event loop with each run claimed, as it was before the claim.
        now: the scheduler's clock.
    """

    def __init__(
        self,
        leases: ClusterHistory,
        *,
        room: Callable[[str], int],
        due_by: Callable[[str], datetime],
        start: Callable[[Run], None],
        now: Callable[[], datetime],
    ) -> None:
        self._leases = leases
        self._room = room
        self._due_by = due_by
        self._start = start
        self._now = now
        self._wanted: set[str] = set()  # services that may have due one-shots nobody took yet
        self._task: asyncio.Task[None] | None = None
        self._polling: asyncio.Task[None] | None = None
        self.claims = 0  # statements sent
        self.taken = 0  # runs claimed

    def due(self, services: set[str]) -> None:
        """One-shots of these services came due (the window's timer): claim what fits."""
        self._wanted |= services
        self._kick()

    def room_freed(self, service: str) -> None:
        """A slot of `service` is free: claim its due one-shots if some may be left."""
        if service in self._wanted:
            self._kick()

    def poll(self) -> None:
        """Look in the store for services with due one-shots left (one query, in a thread)."""
        if self._polling is None:
            self._polling = asyncio.get_running_loop().create_task(self._poll(), name="supervise-due-poll")

    def stop(self) -> None:
        """Stop claiming (at shutdown). A claim in its thread still lands: its runs' leases
        expire unrenewed and the leader queues them again."""
        for task in (self._task, self._polling):
            if task is not None:
                task.cancel()

    def _kick(self) -> None:
        if self._task is None and any(self._room(name) > 0 for name in self._wanted):
            self._task = asyncio.get_running_loop().create_task(self._claim(), name="supervise-due-claims")

    async def _poll(self) -> None:
        try:
            names = await asyncio.to_thread(self._leases.due_services, self._now())
        except StoreError as e:
            log.debug("cluster: could not look for due one-shots: %s", e)
            return
        finally:
            self._polling = None
        if names:
            self.due(names)

    async def _claim(self) -> None:
        try:
            while True:
                asked = {name: room for name in sorted(self._wanted) if (room := self._room(name)) > 0}
                if not asked:
                    return
                self._wanted -= asked.keys()
                limits = {name: (room, self._due_by(name)) for name, room in asked.items()}
                try:
                    got = await asyncio.to_thread(self._take, limits)
                except StoreError as e:
                    self._wanted |= asked.keys()  # tried again when a slot frees, or at the next poll
                    log.warning("cluster: could not claim due one-shots (%s); they stay pending in the store", e)
                    return
                for name, runs in got.items():
                    if len(runs) >= asked[name]:
                        self._wanted.add(name)  # the claim was full: more may be due
                    for run in runs:
                        self._start(run)
        finally:
            self._task = None

    def _take(self, limits: dict[str, tuple[int, datetime]]) -> dict[str, list[Run]]:
        """In a thread: one claim statement per service."""
        got: dict[str, list[Run]] = {}
        for name, (room, due_by) in limits.items():
            got[name] = self._leases.claim_due_oneshots(name, due_by, room)
            self.claims += 1
            self.taken += len(got[name])
        return got
