"""The shell part of scheduling: timers, runs in flight, and the run history.

Decisions come from the pure modules (`triggers`, `policies`, `runs`); this
class reads the wall clock, arms one timer per schedule, writes every
occurrence to the store before its process is told to run, and turns worker
reports into run states. A Python service's runs go to its warm worker as "run"
messages; a command service's runs are one execution of the command each.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from supervise.protocol import worker_env as E
from supervise.protocol.errors import ErrorCode, ProtocolError
from supervise.supervisor.config.schedule import ScheduleConfig
from supervise.supervisor.core.lateness import LatenessHistogram
from supervise.supervisor.core.pending import PendingWindow
from supervise.supervisor.core.policies import (
    OverlapAction,
    decide_catchup,
    decide_overlap,
    is_past_deadline,
    jitter_ms,
    should_retry,
)
from supervise.supervisor.core.run_queue import RunQueue
from supervise.supervisor.core.runs import FINAL, Run, RunOrigin, RunState, SkipReason, new_run, transition
from supervise.supervisor.daemon.due_claims import DueClaims
from supervise.supervisor.daemon.loop_posts import LoopPosts
from supervise.supervisor.daemon.ports import HeldElsewhere
from supervise.supervisor.daemon.processes import Worker
from supervise.supervisor.store.base import ScheduleState, StoreError
from supervise.supervisor.store.queued import QueuedStore

if TYPE_CHECKING:
    from supervise.supervisor.daemon.ports import SchedulerHost
    from supervise.supervisor.store.cluster_tenants import ClusterHistory

log = logging.getLogger("supervise.scheduler")

PRUNE_EVERY_S = 3600.0
MAX_TIMER_S = 30.0  # re-read the wall clock at least this often, so clock jumps are noticed
NEXT_FIRES_SHOWN = 5  # fire times `describe` lists (the API and the dashboard show them)
IN_FLIGHT = frozenset({RunState.STARTING, RunState.RUNNING})
WAITING = frozenset({RunState.DUE, RunState.BUFFERED})  # found at start: their time passed meanwhile
REFILL_RETRY_S = 0.05  # a window refill waits for the store's queued writes to land first
WRITE_BACKLOG = 5000  # queued store writes beyond which `schedule` waits for the writer
BACKLOG_WAIT_S = 30.0
FIRE_AHEAD_S = 0.05
SKIPPED_LOOKED_AT = 50  # a skip refused as a duplicate: the latest skipped rows searched for the same occurrence
"""How early an occurrence for a warm worker is fired: the supervisor records it and hands it
over ahead of its time, and the worker starts it at its time by its own clock (`not_before`),
so the start is not late by the supervisor's work on a burst of simultaneous occurrences."""
OCCURRENCE_RETRIES = 6  # cluster mode: an occurrence the store refused is tried again 6 times (0.5 s .. 16 s)
OCCURRENCE_RETRY_S = 0.5
LOST_RERUN_LIMIT = 5  # attempts of a run whose worker keeps being lost (on_lost = "retry", no retries key)


@dataclass
class ActiveRun:
    run: Run
    process: Worker | None = None  # a command run's own process
    ending_as: RunState | None = None  # set by cancel or timeout: the state it will be recorded in
    launched: bool = False  # its worker was told, or its process spawned
    worker: str | None = None  # the instance (warm worker) it was handed to
    timers: list[asyncio.TimerHandle] = field(default_factory=list)


@dataclass
class Schedule:
    name: str
    config: ScheduleConfig
    python: bool
    state: ScheduleState
    next_nominal: datetime | None = None
    next_at: datetime | None = None
    timer: asyncio.TimerHandle | None = None
    last_finished: datetime | None = None
    active: dict[str, ActiveRun] = field(default_factory=dict)
    buffered: collections.deque[Run] = field(default_factory=collections.deque)
    waiting_for_worker: list[str] = field(default_factory=list)
    last_run: Run | None = None  # the newest final run (not skipped) that `status` shows
    last_run_read_at: float | None = None  # monotonic time of the last read of it from the store
    queue: RunQueue = field(default_factory=RunQueue)  # admitted runs waiting for a free slot (concurrency)
    handed: collections.Counter[str] = field(default_factory=collections.Counter)  # runs in `active` per warm worker


