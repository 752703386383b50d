"""Cluster mode: the leases this node takes on runs before it starts them (docs/cluster.md).

A stored run (queued, or a due one-shot) starts here only under a lease claimed in
the shared store; its epoch and lease deadline go with it to its worker or process.
Also the read-only queries the node's agent makes of the runs in flight here.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from supervise.supervisor.core.runs import Run
from supervise.supervisor.daemon.schedules import Schedule
from supervise.supervisor.store.base import StoreError

if TYPE_CHECKING:
    from supervise.supervisor.store.cluster_tenants import ClusterHistory

log = logging.getLogger("supervise.scheduler")


class RunLeases:
    """Claims of stored runs for this node, one at a time or several ahead of a drain."""

    def __init__(self, leases: ClusterHistory) -> None:
        self.history = leases
        self._claimed_ahead: dict[str, bool] = {}  # run id -> taken, by `claim_ahead` for `claim`

    @property
    def node(self) -> str:
        """This node's name."""
        return self.history.node

    def claim_ahead(self, s: Schedule, free: int) -> None:
        """Claim the runs a drain of `s` is about to start (`free` of them) in one statement."""
        ids = [r.run_id for r in s.queue.peek(free) if r.run_id not in self._claimed_ahead]
        try:
            taken = self.history.claim_many(ids, service=s.name)
        except StoreError as e:
            log.warning("%s: could not claim queued runs (%s); they stay queued in the store", s.name, e)
            return
        self._claimed_ahead.update({run_id: run_id in taken for run_id in ids})

    def claim(self, s: Schedule, run: Run) -> bool:
        """Take a stored run under a new lease; False (and it is dropped from `s.active`) when
        another node has it, or the store cannot be reached (it stays queued there)."""
        ahead = self._claimed_ahead.pop(run.run_id, None)
        if ahead is not None:
            if not ahead:
                del s.active[run.run_id]
            return ahead
        try:
            epoch = self.history.claim(run.run_id, service=s.name)
        except StoreError as e:
            log.warning("%s: could not claim run %s (%s); it stays queued in the store", s.name, run.run_id, e)
            epoch = None
        if epoch is None:
            del s.active[run.run_id]
            return False
        return True

    def claimed(self, run_id: str) -> None:
        """The run was claimed already (a due one-shot, `DueClaims`): `claim` takes it as it is."""
        self._claimed_ahead[run_id] = True

    def unclaimed(self, run_id: str) -> None:
        """Forget a claim `claimed` noted that `claim` did not use."""
        self._claimed_ahead.pop(run_id, None)

    def epoch(self, run_id: str) -> int | None:
        """The epoch of this node's lease on the run."""
        return self.history.epoch_of(run_id)

    def worker_lease(self, run_id: str) -> dict[str, object]:
        """The lease fields a worker (or the orphan guard) is given with the run."""
        return self.history.worker_lease(run_id)


def command_groups(schedules: Iterable[Schedule], run_ids: set[str]) -> list[int]:
    """The process groups of these runs that are commands (for their guard deadlines)."""
    return [
        active.process.pid
        for s in schedules
        for run_id, active in s.active.items()
        if run_id in run_ids and active.process is not None
    ]


def runs_in_workers(schedules: Iterable[Schedule], run_ids: set[str]) -> dict[str, list[str]]:
    """Which of these runs are in a warm worker, by worker (for their lease renewals)."""
    found: dict[str, list[str]] = {}
    for s in schedules:
        for run_id, active in s.active.items():
            if run_id in run_ids and active.worker is not None and active.launched:
                found.setdefault(active.worker, []).append(run_id)
    return found
