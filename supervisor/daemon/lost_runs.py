"""Runs that ended without an outcome: lost with their worker, their supervisor, or their lease.

A lost run is recorded `lost`; under `on_lost = "retry"` a new attempt is queued
with the same idempotency key (at least once), up to the retry policy's attempts.
A run handed to a worker that died before starting it is queued again unchanged.
In cluster mode a run whose lease is gone is dropped here without a write: its
row is whoever holds it now.
"""

from __future__ import annotations

import logging
import signal
from dataclasses import replace
from datetime import datetime

from supervise.supervisor.core.runs import Run, RunOrigin, RunState, SkipReason, new_run, transition
from supervise.supervisor.daemon.ports import SchedulerHost
from supervise.supervisor.daemon.schedules import IN_FLIGHT, ActiveRun, Schedule, pop_active
from supervise.supervisor.store.queued import QueuedStore

log = logging.getLogger("supervise.scheduler")

LOST_RERUN_LIMIT = 5  # attempts of a run whose worker keeps being lost (on_lost = "retry", no retries key)


class LostRuns:
    """Records lost runs and queues their re-runs (the run's final `lost` write is its ender's)."""

    def __init__(self, host: SchedulerHost, store: QueuedStore) -> None:
        self._host = host
        self._store = store

    def recover(self, s: Schedule, run: Run, now: datetime) -> None:
        """A run a stopped supervisor left in flight is lost (and re-run if on_lost says so); one left
        waiting to start was missed."""
        if run.state in IN_FLIGHT:
            self._store.update_run(transition(run, RunState.LOST, at=now, reason="the supervisor stopped while it ran"))
            log.warning("%s: run %s was lost (the supervisor stopped while it ran)", run.service, run.run_id)
            self.rerun(s, run)
        else:
            self._store.update_run(transition(run, RunState.SKIPPED, at=now, reason=str(SkipReason.MISSED)))

    def requeue(self, s: Schedule, active: ActiveRun) -> None:
        """A run handed to a worker that died before starting it: queued again, unchanged."""
        pop_active(s, active.run.run_id)
        for handle in active.timers:
            handle.cancel()
        run = transition(active.run, RunState.QUEUED, at=self._host.wall())
        self._store.update_run(run)
        s.queue.push(run)

    def rerun(self, s: Schedule, lost: Run) -> None:
        """on_lost = "retry": queue a new attempt of a lost run, with the same idempotency key."""
        if s.config.on_lost != "retry":
            return
        limit = s.config.retry.max + 1 if s.config.retry is not None else LOST_RERUN_LIMIT
        if lost.attempt >= limit:
            log.warning(
                "%s: run %s was lost on attempt %d of %d; not run again", s.name, lost.run_id, lost.attempt, limit
            )
            return
        now = self._host.wall()
        rerun = new_run(
            s.name,
            at=now,
            nominal_time=lost.nominal_time,
            origin=RunOrigin.RECOVERY,
            attempt=lost.attempt + 1,
            args=lost.args,
            jittered_time=lost.jittered_time or lost.created_at,
        )
        rerun = transition(
            replace(rerun, key=lost.idempotency_key, reason=f"re-run of lost run {lost.run_id}"),
            RunState.QUEUED,
            at=now,
        )
        self._store.insert_run(rerun)
        s.queue.push(rerun)
        log.info(
            "%s: run %s was lost with its worker; queued again as %s (attempt %d)",
            s.name,
            lost.run_id,
            rerun.run_id,
            rerun.attempt,
        )
        self._host.publish(
            s.name,
            "run_requeued",
            {
                "run_id": rerun.run_id,
                "lost_run_id": lost.run_id,
                "attempt": rerun.attempt,
                "key": rerun.idempotency_key,
            },
        )

    def lease_lost(self, s: Schedule, active: ActiveRun, reason: str) -> None:
        """Cluster mode: stop acting on a run whose lease is gone (taken over, or not renewed in
        time). A command run's process group gets SIGKILL; a warm worker is asked to cancel.
        Nothing is written: the run's row belongs to whoever holds it now."""
        run_id = active.run.run_id
        pop_active(s, run_id)
        for handle in active.timers:
            handle.cancel()
        if run_id in s.waiting_for_worker:
            s.waiting_for_worker.remove(run_id)
        if active.process is not None:
            active.process.signal_group(signal.SIGKILL)
        elif active.worker is not None and active.launched:
            self._host.send_cancel(active.worker, run_id)
        log.warning("%s: run %s: %s; stopped here", s.name, run_id, reason)
        self._host.publish(s.name, "run_lease_lost", {"run_id": run_id, "reason": reason})