# `status` shows each schedule's last run: read from the store at most this often (a
# store shared with other supervisors has their runs too); runs that end here update it at once.
LAST_RUN_REFRESH_S = 5.0


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
        self._claimed_ahead: dict[str, bool] = {}  # run id -> taken, by `_claim_ahead` for `_claim`
        self._window_reading = False  # cluster mode: a window refill is being read in a thread
        self._window_missed: list[Run] = []  # one-shots the window turned away while a refill was read
        self._due_claims = (  # cluster mode: due one-shots claimed off the loop (due_claims.py)
            None
            if leases is None
            else DueClaims(leases, room=self._room, due_by=self._due_by, start=self._start_claimed, now=self._now)
        )
        self._history_keep = history_keep  # finished runs kept per service and outcome
        self._history_max_age = timedelta(milliseconds=history_max_age_ms)
        self._schedules: dict[str, Schedule] = {}
        self._unrecovered: dict[str, list[Run]] = {}  # runs left by a stopped supervisor, of services not back yet
        self._loop: asyncio.AbstractEventLoop | None = None
        self._posts: LoopPosts | None = None  # callbacks from the writer thread, run on the loop
        self._prune_timer: asyncio.TimerHandle | None = None
        self._window = PendingWindow()  # the soonest pending one-shots; the rest are store rows
        self._window_timer: asyncio.TimerHandle | None = None
        self._window_timer_at: datetime | None = None
        self._refill_timer: asyncio.Handle | None = None
        self.lateness: dict[str, LatenessHistogram] = {}  # per service: how late its runs started

    # -- lifecycle ----------------------------------------------------------

    def add(self, name: str, config: ScheduleConfig, *, python: bool) -> None:
        state = self._store.get_schedule_state(name)
        self._schedules[name] = Schedule(name, config, python, state)

    def _recover(self, s: Schedule, run: Run, now: datetime) -> None:
        """A run a stopped supervisor left in flight is lost (and re-run if on_lost says so); one left
        waiting to start was missed."""
        if run.state in IN_FLIGHT:
            self._store.update_run(transition(run, RunState.LOST, at=now, reason="the supervisor stopped while it ran"))
            log.warning("%s: run %s was lost (the supervisor stopped while it ran)", run.service, run.run_id)
            self._rerun_lost(s, run)
        else:
            self._store.update_run(transition(run, RunState.SKIPPED, at=now, reason=str(SkipReason.MISSED)))

    def arm(self, name: str) -> None:
        """Arm a schedule added after `start` (a service added at runtime, or changed): its
        queued runs in the store come back into its queue, and the runs a stopped supervisor
        left in flight are recovered (a restored runtime registration)."""
        s = self._schedules[name]
        for run in self._unrecovered.pop(name, []):
            self._recover(s, run, self._now())
        self._arm(s)
        if self._loop is not None:
            self._refill_queue(s)
            self._drain(s)

    def remove(self, name: str, *, cancel_waiting: bool = False) -> None:
        """Forget a schedule: no more fires; runs in flight end. Its queued runs stay in the
        store for the schedule that replaces it, unless `cancel_waiting` (the service is gone)."""
        s = self._schedules.pop(name, None)
        if s is None:
            return
        if s.timer is not None:
            s.timer.cancel()
        for active in list(s.active.values()):
            self._end_early(s, active, RunState.CANCELLED, "the service was removed")
        if cancel_waiting:
            for run in s.queue.runs():
                self._ended(s, transition(run, RunState.CANCELLED, at=self._now(), reason="the service was removed"))

    def start(self) -> None:
        """Recover runs lost with a previous supervisor, catch up, and arm every schedule."""
        self._loop = asyncio.get_running_loop()
        self._posts = LoopPosts(self._loop)
        now = self._now()
        # In cluster mode other nodes' runs are in flight in this store: runs of a dead node are
        # the leader's to rescue, once their lease expires.
        leftovers = self._store.runs_in_states(IN_FLIGHT | WAITING) if self._leases is None else []
        for run in leftovers:
            s = self._schedules.get(run.service)
            if s is None:  # a service added at runtime: recovered when its registration is restored (`arm`)
                self._unrecovered.setdefault(run.service, []).append(run)
                continue
            self._recover(s, run, now)
        for s in self._schedules.values():
            self._refill_queue(s)
            if s.config.trigger.kind == "on_start":
                s.state = replace(s.state, runs_so_far=0, last_fired=None)  # once per supervisor start
            elif not s.state.paused:
                self._catch_up(s, now)
            self._arm(s)
            self._drain(s)
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
        for timer in (self._prune_timer, self._window_timer, self._refill_timer):
            if timer is not None:
                timer.cancel()
        if self._due_claims is not None:
            self._due_claims.stop()
        for s in self._schedules.values():
            if s.timer is not None:
                s.timer.cancel()
            for active in s.active.values():
                for handle in active.timers:
                    handle.cancel()

    def _now(self) -> datetime:
        return self._host.wall()

    # -- firing -------------------------------------------------------------

    def _catch_up(self, s: Schedule, now: datetime) -> None:
        last = s.state.last_fired
        if last is not None:
            self._decide_missed(s, self._due_after(s, last, now), now)

    def _due_after(self, s: Schedule, after: datetime, now: datetime) -> list[datetime]:
        """The schedule's times in (after, now]."""
        return [t for t in s.config.trigger.fires_between(after, now, 1000) if after < t <= now]

    def _decide_missed(self, s: Schedule, missed: list[datetime], now: datetime) -> None:
        """Times that passed without firing: the catch-up policy runs some and records the rest skipped."""
        if not missed:
            return
        decision = decide_catchup(
            missed,
            now=now,
            policy=s.config.catchup,
            window_ms=s.config.catchup_window_ms,
            max_catchup=s.config.max_catchup,
        )
        for nominal, reason in decision.skipped:
            self._record_skip(s, nominal, RunOrigin.CATCHUP, reason, now)
        for nominal in decision.run:
            self._occur(s, nominal, RunOrigin.CATCHUP)
        self._remember_fired(s, missed[-1])

    def _arm(self, s: Schedule) -> None:
        if s.timer is not None:
            s.timer.cancel()
            s.timer = None
        if s.state.paused or self._loop is None:
            s.next_nominal = s.next_at = None
            return
        now = self._now()
        after = max(now, s.state.last_fired) if s.state.last_fired else now
        nominal = s.config.trigger.next_fire(after, runs_so_far=s.state.runs_so_far, last_finished=s.last_finished)
        if nominal is not None and s.state.last_fired is None and nominal < now:
            nominal = None
        s.next_nominal = nominal
        if nominal is None:
            s.next_at = None
            return
        s.next_at = nominal + timedelta(milliseconds=self._jitter(s, nominal))
        ahead = FIRE_AHEAD_S if s.python else 0.0
        delay = min(MAX_TIMER_S, max(0.0, (s.next_at - now).total_seconds() - ahead))
        s.timer = self._loop.call_later(delay, self._on_timer, s)

    def _jitter(self, s: Schedule, nominal: datetime) -> int:
        if s.config.jitter_ms <= 0:
            return 0
        return jitter_ms(s.name, nominal, s.config.jitter_ms, None)

    def _on_timer(self, s: Schedule) -> None:
        s.timer = None
        now = self._now()
        early = FIRE_AHEAD_S if s.python else 0.0
        if s.next_at is None or s.next_nominal is None or now < s.next_at - timedelta(seconds=early):
            self._arm(s)  # woke early (the timer is capped) or the clock moved: look again
            return
        if now < s.next_at and (s.active or s.queue.depth or s.buffered):
            # Ahead of time, but the overlap policy must see what is still running at the time itself.
            assert self._loop is not None
            s.timer = self._loop.call_later((s.next_at - now).total_seconds(), self._on_timer, s)
            return
        nominal = s.next_nominal
        # Woken after later times too (a starved event loop, a suspended host): those were
        # missed, and the catch-up policy decides them as after a restart, so each time gets a
        # row; in cluster mode each row is unique per time, whichever node writes it first.
        overdue = self._due_after(s, nominal, now) if now > nominal else []
        try:
            if s.state.skip_next:
                self._remember_fired(s, nominal)
                s.state = replace(s.state, skip_next=False)
                self._store.put_schedule_state(s.name, s.state)
                self._record_skip(s, nominal, RunOrigin.SCHEDULE, SkipReason.USER_SKIP, now)
                self._decide_missed(s, overdue, now)
            elif overdue:
                self._decide_missed(s, [nominal, *overdue], now)
            else:
                self._remember_fired(s, nominal)
                self._occur(s, nominal, RunOrigin.SCHEDULE)
        except StoreError as e:
            if self._leases is not None:  # cluster mode: try again; whichever node gets through inserts it once
                self._retry_occurrence(s, nominal, 1, e)
            else:  # a shared store unreachable: this occurrence is lost, the next ones are not
                log.error("%s: could not record the occurrence at %s: %s", s.name, nominal.isoformat(), e)
        finally:
            self._arm(s)

    def _retry_occurrence(self, s: Schedule, nominal: datetime, tries: int, error: StoreError) -> None:
        """Cluster mode: the store was unreachable when `nominal` fired; insert it again in
        OCCURRENCE_RETRY_S, doubling, OCCURRENCE_RETRIES times (the occurrence is unique, so a
        node that got through first makes this a no-op)."""
        if tries > OCCURRENCE_RETRIES or self._loop is None or s.name not in self._schedules:
            log.error("%s: could not record the occurrence at %s: %s; given up", s.name, nominal.isoformat(), error)
            return
        log.warning("%s: could not record the occurrence at %s (%s); trying again", s.name, nominal.isoformat(), error)

        def again() -> None:
            try:
                self._occur(s, nominal, RunOrigin.SCHEDULE)
            except StoreError as e:
                self._retry_occurrence(s, nominal, tries + 1, e)

        self._loop.call_later(OCCURRENCE_RETRY_S * 2 ** (tries - 1), again)

    def _remember_fired(self, s: Schedule, nominal: datetime) -> None:
        s.state = replace(s.state, last_fired=nominal)
        self._store.put_schedule_state(s.name, s.state)

    def _record_skip(
        self, s: Schedule, nominal: datetime | None, origin: RunOrigin, reason: SkipReason, now: datetime
    ) -> Run:
        run = new_run(s.name, at=now, nominal_time=nominal, origin=origin)
        run = transition(run, RunState.SKIPPED, at=now, reason=str(reason))
        detail = {"run_id": run.run_id, "reason": str(reason)}
        if not self._store.shared or self._loop is None:
            with self._store.together():
                if self._store.insert_run(run):
                    self._host.publish(s.name, "run_skipped", detail)
            return run
        # On a shared store another supervisor may have recorded this occurrence first: the row,
        # its notifications and its event are the winner's (docs/notifications.md).
        with self._store.together():
            self._store.insert_first(run, won=self._on_loop(lambda: self._host.publish(s.name, "run_skipped", detail)))
            self._host.notice(s.name, "run_skipped", detail)
        return run

    # -- occurrences and runs ---------------------------------------------------

    def _occur(
        self,
        s: Schedule,
        nominal: datetime | None,
        origin: RunOrigin,
        args: Mapping[str, Any] | None = None,
        attempt: int = 1,
        key: str | None = None,
    ) -> Run:
        """A new occurrence is due: start it, queue it, buffer it, or skip it, as the overlap policy says."""
        now = self._now()
        run_args = {**s.config.args, **(args or {})}
        run = new_run(s.name, at=now, nominal_time=nominal, origin=origin)
        run = replace(
            run,
            args=run_args,
            attempt=attempt,
            key=key,
            jittered_time=s.next_at if origin is RunOrigin.SCHEDULE else now,
        )
        running = len(s.active) + s.queue.depth
        decision = decide_overlap(
            s.config.overlap,
            running=running,
            buffered=len(s.buffered),
            max_concurrent=s.config.slots,
            buffer_limit=s.config.buffer_limit,
        )
        if decision.action is OverlapAction.SKIP:
            assert decision.reason is not None
            run = transition(run, RunState.SKIPPED, at=now, reason=f"{decision.reason}: {decision.detail}")
            self._store.insert_run(run)
            self._host.publish(s.name, "run_skipped", {"run_id": run.run_id, "reason": str(decision.reason)})
            return run
        if decision.action is OverlapAction.START:
            return self._admit(s, run, stored=False)
        run = transition(run, RunState.BUFFERED, at=now)
        self._store.insert_run(run)
        if decision.action is OverlapAction.BUFFER:
            s.buffered.append(run)
            return run
        # cancel_other / terminate_other: stop the oldest runs; this one starts when a slot frees.
        s.buffered.appendleft(run)
        ending = (
            RunState.CANCELLED if decision.action is OverlapAction.CANCEL_RUNNING_THEN_START else RunState.TERMINATED
        )
        for active in sorted(s.active.values(), key=lambda a: a.run.created_at)[: decision.stop_count]:
            self._end_early(s, active, ending, f"replaced by run {run.run_id}")
        return run

    def _admit(self, s: Schedule, run: Run, *, stored: bool) -> Run:
        """An occurrence the overlap policy lets run: start it if a slot is free, else queue it."""
        if len(s.active) < self._capacity(s) and not s.queue.depth:
            return self._start(s, run, stored=stored)
        run = transition(run, RunState.QUEUED, at=self._now())
        if stored and self._leases is not None:
            # Written now, not queued: a claim of this run (here, soon, or by another node)
            # must come after it, or the queued write would undo the claim.
            self._store.store.update_run(run)
        else:
            (self._store.update_run if stored else self._store.insert_run)(run)
        s.queue.push(run)
        self._drain(s)
        return run

    def _drain(self, s: Schedule) -> None:
        """Start queued runs, soonest first, while slots are free."""
        if s.waiting_for_worker:
            self._dispatch_waiting(s)
        capacity = self._capacity(s)
        free = capacity - len(s.active)
        if self._leases is not None and free > 1 and len(s.queue) > 1:
            self._claim_ahead(s, free)
        while len(s.active) < capacity:
            run = s.queue.pop()
            if run is None:
                break
            self._start(s, run, stored=True)
        if s.queue.wants_refill:
            self._schedule_refill()
        if self._due_claims is not None and not s.queue.depth:
            self._due_claims.room_freed(s.name)

    def _capacity(self, s: Schedule) -> int:
        """Runs handed out at once: `_per_worker` per warm worker (`processes` of them),
        or `concurrency` for commands."""
        return self._per_worker(s) * len(self._host.expand(s.name)) if s.python else s.config.concurrency

    @staticmethod
    def _per_worker(s: Schedule) -> int:
        """Runs one warm worker holds: `concurrency` running, and as many again waiting in it
        when runs may run twice (on_lost = "retry"), so a slot that frees is refilled at once
        rather than when its result has crossed the channel. The worker runs `concurrency`."""
        return s.config.concurrency * (2 if s.config.on_lost == "retry" else 1)

    def _pick_worker(self, s: Schedule) -> str | None:
        """The ready warm worker with the fewest runs in flight and a free slot, or None."""
        ready = [(s.handed[w], w) for w in self._host.expand(s.name) if self._host.worker_ready(w)]
        if not ready:
            return None
        count, worker = min(ready)
        return worker if count < self._per_worker(s) else None

    def _start(self, s: Schedule, run: Run, *, stored: bool | None = None) -> Run:
        now = self._now()
        deadline_from = run.jittered_time or run.created_at
        first_write = run.state is not RunState.BUFFERED if stored is None else not stored
        if s.config.start_deadline_ms is not None and is_past_deadline(deadline_from, s.config.start_deadline_ms, now):
            run = transition(run, RunState.SKIPPED, at=now, reason=str(SkipReason.MISSED_DEADLINE))
            (self._store.insert_run if first_write else self._store.update_run)(run)
            return run
        run = transition(run, RunState.STARTING, at=now)
        active = ActiveRun(run)
        s.active[run.run_id] = active

        def launch() -> None:
            self._launch(s, run.run_id)

        # The row is committed before the process hears of the run, so a crash from here on
        # leaves a row to mark lost; the writer thread calls back once it is.
        if self._leases is not None and not first_write:
            if not self._claim(s, run):
                return run
            self._store.update_run(run)  # the whole row, a compare-and-set on the new epoch
            assert self._loop is not None
            self._loop.call_soon(launch)
        elif first_write:
            try:
                inserted = self._store.insert_run(run, then=self._on_loop(launch))
            except StoreError:
                del s.active[run.run_id]  # a shared store unreachable: the caller tries again, or logs it
                raise
            if not inserted:
                # Another supervisor sharing the store enqueued this occurrence first: it runs there.
                log.info("%s: occurrence %s is claimed by another supervisor; not running it here", s.name, run.label())
                del s.active[run.run_id]
                return run
        elif s.config.on_lost == "retry" and self._loop is not None:
            # Its row exists (pending or queued): a crash before this update lands leaves it
            # there and the run runs again, with the same key; at least once allows that.
            self._store.update_run(run)
            self._loop.call_soon(launch)
        else:
            self._store.update_run(run, then=self._on_loop(launch))
        if run.origin is RunOrigin.SCHEDULE:
            s.state = replace(s.state, runs_so_far=s.state.runs_so_far + 1)
            self._store.put_schedule_state(s.name, s.state)
        return run

    def _claim_ahead(self, s: Schedule, free: int) -> None:
        """Cluster mode: claim the runs `_drain` is about to start in one statement."""
        assert self._leases is not None
        ids = [r.run_id for r in s.queue.peek(free) if r.run_id not in self._claimed_ahead]
        try:
            taken = self._leases.claim_many(ids, service=s.name)
        except StoreError as e:
            log.warning("%s: could not claim queued runs (%s); they stay queued in the store", s.name, e)
            return
        self._claimed_ahead.update({run_id: run_id in taken for run_id in ids})

    def _claim(self, s: Schedule, run: Run) -> bool:
        """Cluster mode: take a stored run under a new lease; False (and it is dropped here)
        when another node has it, or the store cannot be reached (it stays queued there)."""
        assert self._leases is not None
        ahead = self._claimed_ahead.pop(run.run_id, None)
        if ahead is not None:
            if not ahead:
                del s.active[run.run_id]
            return ahead
        try:
            epoch = self._leases.claim(run.run_id, service=s.name)
        except StoreError as e:
            log.warning("%s: could not claim run %s (%s); it stays queued in the store", s.name, run.run_id, e)
            epoch = None
        if epoch is None:
            del s.active[run.run_id]
            return False
        return True

    def _epoch(self, run_id: str) -> int | None:
        return self._leases.epoch_of(run_id) if self._leases is not None else None

    def _on_loop(self, callback: Callable[[], None]) -> Callable[[], None]:
        """`callback`, to be called from another thread but run on the event loop (the callbacks
        the writer posts after one batch run in one wake-up of the loop)."""
        posts = self._posts
        assert posts is not None

        def post() -> None:
            posts.post(callback)

        return post

    def _launch(self, s: Schedule, run_id: str) -> None:
        """The run's row is committed: tell its worker, or spawn its process."""
        active = s.active.get(run_id)
        if active is None or active.ending_as is not None:
            return  # cancelled (or its worker lost) while the row was being written
        if s.config.timeout_ms is not None and self._loop is not None:
            due = _due_time(active.run)
            wait_s = max(0.0, (due - self._now()).total_seconds()) if due is not None else 0.0
            active.timers.append(
                self._loop.call_later(wait_s + s.config.timeout_ms / 1000, self._on_timeout, s, run_id)
            )
        if s.python:
            worker = self._pick_worker(s)
            if worker is not None:
                self._dispatch(s, active, worker)
            else:
                s.waiting_for_worker.append(run_id)
        else:
            self._spawn_command(s, active)

    def _dispatch(self, s: Schedule, active: ActiveRun, worker: str) -> None:
        run = active.run
        active.launched = True
        if active.worker is not None:
            s.handed[active.worker] -= 1
        active.worker = worker
        s.handed[worker] += 1
        nominal = run.nominal_time.isoformat() if run.nominal_time else None
        due = _due_time(run)
        self._host.send_run(
            worker,
            run_id=run.run_id,
            args=dict(run.args),
            nominal_time=nominal,
            attempt=run.attempt,
            key=run.idempotency_key,
            not_before=due.timestamp() if due is not None else None,
            epoch=self._epoch(run.run_id),
            **(self._leases.worker_lease(run.run_id) if self._leases is not None else {}),
        )

    def _spawn_command(self, s: Schedule, active: ActiveRun) -> None:
        run = active.run
        active.launched = True
        env = {
            E.RUN_ID: run.run_id,
            E.SCHEDULED_TIME: run.nominal_time.isoformat() if run.nominal_time else "",
            E.ATTEMPT: str(run.attempt),
            E.IDEMPOTENCY_KEY: run.idempotency_key,
            E.ORIGIN: str(run.origin),
            E.RUN_ARGS: json.dumps(dict(run.args)),
        }
        epoch = self._epoch(run.run_id)
        if epoch is not None:
            env[E.EPOCH] = str(epoch)

        def exited(worker: Worker, code: int | None, sig: int | None) -> None:
            self._command_exited(s, run.run_id, code, sig)

        lease = self._leases.worker_lease(run.run_id) if self._leases is not None else {}
        fence_until = lease.get("lease_until")
        try:
            active.process = self._host.spawn_run_process(
                s.name, env, exited, fence_until=fence_until if isinstance(fence_until, float) else None
            )
        except OSError as e:
            self._finish(s, run.run_id, ok=False, error=f"could not spawn: {e}")
            return
        self._mark_running(s, run.run_id, pid=active.process.pid)

    def _command_exited(self, s: Schedule, run_id: str, code: int | None, sig: int | None) -> None:
        ok = code == 0
        error = None if ok else (f"exited with code {code}" if code is not None else f"killed by signal {sig}")
        self._finish(s, run_id, ok=ok, error=error, exit_code=code, signal_number=sig)

    def _mark_running(self, s: Schedule, run_id: str, pid: int | None = None, at: datetime | None = None) -> None:
        """The run began: `at` is when, as the worker saw it (its start is not late by the channel's batching)."""
        active = s.active.get(run_id)
        if active is None or active.run.state is not RunState.STARTING:
            return
        now = at or self._now()
        active.run = transition(active.run, RunState.RUNNING, at=now, pid=pid)
        self._observe_lateness(s, active.run, now)
        self._store.update_run(active.run)
        self._host.publish(s.name, "run_started", {"run_id": run_id, "attempt": active.run.attempt})

    def _finish(
        self,
        s: Schedule,
        run_id: str,
        *,
        ok: bool,
        error: str | None = None,
        result: Any = None,
        exit_code: int | None = None,
        signal_number: int | None = None,
        lost: bool = False,
        at: datetime | None = None,
    ) -> None:
        """The run ended; `at`: when, as the worker saw it (else now)."""
        active = _pop_active(s, run_id)
        if active is None:
            return
        for handle in active.timers:
            handle.cancel()
        if run_id in s.waiting_for_worker:
            s.waiting_for_worker.remove(run_id)
        now = self._now()
        ended = at if at is not None and (active.run.started_at is None or at >= active.run.started_at) else now
        run = active.run
        if run.state is RunState.STARTING and not lost and active.launched:
            run = transition(run, RunState.RUNNING, at=ended)
        state = RunState.LOST if lost else active.ending_as or (RunState.SUCCEEDED if ok else RunState.FAILED)
        run = transition(
            run,
            state,
            at=ended,
            error=error,
            result=result,
            exit_code=exit_code,
            signal=signal_number,
            reason=run.reason,
        )
        with self._store.together():  # the final state and the notifications it causes: one transaction
            self._ended(s, run)
            self._host.publish(
                s.name,
                "run_finished",
                {
                    "run_id": run_id,
                    "state": str(state),
                    "duration_ms": run.duration_ms,
                    "error": error,
                    "attempt": run.attempt,
                },
            )
        s.last_finished = now
        self._retry_if_wanted(s, run)
        self._drain(s)
        self._start_buffered(s)
        if s.config.trigger.kind == "after_finish" or s.next_nominal is None:
            self._arm(s)

    def _retry_if_wanted(self, s: Schedule, run: Run) -> None:
        policy = s.config.retry
        if policy is None or self._loop is None:
            return
        delay_ms = should_retry(policy, run.state, run.attempt)
        if delay_ms is None:
            return
        log.info(
            "%s: run %s %s; retrying in %d ms (attempt %d)", s.name, run.run_id, run.state, delay_ms, run.attempt + 1
        )
        self._loop.call_later(
            delay_ms / 1000,
            lambda: self._occur(s, run.nominal_time, RunOrigin.RETRY, run.args, run.attempt + 1, run.idempotency_key),
        )

    def _start_buffered(self, s: Schedule) -> None:
        slots = s.config.slots
        while s.buffered and (slots is None or len(s.active) + s.queue.depth < slots):
            self._admit(s, s.buffered.popleft(), stored=True)

    def _end_early(self, s: Schedule, active: ActiveRun, ending: RunState, reason: str) -> None:
        """Cancel (cooperatively, then by force after cancel_grace) or terminate a run in flight."""
        if active.ending_as is not None:
            return
        active.ending_as = ending
        active.run = replace(active.run, reason=reason)
        run_id = active.run.run_id
        if not active.launched:  # nothing runs yet: it simply ends
            self._finish(s, run_id, ok=False, error=reason)
            return
        force = ending is RunState.TERMINATED
        if s.python:
            if not force and active.worker is not None:
                self._host.send_cancel(active.worker, run_id)
        elif active.process is not None:
            active.process.signal_group(signal.SIGKILL if force else signal.SIGTERM)
        if self._loop is not None:
            grace = 0.0 if force else s.config.cancel_grace_ms / 1000
            active.timers.append(self._loop.call_later(grace, self._force_end, s, run_id))

    def _force_end(self, s: Schedule, run_id: str) -> None:
        active = s.active.get(run_id)
        if active is None:
            return
        if s.python:
            # A run that ignores its cancellation can only be ended with its worker; the
            # worker's exit ends the run (in the state it was ending as) and any other it held.
            reason = f"run {run_id} did not stop within cancel_grace; SIGKILL to the worker's process group"
            log.warning("%s: %s", s.name, reason)
            self._host.kill_worker(active.worker or s.name, reason)
        elif active.process is not None:
            active.process.signal_group(signal.SIGKILL)

    def _on_timeout(self, s: Schedule, run_id: str) -> None:
        active = s.active.get(run_id)
        if active is not None:
            self._end_early(s, active, RunState.TIMED_OUT, f"timeout after {s.config.timeout_ms} ms")

    # -- what the worker channel and the supervisor tell us ----------------------

    def _schedule_of(self, instance: str) -> Schedule | None:
        """The schedule of a worker instance (`web`, or `web:2` for one of its `processes`)."""
        return self._schedules.get(instance) or self._schedules.get(instance.partition(":")[0])

    def on_worker_message(self, name: str, kind: str, fields: Mapping[str, Any]) -> None:
        s = self._schedule_of(name)
        if s is None:
            return
        run_id = str(fields.get("run_id"))
        if kind == "run_started":
            at = fields.get("at")
            self._mark_running(s, run_id, at=_from_timestamp(at) if isinstance(at, (int, float)) else None)
        elif kind == "run_progress":
            self._host.publish(
                name,
                "run_progress",
                {"run_id": run_id, "progress": fields.get("progress"), "message": fields.get("message")},
            )
        elif kind == "run_lease_expired" and run_id in s.active:
            # The worker stopped it, its lease not renewed in time there: lost, as with its worker.
            self._lost_in_worker(s, [s.active[run_id]], "its lease ran out in the worker (no renewal in time)")
        elif kind == "run_finished":
            at = fields.get("at")
            self._finish(
                s,
                run_id,
                ok=bool(fields.get("ok")),
                error=fields.get("traceback") or fields.get("error"),
                result=fields.get("result"),
                at=_from_timestamp(at) if isinstance(at, (int, float)) else None,
            )

    def on_worker_ready(self, name: str) -> None:
        s = self._schedule_of(name)
        if s is None:
            return
        self._drain(s)

    def _dispatch_waiting(self, s: Schedule) -> None:
        """Hand runs that wait for a worker to ready workers with free slots."""
        waiting, s.waiting_for_worker = s.waiting_for_worker, []
        for i, run_id in enumerate(waiting):
            active = s.active.get(run_id)
            if active is None:
                continue
            worker = self._pick_worker(s)
            if worker is None:
                s.waiting_for_worker.extend(waiting[i:])
                break
            self._dispatch(s, active, worker)

    def on_worker_exit(self, name: str) -> None:
        """The service's worker is gone: runs it had been handed are lost (and re-run under
        on_lost = "retry"); runs not handed to it yet stay queued for the next worker."""
        s = self._schedule_of(name)
        if s is None or not s.python:
            return
        self._lost_in_worker(s, [a for a in s.active.values() if a.worker == name], "the worker exited during the run")

    def _lost_in_worker(self, s: Schedule, handed: list[ActiveRun], why: str) -> None:
        """Runs handed to a worker ended there without an outcome: lost (re-run under
        on_lost = "retry")."""
        if s.config.on_lost == "retry":
            # Not reported started: back to the queue as they are (a start the worker had no time
            # to report runs again, with the same key: at least once).
            waiting = [a for a in handed if a.run.state is RunState.STARTING and a.ending_as is None]
            for active in waiting:
                self._requeue(s, active)
            handed = [a for a in handed if a not in waiting]
        for active in handed:
            if active.ending_as is None:
                self._rerun_lost(s, active.run)
        for active in handed:
            run_id = active.run.run_id
            if active.ending_as is not None:
                self._finish(s, run_id, ok=False, error=active.run.reason)
            else:
                self._finish(s, run_id, ok=False, error=why, lost=True)

    def _requeue(self, s: Schedule, active: ActiveRun) -> None:
        """A run handed to a worker that died before starting it: queued again, unchanged."""
        _pop_active(s, active.run.run_id)
        for handle in active.timers:
            handle.cancel()
        run = transition(active.run, RunState.QUEUED, at=self._now())
        self._store.update_run(run)
        s.queue.push(run)

    def _rerun_lost(self, s: Schedule, lost: Run) -> None:
        """on_lost = "retry": queue a new attempt of a lost run, with the same idempotency key."""
        if s.config.on_lost != "retry":
            return
        limit = s.config.retry.max + 1 if s.config.retry is not None else LOST_RERUN_LIMIT
        if lost.attempt >= limit:
            log.warning(
                "%s: run %s was lost on attempt %d of %d; not run again", s.name, lost.run_id, lost.attempt, limit
            )
            return
        now = self._now()
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

    # -- cluster mode: what the node's agent tells us (docs/cluster.md) ----------------

    def leases_lost(self, run_ids: set[str], reason: str) -> None:
        """Stop acting on these runs now: their leases are gone (taken over, or not renewed in
        time). A command run's process group gets SIGKILL; a warm worker is asked to cancel.
        Nothing is written: the run's row belongs to whoever holds it now."""
        for s in self._schedules.values():
            mine = [a for a in s.active.values() if a.run.run_id in run_ids]
            for active in mine:
                run_id = active.run.run_id
                _pop_active(s, run_id)
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
            if mine:
                self._drain(s)

    def run_groups(self, run_ids: set[str]) -> list[int]:
        """The process groups of these runs that are commands (for their guard deadlines)."""
        return [
            active.process.pid
            for s in self._schedules.values()
            for run_id, active in s.active.items()
            if run_id in run_ids and active.process is not None
        ]

    def runs_in_workers(self, run_ids: set[str]) -> dict[str, list[str]]:
        """Which of these runs are in a warm worker, by worker (for their lease renewals)."""
        found: dict[str, list[str]] = {}
        for s in self._schedules.values():
            for run_id, active in s.active.items():
                if run_id in run_ids and active.worker is not None and active.launched:
                    found.setdefault(active.worker, []).append(run_id)
        return found

    def rescued(self, lost_run_ids: list[str]) -> None:
        """As leader, these runs were marked lost (their node's lease expired while they ran):
        each service's on_lost decides (retry: a new attempt with the same idempotency key)."""
        for run_id in lost_run_ids:
            run = self._store.get_run(run_id)
            s = self._schedules.get(run.service) if run is not None else None
            if run is None or s is None:
                continue
            self._host.publish(s.name, "run_finished", {"run_id": run_id, "state": str(run.state), "error": run.error})
            self._rerun_lost(s, run)
            self._drain(s)

    def poll_store(self, services: set[str] | None = None) -> None:
        """Take queued runs other nodes left (or the leader queued again) while slots are free
        (of `services`, None: of every one), and pending one-shots added through other nodes."""
        for s in self._schedules.values():
            if services is not None and s.name not in services:
                continue
            if len(s.active) < self._capacity(s) and not len(s.queue):
                self._refill_queue(s)
                self._drain(s)
        if not len(self._window) and not self._store.pending:
            self._window.horizon = None
            self._refill_window()
        if self._due_claims is not None:
            self._due_claims.poll()

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
        return name in self._schedules

    def _require(self, name: str) -> Schedule:
        s = self._schedules.get(name)
        if s is None:
            raise ProtocolError(ErrorCode.CONFLICT, f'service "{name}" has no schedule (add every, cron, at or manual)')
        return s

    def run_now(self, name: str, args: Mapping[str, Any] | None) -> Run:
        return self._occur(self._require(name), None, RunOrigin.MANUAL, args)

    def cancel(self, run_id: str) -> Run:
        for s in self._schedules.values():
            active = s.active.get(run_id)
            if active is not None:
                self._end_early(s, active, RunState.CANCELLED, "cancelled by request")
                return active.run
            for run in s.buffered:
                if run.run_id == run_id:
                    s.buffered.remove(run)
                    return self._cancel_waiting(s, run)
            queued = s.queue.remove(run_id)
            if queued is not None:
                return self._cancel_waiting(s, queued)
        pending = self._window.remove(run_id)
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
        self._ended(s, run, barrier=True)  # the row may be one a window refill would read
        self._host.publish(
            s.name, "run_finished", {"run_id": run.run_id, "state": str(run.state), "duration_ms": None, "error": None}
        )
        return run

    def pause(self, name: str) -> None:
        s = self._require(name)
        s.state = replace(s.state, paused=True)
        self._store.put_schedule_state(name, s.state)
        self._arm(s)

    def resume(self, name: str) -> None:
        s = self._require(name)
        # Times missed while paused are not run (resume: skip_missed): fire from now on.
        s.state = replace(s.state, paused=False, last_fired=self._now())
        self._store.put_schedule_state(name, s.state)
        self._arm(s)

    def skip_next(self, name: str) -> str | None:
        s = self._require(name)
        if self._store.shared and s.next_nominal is not None:
            return self._skip_shared(s, s.next_nominal)
        s.state = replace(s.state, skip_next=True)
        self._store.put_schedule_state(name, s.state)
        return s.next_nominal.isoformat() if s.next_nominal else None

    def _skip_shared(self, s: Schedule, nominal: datetime) -> str:
        """On a shared store (cluster mode): the occurrence is recorded `skipped` now, under its
        unique key, so whichever supervisor fires it finds it taken and does not run it."""
        now = self._now()
        run = transition(
            new_run(s.name, at=now, nominal_time=nominal, origin=RunOrigin.SCHEDULE),
            RunState.SKIPPED,
            at=now,
            reason=str(SkipReason.USER_SKIP),
        )
        if self._store.insert_run(run):
            self._host.publish(s.name, "run_skipped", {"run_id": run.run_id, "reason": str(SkipReason.USER_SKIP)})
            return nominal.isoformat()
        skipped = self._store.list_runs(s.name, states={RunState.SKIPPED}, limit=SKIPPED_LOOKED_AT)
        if any(r.nominal_time == nominal and r.reason == str(SkipReason.USER_SKIP) for r in skipped):
            return nominal.isoformat()  # skipped already (through this node or another)
        raise ProtocolError(
            ErrorCode.CONFLICT,
            f"skip: the occurrence of {s.name} at {nominal.isoformat()} is already recorded (fired by a supervisor "
            "sharing the store); nothing skipped",
        )

    def next_fires(self, name: str, count: int) -> list[str]:
        s = self._require(name)
        times: list[str] = []
        after = max(self._now(), s.state.last_fired) if s.state.last_fired else self._now()
        runs = s.state.runs_so_far
        for _ in range(count):
            nxt = s.config.trigger.next_fire(after, runs_so_far=runs, last_finished=s.last_finished)
            if nxt is None:
                break
            times.append(nxt.isoformat())
            after, runs = nxt, runs + 1
        return times

    def schedule_at(self, name: str, at: datetime, args: Mapping[str, Any] | None) -> str:
        """A one-shot occurrence at `at`: a `pending` run, in the store at once; returns its run id.

        Only the soonest pending runs are held in memory (`PendingWindow`); the others
        are read from the store as those fire.
        """
        run = self._new_oneshot(self._require(name), self._now(), at, args)
        if not self._store.insert_run(run, barrier=True):
            raise ProtocolError(ErrorCode.CONFLICT, f"run {run.run_id} exists already")
        if self._window.add(run):
            self._arm_window()
        elif self._window_reading:
            self._window_missed.append(run)
        return run.run_id

    @staticmethod
    def _new_oneshot(s: Schedule, now: datetime, at: datetime, args: Mapping[str, Any] | None) -> Run:
        """A pending one-shot of `s` at `at`, its args over the service's own."""
        return new_run(
            s.name,
            at=now,
            nominal_time=at,
            origin=RunOrigin.ONESHOT,
            state=RunState.PENDING,
            args={**s.config.args, **(args or {})},
        )

    async def schedule_many(self, name: str, entries: list[tuple[datetime, Mapping[str, Any] | None]]) -> list[str]:
        """Several one-shots (`schedule` with `runs`), as `schedule_at` each; returns their run ids.

        In cluster mode they are inserted with one statement, in a thread: the event loop
        (and with it the node's renewals) goes on meanwhile."""
        if self._leases is None:
            return [self.schedule_at(name, at, args) for at, args in entries]
        s = self._require(name)
        now = self._now()
        runs = [self._new_oneshot(s, now, at, args) for at, args in entries]
        inserted = await asyncio.to_thread(self._leases.insert_waiting, runs)
        clash = next((run.run_id for run in runs if run.run_id not in inserted), None)
        if clash is not None:
            raise ProtocolError(ErrorCode.CONFLICT, f"run {clash} exists already")
        kept = [self._window.add(run) for run in runs]
        if self._window_reading:
            self._window_missed += [run for run, here in zip(runs, kept, strict=True) if not here]
        if any(kept):
            self._arm_window()
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
        pending = self._window.get(run_id)
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
                run = new_run(
                    oneshot.service,
                    at=self._now(),
                    nominal_time=oneshot.at,
                    origin=RunOrigin.ONESHOT,
                    state=RunState.PENDING,
                    args={**s.config.args, **oneshot.args},
                    run_id=oneshot.id,
                )
                self._store.store.insert_run(run)
                self._store.store.remove_oneshot(oneshot.id)
        self._refill_window()

    def _arm_window(self) -> None:
        """One timer for the soonest pending run (re-armed when a sooner one is added): at its
        time, or `FIRE_AHEAD_S` before it when a warm worker will start it."""
        soonest = self._window.soonest
        if self._loop is None or soonest is None:
            return
        assert soonest.nominal_time is not None
        nxt = soonest.nominal_time - timedelta(seconds=FIRE_AHEAD_S if self._fires_ahead(soonest) else 0.0)
        if self._window_timer is not None:
            if self._window_timer_at is not None and self._window_timer_at <= nxt:
                return
            self._window_timer.cancel()
        delay = min(MAX_TIMER_S, max(0.0, (nxt - self._now()).total_seconds()))
        self._window_timer_at = nxt
        self._window_timer = self._loop.call_later(delay, self._on_window_timer)

    def _fires_ahead(self, run: Run) -> bool:
        """A pending run may be handed over early: its service runs in warm workers."""
        s = self._schedules.get(run.service)
        return s is not None and s.python

    def _on_window_timer(self) -> None:
        self._window_timer = self._window_timer_at = None
        now = self._now()
        due: set[str] = set()
        with self._store.held():  # the writer takes the due runs' state changes together
            self._take_due(now, due)
        if due and self._due_claims is not None:
            self._due_claims.due(due)
        if self._window.wants_more:
            self._schedule_refill()
        self._arm_window()

    def _take_due(self, now: datetime, due: set[str]) -> None:
        """Admit the pending one-shots due by `now` (by FIRE_AHEAD_S later for a warm worker's);
        cluster mode: add their services to `due` instead, to be claimed."""
        for run in self._window.take(now, now + timedelta(seconds=FIRE_AHEAD_S), self._fires_ahead):
            s = self._schedules.get(run.service)
            if s is None:
                continue  # its service is gone: the row stays pending, for when it comes back
            if self._due_claims is not None:
                due.add(s.name)  # cluster mode: claimed below, as many as there is room for
                continue
            try:
                if self._store.shared:
                    # Every supervisor sharing the store holds this row: the one whose
                    # compare-and-set moves it out of `pending` runs it.
                    run = transition(run, RunState.DUE, at=self._now())
                    if not self._store.store.update_run(run, expected_state=RunState.PENDING):
                        continue
                self._admit(s, run, stored=True)
            except StoreError as e:
                log.error("%s: could not start one-shot run %s: %s", s.name, run.run_id, e)

    def _room(self, name: str) -> int:
        """Cluster mode: free slots of service `name` for due one-shots (none while it has a queue)."""
        s = self._schedules.get(name)
        return 0 if s is None or s.queue.depth else max(0, self._capacity(s) - len(s.active))

    def _due_by(self, name: str) -> datetime:
        """Cluster mode: the one-shots of `name` due by this time are claimed now."""
        s = self._schedules.get(name)
        return self._now() + timedelta(seconds=FIRE_AHEAD_S if s is not None and s.python else 0.0)

    def _start_claimed(self, run: Run) -> None:
        """Cluster mode: start a due one-shot this node claimed (`DueClaims`), or, when its slots
        filled meanwhile, queue it for any node (the write gives the lease back)."""
        s = self._schedules.get(run.service)
        try:
            if s is None:
                self._store.store.update_run(run)  # back to pending, for when the service is back
            elif self._room(s.name) > 0:
                self._claimed_ahead[run.run_id] = True
                self._start(s, run, stored=True)
                self._claimed_ahead.pop(run.run_id, None)
            else:
                self._admit(s, run, stored=True)
        except StoreError as e:
            log.error("%s: could not start one-shot run %s: %s", run.service, run.run_id, e)

    def _schedule_refill(self) -> None:
        if self._loop is not None and self._refill_timer is None:
            self._refill_timer = self._loop.call_soon(self._refill)

    def _refill(self) -> None:
        """Read the next pending and queued runs from the store, once the writes that matter have landed.

        The window reads pending rows after its horizon: it waits for the writes that add or
        cancel such rows (`unsettled`), not for the stream of state changes of a burst. A queue
        reads all of a service's queued rows: it waits until every queued write is done, so a
        run it started is not read again as queued.
        """
        self._refill_timer = None
        retry = False
        if self._window.wants_more:
            if self._store.unsettled:
                retry = True
            else:
                self._refill_window()
        wanting = [s for s in self._schedules.values() if s.queue.wants_refill]
        if wanting and self._store.pending:
            retry = True
        elif wanting:
            for s in wanting:
                self._refill_queue(s)
                self._drain(s)
        if retry and self._loop is not None:
            self._refill_timer = self._loop.call_later(REFILL_RETRY_S, self._refill)

    def _refill_window(self) -> None:
        asked = self._window.room
        if asked == 0:
            return
        if self._due_claims is not None and self._loop is not None:
            self._refill_window_off_loop(asked)
            return
        self._window.load(self._store.pending_runs(self._window.horizon, asked), asked)
        self._arm_window()

    def _refill_window_off_loop(self, asked: int) -> None:
        """Cluster mode: read the next pending runs in a thread (every node reads the same rows at
        about the same time, up to the window's size). A one-shot added here meanwhile that the
        window turned away (beyond its horizon) may be missing from the read: it is offered
        again once the read is loaded."""
        if self._window_reading:
            return
        self._window_reading = True
        horizon = self._window.horizon
        assert self._loop is not None

        async def read() -> None:
            try:
                runs = await asyncio.to_thread(self._store.pending_runs, horizon, asked)
            except StoreError as e:
                log.warning("could not read pending one-shots (%s); the next poll reads them", e)
                return
            finally:
                self._window_reading = False
                missed, self._window_missed = self._window_missed, []
            if self._window.horizon == horizon:
                self._window.load(runs, asked)
            for run in missed:
                self._window.add(run)
            self._arm_window()
            if self._window.wants_more:
                self._schedule_refill()

        self._loop.create_task(read())

    def _refill_queue(self, s: Schedule) -> None:
        total = self._store.count_runs(s.name, {RunState.QUEUED})
        if total > len(s.queue):
            s.queue.refill(self._store.queued_runs(s.name, s.queue.window), total)

    def _observe_lateness(self, s: Schedule, run: Run, started: datetime) -> None:
        """Fire lateness: from the time a run was due (nominal plus jitter, or a one-shot's datetime) to its start."""
        due = _due_time(run)
        if due is not None:
            self.lateness.setdefault(s.name, LatenessHistogram()).observe((started - due).total_seconds())

    def figures(self, name: str) -> dict[str, object]:
        """Queue depth, runs in flight and fire lateness of a scheduled service (for `metrics`)."""
        s = self._schedules.get(name)
        if s is None:
            return {}
        histogram = self.lateness.get(name)
        return {
            "runs_queued": s.queue.depth,
            "runs_in_flight": len(s.active),
            "fire_lateness": histogram.as_dict() if histogram is not None else None,
        }

    def backfill(self, name: str, start: datetime, end: datetime, limit: int = 1000) -> list[str]:
        s = self._require(name)
        ids = []
        for nominal in s.config.trigger.fires_between(start, end, limit):
            run = new_run(s.name, at=self._now(), nominal_time=nominal, origin=RunOrigin.BACKFILL)
            run = transition(replace(run, args=dict(s.config.args)), RunState.BUFFERED, at=self._now())
            if self._store.insert_run(run):
                s.buffered.append(run)
                ids.append(run.run_id)
        self._start_buffered(s)
        return ids

    def _last_run(self, s: Schedule) -> Run | None:
        now = time.monotonic()
        if s.last_run_read_at is None or now - s.last_run_read_at > LAST_RUN_REFRESH_S:
            found = self._store.list_runs(s.name, states=set(FINAL) - {RunState.SKIPPED}, limit=1)
            s.last_run_read_at = now
            if found:
                s.last_run = _newer(s.last_run, found[0])
        return s.last_run

    def _ended(self, s: Schedule, run: Run, *, barrier: bool = False) -> None:
        """A run of `s` reached a final state here: store it, and show it in `status` at once."""
        self._store.update_run(run, barrier=barrier)
        if run.state is not RunState.SKIPPED:
            s.last_run = _newer(s.last_run, run)

    def _next_fires(self, s: Schedule, count: int) -> list[datetime]:
        """The next `count` fire times from the pending one on (fewer if the trigger ends; none while paused)."""
        if s.next_at is None or s.state.paused:
            return []
        out = [s.next_at]
        while len(out) < count:
            following = s.config.trigger.next_fire(out[-1], runs_so_far=s.state.runs_so_far + len(out))
            if following is None:
                break
            out.append(following)
        return out

    def describe(self, name: str) -> dict[str, object] | None:
        s = self._schedules.get(name)
        if s is None:
            return None
        last = self._last_run(s)
        return {
            "trigger": s.config.trigger.describe(),
            "paused": s.state.paused,
            "next_fire": s.next_at.isoformat() if s.next_at else None,
            "next_fires": [t.isoformat() for t in self._next_fires(s, NEXT_FIRES_SHOWN)],
            "running": len(s.active),
            "buffered": len(s.buffered),
            "queued": s.queue.depth,
            "in_flight": len(s.active),
            "concurrency": s.config.concurrency,
            "on_lost": s.config.on_lost,
            "runs_so_far": s.state.runs_so_far,
            "last_run": _run_summary(last) if last is not None else None,
        }


