"""The scheduler: the schedules of the supervisor's scheduled services, and the commands on them.

What the rest of the daemon calls (the control commands, the worker channel,
the cluster agent). It composes the parts that do the work: `Firing` arms one
timer per schedule and fires its occurrences (firing.py), `RunDispatcher` takes
each to its final state (run_dispatch.py), `PendingOneshots` holds the window of
pending one-shots (oneshots.py), `LostRuns` decides what becomes of lost runs
(lost_runs.py), `RunLeases` claims runs in cluster mode (run_leases.py), and
`run_views.py` is what is read of a schedule. Decisions come from the pure core.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from supervise.protocol.errors import ErrorCode, ProtocolError
from supervise.supervisor.config.schedule import ScheduleConfig
from supervise.supervisor.core.lateness import LatenessHistogram
from supervise.supervisor.core.runs import Run, RunOrigin, RunState, new_run, transition
from supervise.supervisor.daemon import run_leases, run_views
from supervise.supervisor.daemon.firing import Firing
from supervise.supervisor.daemon.lost_runs import LostRuns
from supervise.supervisor.daemon.oneshots import PendingOneshots, new_oneshot
from supervise.supervisor.daemon.ports import HeldElsewhere
from supervise.supervisor.daemon.run_dispatch import RunDispatcher
from supervise.supervisor.daemon.run_leases import RunLeases
from supervise.supervisor.daemon.run_views import run_to_dict
from supervise.supervisor.daemon.schedules import IN_FLIGHT, WAITING, Schedule
from supervise.supervisor.store.base import StoreError
from supervise.supervisor.store.queued import QueuedStore

if TYPE_CHECKING:
    from supervise.supervisor.daemon.ports import SchedulerHost
    from supervise.supervisor.store.cluster_tenants import ClusterHistory

log = logging.getLogger("supervise.scheduler")

PRUNE_EVERY_S = 3600.0
WRITE_BACKLOG = 5000  # queued store writes beyond which `schedule` waits for the writer
BACKLOG_WAIT_S = 30.0

__all__ = ["Scheduler", "run_to_dict"]  # run_to_dict: where the composition root imports it


class Scheduler:
    """Fires the schedules of the supervisor's scheduled services."""

    def __init__(
        self,
        host: SchedulerHost,
        store: QueuedStore,
        *,
        history_keep: int = 1000,
        history_max_age_ms: int = 30 * 86_400_000,
        leases: ClusterHistory | None = None,
    ) -> None:
        self._host = host
        self._store = store
        self._leases = leases  # cluster mode: runs are claimed under leases (docs/cluster.md)
        self._history_keep = history_keep  # finished runs kept per service and outcome
        self._history_max_age = timedelta(milliseconds=history_max_age_ms)
        self._schedules: dict[str, Schedule] = {}
        self._unrecovered: dict[str, list[Run]] = {}  # runs left by a stopped supervisor, of services not back yet
        self._loop: asyncio.AbstractEventLoop | None = None
        self._prune_timer: asyncio.TimerHandle | None = None
        self._lost = LostRuns(host, store)
        self._runs = RunDispatcher(
            host,
            store,
            self._schedules,
            leases=RunLeases(leases) if leases is not None else None,
            lost=self._lost,
            rearm=lambda s: self._firing.arm(s),
            room_freed=lambda name: self._oneshots.room_freed(name),
        )
        self._firing = Firing(host, store, self._runs, self._schedules, clustered=leases is not None)
        self._oneshots = PendingOneshots(self._runs, store, leases=leases)
        self.lateness: dict[str, LatenessHistogram] = self._runs.lateness  # per service: how late its runs started

    # -- lifecycle ----------------------------------------------------------

    def add(self, name: str, config: ScheduleConfig, *, python: bool) -> None:
        """Add (or replace) the schedule of service `name`; `python`: its runs go to warm workers."""
        state = self._store.get_schedule_state(name)
        self._schedules[name] = Schedule(name, config, python, state)

    def arm(self, name: str) -> None:
        """Arm a schedule added after `start` (a service added at runtime, or changed): its
        queued runs in the store come back into its queue, and the runs a stopped supervisor
        left in flight are recovered (a restored runtime registration)."""
        s = self._schedules[name]
        for run in self._unrecovered.pop(name, []):
            self._lost.recover(s, run, self._now())
        self._firing.arm(s)
        if self._loop is not None:
            self._runs.refill_queue(s)
            self._runs.drain(s)

    def remove(self, name: str, *, cancel_waiting: bool = False) -> None:
        """Forget a schedule: no more fires; runs in flight end. Its queued runs stay in the
        store for the schedule that replaces it, unless `cancel_waiting` (the service is gone)."""
        s = self._schedules.pop(name, None)
        if s is None:
            return
        if s.timer is not None:
            s.timer.cancel()
        for active in list(s.active.values()):
            self._runs.end_early(s, active, RunState.CANCELLED, "the service was removed")
        if cancel_waiting:
            for run in s.queue.runs():
                self._runs.ended(
                    s, transition(run, RunState.CANCELLED, at=self._now(), reason="the service was removed")
                )

    def start(self) -> None:
        """Recover runs lost with a previous supervisor, catch up, and arm every schedule."""
        self._loop = asyncio.get_running_loop()
        self._runs.start(self._loop)
        self._firing.start(self._loop)
        self._oneshots.start(self._loop)
        now = self._now()
        # In cluster mode other nodes' runs are in flight in this store: runs of a dead node are
        # the leader's to rescue, once their lease expires.
        leftovers = self._store.runs_in_states(IN_FLIGHT | WAITING) if self._leases is None else []
        for run in leftovers:
            s = self._schedules.get(run.service)
            if s is None:  # a service added at runtime: recovered when its registration is restored (`arm`)
                self._unrecovered.setdefault(run.service, []).append(run)
                continue
            self._lost.recover(s, run, now)
        for s in self._schedules.values():
            self._runs.refill_queue(s)
            if s.config.trigger.kind == "on_start":
                s.state = replace(s.state, runs_so_far=0, last_fired=None)  # once per supervisor start
            elif not s.state.paused:
                self._firing.catch_up(s, now)
            self._firing.arm(s)
            self._runs.drain(s)
        self._prune()

    def _prune(self) -> None:
        """Keep the history bounded; again every PRUNE_EVERY_S."""
        try:
            removed = self._store.prune(self._history_keep, self._history_max_age, self._now())
        except StoreError as e:
            log.error("pruning the run history failed (will retry): %s", e)
        else:
            if removed:  # a queued store prunes on its writer thread and logs there
                log.info("pruned %d old runs from the history", removed)
        if self._loop is not None:
            self._prune_timer = self._loop.call_later(PRUNE_EVERY_S, self._prune)

    def close(self) -> None:
        """Cancel every timer (at shutdown)."""
        if self._prune_timer is not None:
            self._prune_timer.cancel()
        self._oneshots.close()
        self._firing.close()
        self._runs.close()

    def _now(self) -> datetime:
        return self._host.wall()

    # -- firing -------------------------------------------------------------

    # -- what the worker channel and the supervisor tell us ----------------------

    def _schedule_of(self, instance: str) -> Schedule | None:
        """The schedule of a worker instance (`web`, or `web:2` for one of its `processes`)."""
        return self._schedules.get(instance) or self._schedules.get(instance.partition(":")[0])

    def on_worker_message(self, name: str, kind: str, fields: Mapping[str, Any]) -> None:
        """Worker instance `name` reported on a run (started, progress, lease expired, finished)."""
        s = self._schedule_of(name)
        if s is None:
            return
        self._runs.reported(s, name, kind, fields)

    def on_worker_ready(self, name: str) -> None:
        """Worker instance `name` said hello: hand it the runs waiting for a worker."""
        s = self._schedule_of(name)
        if s is None:
            return
        self._runs.drain(s)

    def on_worker_exit(self, name: str) -> None:
        """The service's worker is gone: runs it had been handed are lost (and re-run under
        on_lost = "retry"); runs not handed to it yet stay queued for the next worker."""
        s = self._schedule_of(name)
        if s is None or not s.python:
            return
        self._runs.worker_exited(s, name)

    # -- cluster mode: what the node's agent tells us (docs/cluster.md) ----------------

    def leases_lost(self, run_ids: set[str], reason: str) -> None:
        """Stop acting on these runs now: their leases are gone (taken over, or not renewed in
        time). A command run's process group gets SIGKILL; a warm worker is asked to cancel.
        Nothing is written: the run's row belongs to whoever holds it now."""
        for s in self._schedules.values():
            mine = [a for a in s.active.values() if a.run.run_id in run_ids]
            for active in mine:
                self._lost.lease_lost(s, active, reason)
            if mine:
                self._runs.drain(s)

    def run_groups(self, run_ids: set[str]) -> list[int]:
        """The process groups of these runs that are commands (for their guard deadlines)."""
        return run_leases.command_groups(self._schedules.values(), run_ids)

    def runs_in_workers(self, run_ids: set[str]) -> dict[str, list[str]]:
        """Which of these runs are in a warm worker, by worker (for their lease renewals)."""
        return run_leases.runs_in_workers(self._schedules.values(), run_ids)

    def rescued(self, lost_run_ids: list[str]) -> None:
        """As leader, these runs were marked lost (their node's lease expired while they ran):
        each service's on_lost decides (retry: a new attempt with the same idempotency key)."""
        for run_id in lost_run_ids:
            run = self._store.get_run(run_id)
            s = self._schedules.get(run.service) if run is not None else None
            if run is None or s is None:
                continue
            self._host.publish(s.name, "run_finished", {"run_id": run_id, "state": str(run.state), "error": run.error})
            self._lost.rerun(s, run)
            self._runs.drain(s)

    def poll_store(self, services: set[str] | None = None) -> None:
        """Take queued runs other nodes left (or the leader queued again) while slots are free
        (of `services`, None: of every one), and pending one-shots added through other nodes."""
        for s in self._schedules.values():
            if services is not None and s.name not in services:
                continue
            if len(s.active) < self._runs.capacity(s) and not len(s.queue):
                self._runs.refill_queue(s)
                self._runs.drain(s)
        self._oneshots.poll()

    # -- commands -----------------------------------------------------------------

    async def written(self) -> bool:
        """Wait until the store writes queued so far are in (bounded): reads then show them."""
        return await self._store.written()

    async def keep_up(self) -> None:
        """Back-pressure for clients adding runs: while more than WRITE_BACKLOG writes wait
        for the store, wait until they are in (so nothing a client was told is stored is
        dropped by a full write queue, and memory stays bounded). A shared store's one-shots are
        inserted before the reply, not queued: nothing to wait for there (the backlog is the
        state changes of runs in flight, which scheduling does not add to)."""
        if not self._store.shared and self._store.pending > WRITE_BACKLOG:
            await self._store.written(timeout_s=BACKLOG_WAIT_S)

    def has(self, name: str) -> bool:
        """`name` is a scheduled service."""
        return name in self._schedules

    def _require(self, name: str) -> Schedule:
        s = self._schedules.get(name)
        if s is None:
            raise ProtocolError(ErrorCode.CONFLICT, f'service "{name}" has no schedule (add every, cron, at or manual)')
        return s

    def run_now(self, name: str, args: Mapping[str, Any] | None) -> Run:
        """A manual run of `name` with `args` over the service's own, as the overlap policy admits it."""
        return self._runs.occur(self._require(name), None, RunOrigin.MANUAL, args)

    def cancel(self, run_id: str) -> Run:
        """Cancel a run: one in flight ends (cooperatively, then by force); one waiting is recorded
        cancelled. ProtocolError if it does not exist or has ended; `HeldElsewhere` if another node runs it."""
        for s in self._schedules.values():
            active = s.active.get(run_id)
            if active is not None:
                self._runs.end_early(s, active, RunState.CANCELLED, "cancelled by request")
                return active.run
            for run in s.buffered:
                if run.run_id == run_id:
                    s.buffered.remove(run)
                    return self._cancel_waiting(s, run)
            queued = s.queue.remove(run_id)
            if queued is not None:
                return self._cancel_waiting(s, queued)
        pending = self._oneshots.remove(run_id)
        if pending is not None and pending.service in self._schedules:
            return self._cancel_waiting(self._schedules[pending.service], pending)
        run = self._store.get_run(run_id)
        if run is None:
            raise ProtocolError(ErrorCode.NOT_FOUND, f'no run with id "{run_id}"')
        owner = self._schedules.get(run.service)
        if self._leases is not None and run.state in IN_FLIGHT and run.node and run.node != self._leases.node:
            raise HeldElsewhere(run.node, run_id)
        if owner is not None and run.state in (RunState.PENDING, RunState.QUEUED):
            # Beyond the in-memory windows: only a row so far.
            if run.state is RunState.QUEUED:
                owner.queue.spilled = max(0, owner.queue.spilled - 1)
            return self._cancel_waiting(owner, run)
        raise ProtocolError(ErrorCode.CONFLICT, f"run {run_id} is already {run.state}; nothing to cancel")

    def _cancel_waiting(self, s: Schedule, run: Run) -> Run:
        run = transition(run, RunState.CANCELLED, at=self._now(), reason="cancelled by request")
        self._runs.ended(s, run, barrier=True)  # the row may be one a window refill would read
        self._host.publish(
            s.name, "run_finished", {"run_id": run.run_id, "state": str(run.state), "duration_ms": None, "error": None}
        )
        return run

    def pause(self, name: str) -> None:
        """No more fires of `name` until `resume` (runs in flight go on)."""
        self._firing.pause(self._require(name))

    def resume(self, name: str) -> None:
        """Fire `name` again, from now on: times missed while paused are not run."""
        self._firing.resume(self._require(name))

    def skip_next(self, name: str) -> str | None:
        """Skip the next occurrence of `name`; returns its time (ISO 8601), if it has one."""
        return self._firing.skip_next(self._require(name))

    def next_fires(self, name: str, count: int) -> list[str]:
        """The next `count` fire times of `name` by its trigger (ISO 8601)."""
        return run_views.next_fires(self._require(name), self._now(), count)

    def schedule_at(self, name: str, at: datetime, args: Mapping[str, Any] | None) -> str:
        """A one-shot occurrence at `at`: a `pending` run, in the store at once; returns its run id.

        Only the soonest pending runs are held in memory (`PendingOneshots`); the others
        are read from the store as those fire.
        """
        s = self._require(name)
        run = new_oneshot(s.name, s.config.args, self._now(), at, args)
        self._oneshots.add(run)
        return run.run_id

    async def schedule_many(self, name: str, entries: list[tuple[datetime, Mapping[str, Any] | None]]) -> list[str]:
        """Several one-shots (`schedule` with `runs`), as `schedule_at` each; returns their run ids.

        In cluster mode they are inserted with one statement, in a thread: the event loop
        (and with it the node's renewals) goes on meanwhile."""
        if self._leases is None:
            return [self.schedule_at(name, at, args) for at, args in entries]
        s = self._require(name)
        now = self._now()
        runs = [new_oneshot(s.name, s.config.args, now, at, args) for at, args in entries]
        await self._oneshots.add_many(runs)
        return [run.run_id for run in runs]

    def cancel_oneshot(self, run_id: str) -> bool:
        """Cancel a one-shot (or any run) that has not started; False when it has, or never existed.

        A run held here is judged by what is held (its row may still be on its way to the
        store, e.g. a task created a moment ago); others by their row."""
        run = self._held(run_id) or self._store.get_run(run_id)
        if run is None or run.state not in (RunState.PENDING, RunState.DUE, RunState.BUFFERED, RunState.QUEUED):
            return False
        try:
            self.cancel(run_id)
        except ProtocolError:
            return False
        return True

    def _held(self, run_id: str) -> Run | None:
        """A run this scheduler holds in memory: pending in the window, queued, buffered or in flight."""
        pending = self._oneshots.get(run_id)
        if pending is not None:
            return pending
        for s in self._schedules.values():
            active = s.active.get(run_id)
            if active is not None:
                return active.run
            found = s.queue.get(run_id) or next((r for r in s.buffered if r.run_id == run_id), None)
            if found is not None:
                return found
        return None

    def arm_stored_oneshots(self) -> None:
        """Load the soonest pending one-shots (one-shots stored by an older version become pending runs first)."""
        for oneshot in self._store.list_oneshots():
            if oneshot.service in self._schedules:
                s = self._schedules[oneshot.service]
                run = new_oneshot(s.name, s.config.args, self._now(), oneshot.at, oneshot.args, run_id=oneshot.id)
                self._store.store.insert_run(run)
                self._store.store.remove_oneshot(oneshot.id)
        self._oneshots.load()

    def figures(self, name: str) -> dict[str, object]:
        """Queue depth, runs in flight and fire lateness of a scheduled service (for `metrics`)."""
        s = self._schedules.get(name)
        if s is None:
            return {}
        return run_views.figures(s, self.lateness.get(name))

    def backfill(self, name: str, start: datetime, end: datetime, limit: int = 1000) -> list[str]:
        """Buffer a run for each of `name`'s fire times in [start, end] (at most `limit`); their run ids."""
        s = self._require(name)
        ids = []
        for nominal in s.config.trigger.fires_between(start, end, limit):
            run = new_run(s.name, at=self._now(), nominal_time=nominal, origin=RunOrigin.BACKFILL)
            run = transition(replace(run, args=dict(s.config.args)), RunState.BUFFERED, at=self._now())
            if self._store.insert_run(run):
                s.buffered.append(run)
                ids.append(run.run_id)
        self._runs.start_buffered(s)
        return ids

    def describe(self, name: str) -> dict[str, object] | None:
        """A scheduled service's trigger, next fires, counters and last run; None if it has no schedule."""
        s = self._schedules.get(name)
        if s is None:
            return None
        return run_views.describe(s, run_views.last_run(self._store, s))