def _pop_active(s: Schedule, run_id: str) -> ActiveRun | None:
    """Take a run out of `s.active`, and out of its worker's count (`_pick_worker` reads that count
    for every run it hands out, instead of counting up to 2 x concurrency runs each time)."""
    active = s.active.pop(run_id, None)
    if active is not None and active.worker is not None:
        s.handed[active.worker] -= 1
    return active


def _due_time(run: Run) -> datetime | None:
    """When a run is due to start: a scheduled occurrence's time plus jitter, a one-shot's
    datetime; None for manual, catch-up, backfill runs, retries and re-runs (due at once)."""
    if run.origin is RunOrigin.SCHEDULE:
        return run.jittered_time
    if run.origin is RunOrigin.ONESHOT:
        return run.nominal_time
    return None


def _from_timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


def _newer(cached: Run | None, other: Run) -> Run:
    """The later-created of two final runs (the store's order); the same run: the copy kept here."""
    if cached is None:
        return other
    if cached.run_id == other.run_id:
        return cached
    return other if (other.created_at, other.run_id) > (cached.created_at, cached.run_id) else cached


def _run_summary(run: Run) -> dict[str, object]:
    return {
        "run_id": run.run_id,
        "state": str(run.state),
        "nominal_time": run.nominal_time.isoformat() if run.nominal_time else None,
        "finished_at": run.finished_at.isoformat() if run.finished_at else None,
        "duration_ms": run.duration_ms,
        "error": (run.error or "").strip().splitlines()[-1] if run.error else None,
    }


def run_to_dict(run: Run) -> dict[str, object]:
    """A run as the control protocol returns it."""

    def iso(value: datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "run_id": run.run_id,
        "service": run.service,
        "state": str(run.state),
        "reason": run.reason,
        "origin": str(run.origin),
        "attempt": run.attempt,
        "nominal_time": iso(run.nominal_time),
        "created_at": iso(run.created_at),
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "duration_ms": run.duration_ms,
        "args": dict(run.args),
        "pid": run.pid,
        "exit_code": run.exit_code,
        "signal": run.signal,
        "error": run.error,
        "result": run.result,
        "key": run.idempotency_key,
    }
